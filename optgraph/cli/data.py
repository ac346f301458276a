"""Training and validation data for ``optgraph train``: one array per input and target, checked against the artifact.

A data file is ``.npz`` or ``.safetensors`` and holds one array per data input and target of
the train step, named as the manifest names them, with the samples along dim 0 (the same count
in every array). Where the artifact takes a flattened dimension (labels of shape ``batch*seq``),
the file keeps one row per sample, ``(samples, seq)``, and each batch is flattened as it is
taken. Never imports torch.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from optgraph.artifact import Manifest, TensorSpec
from optgraph.artifact.dims import DimExpr
from optgraph.artifact.names import GraphName
from optgraph.batch import check_batch
from optgraph.cli.errors import UsageError
from optgraph.errors import InputError

SUFFIXES = (".npz", ".safetensors")


def batch_specs(manifest: Manifest, graph: str = GraphName.TRAIN_STEP) -> list[TensorSpec]:
    """The inputs a graph takes per call (not state), in the order ``step`` / ``eval`` take them."""
    return [t for t in manifest.graphs[graph].inputs if not t.is_state]


def read_arrays(path: Path, flag: str) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` or ``.safetensors`` file, by name."""
    if path.suffix not in SUFFIXES:
        raise UsageError(f"{flag} {path}: expected a .npz or .safetensors file")
    if not path.is_file():
        raise UsageError(f"{flag} {path}: no such file")
    if path.suffix == ".npz" and not zipfile.is_zipfile(path):
        raise UsageError(f"{flag} {path}: not an .npz archive (numpy.savez writes one)")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
        from safetensors.numpy import load_file

        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - a broken or foreign file: say which, in one line
        raise UsageError(f"{flag} {path}: cannot read it as {path.suffix[1:]} ({type(e).__name__}: {e})") from None


@dataclass
class Dataset:
    """Arrays in a graph's batch order, with the samples along dim 0."""

    path: Path
    specs: list[TensorSpec]
    arrays: list[np.ndarray]
    flatten: list[bool]  # flatten (samples, seq) rows to (batch*seq,) when batched

    @property
    def samples(self) -> int:
        return len(self.arrays[0])

    def batch(self, rows: np.ndarray, count: int | None = None) -> list[np.ndarray]:
        """The first ``count`` arrays (all by default) at ``rows``, flattened where the artifact wants it."""
        out = []
        for array, flat in zip(self.arrays[:count], self.flatten[:count]):
            taken = array[rows]
            out.append(taken.reshape(-1, *taken.shape[2:]) if flat else taken)
        return out


def load(path: Path, manifest: Manifest, flag: str) -> Dataset:
    """Read a data file and check its names, sample counts, ranks, fixed sizes, dtypes and index ranges."""
    specs = batch_specs(manifest)
    found = read_arrays(path, flag)
    expected = [t.name for t in specs]
    takes = ", ".join(f"{t.role} {t.name!r} ({_describe(t)})" for t in specs)
    missing = [n for n in expected if n not in found]
    if missing:
        raise UsageError(
            f"{flag} {path} lacks {', '.join(repr(n) for n in missing)}; it holds {sorted(found)}, "
            f"and the artifact takes {takes}"
        )
    extra = sorted(set(found) - set(expected))
    if extra:
        raise UsageError(
            f"{flag} {path} holds {', '.join(repr(n) for n in extra)}, which the artifact does not take; "
            f"it takes {takes}"
        )
    arrays = [found[n] for n in expected]
    counts = {t.name: (len(a) if a.ndim else None) for t, a in zip(specs, arrays)}
    if None in counts.values() or len(set(counts.values())) != 1:
        shown = ", ".join(f"{n!r} {c if c is not None else 'a scalar'}" for n, c in counts.items())
        raise UsageError(f"{flag} {path}: every array needs the same number of samples along dim 0; found {shown}")
    if not arrays[0].shape[0]:
        raise UsageError(f"{flag} {path} holds no samples")
    flatten = [_check_array(t, a, path, flag) for t, a in zip(specs, arrays)]
    dataset = Dataset(path, specs, arrays, flatten)
    for spec, array in zip(specs, dataset.batch(np.arange(dataset.samples))):
        _check_range(spec, array, path, flag)
    return dataset


def _describe(t: TensorSpec) -> str:
    return f"{t.dtype}[{', '.join(str(d) for d in t.shape)}]"


def _check_array(spec: TensorSpec, array: np.ndarray, path: Path, flag: str) -> bool:
    """Whether a batch of it must be flattened; a UsageError where its rank, sizes or dtype cannot fit."""
    rank = len(spec.shape)
    # (samples, seq) rows for a dimension the artifact takes flattened: an expression (batch*seq) or fixed size
    flattened_dim = rank >= 1 and not (isinstance(spec.dims[0], DimExpr) and spec.dims[0].is_symbol)
    flat = flattened_dim and array.ndim == rank + 1
    if array.ndim != rank and not flat:
        raise UsageError(
            f"{flag} {path}: {spec.role} {spec.name!r} has shape {list(array.shape)}; the artifact takes "
            f"{_describe(spec)}, so the file needs {rank} dimension(s) with the samples along dim 0"
        )
    per_sample = array.shape[2:] if flat else array.shape[1:]
    for dim, size in zip(spec.shape[1:], per_sample):
        if isinstance(dim, int) and dim != size:
            raise UsageError(
                f"{flag} {path}: {spec.role} {spec.name!r} has shape {list(array.shape)}; "
                f"the artifact takes {_describe(spec)}"
            )
    if not np.can_cast(array.dtype, np.dtype(spec.dtype), casting="same_kind"):
        raise UsageError(
            f"{flag} {path}: {spec.role} {spec.name!r} is {array.dtype}; the artifact takes {spec.dtype} "
            "(convert the array if that is meant)"
        )
    return flat


def _check_range(spec: TensorSpec, array: np.ndarray, path: Path, flag: str) -> None:
    valid = spec.index_range
    if valid is None:
        return
    violation = valid.first_violation(array)
    if violation is not None:
        position, value, count = violation
        raise UsageError(
            f"{flag} {path}: {spec.role} {spec.name!r} holds {value} at {list(position)} ({count} value(s) "
            f"out of range); the model takes {valid.describe()}"
        )


def check_first_batch(dataset: Dataset, manifest: Manifest, rows: np.ndarray, flag: str) -> None:
    """The session's own checks (sizes that symbols relate, their bounds) on one batch, before training."""
    try:
        check_batch(dataset.specs, dataset.batch(rows), str(dataset.path), manifest.symbols)
    except InputError as e:
        raise UsageError(f"{flag} {dataset.path}, a batch of {len(rows)}: {e}") from None
