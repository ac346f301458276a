"""TrainingSession.load_state_dict: torch's key rules, dtype and shape checks, all or nothing; load_state."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from models import make_batch, make_model
from torch import nn

import optgraph
from optgraph import optim

CPU = ["CPUExecutionProvider"]


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 6)
        self.head = nn.Linear(6, 10, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens):
        return self.head(self.embed(tokens))


@pytest.fixture(scope="module")
def cnn():
    model = make_model("cnn")
    x, y = make_batch("cnn", 8, torch.Generator().manual_seed(0))
    artifact = optgraph.compile(model, (x,), (y,), nn.CrossEntropyLoss(), optimizer=optim.Adam(lr=0.01))
    return model, artifact, (x.numpy(), y.numpy())


@pytest.fixture(scope="module")
def tied():
    model = Tied()
    tokens = torch.randint(0, 10, (4,), generator=torch.Generator().manual_seed(0))
    artifact = optgraph.compile(model, (tokens,), (tokens,), nn.CrossEntropyLoss(), optimizer=optim.SGD(lr=0.1))
    return model, artifact, (tokens.numpy(), tokens.numpy())


def _everything(session):
    return session.read_state()


def _assert_same(before, after):
    assert before.keys() == after.keys()
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)


def test_a_torch_state_dict_loads_and_the_session_trains_on_from_it(cnn):
    model, artifact, batch = cnn
    session = optgraph.TrainingSession(artifact, providers=CPU)
    session.step(*batch)
    other = make_model("cnn", seed=5)
    result = session.load_state_dict(other.state_dict())
    assert result == ([], []) and result.missing_keys == [] and result.unexpected_keys == []
    for name, value in other.state_dict().items():
        np.testing.assert_array_equal(session.state_dict()[name], value.numpy(), err_msg=name)
    # the optimizer state is the session's own: it is not reset by a load
    assert session.optimizer_state_dict()
    # the loaded weights are those the next step starts from (double-buffered and in-place state alike)
    reference = optgraph.TrainingSession(artifact, providers=CPU)
    reference.load_state(session.read_state())
    assert session.step(*batch) == reference.step(*batch)
    _assert_same(reference.read_state(), session.read_state())


def test_a_state_dict_of_the_session_round_trips(cnn):
    _, artifact, batch = cnn
    session = optgraph.TrainingSession(artifact, providers=CPU)
    saved = session.state_dict()
    for _ in range(2):
        session.step(*batch)
    session.load_state_dict(saved)
    _assert_same(saved, session.state_dict())


def test_strict_lists_missing_and_unexpected_keys_as_torch_does_and_writes_nothing(cnn):
    model, artifact, batch = cnn
    session = optgraph.TrainingSession(artifact, providers=CPU)
    session.step(*batch)
    before = _everything(session)
    state = {k: v.numpy() + 1 for k, v in model.state_dict().items() if k != "fc.bias"}
    state["extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(RuntimeError) as ours:
        session.load_state_dict(state)
    with pytest.raises(RuntimeError) as theirs:
        make_model("cnn").load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
    message = str(ours.value)
    assert 'Missing key(s) in state_dict: "fc.bias". ' in message
    assert 'Unexpected key(s) in state_dict: "extra.weight". ' in message
    assert message.index("Missing") < message.index("Unexpected")
    assert str(theirs.value).split("\n", 1)[1] == message.split("\n", 1)[1]  # the same lines as torch's
    _assert_same(before, _everything(session))


def test_non_strict_loads_what_is_given_and_reports_the_rest(cnn):
    model, artifact, _ = cnn
    session = optgraph.TrainingSession(artifact, providers=CPU)
    before = session.state_dict()
    state = {"fc.weight": np.ones((10, 8), np.float32), "unknown": np.ones(1)}
    result = session.load_state_dict(state, strict=False)
    expected = make_model("cnn").load_state_dict({k: torch.as_tensor(v) for k, v in state.items()}, strict=False)
    # the same keys (in the manifest's order: parameters, then buffers); torch's BatchNorm alone fills in a
    # missing num_batches_tracked of a plain dict, which optgraph reports as missing like any other buffer
    assert sorted(result.missing_keys) == sorted([*expected.missing_keys, "bn1.num_batches_tracked"])
    assert result.unexpected_keys == expected.unexpected_keys
    after = session.state_dict()
    np.testing.assert_array_equal(after["fc.weight"], 1.0)
    for name in before:
        if name != "fc.weight":
            np.testing.assert_array_equal(after[name], before[name])


@pytest.mark.parametrize(
    "case, change, match",
    [
        ("shape", lambda s: s.update({"fc.weight": np.zeros((10, 9), np.float32)}), r"size mismatch for fc\.weight"),
        ("dtype", lambda s: s.update({"fc.bias": np.zeros(10, np.float64)}), r"dtype mismatch for fc\.bias"),
        ("buffer dtype", lambda s: s.update({"bn1.num_batches_tracked": np.array(1.0)}), r"dtype mismatch"),
        ("not an array", lambda s: s.update({"fc.bias": object()}), r"fc\.bias"),
    ],
)
@pytest.mark.parametrize("strict", [True, False])
def test_a_bad_array_is_an_error_and_the_state_is_untouched(cnn, case, change, match, strict):
    model, artifact, batch = cnn
    session = optgraph.TrainingSession(artifact, providers=CPU)
    session.step(*batch)
    before = _everything(session)
    state = {k: v.numpy() + 1 for k, v in model.state_dict().items()}
    change(state)
    with pytest.raises(RuntimeError, match=match):
        session.load_state_dict(state, strict=strict)
    _assert_same(before, _everything(session))


def test_tied_weights_load_under_either_name(tied):
    model, artifact, batch = tied
    assert artifact.manifest.extra["aliases"] == {"head.weight": "embed.weight"}
    session = optgraph.TrainingSession(artifact, providers=CPU)
    assert set(session.state_dict()) == set(model.state_dict())
    value = np.full((10, 6), 0.5, np.float32)
    result = session.load_state_dict({"head.weight": value}, strict=False)
    assert result.missing_keys == ["embed.weight"]
    np.testing.assert_array_equal(session.state_dict()["embed.weight"], value)
    # both names: the graph's name wins; torch's strict rules count the alias as a key of its own
    session.load_state_dict({"embed.weight": value * 2, "head.weight": value * 3})
    np.testing.assert_array_equal(session.state_dict()["head.weight"], value * 2)
    with pytest.raises(RuntimeError, match='Missing key.*"head.weight"'):
        session.load_state_dict({"embed.weight": value})
    session.step(*batch)


def test_load_state_checks_names_dtypes_and_shapes_before_writing(cnn):
    _, artifact, batch = cnn
    session = optgraph.TrainingSession(artifact, providers=CPU)
    session.step(*batch)
    before = _everything(session)
    with pytest.raises(KeyError, match="nope"):
        session.load_state({"fc.bias": np.zeros(10, np.float32), "nope": np.zeros(1)})
    with pytest.raises(ValueError, match="size mismatch for counter.step"):
        session.load_state({"fc.bias": np.zeros(10, np.float32), "counter.step": np.zeros(2, np.int64)})
    _assert_same(before, _everything(session))
    session.load_state({"counter.step": np.array(7, np.int64)})
    assert int(session.read_state(["counter.step"])["counter.step"]) == 7


def test_a_load_is_a_copy_not_a_view(cnn):
    model, artifact, batch = cnn
    session = optgraph.TrainingSession(artifact, providers=CPU)
    state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    session.load_state_dict(state)
    state["fc.weight"][:] = 42.0
    assert not np.any(session.state_dict()["fc.weight"] == 42.0)
    session.step(*batch)
    assert not np.any(state["fc.weight"] != 42.0)
