"""Checking a batch against a graph's input specs before it reaches onnxruntime. Never imports torch.

A batch is refused, with an :class:`~optgraph.errors.InputError` naming the
input, before anything runs (so the session's state is untouched), when:

- the count of arrays, a dtype, a rank or a size is wrong. A value of
  another dtype is converted only where numpy's ``same_kind`` casting allows
  it (float64 -> float32, int32 -> int64, never float -> int), the same way
  for numpy arrays, torch tensors, Python lists and scalars, and only when
  every value survives the conversion (no integer wrap-around, no finite
  float that becomes infinite);
- an integer input holds a value outside its ``index_range`` (an index into
  a class dimension or an embedding table, found at compile time by
  :mod:`optgraph.capture.index_ranges`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from optgraph.artifact import TensorSpec
from optgraph.errors import InputError


def _is_torch_tensor(value) -> bool:
    return hasattr(value, "detach") and hasattr(value, "numpy")  # without importing torch


def _as_array(value, spec: TensorSpec) -> np.ndarray:
    """``value`` as an array of ``spec.dtype``, converted only where no value changes kind or is lost."""
    try:
        array = value.detach().cpu().numpy() if _is_torch_tensor(value) else np.asarray(value)
    except (TypeError, ValueError, RuntimeError) as e:
        raise InputError(
            f"{spec.role} {spec.name!r}: cannot convert {type(value).__name__} to an array ({e})"
        ) from None
    expected = np.dtype(spec.dtype)
    if array.dtype == expected:
        return array
    if not np.can_cast(array.dtype, expected, casting="same_kind"):
        raise InputError(
            f"{spec.role} {spec.name!r}: expected {_describe(spec)}, got dtype {array.dtype}, "
            f"which does not convert to {expected} without loss (convert it yourself if that is meant)"
        )
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below, with the value
        converted = array.astype(expected)
    _check_conversion(array, converted, spec)
    return converted


def _check_conversion(array: np.ndarray, converted: np.ndarray, spec: TensorSpec) -> None:
    """Refuse a narrowing conversion that wraps an integer or turns a finite float infinite."""
    if array.size == 0:
        return
    if converted.dtype.kind in "iu" and array.dtype.kind in "iub":
        info = np.iinfo(converted.dtype)
        low, high = int(array.min()), int(array.max())
        if low < info.min or high > info.max:
            value = low if low < info.min else high
            raise InputError(
                f"{spec.role} {spec.name!r}: value {value} does not fit in {converted.dtype} "
                f"({info.min} to {info.max}); expected {_describe(spec)}"
            )
    elif converted.dtype.kind == "f" and array.dtype.kind in "fiu":
        overflow = np.isinf(converted) & np.isfinite(array)
        if overflow.any():
            position = tuple(int(i) for i in np.unravel_index(int(np.argmax(overflow)), overflow.shape))
            raise InputError(
                f"{spec.role} {spec.name!r}: value {array[position]} at {list(position)} overflows {converted.dtype}; "
                f"expected {_describe(spec)}"
            )


def _describe(spec: TensorSpec) -> str:
    return f"{spec.dtype} array of shape [{', '.join(str(d) for d in spec.shape)}]"


def _check_index_range(spec: TensorSpec, array: np.ndarray) -> None:
    valid = spec.index_range
    if valid is None:
        return
    violation = valid.first_violation(array)
    if violation is not None:
        position, value, count = violation
        more = f" ({count} values are out of range)" if count > 1 else ""
        raise InputError(
            f"{spec.role} {spec.name!r}: value {value} at index {list(position)} is out of range; "
            f"expected {valid.describe()}{more}"
        )


def check_batch(specs: Sequence[TensorSpec], values: Sequence, what: str) -> dict[str, np.ndarray]:
    """Validate a batch against the graph's input specs; returns contiguous arrays by name."""
    if len(values) != len(specs):
        names = ", ".join(t.name for t in specs)
        raise InputError(f"{what} takes {len(specs)} array(s) ({names}), got {len(values)}")
    arrays: dict[str, np.ndarray] = {}
    symbols: dict[str, tuple[int, str]] = {}
    for spec, value in zip(specs, values):
        array = _as_array(value, spec)
        expected = _describe(spec)
        if array.ndim != len(spec.shape):
            raise InputError(f"{spec.role} {spec.name!r}: expected {expected}, got shape {list(array.shape)}")
        for dim, size in zip(spec.shape, array.shape):
            if isinstance(dim, int) and dim != size:
                raise InputError(f"{spec.role} {spec.name!r}: expected {expected}, got shape {list(array.shape)}")
            if isinstance(dim, str):
                seen = symbols.setdefault(dim, (size, spec.name))
                if seen[0] != size:
                    raise InputError(
                        f"{spec.role} {spec.name!r}: dimension {dim!r} is {size}, "
                        f"but {seen[0]} in {seen[1]!r}; they must agree"
                    )
        _check_index_range(spec, array)
        # ascontiguousarray would turn a 0-d array into shape (1,)
        arrays[spec.name] = array if array.flags.c_contiguous else np.ascontiguousarray(array)
    return arrays
