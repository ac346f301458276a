"""Pass: scale the ``grad.*`` outputs as ``torch.nn.utils.clip_grad_norm_`` does.

``total = ||(||g_1||, ..., ||g_n||)||_2``; every gradient is multiplied by
``min(max_norm / (total + 1e-6), 1)``, with torch's eps and order of operations.
"""

from __future__ import annotations

import onnx_ir as ir

from optgraph.rewrite.builder import INT64, GraphBuilder


class ClipGradNorm(ir.passes.InPlacePass):
    """Clip the global L2 norm of all gradients to ``max_norm``."""

    def __init__(self, max_norm: float) -> None:
        super().__init__()
        self.max_norm = max_norm

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        b = GraphBuilder(graph)
        grads = [(i, v) for i, v in enumerate(graph.outputs) if v.name.startswith("grad.")]
        if not grads:
            return ir.passes.PassResult(model, modified=False)
        with b.scope("clip_grad_norm"):
            norms = [
                b.op("Reshape", b.op("Sqrt", b.op("ReduceSumSquare", g, keepdims=0)), b.const([1], INT64))
                for _, g in grads
            ]
            total = b.op("Sqrt", b.op("ReduceSumSquare", b.op("Concat", *norms, axis=0), keepdims=0))
            dtype = grads[0][1].dtype
            coef = b.op("Div", b.const(self.max_norm, dtype), b.op("Add", total, b.const(1e-6, dtype)))
            coef = b.op("Min", coef, b.const(1.0, dtype))
            for index, g in grads:
                name = g.name
                g.name = f"{name}.unclipped"
                clipped = b.op("Mul", g, coef)
                clipped.name = name
                graph.outputs[index] = clipped
        return ir.passes.PassResult(model, modified=True)
