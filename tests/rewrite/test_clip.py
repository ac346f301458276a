"""clip_gradients on a hand-built captured graph: torch's clip_grad_norm_ factor, applied to every gradient output."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from optgraph.artifact.names import LOSS, grad_name, next_name, param_of_grad
from optgraph.rewrite.clip import clip_gradients

from .toy_capture import TRAINABLE, Runner, batch, check_types, initial_state, train_model

FEEDS = initial_state() | batch(0)


def torch_clip_coef(grads: list[np.ndarray], max_norm: float) -> float:
    """torch.nn.utils.clip_grad_norm_'s factor: ``min(max_norm / (||(||g_1||, ..., ||g_n||)|| + 1e-6), 1)``."""
    norms = [np.sqrt(np.sum(np.square(g, dtype=np.float64))) for g in grads]
    total = np.sqrt(np.sum(np.square(norms)))
    return min(max_norm / (total + 1e-6), 1.0)


def unclipped() -> dict[str, np.ndarray]:
    return Runner(train_model())(FEEDS)


def clipped(max_norm: float) -> dict[str, np.ndarray]:
    model = train_model()
    clip_gradients(model, max_norm)
    return Runner(model)(FEEDS)


@pytest.mark.parametrize("max_norm", [0.05, 0.5, 0.9])
def test_gradients_are_scaled_by_torchs_factor(max_norm):
    before = unclipped()
    grads = [before[grad_name(p)] for p in TRAINABLE]
    coef = torch_clip_coef(grads, max_norm)
    assert coef < 1, "the batch must need clipping at this max_norm"
    after = clipped(max_norm)
    for p in TRAINABLE:
        np.testing.assert_allclose(after[grad_name(p)], before[grad_name(p)] * coef, rtol=2e-6)
    total = np.sqrt(sum(np.sum(np.square(after[grad_name(p)], dtype=np.float64)) for p in TRAINABLE))
    np.testing.assert_allclose(total, max_norm, rtol=1e-5)  # the 1e-6 eps keeps it a hair below


def test_matches_torch_clip_grad_norm():
    torch = pytest.importorskip("torch")
    before = unclipped()
    tensors = [torch.nn.Parameter(torch.zeros(before[grad_name(p)].shape)) for p in TRAINABLE]
    for tensor, p in zip(tensors, TRAINABLE):
        tensor.grad = torch.from_numpy(before[grad_name(p)].copy())
    torch.nn.utils.clip_grad_norm_(tensors, 0.3)
    after = clipped(0.3)
    for tensor, p in zip(tensors, TRAINABLE):
        np.testing.assert_allclose(after[grad_name(p)], tensor.grad.numpy(), rtol=3e-7, atol=0)


def test_norm_below_max_norm_leaves_gradients_bit_identical():
    before = unclipped()
    grads = [before[grad_name(p)] for p in TRAINABLE]
    assert torch_clip_coef(grads, 100.0) == 1.0
    after = clipped(100.0)
    for name, value in before.items():
        assert after[name].tobytes() == value.tobytes(), name


def test_eps_is_torchs_1e_6():
    """At max_norm == total norm torch's factor is total / (total + 1e-6), not 1."""
    before = unclipped()
    grads = [before[grad_name(p)] for p in TRAINABLE]
    total = float(np.sqrt(sum(np.sum(np.square(g, dtype=np.float64)) for g in grads)))
    after = clipped(total)
    expected = total / (total + 1e-6)
    for p in TRAINABLE:
        ratio = after[grad_name(p)].astype(np.float64) / before[grad_name(p)]
        np.testing.assert_allclose(ratio, expected, rtol=1e-7)
        assert np.all(ratio < 1)


def test_other_outputs_untouched():
    before = unclipped()
    after = clipped(0.05)
    for name in [LOSS, next_name("bn.running_mean"), next_name("bn.running_var"), next_name("bn.num_batches_tracked")]:
        assert after[name].tobytes() == before[name].tobytes(), name


def test_structure():
    model = train_model()
    inputs_before = [v.name for v in model.graph.inputs]
    outputs_before = list(model.graph.outputs)
    names_before = [v.name for v in outputs_before]
    clip_gradients(model, 0.5)
    graph = model.graph
    assert [v.name for v in graph.inputs] == inputs_before, "clipping adds no input"
    assert [v.name for v in graph.outputs] == names_before, "names and order are kept"
    for before, after in zip(outputs_before, graph.outputs):
        if param_of_grad(after.name) is None:
            assert after is before, f"{after.name} is not a gradient and must stay the same value"
            continue
        node = after.producer()
        assert node.op_type == "Mul" and node.name.startswith("clip_grad_norm/")
        assert node.inputs[0] is before and before.name == f"{after.name}.unclipped"
        assert after.dtype == before.dtype
    # one global factor, shared by every gradient
    factors = {id(v.producer().inputs[1]) for v in graph.outputs if param_of_grad(v.name) is not None}
    assert len(factors) == 1
    check_types(model)


def test_graph_without_gradients_is_left_alone():
    model = train_model()
    graph = model.graph
    for value in [v for v in graph.outputs if param_of_grad(v.name) is not None]:
        graph.outputs.remove(value)
    before = ir.to_proto(model).SerializeToString()
    clip_gradients(model, 0.5)
    assert ir.to_proto(model).SerializeToString() == before
