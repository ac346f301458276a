"""AdamW with linear warm-up then cosine decay, and no weight decay on biases and norms.

The recipe of most transformer training: ``param_groups`` gives biases and LayerNorm weights
``weight_decay=0``; ``SequentialLR`` runs ``LinearLR`` for the warm-up, then
``CosineAnnealingLR``. The schedule steps after every optimizer step here, as such
recipes do (``scheduler_step`` means torch's ``scheduler.step()``, whenever it is called).

    python examples/python/adamw_warmup_cosine.py [--quick]
"""

import argparse

import numpy as np
import torch
from torch import nn

import optgraph
from optgraph import lr_scheduler, optim
from optgraph.artifact.names import PARAM_GROUPS_KEY

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--quick", action="store_true", help="fewer steps (what the tests run)")
args = parser.parse_args()
steps = 120 if args.quick else 1000
warmup = steps // 10

rng = np.random.default_rng(0)
x = rng.normal(size=(4096, 20)).astype(np.float32)
y = (np.sin(x[:, :10]).sum(axis=1) > 0).astype(np.int64)


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, h):
        return h + self.mlp(self.norm(h))


torch.manual_seed(0)
model = nn.Sequential(nn.Linear(20, 32), Block(32), Block(32), nn.LayerNorm(32), nn.Linear(32, 2))
artifact = optgraph.compile(
    model,
    (torch.from_numpy(x[:64]),),
    (torch.from_numpy(y[:64]),),
    nn.CrossEntropyLoss(),
    optimizer=optim.AdamW(
        lr=3e-3, weight_decay=0.05, param_groups=[{"params": ["*.bias", "*norm*"], "weight_decay": 0.0}]
    ),
    lr_scheduler=lr_scheduler.SequentialLR(
        schedulers=[
            lr_scheduler.LinearLR(start_factor=0.01, total_iters=warmup),
            lr_scheduler.CosineAnnealingLR(T_max=steps - warmup),
        ],
        milestones=[warmup],
    ),
    clip_grad_norm=1.0,
)
no_decay = artifact.manifest.extra[PARAM_GROUPS_KEY][0]["params"]
print(f"no weight decay on: {', '.join(no_decay)}")
session = optgraph.TrainingSession(artifact)
for step in range(steps):
    rows = rng.integers(0, 3584, 64)
    loss = session.step(x[rows], y[rows])
    session.scheduler_step()
    if step in (0, warmup - 1, steps // 2, steps - 1):
        print(f"step {step + 1:4d}  loss {loss:.4f}  lr {session.lr[0]:.2e}")

accuracy = (session.eval(x[3584:]).argmax(axis=1) == y[3584:]).mean()
print(f"held-out accuracy: {accuracy:.2%}")
