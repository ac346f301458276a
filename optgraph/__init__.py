"""optgraph: compile a PyTorch model, loss, optimizer and LR schedule into one ONNX
training graph, and train it on stock onnxruntime.

``import optgraph`` never imports torch; only :func:`compile` does.
"""

from __future__ import annotations

from optgraph import lr_scheduler, optim
from optgraph.api import compile
from optgraph.artifact import Artifact
from optgraph.errors import ArtifactError, CaptureError, InputError, NonFiniteError, OptgraphError
from optgraph.session import TrainingSession

__version__ = "0.1.0"

__all__ = [
    "Artifact",
    "ArtifactError",
    "CaptureError",
    "InputError",
    "NonFiniteError",
    "OptgraphError",
    "TrainingSession",
    "compile",
    "lr_scheduler",
    "optim",
]
