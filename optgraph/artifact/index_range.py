"""``index_range``: the values an integer input may hold, found at compile time, checked before a step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from optgraph.artifact.names import INDEX_RANGE_KEY, MANIFEST_FILE
from optgraph.errors import ArtifactError

"""The key of an input's :class:`IndexRange` in its ``TensorSpec.meta`` (and in ``manifest.json``)."""


@dataclass(frozen=True)
class IndexRange:
    """The values an integer input may hold: ``low <= value < high``, or one of ``also``.

    Attributes:
        low: the smallest valid value (``-size`` where negative indices count from the end).
        high: one past the largest valid value (a class count, an embedding table's rows).
        also: values valid outside the range because the graph masks them out (``ignore_index``).
        region: the part of the input the range applies to, one ``range`` per dimension
            (None: the whole dimension); None when it applies to the whole input.
    """

    low: int
    high: int
    also: tuple[int, ...] = ()
    region: tuple[range | None, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"low": self.low, "high": self.high, "also": list(self.also)}
        if self.region is not None:
            out["region"] = [None if r is None else [r.start, r.stop, r.step] for r in self.region]
        return out

    @classmethod
    def from_json(cls, data: Any, where: str) -> IndexRange:
        try:
            low, high = _integer(data["low"]), _integer(data["high"])
            also = tuple(_integer(v) for v in data.get("also", []))
            region = data.get("region")
            if region is not None:
                region = tuple(None if r is None else range(*(_integer(v) for v in r)) for r in region)
            if low >= high:
                raise ValueError(f"the range [{low}, {high}) is empty")
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ArtifactError(f"{MANIFEST_FILE}: {where} has an invalid {INDEX_RANGE_KEY} {data!r} ({e})") from None
        return cls(low, high, also, region)

    def describe(self) -> str:
        valid = f"{self.low} <= value < {self.high}"
        return valid + (f" or one of {list(self.also)}" if self.also else "")

    def first_violation(self, array: np.ndarray) -> tuple[tuple[int, ...], int, int] | None:
        """``(position, value, count)`` of the first value out of range, or None when all are valid."""
        if self.region is not None:
            if len(self.region) != array.ndim:
                return None
            array = array[tuple(slice(None) if r is None else slice(r.start, r.stop, r.step) for r in self.region)]
        if array.size == 0 or (array.min() >= self.low and array.max() < self.high):
            return None  # the common case, without the boolean temporaries and np.isin below (once per step)
        bad = (array < self.low) | (array >= self.high)
        if self.also:
            bad &= ~np.isin(array, self.also)
        if not bad.any():
            return None
        position = np.unravel_index(int(np.argmax(bad)), bad.shape)
        value = int(array[position])
        if self.region is not None:  # back to the coordinates of the whole input
            position = tuple(i if r is None else r[i] for i, r in zip(position, self.region))
        return tuple(int(i) for i in position), value, int(bad.sum())


def _integer(value: Any) -> int:
    if type(value) is not int:
        raise TypeError(f"{value!r} is not an integer")
    return value
