"""Build ``scheduler_step.onnx``: advance the schedule state by one epoch.

Inputs: the schedule state. Outputs: the next epoch and the learning rate of
every parameter group at that epoch (``schedule.lr``, float64, groups in
``param_groups`` order with the default group last), which the session reads
as ``session.lr``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from optgraph.lr_scheduler import LRScheduler
from optgraph.optim.optimizers import ParamGroup
from optgraph.rewrite.builder import DOUBLE, INT64, GraphBuilder, ir_dtype
from optgraph.rewrite.state import EPOCH, NEXT, SCHEDULE_LR, StateTensor


def initial_lrs(schedule: LRScheduler, groups: Sequence[ParamGroup]) -> np.ndarray:
    """``session.lr`` right after construction, from the schedule's Python twin."""
    return np.array([schedule.for_group(g.index).value(0, float(g.options["lr"])) for g in groups], np.float64)


def build_scheduler_step(
    schedule: LRScheduler, groups: Sequence[ParamGroup], opset: int, ir_version: int
) -> tuple[ir.Model, list[StateTensor]]:
    """The scheduler-step model and the state tensors it owns besides the epoch."""
    graph = ir.Graph([], [], nodes=[], opset_imports={"": opset}, name="scheduler_step")
    b = GraphBuilder(graph)
    base_lrs = [float(g.options["lr"]) for g in groups]
    extra = schedule.extra_state(base_lrs)
    state_inputs = {EPOCH: b.add_input(EPOCH, INT64, []), SCHEDULE_LR: b.add_input(SCHEDULE_LR, DOUBLE, [len(groups)])}
    for name, init in extra.items():
        state_inputs[name] = b.add_input(name, ir_dtype(init.dtype), init.shape)
    next_epoch = b.op("Add", state_inputs[EPOCH], b.const(1, INT64))
    if schedule.metric_input is not None:
        metric = b.add_input(schedule.metric_input, DOUBLE, [])
        advanced = schedule.emit_advance(b, state_inputs, metric, base_lrs)
    else:
        epoch_number = b.cast(next_epoch, DOUBLE)
        lrs = []
        for group in groups:
            with b.scope(f"lr/group{group.index}"):
                lr = schedule.for_group(group.index).emit_lr(b, epoch_number, float(group.options["lr"]))
                lrs.append(b.op("Reshape", lr, b.const([1], INT64)))
        advanced = {SCHEDULE_LR: b.op("Concat", *lrs, axis=0)}
    b.add_output(next_epoch, EPOCH + NEXT)
    for name, value in advanced.items():
        b.add_output(value, name + NEXT)
    state = [StateTensor(SCHEDULE_LR, "schedule_state", initial_lrs(schedule, groups), {})]
    state += [StateTensor(name, "schedule_state", init, {}) for name, init in extra.items()]
    return ir.Model(graph, ir_version=ir_version, producer_name="optgraph"), state
