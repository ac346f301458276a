"""The loss curve of a training run, as a PNG (matplotlib's Agg renderer, no display needed).

The top panel has the loss of every step, the mean of each epoch and the validation loss;
the bottom panel the learning rate of each epoch. The plotted series are also stored in the
PNG's ``Description`` text chunk, as JSON, for programs that read the file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from optgraph.artifact.storage import new_file_mode

STEP_COLOR = "#9ecae1"
EPOCH_COLOR = "#d62728"
VAL_COLOR = "#2ca02c"
LR_COLOR = "#555555"


def plot_losses(
    path: Path, losses: list[float], epochs: list[dict[str, Any]], title: str, val_metric: str | None = None
) -> Path:
    """Write the curve to ``path`` (atomically); ``epochs`` are the trainer's per-epoch records."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display backend

    ends = [record["steps"] for record in epochs]
    means = [record["train_loss"] for record in epochs]
    val = [record["val"][val_metric] for record in epochs] if val_metric else []
    lrs = [record["lr"] if isinstance(record["lr"], list) else [record["lr"]] for record in epochs]

    fig = Figure(figsize=(8, 6), dpi=100)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot(range(1, len(losses) + 1), losses, color=STEP_COLOR, linewidth=0.8, label="loss of each step")
    top.plot(ends, means, color=EPOCH_COLOR, linewidth=2.2, marker="o", markersize=4, label="mean loss of each epoch")
    if val:
        top.plot(ends, val, color=VAL_COLOR, linewidth=1.8, marker="s", markersize=4, label=f"validation {val_metric}")
    finite = [v for v in [*losses, *val] if v == v and v > 0]
    if finite and max(finite) / min(finite) > 100:
        top.set_yscale("log")
    top.set_ylabel("loss")
    top.set_title(title)
    top.grid(alpha=0.3)
    if lrs:
        groups = len(lrs[0])
        for g in range(groups):
            series = [lr[g] if g < len(lr) else lr[-1] for lr in lrs]
            label = "learning rate" if groups == 1 else f"learning rate, group {g}"
            bottom.plot([0, *ends], [series[0], *series], drawstyle="steps-pre", color=LR_COLOR, label=label)
    bottom.set_ylabel("lr")
    bottom.set_xlabel("step")
    bottom.grid(alpha=0.3)
    fig.legend(loc="lower center", ncol=3, frameon=False, fontsize="small")
    fig.tight_layout(rect=(0, 0.07, 1, 1))

    data = {"epoch_end_steps": ends, "epoch_loss": means, "val_metric": val_metric, "val": val, "lr": lrs}
    metadata = {"Title": title, "Software": "optgraph", "Description": json.dumps(data)}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, new_file_mode())  # as a plain write would make it, not mkstemp's private mode
    try:
        fig.savefig(tmp, format="png", metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
