import pytest
import torch
from models import make_batch, make_model
from torch import nn

import optgraph
from optgraph import lr_scheduler, optim


@pytest.fixture(scope="session")
def mlp_artifact():
    """A small MLP artifact (Adam with amsgrad, StepLR): quick to load, every kind of state."""
    model = make_model("mlp")
    x, y = make_batch("mlp", 4, torch.Generator().manual_seed(0))
    return optgraph.compile(
        model, (x,), (y,), nn.CrossEntropyLoss(),
        optimizer=optim.Adam(lr=0.01, amsgrad=True), lr_scheduler=lr_scheduler.StepLR(step_size=2, gamma=0.5),
    )  # fmt: skip


@pytest.fixture()
def mlp_batch():
    x, y = make_batch("mlp", 5, torch.Generator().manual_seed(1))
    return x.numpy(), y.numpy()
