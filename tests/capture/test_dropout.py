"""Dropout with p > 0: random masks with torch's keep rate and scaling, a new mask each step, none in eval."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from optgraph.capture import capture


class Scaled(nn.Module):
    def __init__(self, features: int, p: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(features))
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, self.training) * self.weight


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_keep_rate_scaling_and_fresh_masks(p):
    features = 20000
    captured = capture(Scaled(features, p), (torch.ones(2, features),), (), lambda out: out.sum())
    train = ort.InferenceSession(ir.to_proto(captured.train).SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {"x": np.ones((1, features), np.float32), "weight": np.ones(features, np.float32)}
    masks = []
    for _ in range(2):
        loss, grad = train.run(["loss", "grad.weight"], feeds)
        # with one row of ones, d loss / d weight is the scaled mask itself
        kept = grad != 0
        np.testing.assert_allclose(grad[kept], 1 / (1 - p), rtol=1e-6)
        keep_rate = kept.mean()
        sigma = np.sqrt(p * (1 - p) / features)
        assert abs(keep_rate - (1 - p)) < 5 * sigma, (keep_rate, 1 - p)
        np.testing.assert_allclose(loss, grad.sum(), rtol=1e-4)
        masks.append(kept)
    assert (masks[0] != masks[1]).mean() > 0.5 * 2 * p * (1 - p)  # independent masks differ this often

    evaluate = ort.InferenceSession(ir.to_proto(captured.eval).SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(3, features)).astype(np.float32)
    np.testing.assert_array_equal(evaluate.run(None, {"x": x, "weight": feeds["weight"]})[0], x)
