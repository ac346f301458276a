"""A small helper that appends standard ONNX nodes to an onnx-ir graph.

Nodes are wired by ``ir.Value``; names are deterministic and readable
(``optim/fc1.weight/Mul_3``) so that a rewritten graph reads well in Netron.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import onnx_ir as ir

_NUMPY_TO_IR = {
    np.dtype(np.float16): ir.DataType.FLOAT16,
    np.dtype(np.float32): ir.DataType.FLOAT,
    np.dtype(np.float64): ir.DataType.DOUBLE,
    np.dtype(np.int32): ir.DataType.INT32,
    np.dtype(np.int64): ir.DataType.INT64,
    np.dtype(np.bool_): ir.DataType.BOOL,
}

FLOAT = ir.DataType.FLOAT
DOUBLE = ir.DataType.DOUBLE
INT64 = ir.DataType.INT64
BOOL = ir.DataType.BOOL


def ir_dtype(dtype: np.dtype | str) -> ir.DataType:
    """The onnx-ir element type of a numpy dtype."""
    return _NUMPY_TO_IR[np.dtype(dtype)]


_BOOLEAN_OPS = frozenset(
    {"Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Not", "And", "Or", "IsNaN", "IsInf"}
)


def _result_dtype(op_type: str, inputs: Sequence[ir.Value | None], attributes: dict):
    """The element type of a single-output node, so that later casts know it."""
    if op_type in _BOOLEAN_OPS:
        return BOOL
    if op_type == "Cast":
        return ir.DataType(attributes["to"])
    if op_type == "Where":
        return inputs[1].dtype
    first = next((v for v in inputs if v is not None), None)
    return first.dtype if first is not None else None


# 2pi as three doubles (Cody-Waite): the first two have short mantissas, so turns * part is exact
# for every whole number of turns a schedule reaches, and their sum is 2pi to about 1e-33.
_TWO_PI_PARTS = (6.283185303211212, 3.968374295837407e-09, 2.2884754904439327e-17)


class GraphBuilder:
    """Appends nodes to ``graph``; every new value gets a unique readable name."""

    def __init__(self, graph: ir.Graph) -> None:
        self.graph = graph
        self._scope: list[str] = []
        self._count = 0
        self._constants: dict[tuple, ir.Value] = {}
        self._taken = {v.name for v in graph.inputs} | {v.name for v in graph.outputs}
        for node in graph.all_nodes():
            self._taken.update(v.name for v in node.outputs if v.name)

    @contextlib.contextmanager
    def scope(self, name: str) -> Iterator[None]:
        """Prefix the names of nodes emitted inside the block with ``name``."""
        self._scope.append(name)
        try:
            yield
        finally:
            self._scope.pop()

    def fresh_name(self, stem: str) -> str:
        """A value name not yet used in the graph, under the current scope."""
        prefix = "/".join(self._scope)
        while True:
            self._count += 1
            name = f"{prefix}/{stem}_{self._count}" if prefix else f"{stem}_{self._count}"
            if name not in self._taken:
                self._taken.add(name)
                return name

    def op(self, op_type: str, *inputs: ir.Value | None, num_outputs: int = 1, **attributes):
        """Append one node; returns its output value (or a tuple of them)."""
        name = self.fresh_name(op_type)
        node = ir.node(op_type, list(inputs), attributes or None, num_outputs=num_outputs, name=name)
        for i, out in enumerate(node.outputs):
            out.name = name if num_outputs == 1 else f"{name}:{i}"
            self._taken.add(out.name)
        if num_outputs == 1:
            node.outputs[0].dtype = _result_dtype(op_type, inputs, attributes)
        self.graph.append(node)
        return node.outputs[0] if num_outputs == 1 else tuple(node.outputs)

    def const(self, value, dtype: ir.DataType = FLOAT) -> ir.Value:
        """A constant tensor (emitted once per value and dtype)."""
        array = np.asarray(value, dtype=dtype.numpy())
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constants:
            name = self.fresh_name("const")
            node = ir.node("Constant", [], {"value": ir.tensor(array, name=name)}, name=name)
            node.outputs[0].name = name
            node.outputs[0].dtype = dtype
            node.outputs[0].shape = ir.Shape(array.shape)
            self.graph.append(node)
            self._constants[key] = node.outputs[0]
        return self._constants[key]

    def double(self, value) -> ir.Value:
        """A float64 constant (scalar arithmetic is done in float64, like torch's Python floats)."""
        return self.const(value, DOUBLE)

    def cos(self, x: ir.Value) -> ir.Value:
        """``cos(x)``; in float64 it is built from arithmetic alone.

        onnxruntime before 1.20 has no float64 Cos kernel, and a float32 Cos
        would put 1e-7 errors into schedules that torch computes in float64.
        So: reduce to ``r`` in [-pi, pi], use ``cos(r) = -sin(|r| - pi/2)``,
        and sum sin's Taylor series to z**23, which is exact to float64
        rounding on [-pi/2, pi/2] (the next term is below 2e-20).
        """
        if x.dtype != DOUBLE:
            return self.op("Cos", x)
        turns = self.op("Floor", self.op("Add", self.op("Mul", x, self.double(0.5 / np.pi)), self.double(0.5)))
        r = x
        for part in _TWO_PI_PARTS:  # x - turns * 2pi, exact where one rounded 2pi would lose |x| * 1e-16
            r = self.op("Sub", r, self.op("Mul", turns, self.double(part)))
        z = self.op("Sub", self.op("Abs", r), self.double(np.pi / 2))
        z2 = self.op("Mul", z, z)
        series = self.double(1.0)  # Horner: sin(z) = z (1 - z2/(2*3) (1 - z2/(4*5) (1 - ...)))
        for k in range(11, 0, -1):
            term = self.op("Mul", z2, self.op("Mul", series, self.double(1.0 / ((2 * k) * (2 * k + 1)))))
            series = self.op("Sub", self.double(1.0), term)
        return self.op("Neg", self.op("Mul", z, series))

    def add_input(self, name: str, dtype: ir.DataType, shape: Sequence[int | str]) -> ir.Value:
        """Append a graph input."""
        if name in self._taken:
            raise ValueError(f"graph already has a value named {name!r}")
        value = ir.Value(name=name, type=ir.TensorType(dtype), shape=ir.Shape(list(shape)))
        self.graph.inputs.append(value)
        self._taken.add(name)
        return value

    def add_output(self, value: ir.Value, name: str) -> ir.Value:
        """Expose ``value`` as a graph output called ``name``.

        A value that is already a graph input or output, or already has a
        name in use, is routed through an Identity so each output owns its name.
        """
        if value.is_graph_input() or value.is_graph_output() or value.is_initializer():
            value = self.op("Identity", value)
        if value.name != name:
            if name in self._taken:
                raise ValueError(f"graph already has a value named {name!r}")
            self._taken.discard(value.name)
            value.name = name
            self._taken.add(name)
        self.graph.outputs.append(value)
        return value

    def cast(self, value: ir.Value, dtype: ir.DataType) -> ir.Value:
        """``value`` converted to ``dtype`` (no node when it already is)."""
        if value.dtype == dtype:
            return value
        out = self.op("Cast", value, to=dtype)
        out.dtype = dtype
        return out
