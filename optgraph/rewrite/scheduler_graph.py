"""Build ``scheduler_step.onnx``: advance the schedule state by one epoch.

Inputs: the schedule state. Outputs: the next epoch and the learning rate of
every parameter group at that epoch (``schedule.lr``, float64, groups in
``param_groups`` order with the default group last), which the session reads
as ``session.lr``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from optgraph.artifact.names import EPOCH, METRIC, SCHEDULE_LR, GraphName, Role, next_name
from optgraph.graph.builder import DOUBLE, INT64, GraphBuilder, ir_dtype
from optgraph.lr_scheduler import LRScheduler
from optgraph.optim.optimizers import ParamGroup
from optgraph.rewrite.state import StateTensor


@dataclass(frozen=True)
class SchedulerStep:
    """The scheduler-step model and the state tensors it owns besides the epoch (which the train step adds)."""

    model: ir.Model
    new_state: list[StateTensor]


def initial_lrs(schedule: LRScheduler, groups: Sequence[ParamGroup]) -> np.ndarray:
    """``session.lr`` right after construction, from the schedule's Python twin."""
    return np.array([schedule.for_group(g.index).value(0, float(g.options["lr"])) for g in groups], np.float64)


def build_scheduler_step(
    schedule: LRScheduler, groups: Sequence[ParamGroup], opset: int, ir_version: int
) -> SchedulerStep:
    """Build the scheduler-step model of ``schedule`` over ``groups``."""
    graph = ir.Graph([], [], nodes=[], opset_imports={"": opset}, name=GraphName.SCHEDULER_STEP.value)
    b = GraphBuilder(graph)
    base_lrs = [float(g.options["lr"]) for g in groups]
    extra = schedule.extra_state(base_lrs)
    state_inputs = {EPOCH: b.add_input(EPOCH, INT64, []), SCHEDULE_LR: b.add_input(SCHEDULE_LR, DOUBLE, [len(groups)])}
    for name, init in extra.items():
        state_inputs[name] = b.add_input(name, ir_dtype(init.dtype), init.shape)
    next_epoch = b.op("Add", state_inputs[EPOCH], b.const(1, INT64))
    if schedule.driven_by_metric:
        metric = b.add_input(METRIC, DOUBLE, [])
        advanced = schedule.emit_advance(b, state_inputs, metric, base_lrs)
    else:
        epoch_number = b.cast(next_epoch, DOUBLE)
        lrs = []
        for group in groups:
            with b.scope(f"lr/group{group.index}"):
                lr = schedule.for_group(group.index).emit_lr(b, epoch_number, float(group.options["lr"]))
                lrs.append(b.op("Reshape", lr, b.const([1], INT64)))
        advanced = {SCHEDULE_LR: b.op("Concat", *lrs, axis=0)}
    b.add_output(next_epoch, next_name(EPOCH))
    for name, value in advanced.items():
        b.add_output(value, next_name(name))
    state = [StateTensor(SCHEDULE_LR, Role.SCHEDULE_STATE, initial_lrs(schedule, groups))]
    state += [StateTensor(name, Role.SCHEDULE_STATE, init) for name, init in extra.items()]
    return SchedulerStep(ir.Model(graph, ir_version=ir_version, producer_name="optgraph"), state)
