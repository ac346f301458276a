"""Small models for the command-line tests, as `optgraph compile tests/cli/factories.py:NAME` takes them."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

FEATURES = 4
CLASSES = 3


def mlp(hidden: int = 8, batch: int = 4, seed: int = 0):
    """An MLP with a LayerNorm (a '*norm*' parameter for groups) and biases; cross-entropy on 3 classes."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(FEATURES, hidden), nn.LayerNorm(hidden), nn.ReLU(), nn.Linear(hidden, CLASSES))
    return model, (torch.randn(batch, FEATURES),), (torch.randint(0, CLASSES, (batch,)),), nn.CrossEntropyLoss()


def frozen_mlp():
    """mlp with its first layer frozen, returned as a dict."""
    model, inputs, targets, loss = mlp()
    for p in model[0].parameters():
        p.requires_grad_(False)
    return {"model": model, "example_inputs": inputs[0], "example_targets": targets, "loss_fn": loss}


def regression():
    """A linear regression with MSE: float targets shaped as the outputs."""
    torch.manual_seed(0)
    return nn.Linear(FEATURES, 2), torch.randn(4, FEATURES), torch.randn(4, 2), nn.MSELoss()


def broken():
    raise RuntimeError("the factory failed on purpose")


def classes(samples: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Separable data for mlp: inputs and the class a fixed linear map scores highest."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(samples, FEATURES)).astype(np.float32)
    w = np.random.default_rng(1234).normal(size=(FEATURES, CLASSES))
    return {"input": x, "target": (x @ w).argmax(axis=1).astype(np.int64)}
