"""The train step's pipeline: every pass in its order, from a capture to the artifact's three graphs.

Order matters: accumulation turns gradients into running sums before
clipping sees them (torch clips the accumulated ``.grad``); the optimizer
consumes the (clipped) gradients; gating keeps the update for every k-th
call; the non-finite guard comes last, so that it wraps every state update,
the gated ones included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import onnx_ir as ir
import onnx_ir.passes.common

from optgraph.artifact.names import LOSS, METRIC, TRAINABLE_KEY, UPDATE_APPLIED, GraphName, Role, state_of_next
from optgraph.lr_scheduler import LRScheduler
from optgraph.optim.optimizers import Optimizer, ParamGroup
from optgraph.rewrite.accumulate import accumulate_gradients, gate_on_update
from optgraph.rewrite.attach_optimizer import attach_optimizer
from optgraph.rewrite.clip import clip_gradients
from optgraph.rewrite.in_place import in_place_outputs
from optgraph.rewrite.scheduler_graph import build_scheduler_step
from optgraph.rewrite.skip_non_finite import skip_non_finite
from optgraph.rewrite.state import StateTensor
from optgraph.rewrite.versions import declare_lowest_versions

if TYPE_CHECKING:  # the capture needs torch; this layer reads only its graphs and names
    from optgraph.capture import Captured

_COMMON_SUBEXPRESSIONS = ir.passes.common.CommonSubexpressionEliminationPass()  # skips random ops

# state a gradient-accumulation step leaves alone except on update calls (parameters too)
_GATED_ROLES = (Role.OPTIM_STATE, Role.COUNTER)


@dataclass(frozen=True)
class TrainingGraphs:
    """The rewritten graphs with everything the manifest says about their tensors.

    Attributes:
        graphs: the three models by graph name, each stamped with its lowest opset and IR version.
        new_state: the state tensors the rewrite added (optimizer slots, counters, schedule state,
            accumulators), by name, with their initial values.
        roles: the role of every input and output name of the three graphs.
        meta: extra manifest keys of tensors, by name (trainable, param, slot).
        groups: the resolved parameter groups, default group last.
        in_place: per graph, the state outputs a runtime may write into their state input's buffer.
    """

    graphs: dict[GraphName, ir.Model]
    new_state: dict[str, StateTensor]
    roles: dict[str, Role]
    meta: dict[str, dict]
    groups: list[ParamGroup]
    in_place: dict[GraphName, frozenset[str]]


def rewrite_training(
    captured: Captured,
    optimizer: Optimizer,
    schedule: LRScheduler,
    clip_grad_norm: float | None = None,
    grad_accumulation_steps: int = 1,
) -> TrainingGraphs:
    """Append the optimizer, schedule, clipping, accumulation and non-finite guard to a capture.

    The capture is left unchanged: the passes work on a copy of its train graph.
    """
    groups = optimizer.resolve(captured.trainable)
    train = ir.from_proto(ir.to_proto(captured.train))
    accumulation = accumulate_gradients(train, grad_accumulation_steps) if grad_accumulation_steps > 1 else None
    if clip_grad_norm is not None:
        clip_gradients(train, float(clip_grad_norm))
    attached = attach_optimizer(train, optimizer, schedule, groups)
    if accumulation is not None:
        gated = set(captured.trainable) | {t.name for t in attached.new_state if t.role in _GATED_ROLES}
        gate_on_update(train, accumulation.is_update, gated)
    # Each parameter's chain repeats the group's scalar arithmetic (bias corrections, step sizes, the lr):
    # computed once, before the guard moves the update into its branch (the pass does not enter subgraphs).
    _COMMON_SUBEXPRESSIONS(train)
    skip_non_finite(train, attached.gradients.values(), captured.updated_buffers)
    scheduler = build_scheduler_step(schedule, groups, train.opset_imports[""], train.ir_version)
    _COMMON_SUBEXPRESSIONS(scheduler.model)

    added = attached.new_state + scheduler.new_state + (accumulation.new_state if accumulation is not None else [])
    new_state = {t.name: t for t in added}
    graphs = {
        GraphName.TRAIN_STEP: train,
        GraphName.SCHEDULER_STEP: scheduler.model,
        GraphName.EVAL: ir.from_proto(ir.to_proto(captured.eval)),
    }
    for model in graphs.values():
        _type_state_outputs(model)
        declare_lowest_versions(model)
    in_place = {name: frozenset(in_place_outputs(model)) for name, model in graphs.items()}
    roles, meta = _roles(captured, schedule, new_state), _meta(captured, new_state)
    return TrainingGraphs(graphs, new_state, roles, meta, groups, in_place)


def _type_state_outputs(model: ir.Model) -> None:
    """Give each state output its state's element type and shape (ONNX wants both on every graph output)."""
    inputs = {v.name: v for v in model.graph.inputs}
    for value in model.graph.outputs:
        state = inputs.get(state_of_next(value.name))
        if state is not None:
            value.dtype, value.shape = state.dtype, ir.Shape(list(state.shape))


def _roles(captured: Captured, schedule: LRScheduler, new_state: dict[str, StateTensor]) -> dict[str, Role]:
    roles = {n: Role.INPUT for n in captured.data_names} | {n: Role.TARGET for n in captured.target_names}
    roles |= {n: Role.PARAM for n in captured.trainable + captured.frozen}
    roles |= {n: Role.BUFFER for n in captured.buffers}
    roles |= {n: t.role for n, t in new_state.items()} | {LOSS: Role.LOSS, UPDATE_APPLIED: Role.STATUS}
    roles |= {n: Role.OUTPUT for n in captured.output_names}
    if schedule.driven_by_metric:
        roles[METRIC] = Role.INPUT
    return roles


def _meta(captured: Captured, new_state: dict[str, StateTensor]) -> dict[str, dict]:
    meta = {n: {TRAINABLE_KEY: True} for n in captured.trainable}
    meta |= {n: {TRAINABLE_KEY: False} for n in captured.frozen}
    return meta | {n: t.meta for n, t in new_state.items()}
