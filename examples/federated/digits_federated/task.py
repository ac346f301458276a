"""The data and the artifact, shared by the ServerApp and the ClientApp. Never imports torch."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

#: where prepare.py writes the artifact and where the server writes history.json, unless the run config's
#: ``build`` or the environment's OPTGRAPH_FEDERATED_BUILD says otherwise
DEFAULT_BUILD = Path(__file__).resolve().parents[1] / "build"
SEED = 0


def build_dir(run_config: dict | None = None) -> Path:
    configured = (run_config or {}).get("build") or os.environ.get("OPTGRAPH_FEDERATED_BUILD")
    return Path(configured) if configured else DEFAULT_BUILD


def digits():
    """``(x_train, x_test, y_train, y_test)``: the 8x8 digits as optgraph's demo splits them."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = data.target.astype(np.int64)
    return train_test_split(images, labels, test_size=0.2, random_state=SEED, stratify=labels)


ALPHA = 0.5  # the Dirichlet concentration of the label split: smaller is more skewed


def partition(partition_id: int, num_partitions: int):
    """Client ``partition_id``'s training data, split by label (non-IID), the usual federated benchmark split.

    For each digit, the shares of its images that the clients get are drawn from a Dirichlet(``ALPHA``)
    distribution (fixed seed), so that every client holds a few digits mostly and others barely.
    """
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition {partition_id} of {num_partitions}: need 0 <= id < count")
    x, _, y, _ = digits()
    rng = np.random.default_rng(SEED)
    mine = []
    for label in range(10):
        index = rng.permutation(np.flatnonzero(y == label))
        cuts = (np.cumsum(rng.dirichlet([ALPHA] * num_partitions))[:-1] * len(index)).astype(int)
        mine.append(np.split(index, cuts)[partition_id])
    mine = np.sort(np.concatenate(mine))
    return x[mine], y[mine]
