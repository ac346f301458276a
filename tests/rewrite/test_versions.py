"""declare_lowest_versions / lowest_opset / lowest_ir_version on graphs whose nodes have known since_versions."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from optgraph.graph.builder import BOOL, FLOAT, GraphBuilder
from optgraph.rewrite.versions import declare_lowest_versions, lowest_ir_version, lowest_opset

from .toy_capture import Runner, check_types, train_model


def chain(ops: list[str], opset: int, dtype=FLOAT, extra_imports=None) -> ir.Model:
    """``y = op_n(...op_1(x))`` for unary ops, ``op(v, v)`` for binary ones, declared at ``opset``."""
    graph = ir.Graph([], [], nodes=[], opset_imports={"": opset, **(extra_imports or {})}, name="chain")
    b = GraphBuilder(graph)
    v = b.add_input("x", dtype, [3])
    for op in ops:
        unary = onnx.defs.get_schema(op, opset, "").min_input == 1
        v = b.op(op, v) if unary else b.op(op, v, v)
    reduced = any(op.startswith("Reduce") for op in ops)  # keepdims: one element left
    b.add_output(v, "y").shape = ir.Shape([1] if reduced else [3])
    return ir.Model(graph, ir_version=10)


# since_version of each op's newest schema at the declared opset (onnx/defs, Operators.md):
# Add 14, Identity 16 (21 from opset 21), ReduceSum 13, Neg 13, ReduceMean 18, Equal 13 (19 from opset 19)
@pytest.mark.parametrize(
    "ops, declared, opset, ir_version",
    [
        (["Add"], 18, 14, 7),
        (["Add", "Identity"], 18, 16, 8),
        (["Add", "Identity"], 21, 21, 10),
        (["Neg", "ReduceSum"], 18, 13, 7),
        (["Neg", "ReduceMean", "Add"], 18, 18, 8),
        (["Equal"], 18, 13, 7),
        (["Equal"], 19, 19, 9),
    ],
)
def test_lowest_versions_of_known_ops(ops, declared, opset, ir_version):
    model = chain(ops, declared)
    assert lowest_opset(model) == opset
    assert lowest_ir_version(model, opset) == ir_version
    assert declare_lowest_versions(model) is model
    assert model.opset_imports[""] == opset and model.graph.opset_imports[""] == opset
    assert model.ir_version == ir_version
    onnx.checker.check_model(ir.to_proto(model), full_check=True)


def test_restamped_graph_runs_and_computes_the_same():
    x = np.array([1.0, -2.0, 3.5], np.float32)
    model = chain(["Neg", "Identity", "Add"], 18)
    before = Runner(model)({"x": x})
    declare_lowest_versions(model)
    assert (model.opset_imports[""], model.ir_version) == (16, 8)
    np.testing.assert_array_equal(Runner(model)({"x": x})["y"], before["y"])


def if_model(then_op: str, declared: int = 18) -> ir.Model:
    """``If(cond)`` whose then branch uses ``then_op``: subgraph nodes count like any other."""
    graph = ir.Graph([], [], nodes=[], opset_imports={"": declared})
    b = GraphBuilder(graph)
    cond = b.add_input("cond", BOOL, [])
    x = b.add_input("x", FLOAT, [3])
    then_node = ir.node(then_op, [x])
    then_node.outputs[0].name = "then_y"
    else_node = ir.node("Neg", [x])
    else_node.outputs[0].name = "else_y"
    branches = {
        "then_branch": ir.Graph([], then_node.outputs, nodes=[then_node], name="then"),
        "else_branch": ir.Graph([], else_node.outputs, nodes=[else_node], name="else"),
    }
    node = ir.node("If", [cond], branches, name="if")
    node.outputs[0].name, node.outputs[0].dtype = "y", FLOAT
    graph.append(node)
    graph.outputs.append(node.outputs[0])
    return ir.Model(graph, ir_version=10)


def test_nodes_inside_subgraphs_count():
    assert lowest_opset(if_model("Abs")) == 16  # If 16, Abs 13, Neg 13
    assert lowest_opset(if_model("ReduceMean")) == 18  # ReduceMean 18, only in the branch


def test_nodes_of_other_domains_do_not_raise_the_default_opset():
    model = chain(["Neg"], 18, extra_imports={"com.example": 1})
    node = ir.node("Custom", [model.graph.outputs[0]], domain="com.example")
    model.graph.append(node)
    assert lowest_opset(model) == 13
    declare_lowest_versions(model)
    assert model.opset_imports["com.example"] == 1, "other domains keep their declared version"


@pytest.mark.parametrize("dtype, ir_version", [(ir.DataType.FLOAT8E4M3FN, 9), (ir.DataType.INT4, 10)])
def test_element_types_newer_than_the_opset_raise_the_ir_version(dtype, ir_version):
    model = chain(["Identity"], 18, dtype=dtype)
    assert lowest_opset(model) == 16
    assert lowest_ir_version(model, 16) == ir_version
    assert lowest_ir_version(chain(["Identity"], 18), 16) == 8


def test_local_functions_are_rejected():
    model = chain(["Neg"], 18)
    body = chain(["Abs"], 18).graph
    function = ir.Function("com.example", "MyAbs", graph=body, attributes=[])
    model.functions[function.identifier()] = function
    with pytest.raises(ValueError, match="local functions"):
        declare_lowest_versions(model)
    assert model.opset_imports[""] == 18 and model.ir_version == 10, "a rejected model is not re-stamped"


def test_captured_graph():
    model = train_model()
    declare_lowest_versions(model)
    assert model.opset_imports[""] == 18  # ReduceMean with its axes as an input
    assert model.ir_version == 8
    check_types(model)
