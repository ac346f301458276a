"""GraphBuilder: readable unique names, constants, inputs and outputs, casts, result dtypes, and float64 cos."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from optgraph.graph.builder import BOOL, DOUBLE, FLOAT, INT64, GraphBuilder, ir_dtype


def new_graph(*values: ir.Value, nodes=()) -> ir.Graph:
    return ir.Graph(list(values), [], nodes=list(nodes), opset_imports={"": 18}, name="g")


def session(graph: ir.Graph) -> ort.InferenceSession:
    model = ir.Model(graph, ir_version=8)
    onnx.shape_inference.infer_shapes(ir.to_proto(model), check_type=True, strict_mode=True)
    return ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])


# -- names ---------------------------------------------------------------------------------------


def test_names_are_readable_and_scoped():
    b = GraphBuilder(new_graph())
    x = b.add_input("x", FLOAT, [3])
    first = b.op("Add", x, x)
    with b.scope("optim"):
        with b.scope("fc1.weight"):
            inner = b.op("Mul", first, x)
        middle = b.op("Neg", inner)
    last = b.op("Abs", middle)
    assert [first.name, inner.name, middle.name, last.name] == [
        "Add_1",
        "optim/fc1.weight/Mul_2",
        "optim/Neg_3",
        "Abs_4",
    ]
    for value in (first, inner, middle, last):
        assert value.producer().name == value.name, "a node is named like its output"


def test_scope_is_left_on_error():
    b = GraphBuilder(new_graph())
    x = b.add_input("x", FLOAT, [3])
    with pytest.raises(RuntimeError), b.scope("broken"):
        raise RuntimeError
    assert b.op("Neg", x).name == "Neg_1"


def test_names_skip_those_the_graph_already_has():
    x = ir.Value(name="x", type=ir.TensorType(FLOAT), shape=ir.Shape([3]))
    existing = ir.node("Neg", [x])
    existing.outputs[0].name = "Add_1"  # a name the builder's counter would produce first
    graph = new_graph(x, nodes=[existing])
    graph.outputs.append(existing.outputs[0])
    b = GraphBuilder(graph)
    assert b.op("Add", x, x).name == "Add_2"
    assert b.fresh_name("x") == "x_3"


def test_a_second_builder_on_the_same_graph_makes_new_names():
    """Each pass makes its own builder: names stay unique across passes."""
    graph = new_graph()
    first = GraphBuilder(graph)
    x = first.add_input("x", FLOAT, [3])
    names = [first.op("Neg", x).name for _ in range(3)] + [first.const(1.0).name]
    second = GraphBuilder(graph)
    names += [second.op("Neg", x).name for _ in range(3)] + [second.const(1.0).name]
    assert len(set(names)) == len(names)
    all_names = [v.name for node in graph for v in node.outputs]
    assert len(set(all_names)) == len(all_names)


def test_multiple_outputs():
    b = GraphBuilder(new_graph())
    x = b.add_input("x", FLOAT, [4])
    with b.scope("s"):
        low, high = b.op("Split", x, num_outputs=2, axis=0)
    assert (low.name, high.name) == ("s/Split_1:0", "s/Split_1:1")
    assert low.producer() is high.producer() and low.producer().name == "s/Split_1"


# -- constants -----------------------------------------------------------------------------------


def test_constants_are_emitted_once_per_value_and_dtype():
    graph = new_graph()
    b = GraphBuilder(graph)
    one = b.const(1.0)
    assert b.const(1.0) is one and b.const(np.float32(1.0)) is one and b.const([1.0][0]) is one
    assert b.double(1.0) is b.const(1.0, DOUBLE) and b.double(1.0) is not one
    assert b.const(1, INT64) is not one and b.const([1.0]) is not one, "dtype and shape tell constants apart"
    assert b.const(-0.0) is not b.const(0.0), "negative zero is its own constant"
    assert b.const(float("nan")) is b.const(float("nan"))
    constants = [node for node in graph if node.op_type == "Constant"]
    assert len(constants) == 7
    assert b.const([1.0]).dtype == FLOAT and list(b.const([1.0]).shape) == [1]
    assert b.const(1, INT64).dtype == INT64 and list(b.const(1, INT64).shape) == []
    with b.scope("clip"):
        assert b.const(2.5).name.startswith("clip/const_")
        assert b.const(1.0) is one, "constants are shared across scopes"


def test_constant_values_run():
    graph = new_graph()
    b = GraphBuilder(graph)
    b.add_output(b.op("Add", b.const([1.5, -2.0]), b.const(0.25)), "f")
    b.add_output(b.const([3, 4], INT64), "i")
    b.add_output(b.double(0.1), "d")
    f, i, d = session(graph).run(None, {})
    assert f.tolist() == [1.75, -1.75] and i.tolist() == [3, 4] and d.dtype == np.float64 and d == 0.1


# -- inputs, outputs, casts ----------------------------------------------------------------------


def test_add_input_refuses_a_name_in_use():
    b = GraphBuilder(new_graph())
    x = b.add_input("x", FLOAT, [3])
    assert x.is_graph_input() and x.dtype == FLOAT and list(x.shape) == [3]
    assert b.add_input("n", INT64, ["batch"]).shape[0].value == "batch"
    y = b.op("Neg", x)
    b.add_output(y, "y")
    for name in ["x", y.name, b.op("Abs", x).name]:
        with pytest.raises(ValueError, match=f"already has a value named '{name}'"):
            b.add_input(name, FLOAT, [3])


def test_add_output_renames_a_fresh_value():
    graph = new_graph()
    b = GraphBuilder(graph)
    x = b.add_input("x", FLOAT, [3])
    y = b.op("Neg", x)
    old = y.name
    assert b.add_output(y, "y") is y and y.name == "y" and graph.outputs[-1] is y
    b.add_input(old, FLOAT, [1])  # the old name is free again
    z = b.op("Abs", x)
    assert b.add_output(z, z.name) is z, "a value may keep its own name"


@pytest.mark.parametrize("kind", ["input", "output", "initializer"])
def test_add_output_routes_inputs_outputs_and_initializers_through_identity(kind):
    graph = new_graph()
    b = GraphBuilder(graph)
    x = b.add_input("x", FLOAT, [3])
    if kind == "input":
        value = x
    elif kind == "output":
        value = b.add_output(b.op("Neg", x), "first")
    else:
        weights = ir.tensor(np.array([1.0, 2.0, 3.0], np.float32))
        value = ir.Value(name="w", type=ir.TensorType(FLOAT), shape=ir.Shape([3]), const_value=weights)
        graph.register_initializer(value)
    out = b.add_output(value, "copy")
    assert out is not value and out.name == "copy"
    assert out.producer().op_type == "Identity" and out.producer().inputs[0] is value
    assert value.name in {"x", "first", "w"}, "the routed value keeps its name"
    results = dict(
        zip([o.name for o in graph.outputs], session(graph).run(None, {"x": np.array([1, 2, 3], np.float32)}))
    )
    expected = {"input": [1, 2, 3], "output": [-1, -2, -3], "initializer": [1, 2, 3]}[kind]
    assert results["copy"].tolist() == expected


def test_add_output_refuses_a_name_in_use():
    b = GraphBuilder(new_graph())
    x = b.add_input("x", FLOAT, [3])
    b.add_output(b.op("Neg", x), "y")
    for name in ["x", "y", b.op("Abs", x).name]:
        with pytest.raises(ValueError, match="already has a value named"):
            b.add_output(b.op("Neg", x), name)


def test_cast_is_a_no_op_for_the_same_dtype():
    graph = new_graph()
    b = GraphBuilder(graph)
    x = b.add_input("x", FLOAT, [3])
    count = len(graph)
    assert b.cast(x, FLOAT) is x and len(graph) == count
    d = b.cast(x, DOUBLE)
    assert d.dtype == DOUBLE and d.producer().op_type == "Cast"
    assert d.producer().attributes["to"].value == DOUBLE
    assert b.cast(d, DOUBLE) is d


# -- result dtypes -------------------------------------------------------------------------------


def test_result_dtypes_match_what_onnxruntime_returns():
    graph = new_graph()
    b = GraphBuilder(graph)
    x = b.add_input("x", FLOAT, [3])
    n = b.add_input("n", INT64, [3])
    flag = b.op("Less", x, b.const(0.0))
    results = {
        "Equal": b.op("Equal", n, b.const(1, INT64)),
        "Less": flag,
        "LessOrEqual": b.op("LessOrEqual", x, x),
        "Greater": b.op("Greater", n, n),
        "GreaterOrEqual": b.op("GreaterOrEqual", x, x),
        "Not": b.op("Not", flag),
        "And": b.op("And", flag, flag),
        "Or": b.op("Or", flag, flag),
        "IsNaN": b.op("IsNaN", x),
        "IsInf": b.op("IsInf", x),
        "Cast": b.op("Cast", x, to=INT64),
        "Cast-bool": b.op("Cast", n, to=BOOL),
        "Where": b.op("Where", flag, b.cast(x, DOUBLE), b.double(2.0)),
        "Where-int": b.op("Where", flag, n, n),
        "Add": b.op("Add", x, x),
        "Mul-int": b.op("Mul", n, n),
        "ReduceSum": b.op("ReduceSum", x, keepdims=0),
        "Gather": b.op("Gather", n, b.const(0, INT64), axis=0),
    }
    expected = {"Cast": INT64, "Cast-bool": BOOL, "Where": DOUBLE, "Where-int": INT64, "Add": FLOAT}
    expected |= {"Mul-int": INT64, "ReduceSum": FLOAT, "Gather": INT64}
    for name, value in results.items():
        assert value.dtype == expected.get(name, BOOL), name
        b.add_output(value, name)
    feeds = {"x": np.array([-1.0, 0.0, np.inf], np.float32), "n": np.array([1, 2, 3], np.int64)}
    for output, array in zip(session(graph).get_outputs(), session(graph).run(None, feeds)):
        assert ir_dtype(array.dtype) == results[output.name].dtype, output.name


def test_ir_dtype():
    assert [ir_dtype(t) for t in ("float32", "float64", "int64", "bool")] == [FLOAT, DOUBLE, INT64, BOOL]
    assert ir_dtype(np.dtype(np.float16)) == ir.DataType.FLOAT16 and ir_dtype(np.int32) == ir.DataType.INT32


# -- float64 cos ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cos64():
    graph = new_graph()
    b = GraphBuilder(graph)
    b.add_output(b.cos(b.add_input("x", DOUBLE, ["n"])), "y")
    assert "Cos" not in {node.op_type for node in graph}, "onnxruntime before 1.20 has no float64 Cos"
    run = session(graph)
    return lambda x: run.run(None, {"x": np.asarray(x, np.float64)})[0]


def test_cos_float64_is_exact_on_schedule_angles(cos64):
    """Schedules take cos of angles in [0, pi] (and a little beyond): the result must be float64-exact."""
    x = np.concatenate([np.linspace(-np.pi, np.pi, 100_001), np.pi * np.arange(-8, 9) / 8, [0.0, -0.0]])
    error = np.abs(cos64(x) - np.cos(x))
    assert error.max() <= 4.5e-16, f"cos({x[error.argmax()]!r}) is off by {error.max():.1e}"
    x = np.linspace(-4 * np.pi, 4 * np.pi, 100_001)
    error = np.abs(cos64(x) - np.cos(x))
    assert error.max() <= 1e-15, f"cos({x[error.argmax()]!r}) is off by {error.max():.1e}"
    assert cos64([0.0]).tolist() == [1.0] and cos64([np.pi]).tolist() == [-1.0]


def test_cos_float64_is_backward_stable_over_a_wide_range(cos64):
    """Up to 1e9 the error stays within the argument's own rounding (|x| ulps)."""
    x = np.concatenate([np.linspace(-1e4, 1e4, 200_001), np.geomspace(1e4, 1e9, 10_001), [1e4 + 0.25, -3e3]])
    error = np.abs(cos64(x) - np.cos(x)) / np.maximum(1.0, np.abs(x))
    assert error.max() < 4e-16, f"cos({x[error.argmax()]!r}) is off by {error.max():.1e} * |x|"


