"""A step whose new buffer values are not finite is skipped like a non-finite gradient (torch raises there)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from models import assert_close
from torch import nn

import optgraph
from optgraph import optim


def test_batchnorm_on_one_value_per_channel_is_refused_and_state_kept():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    reference = copy.deepcopy(model)
    x, y = torch.randn(4, 6), torch.randint(0, 3, (4,))
    session = optgraph.TrainingSession(
        optgraph.compile(model, (x,), (y,), nn.CrossEntropyLoss(), optimizer=optim.SGD(lr=0.1, momentum=0.9)),
        providers=["CPUExecutionProvider"],
    )
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        copy.deepcopy(model)(x[:1])  # torch refuses to train on it
    before = session.state_dict()
    with pytest.raises(optgraph.NonFiniteError, match="a new buffer value .* is not finite"):
        session.step(x[:1].numpy(), y[:1].numpy())
    for key, value in session.state_dict().items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)
    assert session.optimizer_state_dict() == {}

    opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):  # and training goes on exactly as torch's
        loss = session.step(x.numpy(), y.numpy())
        opt.zero_grad()
        expected = nn.functional.cross_entropy(reference(x), y)
        expected.backward()
        opt.step()
        assert_close(loss, expected, "loss")
    for key, value in reference.state_dict().items():
        assert_close(session.state_dict()[key], value, key)
