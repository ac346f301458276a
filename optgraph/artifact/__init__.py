"""The artifact directory: graphs, manifest and checkpoint. Never imports torch."""

from __future__ import annotations

from optgraph.artifact.artifact import Artifact
from optgraph.artifact.manifest import FORMAT_NAME, FORMAT_VERSION, GraphSpec, Manifest, TensorSpec

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "Artifact", "GraphSpec", "Manifest", "TensorSpec"]
