"""Pass: turn the joint (loss, gradients) graph into a whole optimizer step.

Consumes the gradient outputs of the captured graph and appends, per
parameter, the chain of update rules of its parameter group, with the
learning rate computed from the schedule state; adds the optimizer state and
counters as inputs and their next values as outputs.

Small parameters share one update (a fused multi-tensor update, as
onnxruntime-training's and tinygrad's fused optimizers do): an element-wise
chain costs some 15 nodes per parameter whatever its size, and on small
tensors the runtime's per-node overhead is most of the update. So the small
parameters of a group (at most ``PACK_PARAM_MAX_ELEMENTS`` elements, of one
dtype, two or more) are flattened and concatenated, with their gradients, into
packs; the chain runs once on each pack's flat tensors, with the pack's slots
kept flat (``optim_pack_slot_name``), and a Split gives each parameter its next
value. Element-wise math computes every element as it would per parameter, so
the numbers are bit-identical.

The limits come from ``python -m tools.pack_timing`` (onnxruntime CPU, 2
threads): packing eight 1024-element AdamW parameters saves a fifth of the
step, eight of 4096 elements break even, and larger parameters gain nothing
(the copies into and out of a pack cost what the nodes saved did). A pack
much over 2**18 elements is slower than separate updates (a 2**19-element pack
+14%, 2**21 +55%): the chain's dozen pack-sized buffers no longer stay in the
cache, so packs stop at ``PACK_MAX_ELEMENTS``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import prod

import numpy as np
import onnx_ir as ir

from optgraph.artifact.names import (
    EPOCH,
    PACKED_KEY,
    PARAM_KEY,
    SCHEDULE_LR,
    SLOT_KEY,
    STEP_COUNTER,
    Role,
    next_name,
    optim_pack_slot_name,
    optim_slot_name,
    param_of_grad,
)
from optgraph.graph.builder import DOUBLE, INT64, GraphBuilder, ir_dtype
from optgraph.lr_scheduler import LRScheduler
from optgraph.optim.optimizers import Optimizer, ParamGroup
from optgraph.optim.rules import ParamInfo, UpdateContext, UpdateRule, chain_slots, emit_chain, packable
from optgraph.rewrite.state import StateTensor

#: whether small parameters share one update (tests switch it off to compare)
PACKING = True
#: the largest parameter (in elements) that joins a pack: larger ones keep their own update
PACK_PARAM_MAX_ELEMENTS = 2**12
#: the most elements in one pack (a group's small parameters beyond it start another): keeps its buffers in cache
PACK_MAX_ELEMENTS = 2**16


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
    model: ir.Model,
    optimizer: Optimizer,
    schedule: LRScheduler,
    groups: Sequence[ParamGroup],
    pack: bool | None = None,
) -> AttachedOptimizer:
    """Append the optimizer update of every trainable parameter to ``model``, in place.

    ``pack``: whether small parameters share one update (None: the module's ``PACKING``).
    """
    pack = PACKING if pack is None else pack
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

    # the names of per-parameter slots, without the slot: a pack must not take one (see _plan)
    taken = {optim_slot_name("", name) for group in groups for name in group.params}
    for group in groups:
        group_schedule = schedule.for_group(group.index)
        rules = optimizer.rules(group_schedule.adjust_options(group.options))
        with b.scope(f"lr/group{group.index}"):
            if lr_state is not None:  # the schedule keeps the lr itself (ReduceLROnPlateau)
                lr = b.op("Gather", lr_state, b.const(group.index, INT64), axis=0)
            else:
                lr = group_schedule.emit_lr(b, epoch_number, float(group.options["lr"]))
            momentum = group_schedule.emit_momentum(b, epoch_number)
        for unit in _plan(group, rules, inputs, taken, pack):
            if isinstance(unit, _Pack):
                with b.scope(f"optim/group{group.index}_pack{unit.index}"):
                    _update_pack(b, unit, rules, inputs, grads, state_input, step_number, first, lr, momentum)
                continue
            param = inputs[unit]
            info = ParamInfo(tuple(param.shape.numpy()), np.dtype(param.dtype.numpy()))
            state = {
                slot: state_input(
                    optim_slot_name(slot, unit), Role.OPTIM_STATE, init, {PARAM_KEY: unit, SLOT_KEY: slot}
                )
                for slot, init in chain_slots(rules, info).items()
            }
            with b.scope(f"optim/{unit}"):
                ctx = UpdateContext(b, param, step_number, first, lr, momentum)
                new_param, new_slots = emit_chain(rules, ctx, grads[unit], state)
            b.add_output(new_param, next_name(unit))
            for slot, value in new_slots.items():
                b.add_output(value, next_name(optim_slot_name(slot, unit)))
    b.add_output(next_step, next_name(STEP_COUNTER))
    return AttachedOptimizer(new_state, grads)


@dataclass(frozen=True)
class _Pack:
    """Parameters of one group and dtype that share one update: the ``index``-th pack of group ``group``."""

    group: int
    index: int
    params: tuple[str, ...]


def _info(value: ir.Value) -> ParamInfo:
    return ParamInfo(tuple(value.shape.numpy()), np.dtype(value.dtype.numpy()))


def _plan(
    group: ParamGroup, rules: Sequence[UpdateRule], inputs: dict[str, ir.Value], taken: set[str], pack: bool
) -> list[str | _Pack]:
    """The group's update units in parameter order: a parameter on its own, or a pack (at its first parameter).

    A parameter joins a pack when the chain may pack it and it has at most ``PACK_PARAM_MAX_ELEMENTS``
    elements; the candidates of one dtype fill packs of at most ``PACK_MAX_ELEMENTS`` elements in
    order, and a pack of one parameter is no pack. ``taken`` holds ``optim_slot_name("", p)`` of every
    trainable parameter ``p``: a pack whose slot names one of those (a parameter named like the pack,
    ``pack0_0``) would take another tensor's name, so its parameters keep their own updates.
    """
    if not pack:
        return list(group.params)
    by_dtype: dict[np.dtype, list[list[str]]] = {}
    sizes = {name: prod(_info(inputs[name]).shape) for name in group.params}
    for name in group.params:
        info = _info(inputs[name])
        if sizes[name] > PACK_PARAM_MAX_ELEMENTS or not packable(rules, info):
            continue
        chunks = by_dtype.setdefault(info.dtype, [[]])
        if chunks[-1] and sum(sizes[n] for n in chunks[-1]) + sizes[name] > PACK_MAX_ELEMENTS:
            chunks.append([])
        chunks[-1].append(name)
    packs: dict[str, _Pack] = {}  # first parameter -> its pack
    packed: set[str] = set()
    for chunk in (c for chunks in by_dtype.values() for c in chunks if len(c) > 1):
        index = len(packs)
        if optim_pack_slot_name("", group.index, index) in taken:
            continue
        packs[chunk[0]] = _Pack(group.index, index, tuple(chunk))
        packed.update(chunk)
    units: list[str | _Pack] = []
    for name in group.params:
        if name in packs:
            units.append(packs[name])
        elif name not in packed:
            units.append(name)
    return units


def _update_pack(b: GraphBuilder, pack: _Pack, rules, inputs, grads, state_input, step, first, lr, momentum) -> None:
    """The chain once over the pack's flattened, concatenated parameters and gradients; Split gives them back."""
    params = [inputs[name] for name in pack.params]
    shapes = [tuple(p.shape.numpy()) for p in params]
    sizes = [prod(shape) for shape in shapes]

    def flat(value: ir.Value, shape: tuple[int, ...]) -> ir.Value:
        return value if len(shape) == 1 else b.op("Reshape", value, b.const([-1], INT64))

    def concat(values: list[ir.Value]) -> ir.Value:
        out = b.op("Concat", *(flat(v, s) for v, s in zip(values, shapes)), axis=0)
        out.shape = ir.Shape([sum(sizes)])
        return out

    param = concat(params)
    grad = concat([grads[name] for name in pack.params])
    info = ParamInfo((sum(sizes),), np.dtype(param.dtype.numpy()))
    state = {
        slot: state_input(
            optim_pack_slot_name(slot, pack.group, pack.index),
            Role.OPTIM_STATE,
            init,
            {PACKED_KEY: list(pack.params), SLOT_KEY: slot},
        )
        for slot, init in chain_slots(rules, info).items()
    }
    ctx = UpdateContext(b, param, step, first, lr, momentum)
    new_param, new_slots = emit_chain(rules, ctx, grad, state)
    parts = b.op("Split", new_param, b.const(sizes, INT64), axis=0, num_outputs=len(params))
    for name, part, shape, size in zip(pack.params, parts, shapes, sizes):
        part.dtype, part.shape = param.dtype, ir.Shape([size])
        value = part if len(shape) == 1 else b.op("Reshape", part, b.const(list(shape), INT64))
        b.add_output(value, next_name(name))
    for slot, value in new_slots.items():
        b.add_output(value, next_name(optim_pack_slot_name(slot, pack.group, pack.index)))
