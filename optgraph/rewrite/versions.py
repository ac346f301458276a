"""Declare the lowest ONNX opset and IR version a graph needs.

The exporter stamps the opset it targets, not the one the graph needs. Old
runtimes (onnxruntime 1.19, still shipped in many apps) and other bindings
accept a graph only up to their own versions, so every graph is re-stamped
with the oldest versions under which each of its nodes keeps its meaning.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir

_DEFAULT_DOMAINS = ("", "ai.onnx")

# Element types newer than the IR version that the opset alone would imply.
_IR_VERSION_OF_DTYPE = {
    ir.DataType.FLOAT8E4M3FN: 9,
    ir.DataType.FLOAT8E4M3FNUZ: 9,
    ir.DataType.FLOAT8E5M2: 9,
    ir.DataType.FLOAT8E5M2FNUZ: 9,
    ir.DataType.UINT4: 10,
    ir.DataType.INT4: 10,
}


def lowest_opset(model: ir.Model) -> int:
    """The oldest default-domain opset under which every node has the schema it has now.

    An op's meaning is the newest schema whose ``since_version`` is at most the
    declared opset, so any opset from the largest such ``since_version`` up to
    the declared one selects the same schemas for every node.
    """
    declared = model.opset_imports[""]
    needed = 1
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.domain in _DEFAULT_DOMAINS:
            needed = max(needed, onnx.defs.get_schema(node.op_type, declared, "").since_version)
    return needed


def lowest_ir_version(model: ir.Model, opset: int) -> int:
    """The oldest IR version that knows ``opset`` and every element type the graph uses."""
    imports = [onnx.helper.make_opsetid(domain, version) for domain, version in model.opset_imports.items()]
    imports = [i if i.domain else onnx.helper.make_opsetid("", opset) for i in imports]
    needed = onnx.helper.find_min_ir_version_for(imports, ignore_unknown=True)
    for value in _all_values(model.graph):
        needed = max(needed, _IR_VERSION_OF_DTYPE.get(value.dtype, 0))
    return needed


def declare_lowest_versions(model: ir.Model) -> ir.Model:
    """Re-stamp ``model`` in place with its lowest opset and IR version; returns it."""
    if model.functions:
        raise ValueError("graphs with local functions are not supported: inline them first")
    opset = lowest_opset(model)
    model.ir_version = lowest_ir_version(model, opset)
    model.opset_imports[""] = opset
    model.graph.opset_imports[""] = opset
    return model


def _all_values(graph: ir.Graph):
    yield from graph.inputs
    yield from graph.initializers.values()
    for node in ir.traversal.RecursiveGraphIterator(graph):
        yield from node.outputs
