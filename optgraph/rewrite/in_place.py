"""Which state outputs a runtime may write straight into their state input's buffer.

A train step reads each state tensor ``S`` and outputs ``next_name(S)``. Binding
that output to ``S``'s own buffer saves a second copy of every parameter and
optimizer slot, but it is only correct when nothing reads ``S`` after the write
begins. This module proves that from the graph's data dependencies:

- every node that reads ``S`` (or a value that may share its buffer: onnxruntime
  returns views for Identity, Reshape, Squeeze, Unsqueeze and Flatten) is an
  ancestor of the node that writes the output, so any executor runs it first;
- the writer itself reads ``S`` only element by element at the output's own
  index (an element-wise op whose ``S`` input has the output's shape), or it is
  an ``If`` whose every branch satisfies the same rules inside it (readers
  outside the ``If`` ran before it; the branches exclude each other).

Anything else (a reader that may run after the writer, a broadcasting or
reordering writer, ``S`` also leaving the graph under another name) keeps the
output double-buffered.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx_ir as ir

from optgraph.artifact.names import state_of_next

# ops whose output onnxruntime may place in their input's buffer
_MAY_ALIAS = frozenset({"Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten"})
# ops that read each input element only to compute the output element at the same index (inputs of equal shape)
_ELEMENT_WISE = frozenset(
    {
        "Abs", "Add", "And", "Cast", "Ceil", "Div", "Equal", "Exp", "Floor", "Greater", "GreaterOrEqual",
        "Identity", "IsInf", "IsNaN", "Less", "LessOrEqual", "Log", "Max", "Min", "Mod", "Mul", "Neg", "Not",
        "Or", "Pow", "Reciprocal", "Relu", "Sigmoid", "Sign", "Sqrt", "Sub", "Tanh", "Where",
    }
)  # fmt: skip


def in_place_outputs(model: ir.Model) -> set[str]:
    """The names of the state outputs of ``model`` that may be written into their state input's buffer."""
    graph = model.graph
    inputs = {v.name: v for v in graph.inputs}
    outputs = set(graph.outputs)
    memo = _Memo()
    safe = set()
    for output in graph.outputs:
        state = inputs.get(state_of_next(output.name))
        if state is None or output.producer() is None:
            continue
        shared = _sharing_buffer(state)
        if shared & outputs:
            continue  # the state also leaves the graph under another name
        if _can_write(graph, state, shared, output, memo):
            safe.add(output.name)
    return safe


def _sharing_buffer(value: ir.Value) -> set[ir.Value]:
    """``value`` and every value that may be a view of it."""
    shared, frontier = {value}, [value]
    while frontier:
        for user, _ in frontier.pop().uses():
            if user.op_type in _MAY_ALIAS:
                for out in user.outputs:
                    if out not in shared:
                        shared.add(out)
                        frontier.append(out)
    return shared


class _Memo:
    """Each graph's node ownership and each writer's ancestors, computed once for all state outputs."""

    def __init__(self) -> None:
        self._owners: dict[int, dict[int, ir.Node]] = {}
        self._ancestors: dict[int, set[int]] = {}

    def owner(self, graph: ir.Graph) -> dict[int, ir.Node]:
        if id(graph) not in self._owners:
            self._owners[id(graph)] = _top_level_nodes(graph)
        return self._owners[id(graph)]

    def ancestors(self, node: ir.Node, graph: ir.Graph) -> set[int]:
        if id(node) not in self._ancestors:
            self._ancestors[id(node)] = _ancestors(node, self.owner(graph))
        return self._ancestors[id(node)]


def _can_write(graph: ir.Graph, state: ir.Value, shared: set[ir.Value], target: ir.Value, memo: _Memo) -> bool:
    """Whether ``target``, an output of ``graph``, may be written into the buffer of ``state``.

    ``shared`` holds ``state`` and its possible views. A state output has its state's shape (the
    manifest checks it), so an element-wise writer reading ``state`` itself reads it index by index;
    a writer reading a view is refused.
    """
    writer = target.producer()
    if writer is None or writer.graph is not graph:
        return False
    owner = memo.owner(graph)
    before = memo.ancestors(writer, graph)
    readers = {owner[id(user)] for value in shared for user, _ in value.uses() if id(user) in owner}
    if any(id(reader) not in before for reader in readers if reader is not writer):
        return False
    if writer not in readers:
        return True
    if writer.op_type == "If":
        index = list(writer.outputs).index(target)
        return all(_can_write(branch, state, shared, branch.outputs[index], memo) for branch in _subgraphs(writer))
    return writer.op_type in _ELEMENT_WISE and all(v is state for v in writer.inputs if v in shared)


def _subgraphs(node: ir.Node) -> Iterable[ir.Graph]:
    for attribute in node.attributes.values():
        if attribute.type == ir.AttributeType.GRAPH:
            yield attribute.value
        elif attribute.type == ir.AttributeType.GRAPHS:
            yield from attribute.value


def _top_level_nodes(graph: ir.Graph) -> dict[int, ir.Node]:
    """id of every node in ``graph`` or nested in it -> the node of ``graph`` that contains it."""
    owner: dict[int, ir.Node] = {}
    for node in graph:
        owner[id(node)] = node
        for sub in _subgraphs(node):
            for inner in ir.traversal.RecursiveGraphIterator(sub):
                owner[id(inner)] = node
    return owner


def _ancestors(node: ir.Node, owner: dict[int, ir.Node]) -> set[int]:
    """ids of the nodes of ``node``'s graph that ``node`` depends on, through its inputs or its subgraphs' reads."""
    seen: set[int] = set()
    frontier = [node]
    while frontier:
        current = frontier.pop()
        for value in _reads(current):
            producer = value.producer()
            top = owner.get(id(producer)) if producer is not None else None
            if top is not None and top is not current and id(top) not in seen:
                seen.add(id(top))
                frontier.append(top)
    return seen


def _reads(node: ir.Node) -> Iterable[ir.Value]:
    """The values ``node`` reads: its inputs and every value its subgraphs take from outside themselves."""
    yield from (v for v in node.inputs if v is not None)
    for sub in _subgraphs(node):
        for inner in ir.traversal.RecursiveGraphIterator(sub):
            yield from (v for v in inner.inputs if v is not None)
