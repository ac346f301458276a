"""Fine-tuning with frozen layers: a backbone trained on one task is frozen, a new head learns another.

Parameters with ``requires_grad=False`` are kept and never updated: the artifact holds them once,
with no gradient and no optimizer state.

    python examples/python/finetune_frozen.py [--quick]
"""

import argparse

import numpy as np
import torch
from torch import nn

import optgraph
from optgraph import optim

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--quick", action="store_true", help="fewer epochs (what the tests run)")
args = parser.parse_args()
epochs = 4 if args.quick else 15

rng = np.random.default_rng(0)
x = rng.normal(size=(2000, 16)).astype(np.float32)
task_a = (x[:, :8].sum(axis=1) > 0).astype(np.int64)  # the backbone's first task: 2 classes
task_b = np.digitize(x[:, :8].sum(axis=1), [-1.5, 1.5]).astype(np.int64)  # the new one: 3 classes, related

# "pre-training" in plain torch, for a few steps
torch.manual_seed(0)
backbone = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
pretrain = nn.Sequential(backbone, nn.Linear(32, 2))
opt = torch.optim.Adam(pretrain.parameters(), lr=1e-2)
for _ in range(50 if args.quick else 300):
    rows = torch.from_numpy(rng.integers(0, 2000, 64))
    loss = nn.functional.cross_entropy(pretrain(torch.from_numpy(x)[rows]), torch.from_numpy(task_a)[rows])
    opt.zero_grad()
    loss.backward()
    opt.step()

# fine-tuning: freeze the backbone, train a new head with optgraph
for p in backbone.parameters():
    p.requires_grad_(False)
model = nn.Sequential(backbone, nn.Linear(32, 3))
artifact = optgraph.compile(
    model,
    (torch.from_numpy(x[:64]),),
    (torch.from_numpy(task_b[:64]),),
    nn.CrossEntropyLoss(),
    optimizer=optim.Adam(lr=1e-2),
)
session = optgraph.TrainingSession(artifact)
before = session.state_dict()
for epoch in range(epochs):
    order = rng.permutation(1600)
    losses = [session.step(x[rows], task_b[rows]) for rows in np.array_split(order, 1600 // 64)]
    print(f"epoch {epoch + 1:2d}  loss {np.mean(losses):.4f}")

after = session.state_dict()
frozen = all(np.array_equal(before[k], after[k]) for k in before if k.startswith("0."))
accuracy = (session.eval(x[1600:]).argmax(axis=1) == task_b[1600:]).mean()
print(f"optimizer state for: {sorted(session.optimizer_state_dict())}")
print(f"backbone unchanged: {frozen}; held-out accuracy of the new head: {accuracy:.2%}")
