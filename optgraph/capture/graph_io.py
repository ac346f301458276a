"""The captured graphs' public names, and the buffer updates that are no updates.

Small passes over the exporter's onnx-ir graphs; they know names and graphs, not torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx_ir as ir

from optgraph.artifact.names import next_name
from optgraph.errors import CaptureError


def name_io(model: ir.Model, input_names: Sequence[str], output_names: Sequence[str], what: str) -> None:
    """Give the exported graph's inputs and outputs their public names."""
    graph = model.graph
    if len(graph.inputs) != len(input_names) or len(graph.outputs) != len(output_names):
        raise CaptureError(
            f"the exported {what} has {len(graph.inputs)} inputs and {len(graph.outputs)} outputs, "
            f"expected {len(input_names)} and {len(output_names)}"
        )
    public = set(input_names) | set(output_names)
    for node in graph:
        for value in node.outputs:
            if value.name in public and not value.is_graph_output():
                value.name = f"{value.name}__internal"
    for value, name in zip(graph.inputs, input_names):
        value.name = name
    seen: set[int] = set()
    for i, (value, name) in enumerate(zip(list(graph.outputs), output_names)):
        if value.is_graph_input() or id(value) in seen:
            node = ir.node("Identity", [value], name=f"output/{name}")
            graph.append(node)
            node.outputs[0].dtype, node.outputs[0].shape = value.dtype, value.shape
            graph.outputs[i] = value = node.outputs[0]
        seen.add(id(value))
        value.name = name


def _passes_through(value: ir.Value) -> ir.Value:
    while value.producer() is not None and value.producer().op_type == "Identity":
        value = value.producer().inputs[0]
    return value


def drop_unchanged_buffers(model: ir.Model, buffer_names: Sequence[str]) -> list[str]:
    """Remove ``<buffer>.next`` outputs that only pass the buffer through; returns the updated buffers."""
    graph = model.graph
    inputs = {v.name: v for v in graph.inputs}
    updated = []
    for name in buffer_names:
        index = next(i for i, v in enumerate(graph.outputs) if v.name == next_name(name))
        if _passes_through(graph.outputs[index]) is inputs[name]:
            graph.outputs.pop(index)
        else:
            updated.append(name)
    return updated


def set_shapes(values: Sequence[ir.Value], shapes: Sequence[list[int | str] | None]) -> None:
    for value, shape in zip(values, shapes):
        if shape is not None:
            value.shape = ir.Shape(shape)
