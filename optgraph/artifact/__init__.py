"""The artifact directory: graphs, manifest and checkpoint. Never imports torch."""

from __future__ import annotations

from optgraph.artifact.artifact import Artifact
from optgraph.artifact.manifest import FORMAT_NAME, FORMAT_VERSION, GraphSpec, Manifest, TensorSpec
from optgraph.artifact.storage import recover_interrupted_save

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "Artifact",
    "GraphSpec",
    "Manifest",
    "TensorSpec",
    "recover_interrupted_save",
]
