"""Pass: turn the joint (loss, gradients) graph into a whole optimizer step.

Consumes the gradient outputs of the captured graph and appends, per
parameter, the chain of update rules of its parameter group, with the
learning rate computed from the schedule state; adds the optimizer state and
counters as inputs and their next values as outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from optgraph.artifact.names import (
    EPOCH,
    PARAM_KEY,
    SCHEDULE_LR,
    SLOT_KEY,
    STEP_COUNTER,
    Role,
    next_name,
    optim_slot_name,
    param_of_grad,
)
from optgraph.graph.builder import DOUBLE, INT64, GraphBuilder, ir_dtype
from optgraph.lr_scheduler import LRScheduler
from optgraph.optim.optimizers import Optimizer, ParamGroup
from optgraph.optim.rules import ParamInfo, UpdateContext, chain_slots, emit_chain
from optgraph.rewrite.state import StateTensor


@dataclass(frozen=True)
class AttachedOptimizer:
    """What :func:`attach_optimizer` added and consumed.

    Attributes:
        new_state: the counters, schedule epoch and optimizer slots it added as inputs, in order.
        gradients: the gradient values it consumed (no longer graph outputs), by parameter.
    """

    new_state: list[StateTensor]
    gradients: dict[str, ir.Value]


def attach_optimizer(
    model: ir.Model, optimizer: Optimizer, schedule: LRScheduler, groups: Sequence[ParamGroup]
) -> AttachedOptimizer:
    """Append the optimizer update of every trainable parameter to ``model``, in place."""
    graph = model.graph
    b = GraphBuilder(graph)
    inputs = {v.name: v for v in graph.inputs}
    grads = {param_of_grad(v.name): v for v in graph.outputs if param_of_grad(v.name) is not None}
    for value in grads.values():
        graph.outputs.remove(value)
    new_state: list[StateTensor] = []

    def state_input(name: str, role: Role, init: np.ndarray, meta: dict | None = None) -> ir.Value:
        new_state.append(StateTensor(name, role, init, meta or {}))
        return b.add_input(name, ir_dtype(init.dtype), init.shape)

    with b.scope("counters"):
        step = state_input(STEP_COUNTER, Role.COUNTER, np.array(0, np.int64))
        epoch = state_input(EPOCH, Role.SCHEDULE_STATE, np.array(0, np.int64))
        next_step = b.op("Add", step, b.const(1, INT64))
        step_number = b.cast(next_step, DOUBLE)
        first = b.op("Equal", step, b.const(0, INT64))
        epoch_number = b.cast(epoch, DOUBLE)
        lr_state = b.add_input(SCHEDULE_LR, DOUBLE, [len(groups)]) if schedule.lr_from_state else None

    for group in groups:
        group_schedule = schedule.for_group(group.index)
        rules = optimizer.rules(group_schedule.adjust_options(group.options))
        with b.scope(f"lr/group{group.index}"):
            if lr_state is not None:  # the schedule keeps the lr itself (ReduceLROnPlateau)
                lr = b.op("Gather", lr_state, b.const(group.index, INT64), axis=0)
            else:
                lr = group_schedule.emit_lr(b, epoch_number, float(group.options["lr"]))
            momentum = group_schedule.emit_momentum(b, epoch_number)
        for name in group.params:
            param = inputs[name]
            info = ParamInfo(tuple(param.shape.numpy()), np.dtype(param.dtype.numpy()))
            state = {
                slot: state_input(
                    optim_slot_name(slot, name), Role.OPTIM_STATE, init, {PARAM_KEY: name, SLOT_KEY: slot}
                )
                for slot, init in chain_slots(rules, info).items()
            }
            with b.scope(f"optim/{name}"):
                ctx = UpdateContext(b, param, step_number, first, lr, momentum)
                new_param, new_slots = emit_chain(rules, ctx, grads[name], state)
            b.add_output(new_param, next_name(name))
            for slot, value in new_slots.items():
                b.add_output(value, next_name(optim_slot_name(slot, name)))
    b.add_output(next_step, next_name(STEP_COUNTER))
    return AttachedOptimizer(new_state, grads)
