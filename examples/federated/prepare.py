"""Compile the federated digits model into build/artifact (the one step that needs torch).

python examples/federated/prepare.py [--proximal-mu 0.01] [--build DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from digits_federated.task import DEFAULT_BUILD, digits  # noqa: E402


def model():
    import torch
    from torch import nn

    torch.manual_seed(0)
    # no BatchNorm: clients that each see a few digits have running statistics too unlike to average
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 2 * 2, 10),
    )


def prepare(build: Path = DEFAULT_BUILD, proximal_mu: float | None = None, lr: float = 0.05) -> Path:
    import torch
    from torch import nn

    import optgraph
    from optgraph import optim

    x_train, _, y_train, _ = digits()
    artifact = optgraph.compile(
        model(),
        (torch.from_numpy(x_train[:32]),),
        (torch.from_numpy(y_train[:32]),),
        nn.CrossEntropyLoss(),
        optimizer=optim.SGD(lr=lr, momentum=0.9),
        proximal_mu=proximal_mu,
    )
    return artifact.save(Path(build) / "artifact")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", type=Path, default=DEFAULT_BUILD)
    parser.add_argument("--proximal-mu", type=float, default=None)
    args = parser.parse_args()
    print(f"artifact -> {prepare(args.build, args.proximal_mu)}")
