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
  :mod:`optgraph.capture.index_ranges`);
- the symbolic dimensions disagree: one symbol with two sizes (``"batch"``
  is 4 in one input and 3 in another), a derived dimension that is not its
  expression's value (``"batch*seq"``), or a size outside a symbol's bounds
  (the manifest's ``symbols``). The error names the input, the dimension and
  where the other size came from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from optgraph.artifact import TensorSpec
from optgraph.artifact.dims import DimExpr, SymbolBounds, solve_for
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


def check_batch(
    specs: Sequence[TensorSpec],
    values: Sequence,
    what: str,
    symbols: Mapping[str, SymbolBounds] | None = None,
) -> dict[str, np.ndarray]:
    """Validate a batch against the graph's input specs; returns contiguous arrays by name.

    Args:
        specs: the graph's batch inputs, in order.
        values: one array-like per spec.
        what: the call, for messages (``"step()"``).
        symbols: the manifest's symbol bounds (``Manifest.symbols``).
    """
    if len(values) != len(specs):
        names = ", ".join(t.name for t in specs)
        raise InputError(f"{what} takes {len(specs)} array(s) ({names}), got {len(values)}")
    arrays: dict[str, np.ndarray] = {}
    for spec, value in zip(specs, values):
        array = _as_array(value, spec)
        expected = _describe(spec)
        if array.ndim != len(spec.shape):
            raise InputError(f"{spec.role} {spec.name!r}: expected {expected}, got shape {list(array.shape)}")
        for dim, size in zip(spec.shape, array.shape):
            if isinstance(dim, int) and dim != size:
                raise InputError(f"{spec.role} {spec.name!r}: expected {expected}, got shape {list(array.shape)}")
        # ascontiguousarray would turn a 0-d array into shape (1,)
        arrays[spec.name] = array if array.flags.c_contiguous else np.ascontiguousarray(array)
    _check_symbols(specs, arrays, symbols or {})
    for spec in specs:
        _check_index_range(spec, arrays[spec.name])
    return arrays


class _Site(NamedTuple):
    """Where a symbolic dimension is: input ``spec``, dimension ``index``."""

    spec: TensorSpec
    index: int

    def __str__(self) -> str:
        return f"{self.spec.role} {self.spec.name!r} dimension {self.index}"


def _check_symbols(specs: Sequence[TensorSpec], arrays: dict[str, np.ndarray], bounds: Mapping[str, SymbolBounds]):
    """Every symbol has one size across the batch, within its bounds, and every derived dimension its value.

    A symbol takes its size from the first dimension that is that symbol alone
    (``"batch"``); a symbol that appears only inside expressions is solved from
    one where it enters linearly (``"2*half"``). An expression whose symbols stay
    unknown is left to the graph.
    """
    sizes: dict[str, int] = {}
    source: dict[str, _Site] = {}
    derived: list[tuple[_Site, DimExpr, int]] = []

    def bind(name: str, size: int, site: _Site, how: str) -> None:
        limits = bounds.get(name)
        if limits is not None and not limits.accepts(size):
            raise InputError(f"{site} ({how}) is {size}; {name!r} must be {limits.describe()}")
        sizes[name], source[name] = size, site

    for spec in specs:
        for index, (dim, size) in enumerate(zip(spec.dims, arrays[spec.name].shape)):
            if isinstance(dim, int):
                continue
            site = _Site(spec, index)
            if not dim.is_symbol:
                derived.append((site, dim, int(size)))
            elif dim.text not in sizes:
                bind(dim.text, int(size), site, repr(dim.text))
            elif sizes[dim.text] != size:
                raise InputError(
                    f"{site} ({dim.text!r}) is {size}, but {source[dim.text]} ({dim.text!r}) is "
                    f"{sizes[dim.text]}; they must agree"
                )
    pending = derived
    while pending:
        waiting = []
        for site, expr, size in pending:
            unknown = [name for name in expr.symbols if name not in sizes]
            if len(unknown) == 1:
                value = solve_for(expr, unknown[0], size, sizes)
                if value is None or value < 0:
                    waiting.append((site, expr, size))
                else:
                    bind(unknown[0], value, site, f"{expr.text!r}, so {unknown[0]!r} is {value}")
            elif unknown:
                waiting.append((site, expr, size))
            else:
                expected = expr.evaluate(sizes)
                if expected != size:
                    values = ", ".join(f"{n} = {sizes[n]} from {source[n]}" for n in expr.symbols)
                    raise InputError(f"{site} is {size}, expected {expr.text} = {expected} ({values})")
        if len(waiting) == len(pending):
            break
        pending = waiting
