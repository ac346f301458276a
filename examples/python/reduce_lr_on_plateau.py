"""ReduceLROnPlateau on the validation loss: the learning rate halves when the held-out loss stops improving.

The eval graph gives the model's outputs in eval mode; the validation loss is computed from
them in numpy (the artifact holds the model, not the loss function) and passed to
``scheduler_step``, as torch's ``scheduler.step(val_loss)``.

    python examples/python/reduce_lr_on_plateau.py [--quick]
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
epochs = 8 if args.quick else 25

rng = np.random.default_rng(0)
centers = rng.normal(0, 2, (5, 10))
labels = rng.integers(0, 5, 3000)
x = (centers[labels] + rng.normal(0, 1.5, (3000, 10))).astype(np.float32)
y = labels.astype(np.int64)
x_train, y_train, x_val, y_val = x[:2400], y[:2400], x[2400:], y[2400:]


def cross_entropy(logits: np.ndarray, target: np.ndarray) -> float:
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(target)), target].mean())


torch.manual_seed(0)
model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 5))
artifact = optgraph.compile(
    model,
    (torch.from_numpy(x_train[:32]),),
    (torch.from_numpy(y_train[:32]),),
    nn.CrossEntropyLoss(),
    optimizer=optim.SGD(lr=0.1, momentum=0.9),
    lr_scheduler=lr_scheduler.ReduceLROnPlateau(mode="min", factor=0.5, patience=1, threshold=1e-3),
)
session = optgraph.TrainingSession(artifact)
lrs = []
for epoch in range(epochs):
    order = rng.permutation(len(x_train))
    losses = [session.step(x_train[rows], y_train[rows]) for rows in np.array_split(order, len(x_train) // 32)]
    val_loss = cross_entropy(session.eval(x_val), y_val)
    lrs.append(session.lr)
    session.scheduler_step(val_loss)  # torch: scheduler.step(val_loss)
    print(f"epoch {epoch + 1:2d}  loss {np.mean(losses):.4f}  validation loss {val_loss:.4f}  lr {lrs[-1]:g}")

accuracy = (session.eval(x_val).argmax(axis=1) == y_val).mean()
print(f"learning rates: {sorted(set(lrs), reverse=True)}; validation accuracy {accuracy:.2%}")
