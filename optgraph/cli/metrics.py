"""Validation metrics, computed in numpy from the eval graph's outputs (eval mode, no update).

An artifact records the model and its eval-mode forward pass, not the loss function (a loss
is any Python callable), so the trainer cannot recompute the training loss on held-out
data. It computes, over the whole validation set, one of torch's standard losses of the
first model output against the first target (mean reduction, as ``torch.nn.functional``
defaults, ``ignore_index=-100``), and the accuracy. Never imports torch.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from optgraph.cli.errors import UsageError

IGNORE_INDEX = -100  # torch's default for cross_entropy and nll_loss


class MetricError(ValueError):
    """The outputs and targets do not fit the metric."""


def _class_view(outputs: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(scores (M, C), labels (M,))`` with the class dimension where torch has it, or last (flattened labels)."""
    if (
        outputs.ndim == target.ndim + 1
        and outputs.shape[:1] == target.shape[:1]
        and outputs.shape[2:] == target.shape[1:]
    ):
        scores = np.moveaxis(outputs, 1, -1)
        return scores.reshape(-1, outputs.shape[1]), target.reshape(-1)
    if outputs.ndim >= 1 and outputs.size == target.size * outputs.shape[-1]:
        return outputs.reshape(-1, outputs.shape[-1]), target.reshape(-1)
    raise MetricError(
        f"outputs of shape {list(outputs.shape)} do not score class indices of shape {list(target.shape)}"
    )


def _labels(target: np.ndarray) -> None:
    if target.dtype.kind not in "iu":
        raise MetricError(f"class indices must be integers, got {target.dtype}")


def _log_softmax(scores: np.ndarray) -> np.ndarray:
    scores = scores.astype(np.float64)
    shifted = scores - scores.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _picked(log_probs: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
    kept = labels != IGNORE_INDEX
    rows = np.nonzero(kept)[0]
    return float(-log_probs[rows, labels[kept]].sum()), int(kept.sum())


def cross_entropy(outputs, target):
    """``F.cross_entropy``: class indices, or class probabilities of the outputs' shape."""
    if target.dtype.kind == "f" and target.shape == outputs.shape:
        scores = np.moveaxis(outputs, 1, -1).reshape(-1, outputs.shape[1]) if outputs.ndim > 1 else outputs[None]
        probs = np.moveaxis(target, 1, -1).reshape(scores.shape) if target.ndim > 1 else target[None]
        return float(-(_log_softmax(scores) * probs).sum()), len(scores)
    _labels(target)
    scores, labels = _class_view(outputs, target)
    return _picked(_log_softmax(scores), labels)


def nll(outputs, target):
    """``F.nll_loss``: the outputs are log-probabilities."""
    _labels(target)
    scores, labels = _class_view(outputs, target)
    return _picked(scores.astype(np.float64), labels)


def accuracy(outputs, target):
    """The share of class indices the outputs score highest (targets of -100 left out)."""
    _labels(target)
    scores, labels = _class_view(outputs, target)
    kept = labels != IGNORE_INDEX
    return float((scores.argmax(axis=1)[kept] == labels[kept]).sum()), int(kept.sum())


def _same_shape(outputs, target) -> tuple[np.ndarray, np.ndarray]:
    if outputs.size != target.size:
        raise MetricError(f"outputs of shape {list(outputs.shape)} and targets of shape {list(target.shape)} differ")
    return outputs.astype(np.float64).reshape(-1), target.astype(np.float64).reshape(-1)


def mse(outputs, target):
    """``F.mse_loss``."""
    o, t = _same_shape(outputs, target)
    return float(((o - t) ** 2).sum()), o.size


def l1(outputs, target):
    """``F.l1_loss``."""
    o, t = _same_shape(outputs, target)
    return float(np.abs(o - t).sum()), o.size


def bce_with_logits(outputs, target):
    """``F.binary_cross_entropy_with_logits``."""
    x, t = _same_shape(outputs, target)
    return float((np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))).sum()), x.size


#: name -> (sum and count over a batch), in the order ``--val-metric`` lists them
METRICS: dict[str, Callable[[np.ndarray, np.ndarray], tuple[float, int]]] = {
    "cross_entropy": cross_entropy,
    "nll": nll,
    "accuracy": accuracy,
    "mse": mse,
    "l1": l1,
    "bce_with_logits": bce_with_logits,
}
PERCENT = frozenset({"accuracy"})


def auto(outputs: np.ndarray, target: np.ndarray) -> list[str]:
    """The metrics that fit: cross-entropy and accuracy for class indices, MSE for targets shaped as the outputs."""
    if target.dtype.kind in "iu":
        return ["cross_entropy", "accuracy"]
    if target.size == outputs.size:
        return ["mse"]
    raise UsageError(
        f"no validation metric fits outputs of shape {list(outputs.shape)} and targets of shape "
        f"{list(target.shape)}; choose one with --val-metric ({', '.join(METRICS)})"
    )


class Accumulator:
    """Sums and counts of each metric over the batches of a validation pass."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.sums = dict.fromkeys(names, 0.0)
        self.counts = dict.fromkeys(names, 0)

    def add(self, outputs: np.ndarray, target: np.ndarray) -> None:
        for name in self.names:
            total, count = METRICS[name](outputs, target)
            self.sums[name] += total
            self.counts[name] += count

    def result(self) -> dict[str, float]:
        return {n: self.sums[n] / self.counts[n] if self.counts[n] else float("nan") for n in self.names}


def format_metric(name: str, value: float) -> str:
    return f"{name} {value:.2%}" if name in PERCENT else f"{name} {value:.4f}"
