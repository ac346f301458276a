"""Pass: scale the gradient outputs as ``torch.nn.utils.clip_grad_norm_`` does.

``total = ||(||g_1||, ..., ||g_n||)||_2``; every gradient is multiplied by
``min(max_norm / (total + 1e-6), 1)``, with torch's eps and order of operations.
"""

from __future__ import annotations

import onnx_ir as ir

from optgraph.artifact.names import param_of_grad
from optgraph.graph.builder import INT64, GraphBuilder


def clip_gradients(model: ir.Model, max_norm: float) -> None:
    """Clip the global L2 norm of all gradient outputs of ``model`` to ``max_norm``, in place."""
    graph = model.graph
    b = GraphBuilder(graph)
    grads = [(i, v) for i, v in enumerate(graph.outputs) if param_of_grad(v.name) is not None]
    if not grads:
        return
    with b.scope("clip_grad_norm"):
        norms = [
            b.op("Reshape", b.op("Sqrt", b.op("ReduceSumSquare", g, keepdims=0)), b.const([1], INT64)) for _, g in grads
        ]
        total = b.op("Sqrt", b.op("ReduceSumSquare", b.op("Concat", *norms, axis=0), keepdims=0))
        dtype = grads[0][1].dtype
        coef = b.op("Div", b.const(max_norm, dtype), b.op("Add", total, b.const(1e-6, dtype)))
        coef = b.op("Min", coef, b.const(1.0, dtype))
        for index, g in grads:
            name = g.name
            g.name = f"{name}.unclipped"
            clipped = b.op("Mul", g, coef)
            clipped.name = name
            graph.outputs[index] = clipped
