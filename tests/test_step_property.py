"""Property: whatever is fed to ``session.step``, it trains, or refuses with InputError / NonFiniteError and changes nothing.

Random batches for a small compiled model (a float input, token ids into an
embedding, class targets with ``ignore_index``): random argument counts,
dtypes, ranks and sizes, NaN/inf at random places, values in and out of
the valid index ranges, as numpy arrays, Python lists or torch tensors.
A plain oracle decides what each batch must give: a float loss, an
InputError (malformed, lossy conversion, index out of range) or a
NonFiniteError (non-finite data, an empty batch, only ignored targets).
Any other exception fails, and after an error the parameters, buffers,
optimizer state and learning rate must be bit-identical to before.

CI runs the ``optgraph-ci`` profile (well under a minute). A larger run::

    OPTGRAPH_PROPERTY_PROFILE=optgraph-large python -m pytest -n 0 -q tests/test_step_property.py

(``optgraph-large``: 20,000 examples; ``OPTGRAPH_PROPERTY_EXAMPLES=N`` overrides the count of any profile).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch import nn

import optgraph
from optgraph import lr_scheduler, optim
from optgraph.errors import InputError, NonFiniteError

settings.register_profile(
    "optgraph-ci", max_examples=500, deadline=None, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)  # fmt: skip
settings.register_profile("optgraph-large", settings.get_profile("optgraph-ci"), max_examples=20_000)
PROFILE = settings.get_profile(os.environ.get("OPTGRAPH_PROPERTY_PROFILE", "optgraph-ci"))
if "OPTGRAPH_PROPERTY_EXAMPLES" in os.environ:
    PROFILE = settings(PROFILE, max_examples=int(os.environ["OPTGRAPH_PROPERTY_EXAMPLES"]))

VOCAB, CLASSES, SEQ, FEATURES, IGNORE = 7, 5, 3, 4, -100
DTYPES = ["bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64", "complex64"]
SPECIAL_FLOATS = [np.nan, np.inf, -np.inf, 1e39, -1e39]
SPECIAL_INTS = [IGNORE, -1, VOCAB, CLASSES, 2**31, -(2**40), 2**62]


class Tagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, FEATURES)
        self.fc = nn.Linear(FEATURES, FEATURES)
        self.head = nn.Linear(FEATURES, CLASSES)

    def forward(self, features, tokens):
        return self.head(torch.tanh(self.fc(features) + self.embed(tokens).mean(1)))


@dataclass(frozen=True)
class Arg:
    dtype: str
    trailing: tuple[int, ...]  # the dims after the batch
    valid: tuple[int, int, tuple[int, ...]] | None  # (low, high, also) for index inputs


ARGS = [
    Arg("float32", (FEATURES,), None),
    Arg("int64", (SEQ,), (0, VOCAB, ())),
    Arg("int64", (), (0, CLASSES, (IGNORE,))),
]


@pytest.fixture(scope="module")
def session():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, FEATURES, generator=gen)
    tokens = torch.randint(0, VOCAB, (4, SEQ), generator=gen)
    y = torch.randint(0, CLASSES, (4,), generator=gen)
    artifact = optgraph.compile(
        Tagger(), (x, tokens), (y,), nn.CrossEntropyLoss(),
        optimizer=optim.Adam(lr=1e-3), lr_scheduler=lr_scheduler.StepLR(step_size=1, gamma=0.5),
    )  # fmt: skip
    return optgraph.TrainingSession(artifact, providers=["CPUExecutionProvider"])


# -- batches ---------------------------------------------------------------
def _elements(dtype: np.dtype, valid) -> st.SearchStrategy:
    """Values of ``dtype``: mostly valid ones, some anywhere, some special (out of range, NaN, inf)."""
    if dtype.kind == "b":
        return st.booleans()
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        low, high, also = valid if valid is not None else (-3, 4, ())
        fits = [v for v in (*SPECIAL_INTS, *also) if info.min <= v <= info.max]
        return st.one_of(
            st.integers(max(low, info.min), min(high - 1, info.max)), st.integers(max(-12, info.min), 12),
            st.sampled_from(fits),
        )  # fmt: skip
    specials = [v for v in SPECIAL_FLOATS if not np.isfinite(v) or abs(v) <= float(np.finfo(dtype).max)]
    return st.one_of(st.floats(-3, 3, width=16), st.sampled_from(specials))


def _valid(arg: Arg, batch: int) -> st.SearchStrategy:
    if arg.valid is None:
        elements = st.floats(-3, 3, width=32)
    else:
        low, high, also = arg.valid
        elements = st.one_of(st.integers(low, high - 1), st.integers(low, high - 1), st.sampled_from([low, *also]))
    return hnp.arrays(np.dtype(arg.dtype), (batch, *arg.trailing), elements=elements)


@st.composite
def _corrupt(draw, arrays: list[np.ndarray]) -> None:
    """One change that may or may not make the batch invalid: dtype, shape, one value, or the count."""
    what = draw(st.sampled_from(["dtype", "dtype", "shape", "value", "value", "value", "count"]))
    if what == "count":
        if draw(st.booleans()) and arrays:
            del arrays[draw(st.integers(0, len(arrays) - 1))]
        else:
            arrays.append(arrays[-1] if arrays else np.zeros(1, np.float32))
        return
    if not arrays:
        return
    i = draw(st.integers(0, len(arrays) - 1))
    arg = ARGS[min(i, len(ARGS) - 1)]
    dtype = arrays[i].dtype
    if what == "dtype":
        dtype = np.dtype(draw(st.sampled_from(DTYPES)))
        source = arrays[i].real if arrays[i].dtype.kind == "c" else arrays[i]
        with np.errstate(over="ignore", invalid="ignore"):
            arrays[i] = source.astype(dtype)
    elif what == "shape":
        shape = tuple(draw(st.lists(st.integers(0, 5), max_size=3)))
        arrays[i] = draw(hnp.arrays(dtype, shape, elements=_elements(dtype, arg.valid)))
    elif arrays[i].size:
        position = draw(st.integers(0, arrays[i].size - 1))
        with np.errstate(over="ignore", invalid="ignore"):
            arrays[i].flat[position] = draw(_elements(dtype, arg.valid))


def _form(array: np.ndarray, form: str):
    if form == "list":
        return array.tolist()
    if form == "torch":
        return torch.from_numpy(array.copy())
    return array


@st.composite
def batches(draw):
    batch = draw(st.sampled_from([0, 1, 2, 2, 3, 3, 5, 5]))
    arrays = [draw(_valid(arg, batch)) for arg in ARGS]
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 1, 2, 3]))):
        draw(_corrupt(arrays))
    forms = [draw(st.sampled_from(["numpy", "numpy", "list", "torch"])) for _ in arrays]
    return [_form(a, f) for a, f in zip(arrays, forms)]


# -- the oracle --------------------------------------------------------------
OK, BAD_INPUT, NON_FINITE = "a float", "InputError", "NonFiniteError"


def _as_numpy(value) -> np.ndarray:
    return value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _convert(given: np.ndarray, dtype: str) -> np.ndarray | None:
    """The value as ``dtype`` by the documented rule (same_kind, nothing lost); None when refused."""
    target = np.dtype(dtype)
    if not np.can_cast(given.dtype, target, casting="same_kind"):
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        converted = given.astype(target)
    if given.size and target.kind in "iu" and given.dtype.kind in "iub":
        if int(given.min()) < np.iinfo(target).min or int(given.max()) > np.iinfo(target).max:
            return None
    if target.kind == "f" and (np.isinf(converted) & np.isfinite(given)).any():
        return None
    return converted


def expected_outcome(values) -> str:
    if len(values) != len(ARGS):
        return BAD_INPUT
    arrays = []
    for arg, value in zip(ARGS, values):
        array = _convert(_as_numpy(value), arg.dtype)
        if array is None or array.shape[1:] != arg.trailing or array.ndim != 1 + len(arg.trailing):
            return BAD_INPUT
        if arg.valid is not None:
            low, high, also = arg.valid
            if not np.all(((array >= low) & (array < high)) | np.isin(array, also)):
                return BAD_INPUT
        arrays.append(array)
    if len({a.shape[0] for a in arrays}) != 1:
        return BAD_INPUT
    features, _, target = arrays
    if not np.isfinite(features).all() or target.size == 0 or np.all(target == IGNORE):
        return NON_FINITE  # an empty or all-ignored batch: torch's mean loss is 0/0 = nan
    return OK


# -- the property --------------------------------------------------------------
def _snapshot(session) -> dict[str, np.ndarray]:
    optimizer = {f"{p}/{k}": v for p, s in session.optimizer_state_dict().items() for k, v in s.items()}
    return {**session.state_dict(), **optimizer, "lr": np.asarray(session.lr)}


@PROFILE
@given(values=batches())
def test_step_trains_or_refuses_and_keeps_state(session, values):
    expected = expected_outcome(values)
    event(f"expected {expected}")
    before = _snapshot(session)
    try:
        loss = session.step(*values)
    except (InputError, NonFiniteError) as e:
        assert type(e).__name__ == expected, f"got {type(e).__name__} ({e}), expected {expected}"
        after = _snapshot(session)
        assert before.keys() == after.keys()
        for key, value in before.items():
            np.testing.assert_array_equal(after[key], value, err_msg=key)
        return
    assert expected == OK, f"step returned {loss}, expected {expected}"
    assert isinstance(loss, float) and np.isfinite(loss)
