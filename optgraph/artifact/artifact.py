"""An artifact in memory, and its atomic save to / checked load from a directory."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from optgraph.artifact.checks import check_digest, check_graph, check_manifest, check_state, digest
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
        data = _read(root, CHECKPOINT_FILE)
        check_digest(root, manifest, CHECKPOINT_FILE, data)
        try:
            state = load_safetensors(data)
        except (SafetensorError, ValueError, TypeError, OSError) as e:
            raise ArtifactError(f"{root / CHECKPOINT_FILE}: not a readable safetensors file ({e})") from None
        check_state(root / CHECKPOINT_FILE, manifest, state)
        return cls(manifest, graphs, state)


def _read(root: Path, file: str) -> bytes:
    """Read a file of the artifact; names that leave the directory, and symbolic links, are rejected."""
    if not is_plain_file_name(file):
        raise ArtifactError(f"{root / MANIFEST_FILE}: file name {file!r} must be a plain name inside the directory")
    path = root / file
    if path.is_symlink() or not path.is_file():
        raise ArtifactError(f"{path}: missing (or not a regular file) in the artifact directory")
    try:
        return path.read_bytes()
    except OSError as e:
        raise ArtifactError(f"{path}: cannot be read ({e})") from None
