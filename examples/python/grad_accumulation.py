"""Gradient accumulation: four micro-batches of 8 make one update, as torch's usual loop.

``grad_accumulation_steps=4``: every ``step`` adds the gradients of ``loss / 4``; every fourth
call clips, updates and clears them. The script trains the same model in eager torch with the
same micro-batches and prints how far the two end up apart (float32 rounding).

    python examples/python/grad_accumulation.py [--quick]
"""

import argparse
import copy

import numpy as np
import torch
from torch import nn

import optgraph
from optgraph import optim

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--quick", action="store_true", help="fewer updates (what the tests run)")
args = parser.parse_args()
updates, k, micro = (10 if args.quick else 100), 4, 8

rng = np.random.default_rng(0)
x = rng.normal(size=(updates * k * micro, 12)).astype(np.float32)
y = rng.integers(0, 3, len(x)).astype(np.int64)
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 3))
reference = copy.deepcopy(model)

artifact = optgraph.compile(
    model,
    (torch.from_numpy(x[:micro]),),
    (torch.from_numpy(y[:micro]),),
    nn.CrossEntropyLoss(),
    optimizer=optim.SGD(lr=0.1, momentum=0.9),
    clip_grad_norm=1.0,
    grad_accumulation_steps=k,
)
session = optgraph.TrainingSession(artifact)

opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
for i, start in enumerate(range(0, len(x), micro)):
    xb, yb = x[start : start + micro], y[start : start + micro]
    session.step(xb, yb)
    (nn.functional.cross_entropy(reference(torch.from_numpy(xb)), torch.from_numpy(yb)) / k).backward()
    if (i + 1) % k == 0:
        torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
        opt.step()
        opt.zero_grad()

trained = session.state_dict()
difference = max(float(np.abs(trained[n] - p.detach().numpy()).max()) for n, p in reference.named_parameters())
print(f"{updates} updates of {k} micro-batches of {micro}")
print(f"largest parameter difference from eager torch: {difference:.2e}")
