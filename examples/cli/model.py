"""The model that examples/cli/config.toml compiles: `optgraph compile examples/cli/model.py:make -o DIR` works too."""

import torch
from torch import nn


def make(hidden: int = 32):
    """(model, example inputs, example targets, loss): an MLP that tells 3 classes of 2-D points apart."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, 3))
    return model, (torch.randn(8, 2),), (torch.randint(0, 3, (8,)),), nn.CrossEntropyLoss()
