"""Adam: a small network fits a noisy sine (regression with MSE).

python examples/python/adam.py [--quick]
"""

import argparse

import numpy as np
import torch
from torch import nn

import optgraph
from optgraph import optim

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--quick", action="store_true", help="fewer steps (what the tests run)")
args = parser.parse_args()
steps = 300 if args.quick else 2000

rng = np.random.default_rng(0)
x = rng.uniform(-3, 3, (2048, 1)).astype(np.float32)
y = (np.sin(x) + rng.normal(0, 0.05, x.shape)).astype(np.float32)
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(1, 32), nn.SiLU(), nn.Linear(32, 32), nn.SiLU(), nn.Linear(32, 1))

artifact = optgraph.compile(
    model, (torch.from_numpy(x[:64]),), (torch.from_numpy(y[:64]),), nn.MSELoss(), optimizer=optim.Adam(lr=1e-2)
)
session = optgraph.TrainingSession(artifact)
for step in range(steps):
    rows = rng.integers(0, len(x), 64)
    loss = session.step(x[rows], y[rows])
    if (step + 1) % (steps // 5) == 0:
        print(f"step {step + 1:4d}  loss {loss:.5f}")

grid = np.linspace(-3, 3, 200, dtype=np.float32)[:, None]
error = float(np.mean((session.eval(grid) - np.sin(grid)) ** 2))
print(f"mean squared error against sin(x): {error:.5f}")
