"""Exceptions raised by optgraph. Importing this module never imports torch."""

from __future__ import annotations


class OptgraphError(Exception):
    """Base class of every error optgraph raises on purpose."""


class CaptureError(OptgraphError):
    """A model, loss or example could not be captured into an ONNX training graph."""


class ArtifactError(OptgraphError):
    """An artifact directory, manifest or checkpoint is missing, corrupt or mismatched."""


class InputError(OptgraphError, ValueError):
    """A batch passed to a session does not match the compiled inputs."""


class NonFiniteError(OptgraphError, FloatingPointError):
    """A step produced a non-finite loss or gradient; the update was skipped."""


class OverwriteError(OptgraphError, FileExistsError):
    """A save would replace a directory that is neither empty nor an optgraph artifact; nothing was written."""


class RunError(OptgraphError, RuntimeError):
    """onnxruntime failed while running a graph; the session's state is unchanged."""
