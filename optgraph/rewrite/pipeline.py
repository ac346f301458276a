"""The train step's pipeline: every pass in its order, from a capture to the artifact's graphs.

Order matters: accumulation turns gradients into running sums before
clipping sees them (torch clips the accumulated ``.grad``); the optimizer
consumes the (clipped) gradients; gating keeps the update for every k-th
call; the non-finite guard comes last, so that it wraps every state update,
the gated ones included.

The same passes also build the train step split at the gradients, for
data-parallel training (``optgraph.distributed``): ``grad_step`` is the
first half (forward, backward, accumulation) with the gradients as outputs
and a ``finite`` report instead of the guard, since whether a step applies is
for every rank to agree on; ``update_step`` is the second half (clipping, the
optimizer, the guard) with the gradients as inputs. It has no gating: with
accumulation, a runtime runs it only on every k-th call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import onnx_ir as ir
import onnx_ir.passes.common

from optgraph.artifact.names import (
    FINITE,
    LOSS,
    METRIC,
    PARAM_KEY,
    TRAINABLE_KEY,
    UPDATE_APPLIED,
    GraphName,
    Role,
    grad_name,
    param_of_grad,
    state_of_next,
)
from optgraph.graph.builder import GraphBuilder
from optgraph.lr_scheduler import LRScheduler
from optgraph.optim.optimizers import Optimizer, ParamGroup
from optgraph.rewrite.accumulate import Accumulation, accumulate_gradients, gate_on_update
from optgraph.rewrite.attach_optimizer import AttachedOptimizer, attach_optimizer
from optgraph.rewrite.clip import clip_gradients
from optgraph.rewrite.in_place import in_place_outputs
from optgraph.rewrite.proximal import add_proximal_term
from optgraph.rewrite.scheduler_graph import build_scheduler_step
from optgraph.rewrite.skip_non_finite import report_finite, skip_non_finite
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
        graphs: the models by graph name (the fused train step, the scheduler step, eval, and the
            train step split at the gradients), each stamped with its lowest opset and IR version.
        new_state: the state tensors the rewrite added (optimizer slots, counters, schedule state,
            accumulators), by name, with their initial values.
        roles: the role of every input and output name of the graphs.
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
    proximal_mu: float | None = None,
) -> TrainingGraphs:
    """Append the optimizer, schedule, clipping, accumulation and non-finite guard to a capture.

    With ``proximal_mu``, FedProx's proximal term is added to the loss first (``rewrite/proximal.py``).
    The capture is left unchanged: the passes work on copies of its train graph.
    """
    groups = optimizer.resolve(captured.trainable)
    train, proximal = _forward(captured, proximal_mu)
    accumulation = _backward(train, grad_accumulation_steps)
    attached = _update(train, optimizer, schedule, groups, clip_grad_norm, accumulation, captured.trainable)
    skip_non_finite(train, attached.gradients.values(), captured.updated_buffers)
    scheduler = build_scheduler_step(schedule, groups, train.opset_imports[""], train.ir_version)
    _COMMON_SUBEXPRESSIONS(scheduler.model)
    grad_step = _grad_step(captured, grad_accumulation_steps, proximal_mu)
    update_step = _update_step(captured, optimizer, schedule, groups, clip_grad_norm)

    added = (
        proximal
        + attached.new_state
        + scheduler.new_state
        + (accumulation.new_state if accumulation is not None else [])
    )
    new_state = {t.name: t for t in added}
    graphs = {
        GraphName.TRAIN_STEP: train,
        GraphName.SCHEDULER_STEP: scheduler.model,
        GraphName.EVAL: _copy(captured.eval),
        GraphName.GRAD_STEP: grad_step,
        GraphName.UPDATE_STEP: update_step,
    }
    for model in graphs.values():
        _type_state_outputs(model)
        declare_lowest_versions(model)
    in_place = {name: frozenset(in_place_outputs(model)) for name, model in graphs.items()}
    # grad_step's next state (buffers, accumulators) is kept only once every rank agrees the step applies
    in_place[GraphName.GRAD_STEP] = frozenset()
    roles, meta = _roles(captured, schedule, new_state), _meta(captured, new_state)
    return TrainingGraphs(graphs, new_state, roles, meta, groups, in_place)


def _copy(model: ir.Model) -> ir.Model:
    return ir.from_proto(ir.to_proto(model))


def _forward(captured: Captured, proximal_mu: float | None) -> tuple[ir.Model, list[StateTensor]]:
    """A copy of the captured train graph, with the proximal term when ``proximal_mu`` is given."""
    model = _copy(captured.train)
    if proximal_mu is None:
        return model, []
    return model, add_proximal_term(model, float(proximal_mu), captured.trainable, captured.state)


def _backward(model: ir.Model, steps: int) -> Accumulation | None:
    """The passes on the forward and backward: with ``steps > 1``, the gradients become running sums."""
    return accumulate_gradients(model, steps) if steps > 1 else None


def _update(
    model: ir.Model,
    optimizer: Optimizer,
    schedule: LRScheduler,
    groups: Sequence[ParamGroup],
    clip_grad_norm: float | None,
    accumulation: Accumulation | None,
    trainable: Sequence[str],
) -> AttachedOptimizer:
    """The passes from the gradient outputs of ``model`` to the update: clipping, the optimizer, gating."""
    if clip_grad_norm is not None:
        clip_gradients(model, float(clip_grad_norm))
    attached = attach_optimizer(model, optimizer, schedule, groups)
    if accumulation is not None:
        gated = set(trainable) | {t.name for t in attached.new_state if t.role in _GATED_ROLES}
        gate_on_update(model, accumulation.is_update, gated)
    # Each parameter's chain repeats the group's scalar arithmetic (bias corrections, step sizes, the lr):
    # computed once, before the guard moves the update into its branch (the pass does not enter subgraphs).
    _COMMON_SUBEXPRESSIONS(model)
    return attached


def _grad_step(captured: Captured, steps: int, proximal_mu: float | None) -> ir.Model:
    """Forward and backward (and accumulation) with each gradient an output, and the ``FINITE`` report."""
    model, _ = _forward(captured, proximal_mu)
    model.graph.name = GraphName.GRAD_STEP.value
    _backward(model, steps)
    _COMMON_SUBEXPRESSIONS(model)
    inputs = {v.name: v for v in model.graph.inputs}
    gradients = [v for v in model.graph.outputs if param_of_grad(v.name) is not None]
    for value in gradients:  # ONNX wants a type on every graph output (an accumulated sum has none yet)
        param = inputs[param_of_grad(value.name)]
        value.dtype, value.shape = param.dtype, ir.Shape(list(param.shape))
    report_finite(model, gradients, captured.updated_buffers)
    return model


def _update_step(
    captured: Captured,
    optimizer: Optimizer,
    schedule: LRScheduler,
    groups: Sequence[ParamGroup],
    clip_grad_norm: float | None,
) -> ir.Model:
    """The update with each gradient an input: clipping, the optimizer and the guard, as in the train step."""
    source = {v.name: v for v in captured.train.graph.inputs}
    train = captured.train
    graph = ir.Graph([], [], nodes=[], opset_imports=dict(train.opset_imports), name=GraphName.UPDATE_STEP.value)
    model = ir.Model(graph, ir_version=train.ir_version, producer_name=train.producer_name)
    b = GraphBuilder(graph)
    gradients = {p: b.add_input(grad_name(p), source[p].dtype, list(source[p].shape)) for p in captured.trainable}
    for param in captured.trainable:
        b.add_input(param, source[param].dtype, list(source[param].shape))
    # The passes take the gradients from the outputs named grad_name(param): each input is one such
    # output too until the optimizer consumes it (clipping may rename it and give its name to the product).
    graph.outputs.extend(gradients.values())
    attached = _update(model, optimizer, schedule, groups, clip_grad_norm, None, captured.trainable)
    skip_non_finite(model, attached.gradients.values())
    b = GraphBuilder(graph)  # knows every name the passes added
    for param, value in gradients.items():
        for node in graph.all_nodes():
            for out in node.outputs:
                if out.name == grad_name(param):
                    out.name = b.fresh_name(out.name)
        value.name = grad_name(param)
    return model


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
    roles |= {grad_name(n): Role.GRAD for n in captured.trainable} | {FINITE: Role.STATUS}
    if schedule.driven_by_metric:
        roles[METRIC] = Role.INPUT
    return roles


def _meta(captured: Captured, new_state: dict[str, StateTensor]) -> dict[str, dict]:
    meta = {n: {TRAINABLE_KEY: True} for n in captured.trainable}
    meta |= {n: {TRAINABLE_KEY: False} for n in captured.frozen}
    meta |= {grad_name(n): {PARAM_KEY: n} for n in captured.trainable}
    return meta | {n: t.meta for n, t in new_state.items()}
