"""check_batch: dtype conversion by numpy's same_kind rule, alike for every form, and index ranges."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from optgraph.artifact import TensorSpec
from optgraph.artifact.index_range import IndexRange
from optgraph.artifact.names import INDEX_RANGE_KEY as INDEX_RANGE
from optgraph.batch import check_batch
from optgraph.errors import ArtifactError, InputError

DTYPES = ["bool", "uint8", "int8", "int32", "int64", "uint64", "float16", "float32", "float64", "complex64"]


def _spec(dtype: str, shape=("batch",), name="x", role="input", **meta) -> TensorSpec:
    return TensorSpec(name, role, dtype, list(shape), meta=meta)


def _forms(array: np.ndarray):
    """The same values as a numpy array, a torch tensor and (where it keeps the dtype) a Python list."""
    yield "numpy", array
    if array.dtype != np.uint64:
        yield "torch", torch.from_numpy(array.copy())
    if np.asarray(array.tolist()).dtype == array.dtype:
        yield "list", array.tolist()


@pytest.mark.parametrize("expected", DTYPES)
@pytest.mark.parametrize("given", DTYPES)
def test_conversion_follows_same_kind_for_every_form(given, expected):
    array = np.array([0, 1, 1, 0, 1]).astype(given)
    spec = _spec(expected)
    for form, value in _forms(array):
        if np.can_cast(given, expected, casting="same_kind"):
            converted = check_batch([spec], [value], "step()")["x"]
            assert converted.dtype == np.dtype(expected), form
            np.testing.assert_array_equal(converted, array.astype(expected), err_msg=form)
        else:
            message = rf"input 'x': expected {expected} array of shape \[batch\], got dtype {given}, which does not"
            with pytest.raises(InputError, match=message):
                check_batch([spec], [value], "step()")


def test_float_list_is_no_longer_truncated_to_int():
    spec = _spec("int64", role="target", name="target")
    message = (
        r"target 'target': expected int64 array of shape \[batch\], got dtype float(64|32), which does not convert"
    )
    for value in ([0.0, 1.7, 2.2], np.array([0.0, 1.7, 2.2]), torch.tensor([0.0, 1.7, 2.2])):
        with pytest.raises(InputError, match=message):
            check_batch([spec], [value], "step()")


def test_scalars_convert_like_arrays():
    assert check_batch([_spec("float32", shape=())], [2.5], "step()")["x"].dtype == np.float32
    assert check_batch([_spec("int64", shape=())], [3], "step()")["x"] == 3
    with pytest.raises(InputError, match=r"got dtype float64"):
        check_batch([_spec("int64", shape=())], [3.0], "step()")


@pytest.mark.parametrize(
    ("given", "expected", "message"),
    [
        (np.array([1, 2**40]), "int32", r"input 'x': value 1099511627776 does not fit in int32"),
        (np.array([-1, 300]), "int8", r"input 'x': value 300 does not fit in int8 \(-128 to 127\)"),
        (np.array([2**63], dtype=np.uint64), "int64", r"value 9223372036854775808 does not fit in int64"),
        (np.array([1.0, 1e300]), "float32", r"input 'x': value 1e\+300 at \[1\] overflows float32"),
        (torch.tensor([1.0, 7e4]), "float16", r"value 70000.0 at \[1\] overflows float16"),
    ],
    ids=["int64-wraps-int32", "int64-wraps-int8", "uint64-to-int64", "float64-overflows", "float32-overflows"],
)
def test_narrowing_that_loses_values_is_refused(given, expected, message):
    with pytest.raises(InputError, match=message):
        check_batch([_spec(expected)], [given], "step()")


def test_non_finite_floats_pass_conversion():
    """NaN and inf are the train step's business (NonFiniteError), not a conversion loss."""
    converted = check_batch([_spec("float32")], [np.array([np.nan, np.inf, 1.0])], "step()")["x"]
    assert np.isnan(converted[0]) and np.isinf(converted[1])


def test_unconvertible_values_are_refused():
    with pytest.raises(InputError, match=r"input 'x': cannot convert list to an array"):
        check_batch([_spec("float32")], [[[1.0], [2.0, 3.0]]], "step()")
    with pytest.raises(InputError, match=r"got dtype <U1"):
        check_batch([_spec("float32")], [["a", "b"]], "step()")


RANGE = IndexRange(0, 10, (-100,))


def _ranged(record: IndexRange, shape=("batch",)) -> TensorSpec:
    return _spec("int64", shape=shape, name="target", role="target", **{INDEX_RANGE: record.to_json()})


def test_index_range_accepts_range_and_also_values():
    arrays = check_batch([_ranged(RANGE)], [np.array([0, 9, -100, 3])], "step()")
    np.testing.assert_array_equal(arrays["target"], [0, 9, -100, 3])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([0, -1, 3], r"target 'target': value -1 at index \[1\] is out of range; expected 0 <= value < 10 or one of \[-100\]$"),
        ([10, 2, 11], r"value 10 at index \[0\] is out of range; .* \(2 values are out of range\)"),
        ([-99, 2], r"value -99 at index \[0\]"),
    ],
    ids=["negative", "two-too-high", "near-ignore-index"],
)  # fmt: skip
def test_index_range_refuses_other_values(values, message):
    with pytest.raises(InputError, match=message):
        check_batch([_ranged(RANGE)], [np.array(values)], "step()")


def test_index_range_on_a_region_checks_only_that_part():
    record = IndexRange(0, 5, (), (None, range(1, 4, 2)))  # columns 1 and 3
    spec = _ranged(record, shape=("batch", 5))
    ok = np.array([[-7, 0, 99, 4, -1], [8, 1, 8, 2, 8]])
    check_batch([spec], [ok], "step()")
    bad = ok.copy()
    bad[1, 3] = 5
    with pytest.raises(InputError, match=r"value 5 at index \[1, 3\] is out of range; expected 0 <= value < 5$"):
        check_batch([spec], [bad], "step()")


def test_index_range_json_round_trip_and_malformed():
    record = IndexRange(-3, 3, (7, 9), (range(2, 3), None))
    assert IndexRange.from_json(record.to_json(), "input 'x'") == record
    assert RANGE.to_json() == {"low": 0, "high": 10, "also": [-100]}
    with pytest.raises(ArtifactError, match=r"input 'x' has an invalid index_range"):
        IndexRange.from_json({"low": 0}, "input 'x'")
    for malformed in (
        {"low": 4, "high": 4},
        {"low": 0, "high": True},
        {"low": 0.0, "high": 3},
        {"low": 0, "high": 3, "also": "x"},
    ):
        with pytest.raises(ArtifactError, match=r"input 'x' has an invalid index_range"):
            IndexRange.from_json(malformed, "input 'x'")
