"""Small parameters packed into one update train bit-identically to one update per parameter, for every optimizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from catalog import OPTIMIZERS
from models import make_batch, make_model
from torch import nn

import optgraph
from optgraph import lr_scheduler, optim
from optgraph.artifact.names import PACKED_KEY, PARAM_KEY, GraphName, Role
from optgraph.errors import NonFiniteError
from optgraph.rewrite import attach_optimizer

STEPS = 10
LIMIT = 100  # elements: the CNN's conv2.weight (216) keeps its own update, the other five parameters pack

CASES = [(name, {}) for name in OPTIMIZERS] + [
    ("Adam", {"grad_accumulation_steps": 3, "clip_grad_norm": 0.5}),  # and a NaN batch: a skipped step
    ("SGD", {"momentum": 0.9, "param_groups": [{"params": ["bn1.*", "fc.*"], "lr": 0.02}]}),
    ("NAdam", {"lr_scheduler": lr_scheduler.OneCycleLR(max_lr=0.05, total_steps=20)}),  # cycled beta1
]


def _train(name, options, pack: bool, monkeypatch):
    monkeypatch.setattr(attach_optimizer, "PACKING", pack)
    monkeypatch.setattr(attach_optimizer, "PACK_PARAM_MAX_ELEMENTS", LIMIT)
    compile_options = {
        k: options[k] for k in ("grad_accumulation_steps", "clip_grad_norm", "lr_scheduler") if k in options
    }
    optimizer = getattr(optim, name)(**{k: v for k, v in options.items() if k not in compile_options})
    gen = torch.Generator().manual_seed(1)
    x, y = make_batch("cnn", 8, gen)
    artifact = optgraph.compile(
        make_model("cnn"), (x,), (y,), nn.CrossEntropyLoss(), optimizer=optimizer, **compile_options
    )
    session = optgraph.TrainingSession(artifact, providers=["CPUExecutionProvider"])
    losses = []
    for step in range(STEPS):
        x, y = (t.numpy() for t in make_batch("cnn", 8, gen))
        if step == 4 and "clip_grad_norm" in options:
            x[1, 0, 2, 3] = np.nan
        try:
            losses.append(session.step(x, y))
        except NonFiniteError:
            losses.append(None)
        if step % 3 == 2:
            session.scheduler_step()
    return artifact, losses, session.state_dict(), session.optimizer_state_dict()


@pytest.mark.parametrize("name,options", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_packed_training_is_bit_identical(name, options, monkeypatch):
    artifact, losses, params, slots = _train(name, options, True, monkeypatch)
    _, their_losses, their_params, their_slots = _train(name, options, False, monkeypatch)
    inputs = artifact.manifest.graphs[GraphName.TRAIN_STEP].inputs
    packs = [t.meta[PACKED_KEY] for t in inputs if t.role == Role.OPTIM_STATE and PACKED_KEY in t.meta]
    own = {t.meta[PARAM_KEY] for t in inputs if t.role == Role.OPTIM_STATE and PARAM_KEY in t.meta}
    if name == "Adafactor":
        assert not packs, "Adafactor's update is not element-wise: one per parameter"
    elif slots:
        assert "conv2.weight" in own and not any("conv2.weight" in p for p in packs), "over the limit: its own"
        assert own <= {"conv2.weight"}, "every other parameter is in a pack"
    assert losses == their_losses
    assert None in losses or "clip_grad_norm" not in options, "the NaN batch was skipped"
    assert params.keys() == their_params.keys()
    for key, value in their_params.items():
        np.testing.assert_array_equal(params[key], value, err_msg=key)
    assert slots.keys() == their_slots.keys()
    for param, theirs in their_slots.items():
        assert list(slots[param]) == list(theirs), f"slots of {param}, in torch's order"
        for slot, value in theirs.items():
            assert slots[param][slot].shape == value.shape and slots[param][slot].dtype == value.dtype
            np.testing.assert_array_equal(slots[param][slot], value, err_msg=f"{slot} of {param}")
