"""SGD with momentum and StepLR: an MLP learns to tell two noisy rings apart.

python examples/python/sgd_momentum_steplr.py [--quick]
"""

import argparse

import numpy as np
import torch
from torch import nn

import optgraph
from optgraph import lr_scheduler, optim

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--quick", action="store_true", help="fewer epochs (what the tests run)")
args = parser.parse_args()
epochs = 8 if args.quick else 30


def rings(samples: int, seed: int):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, samples)
    angle = rng.uniform(0, 2 * np.pi, samples)
    radius = 0.5 + 0.5 * label + rng.normal(0, 0.1, samples)
    x = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    return x.astype(np.float32), label.astype(np.int64)


x, y = rings(1024, seed=0)
x_test, y_test = rings(512, seed=1)
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 2))

artifact = optgraph.compile(
    model,
    (torch.from_numpy(x[:32]),),
    (torch.from_numpy(y[:32]),),
    nn.CrossEntropyLoss(),
    optimizer=optim.SGD(lr=0.05, momentum=0.9),  # torch.optim.SGD's arguments, minus params
    lr_scheduler=lr_scheduler.StepLR(step_size=10, gamma=0.3),  # stepped once per epoch, as in torch
)
session = optgraph.TrainingSession(artifact)
rng = np.random.default_rng(0)
for epoch in range(epochs):
    order = rng.permutation(len(x))
    losses = [session.step(x[rows], y[rows]) for rows in np.array_split(order, len(x) // 32)]
    session.scheduler_step()
    print(f"epoch {epoch + 1:2d}  loss {np.mean(losses):.4f}  next lr {session.lr:g}")

accuracy = (session.eval(x_test).argmax(axis=1) == y_test).mean()
print(f"held-out accuracy: {accuracy:.2%}")
