"""An artifact in memory, and its atomic save to / checked load from a directory."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from safetensors import SafetensorError
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from optgraph.artifact.manifest import GRAPH_NAMES, Manifest
from optgraph.errors import ArtifactError

MANIFEST_FILE = "manifest.json"
CHECKPOINT_FILE = "checkpoint.safetensors"


@dataclass
class Artifact:
    """The three graphs (serialized ONNX), the manifest and every state tensor."""

    manifest: Manifest
    graphs: dict[str, bytes]
    state: dict[str, np.ndarray]

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the artifact directory atomically (temporary directory, fsync, rename)."""
        target = Path(directory).absolute()
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            for name in GRAPH_NAMES:
                _write(staging / self.manifest.graphs[name].file, self.graphs[name])
            _write(staging / CHECKPOINT_FILE, save_safetensors(self.state, metadata={"format": "optgraph-artifact"}))
            _write(staging / MANIFEST_FILE, self.manifest.to_json().encode())
            _fsync_dir(staging)
            _replace_dir(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return target

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Artifact:
        """Read and check an artifact directory."""
        root = Path(directory)
        _recover_interrupted_save(root)
        if not root.is_dir():
            raise ArtifactError(f"{root}: not an artifact directory (it does not exist or is not a directory)")
        manifest = Manifest.from_json(_read(root, MANIFEST_FILE).decode("utf-8", errors="replace"))
        graphs = {name: _read(root, manifest.graphs[name].file) for name in GRAPH_NAMES}
        for name, data in graphs.items():
            _check_graph(root / manifest.graphs[name].file, data)
        try:
            state = load_safetensors(_read(root, CHECKPOINT_FILE))
        except (SafetensorError, ValueError, OSError) as e:
            raise ArtifactError(f"{root / CHECKPOINT_FILE}: not a readable safetensors file ({e})") from None
        _check_state(root / CHECKPOINT_FILE, manifest, state)
        return cls(manifest, graphs, state)


def _check_graph(path: Path, data: bytes) -> None:
    """A graph must parse and hold all its tensors inline: no external-data file may be read."""
    try:
        model = onnx.load_from_string(data)  # from bytes: external data is never loaded
    except Exception as e:  # noqa: BLE001 - protobuf raises several types
        raise ArtifactError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    for tensor in _all_tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            where = next((entry.value for entry in tensor.external_data if entry.key == "location"), "?")
            raise ArtifactError(
                f"{path}: tensor {tensor.name!r} points to external data {where!r}; "
                "an artifact keeps every tensor inside its graph files"
            )


def _all_tensors(graph: onnx.GraphProto):
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR:
                yield attribute.t
            elif attribute.type == onnx.AttributeProto.TENSORS:
                yield from attribute.tensors
            elif attribute.type == onnx.AttributeProto.GRAPH:
                yield from _all_tensors(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for subgraph in attribute.graphs:
                    yield from _all_tensors(subgraph)


def _check_state(path: Path, manifest: Manifest, state: dict[str, np.ndarray]) -> None:
    for name, spec in manifest.state_specs().items():
        if name not in state:
            raise ArtifactError(f"{path}: missing state tensor {name!r} that manifest.json declares")
        array = state[name]
        if str(array.dtype) != spec.dtype or list(array.shape) != spec.shape:
            raise ArtifactError(
                f"{path}: tensor {name!r} is {array.dtype}{list(array.shape)}, "
                f"manifest.json expects {spec.dtype}{spec.shape}"
            )


def _read(root: Path, file: str) -> bytes:
    """Read a file of the artifact; names that leave the directory are rejected."""
    if not file or Path(file).name != file or file in (".", ".."):
        raise ArtifactError(f"{root / MANIFEST_FILE}: file name {file!r} must be a plain name inside the directory")
    path = root / file
    if path.is_symlink() or not path.is_file():
        raise ArtifactError(f"{path}: missing (or not a regular file) in the artifact directory")
    return path.read_bytes()


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _recover_interrupted_save(target: Path) -> None:
    """Put back the previous directory if a save was killed between its two renames."""
    if target.exists():
        return
    previous = sorted(target.parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if previous and (previous[-1] / MANIFEST_FILE).is_file():
        os.rename(previous[-1], target)


def _replace_dir(staging: Path, target: Path) -> None:
    """Move ``staging`` to ``target``; an existing ``target`` is swapped out, then removed.

    A crash between the two renames leaves the previous directory as
    ``.<name>.old-*``; :func:`_recover_interrupted_save` puts it back on load.
    """
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rmdir(old)
        os.rename(target, old)
    os.rename(staging, target)
    _fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
