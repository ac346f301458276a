"""in_place_outputs: which state outputs may overwrite their input, proved from the graph's data dependencies."""

from __future__ import annotations

import onnx_ir as ir
import pytest

from optgraph.artifact.names import next_name
from optgraph.graph.builder import BOOL, FLOAT, INT64, GraphBuilder
from optgraph.rewrite.in_place import in_place_outputs


def _graph(shape=(4,)):
    graph = ir.Graph([], [], nodes=[], opset_imports={"": 18})
    b = GraphBuilder(graph)
    return graph, b, b.add_input("s", FLOAT, list(shape)), b.add_input("x", FLOAT, list(shape))


def _safe(graph) -> set[str]:
    return in_place_outputs(ir.Model(graph, ir_version=8))


def test_an_element_wise_writer_reading_the_state_may_overwrite_it():
    graph, b, s, x = _graph()
    b.add_output(b.op("Add", s, x), next_name("s"))
    assert _safe(graph) == {next_name("s")}


def test_readers_that_the_writer_depends_on_run_first():
    graph, b, s, x = _graph()
    total = b.op("ReduceSum", b.op("Reshape", s, b.const([2, 2], INT64)), keepdims=0)  # a view, then a reduction
    b.add_output(b.op("Add", b.op("Mul", s, total), x), next_name("s"))
    assert _safe(graph) == {next_name("s")}


def test_a_reader_the_writer_does_not_wait_for_keeps_a_second_buffer():
    graph, b, s, x = _graph()
    b.add_output(b.op("Mul", s, b.const(2.0)), "doubled")  # may run after the write
    b.add_output(b.op("Add", x, b.const(1.0)), next_name("s"))
    assert _safe(graph) == set()


def test_a_late_reader_of_a_view_keeps_a_second_buffer():
    graph, b, s, x = _graph()
    view = b.op("Reshape", s, b.const([2, 2], INT64))
    b.add_output(b.op("Add", view, b.const(1.0)), "through_view")
    b.add_output(b.op("Add", s, x), next_name("s"))
    assert _safe(graph) == set()


@pytest.mark.parametrize("op", ["MatMul", "Transpose"])
def test_a_writer_that_reads_other_positions_keeps_a_second_buffer(op):
    graph, b, s, x = _graph((2, 2))
    out = b.op("MatMul", s, x) if op == "MatMul" else b.op("Transpose", s, perm=[1, 0])
    b.add_output(out, next_name("s"))
    assert _safe(graph) == set()


def test_a_writer_reading_a_view_keeps_a_second_buffer():
    graph, b, s, x = _graph((2, 2))
    b.add_output(b.op("Add", b.op("Reshape", s, b.const([2, 2], INT64)), x), next_name("s"))
    assert _safe(graph) == set()


def test_a_state_that_also_leaves_under_another_name_keeps_a_second_buffer():
    graph, b, s, x = _graph()
    b.add_output(s, "copy")  # an Identity of s: it may alias s's buffer
    b.add_output(b.op("Add", s, x), next_name("s"))
    assert _safe(graph) == set()


def test_a_non_state_output_is_never_in_place():
    graph, b, s, x = _graph()
    b.add_output(b.op("Add", s, x), "result")
    assert _safe(graph) == set()


def _guarded(then_body):
    """``s.next = If(flag, then_body(...), s)``, the shape the non-finite guard gives every state update."""
    graph, b, s, x = _graph()
    flag = b.add_input("flag", BOOL, [])
    then_graph = ir.Graph([], [], nodes=[], name="then")
    then_outputs = then_body(GraphBuilder(then_graph), s, x)
    then_graph.outputs.extend(then_outputs)
    keep = ir.node("Identity", [s])
    extra = [ir.node("Identity", [x]) for _ in then_outputs[1:]]
    else_graph = ir.Graph([], [n.outputs[0] for n in [keep, *extra]], nodes=[keep, *extra], name="else")
    node = ir.node("If", [flag], {"then_branch": then_graph, "else_branch": else_graph}, num_outputs=len(then_outputs))
    graph.append(node)
    node.outputs[0].name = next_name("s")
    graph.outputs.append(node.outputs[0])
    for i, out in enumerate(node.outputs[1:]):
        out.name = f"other_{i}"
        graph.outputs.append(out)
    return graph


def test_an_if_whose_branches_write_safely_may_overwrite():
    graph = _guarded(lambda b, s, x: [b.op("Add", s, x)])
    assert _safe(graph) == {next_name("s")}


def test_an_if_whose_branch_reads_the_state_after_the_write_keeps_a_second_buffer():
    graph = _guarded(lambda b, s, x: [b.op("Add", x, b.const(1.0)), b.op("Mul", s, b.const(3.0))])
    assert _safe(graph) == set()


def test_readers_outside_the_if_must_run_before_it():
    graph = _guarded(lambda b, s, x: [b.op("Add", s, x)])
    b = GraphBuilder(graph)
    b.add_output(b.op("Neg", graph.inputs[0]), "late")  # nothing orders it before the If
    assert _safe(graph) == set()


def _packed(late_reader: bool = False):
    """Two states packed as ``attach_optimizer`` packs small parameters: flattened, concatenated, updated, split back."""
    graph = ir.Graph([], [], nodes=[], opset_imports={"": 18})
    b = GraphBuilder(graph)
    matrix, vector = b.add_input("m", FLOAT, [2, 3]), b.add_input("v", FLOAT, [4])
    grad = b.add_input("g", FLOAT, [10])
    flat = b.op("Concat", b.op("Reshape", matrix, b.const([-1], INT64)), vector, axis=0)
    parts = b.op("Split", b.op("Add", flat, grad), b.const([6, 4], INT64), axis=0, num_outputs=2)
    b.add_output(b.op("Reshape", parts[0], b.const([2, 3], INT64)), next_name("m"))
    b.add_output(parts[1], next_name("v"))
    if late_reader:
        b.add_output(b.op("Neg", b.op("Reshape", matrix, b.const([6], INT64))), "late")
    return graph


def test_split_outputs_may_overwrite_the_states_their_concat_read():
    assert _safe(_packed()) == {next_name("m"), next_name("v")}


def test_a_packed_state_read_again_after_the_split_keeps_a_second_buffer():
    assert _safe(_packed(late_reader=True)) == {next_name("v")}
