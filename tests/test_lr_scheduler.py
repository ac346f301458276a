"""Schedules: session.lr after construction and after every scheduler_step equals torch's."""

from __future__ import annotations

import pytest
import torch
from models import make_batch, make_model
from torch import nn

import optgraph
from optgraph import lr_scheduler, optim

SCHEDULES = [
    ("StepLR", dict(step_size=3)),
    ("StepLR", dict(step_size=7, gamma=0.5)),
    ("StepLR", dict(step_size=1, gamma=0.97)),
]


@pytest.fixture(scope="module")
def mlp_example():
    return make_model("mlp"), make_batch("mlp", 4, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name,kwargs", SCHEDULES, ids=[f"{n}-{k}" for n, k in SCHEDULES])
def test_schedule_matches_torch_for_100_epochs(mlp_example, name, kwargs):
    model, (x, y) = mlp_example
    groups = [{"params": ["head.*"], "lr": 0.3}]
    artifact = optgraph.compile(
        model, (x,), (y,), nn.CrossEntropyLoss(),
        optimizer=optim.SGD(lr=0.1, param_groups=groups), lr_scheduler=getattr(lr_scheduler, name)(**kwargs),
    )  # fmt: skip
    session = optgraph.TrainingSession(artifact, providers=["CPUExecutionProvider"])
    params = dict(model.named_parameters())
    torch_opt = torch.optim.SGD(
        [{"params": [params["head.weight"], params["head.bias"]], "lr": 0.3},
         {"params": [p for n, p in params.items() if not n.startswith("head.")]}], lr=0.1,
    )  # fmt: skip
    torch_sched = getattr(torch.optim.lr_scheduler, name)(torch_opt, **kwargs)
    schedule = getattr(lr_scheduler, name)(**kwargs)
    for epoch in range(101):
        expected = [g["lr"] for g in torch_opt.param_groups]
        assert session.lr == pytest.approx(expected, rel=1e-12), f"epoch {epoch}"
        assert [schedule.value(epoch, base) for base in (0.3, 0.1)] == pytest.approx(expected, rel=1e-12)
        session.scheduler_step()
        torch_opt.step()
        torch_sched.step()


def test_step_lr_rejects_bad_step_size():
    with pytest.raises(ValueError, match="positive integer step_size"):
        lr_scheduler.StepLR(step_size=0)
