"""An artifact in memory, and its atomic save to / checked load from a directory."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import save as save_safetensors

from optgraph.artifact.checkpoint_file import read_checkpoint
from optgraph.artifact.checks import check_digest, check_graph, check_manifest, check_sha256, check_state, digest
from optgraph.artifact.manifest import FORMAT_NAME, Manifest, is_plain_file_name
from optgraph.artifact.names import CHECKPOINT_FILE, MANIFEST_FILE, SHA256_KEY
from optgraph.artifact.storage import missing_directory_error, save_directory
from optgraph.errors import ArtifactError


@dataclass
class Artifact:
    """The graphs (serialized ONNX, by graph name), the manifest and every state tensor."""

    manifest: Manifest
    graphs: dict[str, bytes]
    state: dict[str, np.ndarray]

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the artifact directory atomically.

        ``directory`` may be new, empty, or an optgraph artifact (which is
        replaced as a whole); anything else raises
        :class:`~optgraph.errors.OverwriteError` and is left untouched.
        """
        files = {spec.file: self.graphs[name] for name, spec in self.manifest.graphs.items()}
        files[CHECKPOINT_FILE] = save_safetensors(self.state, metadata={"format": FORMAT_NAME})
        digests = {file: digest(data) for file, data in files.items()}
        manifest = Manifest(self.manifest.graphs, {**self.manifest.extra, SHA256_KEY: digests}, self.manifest.version)
        files[MANIFEST_FILE] = manifest.to_json().encode()
        return save_directory(directory, files)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Artifact:
        """Read and check an artifact directory; reads only that directory and writes nothing."""
        root = Path(directory)
        if not root.is_dir():
            raise missing_directory_error(root)
        manifest = Manifest.from_json(_read(root, MANIFEST_FILE).decode("utf-8", errors="replace"))
        check_manifest(root, manifest)
        graphs = {}
        for name, spec in manifest.graphs.items():
            graphs[name] = _read(root, spec.file)
            check_digest(root, manifest, spec.file, graphs[name])
            check_graph(root / spec.file, graphs[name], spec)
        path = _path(root, CHECKPOINT_FILE)
        try:
            state, sha256, unreadable = read_checkpoint(path)  # straight into the arrays: the file is never held
        except OSError as e:
            raise ArtifactError(f"{path}: cannot be read ({e})") from None
        check_sha256(root, manifest, CHECKPOINT_FILE, sha256)
        if state is None:
            raise ArtifactError(f"{path}: not a readable safetensors file ({unreadable})")
        check_state(path, manifest, state)
        return cls(manifest, graphs, state)


def _path(root: Path, file: str) -> Path:
    """A file of the artifact; names that leave the directory, and symbolic links, are rejected."""
    if not is_plain_file_name(file):
        raise ArtifactError(f"{root / MANIFEST_FILE}: file name {file!r} must be a plain name inside the directory")
    path = root / file
    if path.is_symlink() or not path.is_file():
        raise ArtifactError(f"{path}: missing (or not a regular file) in the artifact directory")
    return path


def _read(root: Path, file: str) -> bytes:
    path = _path(root, file)
    try:
        return path.read_bytes()
    except OSError as e:
        raise ArtifactError(f"{path}: cannot be read ({e})") from None
