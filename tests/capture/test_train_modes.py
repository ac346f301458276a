"""compile traces the train step with every submodule's own mode and gives every mode back unchanged.

Fine-tuning with frozen BatchNorm statistics (``model.bn.eval()`` in a
model in train mode) is common; torch then normalises with the running
statistics and leaves them alone, while dropout elsewhere stays on.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from models import CNN, assert_close, make_batch
from torch import nn

import optgraph
from optgraph import optim

CPU = ["CPUExecutionProvider"]


def _frozen_bn_cnn() -> CNN:
    torch.manual_seed(0)
    model = CNN()
    with torch.no_grad():  # running statistics a pretrained model would have
        model.bn1.running_mean.uniform_(-0.5, 0.5)
        model.bn1.running_var.uniform_(0.5, 2.0)
        model.bn1.num_batches_tracked.fill_(100)
    model.train()
    model.bn1.eval()
    return model


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (lambda: optim.Adam(lr=0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
        (lambda: optim.SGD(lr=0.05, momentum=0.9), lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
    ],
    ids=["adam", "sgd-momentum"],
)
def test_batchnorm_in_eval_stays_frozen_while_fine_tuning(ours, theirs):
    model = _frozen_bn_cnn()
    frozen = {k: v.clone() for k, v in model.bn1.named_buffers()}
    reference = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(0)
    x, y = make_batch("cnn", 6, gen)
    artifact = optgraph.compile(model, (x,), (y,), nn.CrossEntropyLoss(), optimizer=ours())
    session = optgraph.TrainingSession(artifact, providers=CPU)
    torch_opt = theirs(reference.parameters())
    for step in range(5):
        x, y = make_batch("cnn", 5 + step, gen)
        loss = session.step(x.numpy(), y.numpy())
        torch_opt.zero_grad()
        expected = nn.functional.cross_entropy(reference(x), y)
        expected.backward()
        torch_opt.step()
        assert_close(loss, expected, f"loss at step {step}", rtol=1e-5, atol=1e-6)
        state = session.state_dict()
        for key, value in reference.state_dict().items():
            assert_close(state[key], value, f"{key} after step {step}", rtol=1e-5, atol=1e-6)
    for key, value in frozen.items():
        np.testing.assert_array_equal(session.state_dict()[f"bn1.{key}"], value.numpy(), err_msg=key)
        np.testing.assert_array_equal(reference.bn1.state_dict()[key].numpy(), value.numpy(), err_msg=key)


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Dropout(0.0), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 4))

    def forward(self, features):
        return self.head(self.features(features))


@pytest.mark.parametrize("top", [True, False], ids=["top-train", "top-eval"])
def test_every_submodule_keeps_its_mode(top):
    torch.manual_seed(0)
    model = Mixed().train(top)
    model.features[1].train(not top)
    model.head.train(not top)
    model.head[2].train(top)
    before = {name: m.training for name, m in model.named_modules()}
    x, y = make_batch("mlp", 4, torch.Generator().manual_seed(0))
    optgraph.compile(model, (x,), (y,), nn.CrossEntropyLoss())
    assert {name: m.training for name, m in model.named_modules()} == before
