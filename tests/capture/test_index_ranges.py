"""The index ranges read off traced graphs accept exactly what torch accepts, or (untraceable) refuse nothing.

Each case traces ``fn(weight, index)`` and its gradient as capture does
(``make_fx``, optgraph's decompositions and patches), reads the range of
``index``, and then, for every position and a sweep of values, compares
"the record accepts this index tensor" with "torch runs on it".
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

from optgraph.artifact.index_range import IndexRange
from optgraph.capture.decompositions import train_decompositions
from optgraph.capture.index_ranges import index_ranges
from optgraph.capture.patches import traceable_modules


def _ids(*shape, high=3, dtype=torch.int64):
    return torch.arange(int(torch.tensor(shape).prod())).reshape(shape).remainder(high).to(dtype)


def _two_tables(w, i):
    return F.embedding(i, w).sum() + w.index_select(1, i).sum()


def _mse_one_hot(w, i):
    return ((w - F.one_hot(i, 4).float()) ** 2).mean()


# name: (weight shape, example index, fn(weight, index), expected IndexRange or None for "no record")
EXACT = {
    "gather": ((3, 4), _ids(3, 1, high=4), lambda w, i: w.gather(1, i), IndexRange(0, 4)),
    "index-select": ((3, 4), _ids(2, high=4), lambda w, i: w.index_select(1, i), IndexRange(0, 4)),
    "index-tensor": ((3, 4), _ids(2), lambda w, i: w[i], IndexRange(-3, 3)),
    "index-tensor-dim1": ((3, 4), _ids(2), lambda w, i: w[:, i], IndexRange(-4, 4)),
    "embedding": ((3, 4), _ids(2, 2), lambda w, i: F.embedding(i, w), IndexRange(0, 3)),
    "embedding-padding-idx": ((3, 4), _ids(5), lambda w, i: F.embedding(i, w, padding_idx=1), IndexRange(0, 3)),
    "scatter-add": ((3, 4), _ids(3, 4, high=5), lambda w, i: torch.zeros(3, 5).scatter_add(1, i, w), IndexRange(0, 5)),
    "index-add": ((3, 4), _ids(3, high=5), lambda w, i: torch.zeros(5, 4).index_add(0, i, w), IndexRange(0, 5)),
    "take": ((3, 4), _ids(2, high=12), lambda w, i: w.take(i), IndexRange(-12, 12)),
    "one-hot": ((3, 4), _ids(3, high=4), _mse_one_hot, IndexRange(0, 4)),
    "cross-entropy": ((3, 4), _ids(3, high=4), lambda w, i: F.cross_entropy(w, i), IndexRange(0, 4, (-100,))),
    "cross-entropy-ignore-inside": (
        (3, 4),
        _ids(3, high=4),
        lambda w, i: F.cross_entropy(w, i, ignore_index=2),
        IndexRange(0, 4),
    ),  # fmt: skip
    "cross-entropy-ignore-7": (
        (3, 4),
        _ids(3, high=4),
        lambda w, i: F.cross_entropy(w, i, ignore_index=7),
        IndexRange(0, 4, (7,)),
    ),  # fmt: skip
    "cross-entropy-smoothing-weight": (
        (3, 4),
        _ids(3, high=4),
        lambda w, i: F.cross_entropy(w, i, weight=torch.tensor([1.0, 2.0, 0.5, 1.0]), label_smoothing=0.1),
        IndexRange(0, 4, (-100,)),
    ),  # fmt: skip
    "cross-entropy-per-pixel": (
        (2, 4, 2, 2),
        _ids(2, 2, 2, high=4),
        lambda w, i: F.cross_entropy(w, i),
        IndexRange(0, 4, (-100,)),
    ),  # fmt: skip
    "cross-entropy-sum": (
        (3, 4),
        _ids(3, high=4),
        lambda w, i: F.cross_entropy(w, i, reduction="sum"),
        IndexRange(0, 4, (-100,)),
    ),  # fmt: skip
    "nll": ((3, 4), _ids(3, high=4), lambda w, i: F.nll_loss(w.log_softmax(1), i), IndexRange(0, 4, (-100,))),
    "relayout-and-widening-cast": (
        (3, 4),
        _ids(2, 3, dtype=torch.int32),
        lambda w, i: F.embedding(i.reshape(-1).unsqueeze(0).transpose(0, 1).long(), w),
        IndexRange(0, 3),
    ),  # fmt: skip
    "slice-of-input": (
        (3, 4),
        _ids(2, 3),
        lambda w, i: F.embedding(i[:, 1:], w),
        IndexRange(0, 3, (), (None, range(1, 3))),
    ),  # fmt: skip
    "select-of-input": (
        (3, 4),
        _ids(2, 3),
        lambda w, i: F.embedding(i[:, -1], w),
        IndexRange(0, 3, (), (None, range(2, 3))),
    ),  # fmt: skip
    "two-sites-intersect": ((3, 4), _ids(2), _two_tables, IndexRange(0, 3)),
    "masked-fill": ((3, 4), _ids(4), lambda w, i: F.embedding(i.masked_fill(i == 5, 0), w), IndexRange(0, 3, (5,))),
}

# Sites the walker does not trace: no record, so nothing torch accepts is refused.
UNTRACED = {
    "take-along-dim-remainder": ((3, 4), _ids(3, 1, high=4), lambda w, i: torch.take_along_dim(w, i, 1)),
    "clamped": ((3, 4), _ids(2), lambda w, i: F.embedding(i.clamp(0, 2), w)),
    "shifted": ((3, 4), _ids(2, high=2), lambda w, i: F.embedding(i + 1, w)),
    "masked-by-lt": ((3, 4), _ids(2), lambda w, i: F.embedding(torch.where(i < 3, i, 0), w)),
    "narrowing-cast": ((3, 4), _ids(2), lambda w, i: F.embedding(i.int(), w)),
    "float-input-cast": ((3, 4), _ids(2, dtype=torch.float32), lambda w, i: F.embedding(i.long(), w)),
    "user-one-hot-compare": ((3, 4), _ids(3, high=4), lambda w, i: (i.unsqueeze(-1) == torch.arange(4)) * w),
    "slice-after-relayout": ((3, 4), _ids(2, 3), lambda w, i: F.embedding(i.t()[1:], w)),
    "disjoint-parts": ((3, 4), _ids(2, 2), lambda w, i: F.embedding(i[:, 0], w) + F.embedding(i[:, 1], w[:2])),
}


def _traced_range(shape, index, fn) -> IndexRange | None:
    weight = torch.randn(shape)

    def step(w, i):
        w = w.detach().requires_grad_(True)
        out = fn(w, i)
        (grad,) = torch.autograd.grad(out.float().sum(), w, allow_unused=True)
        return out, w if grad is None else grad

    with traceable_modules(nn.Module()):
        graph_module = make_fx(step, decomposition_table=train_decompositions(), tracing_mode="fake")(weight, index)
    return index_ranges(graph_module, 2).get(1)


def _torch_accepts(fn, weight, index) -> bool:
    try:
        fn(weight, index)
    except (IndexError, RuntimeError):
        return False
    return True


def _sweep(shape, index, fn, record: IndexRange | None, extra: tuple[int, ...] = ()):
    weight = torch.randn(shape)
    values = sorted(set(range(-14, 15)) | {-100, *extra})
    for position, value in itertools.product(itertools.product(*(range(n) for n in index.shape)), values):
        probe = index.clone()
        probe[position] = value
        ours = record is None or record.first_violation(probe.numpy()) is None
        yield position, value, ours, _torch_accepts(fn, weight, probe)


@pytest.mark.parametrize("name", list(EXACT), ids=list(EXACT))
def test_range_accepts_exactly_what_torch_accepts(name):
    shape, index, fn, expected = EXACT[name]
    record = _traced_range(shape, index, fn)
    assert record == expected
    for position, value, ours, theirs in _sweep(shape, index, fn, record, expected.also):
        assert ours == theirs, f"value {value} at {position}: record accepts {ours}, torch {theirs}"


@pytest.mark.parametrize("name", list(UNTRACED), ids=list(UNTRACED))
def test_untraced_index_gives_no_record(name):
    shape, index, fn = UNTRACED[name]
    assert _traced_range(shape, index, fn) is None


def test_symbolic_size_gives_no_range():
    """An index into the (symbolic) batch dimension has no static bound."""
    mode = FakeTensorMode(shape_env=ShapeEnv())
    context = StatelessSymbolicContext(dynamic_sizes=[DimDynamic.DYNAMIC, DimDynamic.STATIC])
    x = mode.from_tensor(torch.randn(4, 3), symbolic_context=context)
    i = mode.from_tensor(torch.tensor([0, 1]))
    with mode:
        graph_module = make_fx(lambda x, i: (x[i],), tracing_mode="fake")(x, i)
    assert index_ranges(graph_module, 2) == {}
