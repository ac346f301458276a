"""Pass: apply a step only when the loss, every gradient and every new buffer value are finite.

The nodes that compute the next state and nothing else (the optimizer
update, running statistics, counters) move into the ``then`` branch of an
``If(finite)``; the ``else`` branch passes the current state through. So a
NaN or infinite batch leaves parameters, buffers, optimizer state and
counters bit-identical, the bool output ``UPDATE_APPLIED`` says which
happened, and a finite step pays nothing for the guard (a ``Where`` per
state tensor cost a fifth of an MLP step). torch would apply the NaN update;
this is optgraph's one deliberate difference. New buffer values are watched
too: a BatchNorm that sees one value per channel (batch 1 of a ``(N, C)``
input) would write NaN into ``running_var`` with a finite loss, where torch
raises.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx_ir as ir

from optgraph.artifact.names import FINITE, LOSS, UPDATE_APPLIED, state_of_next
from optgraph.graph.builder import BOOL, FLOAT, GraphBuilder


def skip_non_finite(model: ir.Model, gradients: Iterable[ir.Value], buffers: Iterable[str] = ()) -> None:
    """Guard every state update of a train-step graph by the finiteness of the loss, gradients and new buffers.

    Args:
        model: the train step (or the update step, which has no loss), changed in place; it gains the
            bool output ``UPDATE_APPLIED``.
        gradients: the gradient values.
        buffers: names of the buffers the forward updates; their next values are checked too.
    """
    graph = model.graph
    b = GraphBuilder(graph)
    inputs = {v.name: v for v in graph.inputs}
    with b.scope("skip_non_finite"):
        finite = _all_finite(b, graph, gradients, buffers)
        _branch_on(graph, b, finite, inputs)
    applied = b.add_output(finite, UPDATE_APPLIED)
    applied.dtype, applied.shape = BOOL, ir.Shape([])


def report_finite(model: ir.Model, gradients: Iterable[ir.Value], buffers: Iterable[str] = ()) -> ir.Value:
    """Add the bool output ``FINITE``: whether the loss, the gradients and the new buffer values are all finite.

    For the gradient step of data-parallel training, which cannot skip on its own: whether a step
    applies is decided by every rank together, so the graph reports and the runtime decides.
    """
    graph = model.graph
    b = GraphBuilder(graph)
    with b.scope("check_finite"):
        finite = _all_finite(b, graph, gradients, buffers)
    reported = b.add_output(finite, FINITE)
    reported.dtype, reported.shape = BOOL, ir.Shape([])
    return reported


def _all_finite(b: GraphBuilder, graph: ir.Graph, gradients: Iterable[ir.Value], buffers: Iterable[str]) -> ir.Value:
    """A bool that is true when the loss output (if any), ``gradients`` and the new values of ``buffers`` are finite.

    One pass over each watched tensor: its sum is NaN or infinite when one of its values is, and also when
    the sum of finite values overflows. Only then (a bad step, or huge values) does an ``If`` check exactly,
    with ``x * 0``, NaN exactly where ``x`` is NaN or infinite: a second pass that a finite step never pays.
    """
    loss = next((v for v in graph.outputs if v.name == LOSS), None)
    updated = set(buffers)
    new_buffers = [v for v in graph.outputs if state_of_next(v.name) in updated]
    watched = list(gradients) + [v for v in new_buffers if v.dtype.is_floating_point()]
    dtype = loss.dtype if loss is not None else FLOAT
    zero = b.const(0.0, dtype)
    zeros = {g.dtype: b.const(0.0, g.dtype) for g in watched}  # made here: the exact branch only refers to them

    def none_nan(probes: list[ir.Value]) -> ir.Value:
        total = b.op("Mul", loss, zero) if loss is not None else zero
        for probe in probes:
            total = b.op("Add", total, b.op("Mul", b.cast(probe, dtype), zero))
        return b.op("Not", b.op("IsNaN", total))

    sums_finite = none_nan([b.op("ReduceSum", g, keepdims=0) for g in watched])
    if not watched:
        return sums_finite
    start = len(graph)
    exact = none_nan([b.op("ReduceSum", b.op("Mul", g, zeros[g.dtype]), keepdims=0) for g in watched])
    checks = list(graph)[start:]
    for node in checks:
        graph.remove(node)
    exactly = ir.Graph([], [exact], nodes=checks, name="check_exactly")
    yes = ir.node("Constant", [], {"value": ir.tensor(np.array(True), name=b.fresh_name("finite"))})
    yes.outputs[0].name, yes.outputs[0].dtype, yes.outputs[0].shape = (
        yes.attributes["value"].value.name,
        BOOL,
        ir.Shape([]),
    )
    sums_were_finite = ir.Graph([], [yes.outputs[0]], nodes=[yes], name="sums_were_finite")
    node = ir.node("If", [sums_finite], {"then_branch": sums_were_finite, "else_branch": exactly})
    node.name = b.fresh_name("check_exactly_If")
    node.outputs[0].name, node.outputs[0].dtype, node.outputs[0].shape = node.name, BOOL, ir.Shape([])
    graph.append(node)
    return node.outputs[0]


def _branch_on(graph: ir.Graph, b: GraphBuilder, finite: ir.Value, inputs: dict[str, ir.Value]) -> None:
    """Compute every state output inside ``If(finite)``; the else branch keeps the current state."""
    guarded = [
        (index, value, inputs[state_of_next(value.name)])
        for index, value in enumerate(graph.outputs)
        if state_of_next(value.name) in inputs
    ]
    state_outputs = {id(value) for _, value, _ in guarded}
    # A node moves into the branch when everything it feeds is a state output or a moved node.
    # Walking the (topologically sorted) graph backwards sees every user before its producer.
    update: set[int] = set()
    for node in reversed(list(graph)):
        reads = [(v, user) for v in node.outputs for user, _ in v.uses()]
        outputs = [v for v in node.outputs if v.is_graph_output()]
        if (
            (reads or outputs)
            and all(id(user) in update for _, user in reads)
            and all(id(v) in state_outputs for v in outputs)
        ):
            update.add(id(node))
    moved = [node for node in graph if id(node) in update]
    for node in moved:
        graph.remove(node)
    kept_outputs = list(graph.outputs)
    graph.outputs.clear()  # a value may be the output of one graph only: the branch takes them

    def identity(value: ir.Value, stem: str) -> ir.Node:
        node = ir.node("Identity", [value])
        node.outputs[0].name = b.fresh_name(stem)  # unique across the branches too (ONNX SSA)
        return node

    passed_through = [identity(v, f"apply_update/{c.name}") for _, v, c in guarded if id(v.producer()) not in update]
    kept = [identity(current, f"keep_state/{current.name}") for _, _, current in guarded]
    through = iter(passed_through)
    then_outputs = [v if id(v.producer()) in update else next(through).outputs[0] for _, v, _ in guarded]
    then_branch = ir.Graph([], then_outputs, nodes=moved + passed_through, name="apply_update")
    else_branch = ir.Graph([], [n.outputs[0] for n in kept], nodes=kept, name="keep_state")
    node = ir.node("If", [finite], {"then_branch": then_branch, "else_branch": else_branch}, num_outputs=len(guarded))
    node.name = "skip_non_finite/If"
    graph.append(node)
    for (index, value, _), out in zip(guarded, node.outputs):
        name = value.name
        value.name = f"{name}.unguarded"
        out.name, out.dtype, out.shape = name, value.dtype, value.shape
        kept_outputs[index] = out
    graph.outputs.extend(kept_outputs)
