"""Passes for ``grad_accumulation_steps=k``: add up k micro-batches' gradients, update every k-th call.

:func:`accumulate_gradients` runs before clipping and the optimizer: each
gradient output becomes ``accumulator + grad / k`` (torch's
``(loss / k).backward()`` into ``.grad``). :func:`gate_on_update` runs after
the optimizer: parameters, optimizer state and the step counter take their
new values only on every k-th call, and the accumulators restart from zero
then. Buffers (BatchNorm statistics) update on every call, as the forward runs.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from optgraph.artifact.names import (
    MICRO_STEP,
    PARAM_KEY,
    Role,
    accumulator_name,
    next_name,
    param_of_grad,
    state_of_next,
)
from optgraph.graph.builder import INT64, GraphBuilder, ir_dtype
from optgraph.rewrite.state import StateTensor


@dataclass(frozen=True)
class Accumulation:
    """What :func:`accumulate_gradients` added: its state, and the bool that is true on update calls."""

    new_state: list[StateTensor]
    is_update: ir.Value


def accumulate_gradients(model: ir.Model, steps: int) -> Accumulation:
    """Turn the gradient outputs of ``model`` into running sums over ``steps`` micro-batches, in place."""
    graph = model.graph
    b = GraphBuilder(graph)
    inputs = {v.name: v for v in graph.inputs}
    new_state = [StateTensor(MICRO_STEP, Role.COUNTER, np.array(0, np.int64))]
    with b.scope("accumulate"):
        micro = b.add_input(MICRO_STEP, INT64, [])
        next_micro = b.op("Add", micro, b.const(1, INT64))
        is_update = b.op("Equal", b.op("Mod", next_micro, b.const(steps, INT64)), b.const(0, INT64))
        for index, grad in enumerate(list(graph.outputs)):
            param = param_of_grad(grad.name)
            if param is None:
                continue
            shape = inputs[param].shape.numpy()
            init = np.zeros(shape, inputs[param].dtype.numpy())
            name = accumulator_name(param)
            new_state.append(StateTensor(name, Role.GRAD_ACCUMULATOR, init, {PARAM_KEY: param}))
            accumulator = b.add_input(name, ir_dtype(init.dtype), shape)
            public = grad.name
            grad.name = f"{public}.micro"
            total = b.op("Add", accumulator, b.op("Div", grad, b.const(float(steps), grad.dtype)))
            total.name = public
            graph.outputs[index] = total
            restart = b.op("Where", is_update, b.const(0.0, total.dtype), total)
            b.add_output(restart, next_name(name))
        b.add_output(next_micro, next_name(MICRO_STEP))
    return Accumulation(new_state, is_update)


def gate_on_update(model: ir.Model, is_update: ir.Value, gated: Collection[str]) -> None:
    """Keep the state named in ``gated`` unchanged except on calls where ``is_update`` is true, in place."""
    graph = model.graph
    b = GraphBuilder(graph)
    inputs = {v.name: v for v in graph.inputs}
    with b.scope("accumulate/gate"):
        for index, value in enumerate(list(graph.outputs)):
            state = state_of_next(value.name)
            if state not in gated:
                continue
            name = value.name
            value.name = f"{name}.ungated"
            kept = b.op("Where", is_update, value, inputs[state])
            kept.name = name
            graph.outputs[index] = kept
