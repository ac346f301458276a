"""Class targets and token ids out of range are refused before a step runs, as torch refuses them.

torch raises for a class target outside ``[0, classes)`` (unless it is the
loss's ``ignore_index``) and for a token id outside the embedding table;
an ONNX graph would take -1 as the last class or fail inside onnxruntime.
Each case compiles a small model, feeds bad values (the session must raise
InputError naming the input, the value, where it is and the valid range,
and keep its state bit for bit), then trains on valid data with ignored
targets and matches torch step for step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from models import assert_close, clone
from torch import nn

import optgraph
from optgraph import optim
from optgraph.artifact.names import INDEX_RANGE_KEY as INDEX_RANGE
from optgraph.errors import InputError

CPU = ["CPUExecutionProvider"]


class TinyLM(nn.Module):
    """Token ids (batch, seq) -> logits flattened to (batch * seq, vocab)."""

    def __init__(self, vocab: int = 11) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 6)
        self.mix = nn.Linear(6, 6)
        self.head = nn.Linear(6, vocab)

    def forward(self, tokens):
        return self.head(torch.tanh(self.mix(self.embed(tokens)))).flatten(0, 1)


def _mse_one_hot(outputs, target):
    return F.mse_loss(outputs, F.one_hot(target, 4).float())


@dataclass
class Case:
    make: Callable[[], nn.Module]
    batch: Callable[[torch.Generator], tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]]
    loss: Callable
    ignored: int | None  # a value the loss ignores (also valid), or None
    bad: list[tuple[int, tuple[int, ...], int, str]]  # (arg, position, value, message regex)
    dynamic_batch: bool = True


def _classes(shape, classes, features=(8,)):
    return lambda g: (
        (torch.randn(*shape[:1], *features, generator=g),),
        (torch.randint(0, classes, shape, generator=g),),
    )


def _lm_batch(g):
    return (torch.randint(0, 11, (2, 5), generator=g),), (torch.randint(0, 11, (10,), generator=g),)


def _seg_batch(g):
    return (torch.randn(2, 3, 4, 4, generator=g),), (torch.randint(0, 5, (2, 4, 4), generator=g),)


CASES = {
    "cross-entropy": Case(
        lambda: nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4)), _classes((6,), 4),
        nn.CrossEntropyLoss(), -100,
        [(1, (2,), -1, r"target 'target': value -1 at index \[2\] is out of range; expected 0 <= value < 4 or one of \[-100\]"),
         (1, (5,), 4, r"target 'target': value 4 at index \[5\] .* expected 0 <= value < 4 or one of \[-100\]"),
         (1, (0,), -101, r"value -101 at index \[0\]")],
    ),
    "cross-entropy-ignore-index-7": Case(
        lambda: nn.Linear(8, 4), _classes((6,), 4), nn.CrossEntropyLoss(ignore_index=7), 7,
        [(1, (1,), -100, r"target 'target': value -100 at index \[1\] .* expected 0 <= value < 4 or one of \[7\]"),
         (1, (3,), 6, r"value 6 at index \[3\]")],
    ),
    "cross-entropy-per-pixel-255": Case(
        lambda: nn.Conv2d(3, 5, 3, padding=1), _seg_batch, nn.CrossEntropyLoss(ignore_index=255), 255,
        [(1, (1, 2, 3), 5, r"target 'target': value 5 at index \[1, 2, 3\] .* expected 0 <= value < 5 or one of \[255\]"),
         (1, (0, 0, 0), -100, r"value -100 at index \[0, 0, 0\]")],
    ),
    "nll": Case(
        lambda: nn.Sequential(nn.Linear(8, 3), nn.LogSoftmax(dim=1)), _classes((6,), 3), nn.NLLLoss(), -100,
        [(1, (4,), -1, r"target 'target': value -1 at index \[4\] .* expected 0 <= value < 3 or one of \[-100\]"),
         (1, (0,), 3, r"value 3 at index \[0\]")],
    ),
    "language-model": Case(
        TinyLM, _lm_batch, nn.CrossEntropyLoss(), -100,
        [(0, (1, 3), 11, r"input 'tokens': value 11 at index \[1, 3\] is out of range; expected 0 <= value < 11$"),
         (0, (0, 0), -1, r"input 'tokens': value -1 at index \[0, 0\]"),
         (1, (7,), 11, r"target 'target': value 11 at index \[7\] .* expected 0 <= value < 11 or one of \[-100\]")],
        dynamic_batch=False,  # flattened (batch * seq) targets
    ),
    "one-hot-mse": Case(
        lambda: nn.Linear(8, 4), _classes((6,), 4), _mse_one_hot, None,
        [(1, (2,), 4, r"target 'target': value 4 at index \[2\] is out of range; expected 0 <= value < 4$"),
         (1, (0,), -1, r"value -1 at index \[0\]")],
    ),
}  # fmt: skip


@pytest.fixture(scope="module", params=list(CASES), ids=list(CASES))
def compiled(request):
    case = CASES[request.param]
    torch.manual_seed(0)
    model = case.make()
    inputs, targets = case.batch(torch.Generator().manual_seed(0))
    artifact = optgraph.compile(
        model, inputs, targets, case.loss, optimizer=optim.Adam(lr=0.01), dynamic_batch=case.dynamic_batch
    )
    return case, model, artifact


def _numpy(batch):
    inputs, targets = batch
    return [t.numpy().copy() for t in (*inputs, *targets)]


def _snapshot(session):
    optimizer = {f"{p}/{k}": v for p, s in session.optimizer_state_dict().items() for k, v in s.items()}
    return {**session.state_dict(), **optimizer, "lr": np.asarray(session.lr)}


def _assert_same(before, after):
    assert before.keys() == after.keys()
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)


def test_out_of_range_values_are_refused_and_state_untouched(compiled):
    case, _, artifact = compiled
    session = optgraph.TrainingSession(artifact, providers=CPU)
    gen = torch.Generator().manual_seed(1)
    session.step(*_numpy(case.batch(gen)))  # optimizer state exists and must stay as it is
    for arg, position, value, message in case.bad:
        arrays = _numpy(case.batch(gen))
        arrays[arg][position] = value
        before = _snapshot(session)
        with pytest.raises(InputError, match=message):
            session.step(*arrays)
        _assert_same(before, _snapshot(session))
        as_lists = [a.tolist() for a in arrays]
        with pytest.raises(InputError, match=message):
            session.step(*as_lists)
        _assert_same(before, _snapshot(session))


def test_manifest_records_the_ranges(compiled, tmp_path):
    case, _, artifact = compiled
    artifact.save(tmp_path / "art")
    manifest = optgraph.TrainingSession(tmp_path / "art", providers=CPU).manifest
    names = manifest.extra["data_inputs"] + manifest.extra["targets"]
    checked = {names[arg] for arg, _, _, _ in case.bad}
    for graph in ("train_step", "eval"):
        recorded = {t.name: t.meta.get(INDEX_RANGE) for t in manifest.graphs[graph].inputs if not t.is_state}
        for name, record in recorded.items():
            assert (record is not None) == (name in checked), (graph, name, record)
    if case.ignored is not None:
        target = next(t for t in manifest.graphs["train_step"].inputs if t.role == "target")
        assert target.meta[INDEX_RANGE]["also"] == [case.ignored]


def test_valid_data_with_ignored_targets_matches_torch(compiled):
    case, model, artifact = compiled
    session = optgraph.TrainingSession(artifact, providers=CPU)
    reference = clone(model)
    torch_opt = torch.optim.Adam(reference.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(2)
    for step in range(4):
        inputs, targets = case.batch(gen)
        if case.ignored is not None:
            targets[0].view(-1)[step % 3 :: 3] = case.ignored
        loss = session.step(*(t.numpy() for t in (*inputs, *targets)))
        torch_opt.zero_grad()
        expected = case.loss(reference(*inputs), *targets)
        expected.backward()
        torch_opt.step()
        assert_close(loss, expected, f"loss at step {step}")
        for key, value in reference.state_dict().items():
            assert_close(session.state_dict()[key], value, f"{key} after step {step}")


def test_eval_refuses_bad_token_ids():
    torch.manual_seed(0)
    model = TinyLM()
    inputs, targets = _lm_batch(torch.Generator().manual_seed(0))
    artifact = optgraph.compile(model, inputs, targets, nn.CrossEntropyLoss(), dynamic_batch=False)
    session = optgraph.TrainingSession(artifact, providers=CPU)
    tokens = inputs[0].numpy().copy()
    with torch.no_grad():
        assert_close(session.eval(tokens), model.eval()(inputs[0]), "eval logits")
    tokens[1, 4] = 11
    with pytest.raises(InputError, match=r"input 'tokens': value 11 at index \[1, 4\] is out of range; expected 0"):
        session.eval(tokens)
    tokens[1, 4] = -3
    with pytest.raises(InputError, match=r"input 'tokens': value -3 at index \[1, 4\]"):
        session.eval(tokens)
    with pytest.raises(IndexError):  # torch refuses the same ids
        model(torch.from_numpy(tokens))