def test_cos_float64_is_exact_for_large_arguments(cos64):
    """cos(pi * epoch / T_max) keeps growing after T_max in CosineAnnealingLR; torch's math.cos stays exact.

    The range reduction ``x - floor(x / 2pi + 1/2) * 2pi`` rounds ``turns * 2pi`` and uses a
    rounded 2pi, which costs about ``|x| * 1.5e-16`` of absolute error: 1e-12 at x = 1e4.
    A Cody-Waite reduction (2pi split into three constants whose first two products with
    ``turns`` are exact) keeps the error below 1e-15 far beyond these arguments.
    """
    epochs = np.arange(0, 20_001)
    x = np.concatenate([np.pi * epochs / 3, np.pi * epochs / 7, np.linspace(-1e5, 1e5, 200_001)])
    error = np.abs(cos64(x) - np.cos(x))
    assert error.max() <= 1e-15, f"cos({x[error.argmax()]!r}) is off by {error.max():.1e}"


def test_cos_float32_uses_the_cos_kernel():
    graph = new_graph()
    b = GraphBuilder(graph)
    y = b.cos(b.add_input("x", FLOAT, [5]))
    assert y.producer().op_type == "Cos" and y.dtype == FLOAT
    b.add_output(y, "y")
    x = np.linspace(-3, 3, 5).astype(np.float32)
    np.testing.assert_allclose(session(graph).run(None, {"x": x})[0], np.cos(x), rtol=1e-6, atol=1e-7)
    assert math.isclose(float(np.cos(np.float32(0))), 1.0)
