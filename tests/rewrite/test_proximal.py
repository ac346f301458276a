"""compile(proximal_mu=...): FedProx's term in the train step equals torch's loss with the term added by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from models import assert_close, clone, make_batch, make_model
from torch import nn

import optgraph
from optgraph import optim
from optgraph.artifact import Artifact
from optgraph.artifact.names import PROXIMAL_MU_KEY, Role, global_param_name
from optgraph.errors import ArtifactError

CPU = ["CPUExecutionProvider"]
MU = 0.3


def _proximal_loss(model, anchor, mu, loss):
    term = sum(((p - anchor[n]) ** 2).sum() for n, p in model.named_parameters() if p.requires_grad)
    return loss + mu / 2 * term


@pytest.mark.parametrize(
    "kind, make_optimizer, steps",
    [
        ("mlp", lambda: (optim.SGD(lr=0.1), lambda p: torch.optim.SGD(p, lr=0.1)), 3),
        ("cnn", lambda: (optim.Adam(lr=0.01), lambda p: torch.optim.Adam(p, lr=0.01)), 3),
    ],
    ids=["mlp-sgd", "cnn-adam"],
)
def test_a_local_step_equals_torch_with_the_term_added_by_hand(kind, make_optimizer, steps):
    ours, theirs = make_optimizer()
    model = make_model(kind)
    gen = torch.Generator().manual_seed(1)
    batches = [make_batch(kind, 8, gen) for _ in range(steps)]
    artifact = optgraph.compile(model, batches[0][:1], batches[0][1:], nn.CrossEntropyLoss(), ours, proximal_mu=MU)
    assert artifact.manifest.extra[PROXIMAL_MU_KEY] == MU
    session = optgraph.TrainingSession(artifact, providers=CPU)
    # the global weights default to the initial parameters: the first step's term is zero
    names = [n for n, p in model.named_parameters()]
    state = session.read_state([global_param_name(n) for n in names])
    for n in names:
        np.testing.assert_array_equal(state[global_param_name(n)], model.state_dict()[n].numpy())
    # a client sets them to the weights the server sent: here, the initial ones moved away
    anchor = {n: p.detach() + 0.05 * torch.randn(p.shape, generator=gen) for n, p in model.named_parameters()}
    session.load_state({global_param_name(n): a.numpy() for n, a in anchor.items()})

    reference = clone(model)
    reference.train()
    opt = theirs(reference.parameters())
    for i, (x, y) in enumerate(batches):
        opt.zero_grad()
        loss = _proximal_loss(reference, anchor, MU, nn.CrossEntropyLoss()(reference(x), y))
        loss.backward()
        opt.step()
        got = session.step(x.numpy(), y.numpy())
        assert got == pytest.approx(loss.item(), rel=1e-5), f"loss of step {i}"
    for name, value in reference.state_dict().items():
        assert_close(session.state_dict()[name], value, name, rtol=1e-5, atol=1e-6)


def test_the_term_is_off_by_default_and_with_mu_zero():
    model = make_model("mlp")
    x, y = make_batch("mlp", 4, torch.Generator().manual_seed(0))
    for mu in (None, 0.0):
        artifact = optgraph.compile(model, (x,), (y,), nn.CrossEntropyLoss(), optim.SGD(lr=0.1), proximal_mu=mu)
        assert artifact.manifest.extra[PROXIMAL_MU_KEY] is None
        assert not any(t.role == Role.GLOBAL_PARAM for t in artifact.manifest.state_specs().values())


@pytest.mark.parametrize("mu", [-0.1, float("inf"), float("nan"), True, "0.1"])
def test_a_bad_mu_is_refused(mu):
    model = make_model("mlp")
    x, y = make_batch("mlp", 4, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="proximal_mu"):
        optgraph.compile(model, (x,), (y,), nn.CrossEntropyLoss(), proximal_mu=mu)


def test_frozen_parameters_have_no_global_weights_and_the_artifact_round_trips(tmp_path):
    model = make_model("mlp")
    model.fc1.weight.requires_grad_(False)
    x, y = make_batch("mlp", 4, torch.Generator().manual_seed(0))
    artifact = optgraph.compile(model, (x,), (y,), nn.CrossEntropyLoss(), optim.SGD(lr=0.1), proximal_mu=MU)
    globals_ = {t.name for t in artifact.manifest.state_specs().values() if t.role == Role.GLOBAL_PARAM}
    assert global_param_name("fc1.weight") not in globals_
    assert global_param_name("fc1.bias") in globals_
    artifact.save(tmp_path / "a")
    session = optgraph.TrainingSession(tmp_path / "a", providers=CPU)
    assert np.isfinite(session.step(x.numpy(), y.numpy()))


@pytest.mark.parametrize("owner", ["fc2.weight", ["fc1.weight"], {"p": 1}, None])
def test_global_weights_after_the_wrong_param_are_an_artifact_error(tmp_path, owner):
    model = make_model("mlp")
    x, y = make_batch("mlp", 4, torch.Generator().manual_seed(0))
    artifact = optgraph.compile(model, (x,), (y,), nn.CrossEntropyLoss(), optim.SGD(lr=0.1), proximal_mu=MU)
    directory = artifact.save(tmp_path / "a")
    data = json.loads((directory / "manifest.json").read_text())
    for graph in data["graphs"].values():
        for t in graph["inputs"]:
            if t["name"] == global_param_name("fc1.weight"):
                t["param"] = owner
    (directory / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="global weights 'global.fc1.weight' must be named"):
        Artifact.load(directory)
