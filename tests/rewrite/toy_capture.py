"""A hand-built stand-in for what the capture gives the rewriter: no torch, a dozen nodes, numbers numpy can check.

The "model": ``h = (x @ w) * scale``, ``prediction = h + b + offset``,
``loss = mean((prediction - target) ** 2)``, with BatchNorm-like running
statistics of ``h`` (``running_var`` is the unbiased variance: a batch of one
row makes it 0 / 0 = NaN with a finite loss, the case that motivates watching
new buffer values). ``w`` and ``b`` are trainable, ``scale`` is frozen,
``offset`` is a buffer the forward does not update and
``bn.num_batches_tracked`` an int64 buffer it does.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from optgraph.artifact.names import LOSS, grad_name, next_name, output_names, state_of_next, target_names
from optgraph.graph.builder import FLOAT, INT64, GraphBuilder

OPSET = 18
IR_VERSION = 10

DATA = ["x"]
TARGETS = target_names(1)
TRAINABLE = ["w", "b"]
FROZEN = ["scale"]
BUFFERS = ["offset", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"]
UPDATED_BUFFERS = ["bn.running_mean", "bn.running_var", "bn.num_batches_tracked"]
OUTPUTS = output_names(1)
MOMENTUM = 0.1  # of the running statistics


def initial_state() -> dict[str, np.ndarray]:
    """The parameters and buffers at the start, by name."""
    return {
        "w": np.array([0.5, -1.0], np.float32),
        "b": np.array([0.1], np.float32),
        "scale": np.array([1.5], np.float32),
        "offset": np.array([0.25], np.float32),
        "bn.running_mean": np.array([0.0], np.float32),
        "bn.running_var": np.array([1.0], np.float32),
        "bn.num_batches_tracked": np.array(0, np.int64),
    }


def batch(seed: int, rows: int = 4) -> dict[str, np.ndarray]:
    """A random batch: ``x`` of shape ``(rows, 2)`` and ``target`` of shape ``(rows,)``."""
    rng = np.random.default_rng(seed)
    return {
        "x": rng.normal(size=(rows, 2)).astype(np.float32),
        "target": rng.normal(size=rows).astype(np.float32),
    }


def _state_inputs(b: GraphBuilder) -> dict[str, ir.Value]:
    shapes = {name: list(value.shape) for name, value in initial_state().items()}
    values = {}
    for name in TRAINABLE + FROZEN + BUFFERS:
        dtype = INT64 if name == "bn.num_batches_tracked" else FLOAT
        values[name] = b.add_input(name, dtype, shapes[name])
    return values


def _model(graph: ir.Graph) -> ir.Model:
    return ir.Model(graph, ir_version=IR_VERSION, producer_name="toy")


def train_model() -> ir.Model:
    """The joint train graph: inputs ``[x, target, w, b, scale, *buffers]``, outputs loss, gradients, new buffers."""
    graph = ir.Graph([], [], nodes=[], opset_imports={"": OPSET}, name="main_graph")
    b = GraphBuilder(graph)
    x = b.add_input("x", FLOAT, ["batch", 2])
    target = b.add_input("target", FLOAT, ["batch"])
    s = _state_inputs(b)
    with b.scope("forward"):
        h = b.op("Mul", b.op("MatMul", x, s["w"]), s["scale"])
        residual = b.op("Sub", b.op("Add", b.op("Add", h, s["b"]), s["offset"]), target)
        loss = b.op("ReduceMean", b.op("Mul", residual, residual), keepdims=0)
    with b.scope("backward"):
        two = b.const(2.0)
        per_row = b.op("Mul", x, b.op("Unsqueeze", residual, b.const([1], INT64)))
        grad_w = b.op("Mul", b.op("Mul", b.op("ReduceMean", per_row, b.const([0], INT64), keepdims=0), s["scale"]), two)
        grad_b = b.op("Mul", b.op("ReduceMean", residual, keepdims=1), two)
    with b.scope("running_stats"):
        mean = b.op("ReduceMean", h, keepdims=1)
        rows = b.op("Shape", h)
        rows.dtype = INT64
        rows = b.cast(rows, FLOAT)
        centered = b.op("Sub", h, mean)
        var = b.op(
            "Div", b.op("ReduceSum", b.op("Mul", centered, centered), keepdims=1), b.op("Sub", rows, b.const(1.0))
        )
        keep, take = b.const(1.0 - MOMENTUM), b.const(MOMENTUM)
        new_mean = b.op("Add", b.op("Mul", s["bn.running_mean"], keep), b.op("Mul", mean, take))
        new_var = b.op("Add", b.op("Mul", s["bn.running_var"], keep), b.op("Mul", var, take))
        new_count = b.op("Add", s["bn.num_batches_tracked"], b.const(1, INT64))
    b.add_output(loss, LOSS).shape = ir.Shape([])
    for value, name, like in [
        (grad_w, grad_name("w"), "w"),
        (grad_b, grad_name("b"), "b"),
        (new_mean, next_name("bn.running_mean"), "bn.running_mean"),
        (new_var, next_name("bn.running_var"), "bn.running_var"),
        (new_count, next_name("bn.num_batches_tracked"), "bn.num_batches_tracked"),
    ]:
        b.add_output(value, name).shape = ir.Shape(s[like].shape)  # a capture gives its outputs' shapes
    return _model(graph)


def eval_model() -> ir.Model:
    """The eval forward: inputs ``[x, w, b, scale, *buffers]``, output ``output``."""
    graph = ir.Graph([], [], nodes=[], opset_imports={"": OPSET}, name="main_graph")
    b = GraphBuilder(graph)
    x = b.add_input("x", FLOAT, ["batch", 2])
    s = _state_inputs(b)
    h = b.op("Mul", b.op("MatMul", x, s["w"]), s["scale"])
    b.add_output(b.op("Add", b.op("Add", h, s["b"]), s["offset"]), OUTPUTS[0]).shape = ir.Shape(["batch"])
    return _model(graph)


def captured_fields() -> dict:
    """The keyword arguments of a ``Captured`` for the toy model (building one imports torch)."""
    return dict(
        train=train_model(),
        eval=eval_model(),
        data_names=list(DATA),
        target_names=list(TARGETS),
        trainable=list(TRAINABLE),
        frozen=list(FROZEN),
        buffers=list(BUFFERS),
        updated_buffers=list(UPDATED_BUFFERS),
        output_names=list(OUTPUTS),
        state=initial_state(),
        aliases={},
    )


def reference_forward(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The toy model's outputs computed by numpy in float64."""
    f = {k: np.asarray(v, np.float64) for k, v in feeds.items()}
    h = f["x"] @ f["w"] * f["scale"]
    residual = h + f["b"] + f["offset"] - f["target"]
    rows = len(h)
    mean, var = h.mean(keepdims=True), ((h - h.mean()) ** 2).sum(keepdims=True) / (rows - 1)
    return {
        LOSS: np.mean(residual**2),
        grad_name("w"): 2 * f["scale"] * (f["x"] * residual[:, None]).mean(axis=0),
        grad_name("b"): 2 * residual.mean(keepdims=True),
        next_name("bn.running_mean"): (1 - MOMENTUM) * f["bn.running_mean"] + MOMENTUM * mean,
        next_name("bn.running_var"): (1 - MOMENTUM) * f["bn.running_var"] + MOMENTUM * var,
        next_name("bn.num_batches_tracked"): feeds["bn.num_batches_tracked"] + 1,
    }


def check_types(model: ir.Model) -> None:
    """ONNX shape inference in strict mode: every node's inputs have types its schema accepts."""
    onnx.shape_inference.infer_shapes(ir.to_proto(model), check_type=True, strict_mode=True, data_prop=True)


class Runner:
    """An onnxruntime CPU session of an onnx-ir model that takes and returns dicts."""

    def __init__(self, model: ir.Model) -> None:
        self.session = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = set(self.input_names) - set(feeds)
        assert not missing, f"no value for the inputs {sorted(missing)}"
        results = self.session.run(None, {name: feeds[name] for name in self.input_names})
        return dict(zip(self.output_names, results))


def advance(state: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The state after a call: every ``<name>.next`` output replaces ``<name>``."""
    new = dict(state)
    for name, value in outputs.items():
        fed = state_of_next(name)
        if fed is not None:
            assert fed in state, f"{name} feeds {fed}, which is not state"
            new[fed] = value
    return new
