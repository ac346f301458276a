"""Passes for ``grad_accumulation_steps=k``: add up k micro-batches' gradients, update every k-th call.

``AccumulateGradients`` runs before clipping and the optimizer: each
``grad.<param>`` output becomes ``accumulator + grad / k`` (torch's
``(loss / k).backward()`` into ``.grad``). ``GateOnUpdate`` runs after the
optimizer: parameters, optimizer state and the step counter take their new
values only on every k-th call, and the accumulators restart from zero then.
Buffers (BatchNorm statistics) update on every call, as the forward runs.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from optgraph.rewrite.builder import INT64, GraphBuilder, ir_dtype
from optgraph.rewrite.state import NEXT, StateTensor

MICRO_STEP = "counter.micro_step"


def accumulator_name(param: str) -> str:
    return f"accum.grad.{param}"


class AccumulateGradients(ir.passes.InPlacePass):
    """Turn the gradient outputs into running sums over ``steps`` micro-batches."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.steps = steps
        self.new_state: list[StateTensor] = []
        self.is_update: ir.Value | None = None

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        b = GraphBuilder(graph)
        inputs = {v.name: v for v in graph.inputs}
        with b.scope("accumulate"):
            micro = b.add_input(MICRO_STEP, INT64, [])
            self.new_state.append(StateTensor(MICRO_STEP, "counter", np.array(0, np.int64), {}))
            next_micro = b.op("Add", micro, b.const(1, INT64))
            self.is_update = b.op("Equal", b.op("Mod", next_micro, b.const(self.steps, INT64)), b.const(0, INT64))
            for index, grad in enumerate(list(graph.outputs)):
                if not grad.name.startswith("grad."):
                    continue
                param = grad.name[len("grad.") :]
                shape = inputs[param].shape.numpy()
                init = np.zeros(shape, inputs[param].dtype.numpy())
                name = accumulator_name(param)
                self.new_state.append(StateTensor(name, "grad_accumulator", init, {"param": param}))
                accumulator = b.add_input(name, ir_dtype(init.dtype), shape)
                public = grad.name
                grad.name = f"{public}.micro"
                total = b.op("Add", accumulator, b.op("Div", grad, b.const(float(self.steps), grad.dtype)))
                total.name = public
                graph.outputs[index] = total
                restart = b.op("Where", self.is_update, b.const(0.0, total.dtype), total)
                b.add_output(restart, name + NEXT)
            b.add_output(next_micro, MICRO_STEP + NEXT)
        return ir.passes.PassResult(model, modified=True)


class GateOnUpdate(ir.passes.InPlacePass):
    """Keep parameters, optimizer state and the step counter unchanged except on update calls."""

    def __init__(self, is_update: ir.Value, gated: set[str]) -> None:
        super().__init__()
        self.is_update = is_update
        self.gated = gated

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        b = GraphBuilder(graph)
        inputs = {v.name: v for v in graph.inputs}
        with b.scope("accumulate/gate"):
            for index, value in enumerate(list(graph.outputs)):
                base = value.name[: -len(NEXT)] if value.name.endswith(NEXT) else None
                if base not in self.gated:
                    continue
                name = value.name
                value.name = f"{name}.ungated"
                gated = b.op("Where", self.is_update, value, inputs[base])
                gated.name = name
                graph.outputs[index] = gated
        return ir.passes.PassResult(model, modified=True)
