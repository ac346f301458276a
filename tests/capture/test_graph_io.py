"""The capture's graph passes on hand-built onnx-ir graphs: public names, and buffers that do not change."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

from optgraph.artifact.names import LOSS, grad_name, next_name
from optgraph.capture.graph_io import drop_unchanged_buffers, name_io, set_shapes
from optgraph.errors import CaptureError

FLOAT = ir.DataType.FLOAT


def _value(name: str, shape=(2,)) -> ir.Value:
    return ir.Value(name=name, type=ir.TensorType(FLOAT), shape=ir.Shape(list(shape)))


def _exported() -> tuple[ir.Model, dict[str, ir.Value]]:
    """What an exporter hands over: arbitrary names, an output that is an input, one value output twice,
    and an internal value that happens to carry a public name."""
    x, w, running = _value("arg0"), _value("arg1"), _value("arg2")
    mul = ir.node("Mul", [x, w], name="mul")
    mul.outputs[0].name = "loss"  # an internal value named like a public output
    total = ir.node("ReduceSum", [mul.outputs[0]], {"keepdims": 0}, name="sum")
    total.outputs[0].name = "sum_out"
    grad = ir.node("Identity", [x], name="grad")
    grad.outputs[0].name = "grad_out"
    keep = ir.node("Identity", [running], name="keep")
    keep.outputs[0].name = "keep_out"
    for node in (mul, total, grad, keep):
        node.outputs[0].dtype = FLOAT
    graph = ir.Graph(
        [x, w, running],
        # loss, grad of w, next of the buffer (passed through), grad twice (two params with one gradient),
        # and the input x as an output
        [total.outputs[0], grad.outputs[0], keep.outputs[0], grad.outputs[0], x],
        nodes=[mul, total, grad, keep],
        opset_imports={"": 18},
    )
    return ir.Model(graph, ir_version=8), {"x": x}


def _run(model: ir.Model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))


def test_name_io_gives_every_input_and_output_its_public_name():
    model, _ = _exported()
    outputs = [LOSS, grad_name("w"), next_name("running"), grad_name("v"), "echo"]
    name_io(model, ["x", "w", "running"], outputs, "train step")
    graph = model.graph
    assert [v.name for v in graph.inputs] == ["x", "w", "running"]
    assert [v.name for v in graph.outputs] == outputs
    # each output owns its value (ONNX needs distinct output names): the repeated one and the input got an Identity
    assert len({id(v) for v in graph.outputs}) == len(outputs)
    assert graph.outputs[4].producer().op_type == "Identity"
    # the internal value that was called "loss" was renamed, not the output
    assert sum(1 for node in graph for v in node.outputs if v.name == LOSS) == 1
    x, w, running = (np.array(a, np.float32) for a in ([1.0, 2.0], [3.0, 4.0], [5.0, 6.0]))
    got = _run(model, {"x": x, "w": w, "running": running})
    assert got[LOSS] == pytest.approx(11.0)
    np.testing.assert_array_equal(got[grad_name("w")], x)
    np.testing.assert_array_equal(got[grad_name("v")], x)
    np.testing.assert_array_equal(got["echo"], x)
    np.testing.assert_array_equal(got[next_name("running")], running)


def test_name_io_refuses_a_count_mismatch_naming_the_graph():
    model, _ = _exported()
    with pytest.raises(CaptureError, match="eval forward has 3 inputs and 5 outputs, expected 2 and 5"):
        name_io(model, ["x", "w"], ["a", "b", "c", "d", "e"], "eval forward")


def test_drop_unchanged_buffers_keeps_only_real_updates():
    model, _ = _exported()
    name_io(model, ["x", "w", "running"], [LOSS, grad_name("w"), next_name("running"), grad_name("v"), "echo"], "t")
    # a second buffer whose next value is computed, through a chain of Identity nodes it is not
    graph = model.graph
    counter = _value("counter")
    graph.inputs.append(counter)
    bump = ir.node("Add", [counter, counter], name="bump")
    bump.outputs[0].dtype = FLOAT
    bump.outputs[0].name = next_name("counter")
    graph.append(bump)
    graph.outputs.append(bump.outputs[0])
    updated = drop_unchanged_buffers(model, ["running", "counter"])
    assert updated == ["counter"]
    names = [v.name for v in graph.outputs]
    assert next_name("running") not in names and next_name("counter") in names


def test_set_shapes_writes_symbols_and_leaves_none_alone():
    values = [_value("a", (2, 3)), _value("b", (4,))]
    set_shapes(values, [["batch", 3], None])
    assert [str(d) if not isinstance(d, int) else d for d in values[0].shape] == ["batch", 3]
    assert list(values[1].shape) == [4]
