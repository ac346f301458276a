"""Capture: the only package that imports torch.

From ``(model, example_inputs, example_targets, loss_fn)`` it builds two
onnx-ir models: the joint train graph (inputs: data, targets, params,
buffers; outputs: the loss, one gradient per trainable parameter and the
updated buffers) and the eval-mode forward.
"""

from __future__ import annotations

from optgraph.capture.capture import Captured, capture

__all__ = ["Captured", "capture"]
