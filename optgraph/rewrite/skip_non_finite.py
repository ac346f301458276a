"""Pass: apply a step only when the loss and every gradient are finite.

Every state output (``<name>.next``) becomes ``Where(finite, next, current)``
and the bool output ``update_applied`` says which happened, so a NaN or
infinite batch leaves parameters, buffers, optimizer state and counters
bit-identical and the session reports it. torch would apply the NaN update;
this is optgraph's one deliberate difference.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx_ir as ir

from optgraph.rewrite.builder import BOOL, GraphBuilder
from optgraph.rewrite.state import NEXT

UPDATE_APPLIED = "update_applied"


class SkipNonFinite(ir.passes.InPlacePass):
    """Guard every state update of a train-step graph by the finiteness of the loss and gradients."""

    def __init__(self, gradients: Iterable[ir.Value]) -> None:
        super().__init__()
        self.gradients = list(gradients)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        b = GraphBuilder(graph)
        inputs = {v.name: v for v in graph.inputs}
        loss = next(v for v in graph.outputs if v.name == "loss")
        with b.scope("skip_non_finite"):
            # x * 0 is NaN exactly when x is NaN or infinite: one cheap reduction per gradient
            probes = [b.op("ReduceSum", b.op("Mul", g, b.const(0.0, g.dtype)), keepdims=0) for g in self.gradients]
            probes = [b.cast(p, loss.dtype) for p in probes]
            total = b.op("Mul", loss, b.const(0.0, loss.dtype))
            for probe in probes:
                total = b.op("Add", total, probe)
            finite = b.op("Not", b.op("IsNaN", total))
            for index, value in enumerate(list(graph.outputs)):
                current = inputs.get(value.name[: -len(NEXT)]) if value.name.endswith(NEXT) else None
                if current is None:
                    continue
                name = value.name
                value.name = f"{name}.unguarded"
                guarded = b.op("Where", finite, value, current)
                guarded.name = name
                graph.outputs[index] = guarded
        applied = b.add_output(finite, UPDATE_APPLIED)
        applied.dtype, applied.shape = BOOL, ir.Shape([])
        return ir.passes.PassResult(model, modified=True)
