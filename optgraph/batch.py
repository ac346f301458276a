"""Checking a batch against a graph's input specs before it reaches onnxruntime. Never imports torch."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from optgraph.artifact import TensorSpec
from optgraph.errors import InputError


def _as_array(value, spec: TensorSpec) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor, without importing torch
        return value.detach().cpu().numpy()
    try:
        return np.asarray(value, dtype=spec.dtype)
    except (TypeError, ValueError) as e:
        raise InputError(
            f"{spec.role} {spec.name!r}: cannot convert {type(value).__name__} to an array ({e})"
        ) from None


def _describe(spec: TensorSpec) -> str:
    return f"{spec.dtype} array of shape [{', '.join(str(d) for d in spec.shape)}]"


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
        if str(array.dtype) != spec.dtype:
            raise InputError(f"{spec.role} {spec.name!r}: expected {expected}, got dtype {array.dtype}")
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
        # ascontiguousarray would turn a 0-d array into shape (1,)
        arrays[spec.name] = array if array.flags.c_contiguous else np.ascontiguousarray(array)
    return arrays
