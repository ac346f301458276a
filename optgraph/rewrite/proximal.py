"""Pass: FedProx's proximal term, ``mu/2 * ||w - w_global||^2`` over the trainable parameters, added to the loss.

Runs on the captured train graph before anything reads its gradients: the
loss output becomes ``loss + mu/2 * sum_p ||p - global.p||^2`` and each
gradient output ``grad.p`` becomes ``grad.p + mu * (p - global.p)``, the
gradient of that term, which is what autograd gives when a torch FedProx
client adds the term to the loss before ``backward()``. With gradient
accumulation over k calls, each call adds the whole term to its loss and a
k-th of its gradient, as ``(loss_i / k).backward()`` would: the parameters do
not move between the calls, so the sum is one term. ``global.p`` is state the
graph only reads; a client sets it to the weights the server sent each round.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from optgraph.artifact.names import LOSS, PARAM_KEY, Role, global_param_name, grad_name
from optgraph.graph.builder import GraphBuilder
from optgraph.rewrite.state import StateTensor


def add_proximal_term(
    model: ir.Model, mu: float, trainable: Sequence[str], initial: dict[str, np.ndarray]
) -> list[StateTensor]:
    """Add the proximal term to the loss and gradient outputs of ``model``, in place.

    Returns the global-weight state it added, one per trainable parameter, each starting at the
    parameter's ``initial`` value.
    """
    graph = model.graph
    b = GraphBuilder(graph)
    inputs = {v.name: v for v in graph.inputs}
    index = {v.name: i for i, v in enumerate(graph.outputs)}
    loss = graph.outputs[index[LOSS]]
    new_state, squares = [], []
    with b.scope("proximal"):
        for param in trainable:
            value = inputs[param]
            name = global_param_name(param)
            init = np.array(initial[param], copy=True)
            new_state.append(StateTensor(name, Role.GLOBAL_PARAM, init, {PARAM_KEY: param}))
            center = b.add_input(name, value.dtype, list(value.shape))
            diff = b.op("Sub", value, center)
            grad = graph.outputs[index[grad_name(param)]]
            grad.name = b.fresh_name("grad_of_loss")
            pulled = b.op("Add", grad, b.op("Mul", diff, b.const(mu, value.dtype)))
            pulled.name = grad_name(param)
            pulled.dtype, pulled.shape = value.dtype, ir.Shape(list(value.shape))
            graph.outputs[index[grad_name(param)]] = pulled
            square = b.op("ReduceSumSquare", diff, keepdims=0)
            squares.append(square if value.dtype == loss.dtype else b.cast(square, loss.dtype))
        if not squares:
            return new_state
        total = squares[0] if len(squares) == 1 else b.op("Sum", *squares)
        loss.name = b.fresh_name("loss_without_term")
        regularized = b.op("Add", loss, b.op("Mul", total, b.const(mu / 2, loss.dtype)))
        regularized.name = LOSS
        regularized.dtype, regularized.shape = loss.dtype, loss.shape
        graph.outputs[index[LOSS]] = regularized
    return new_state
