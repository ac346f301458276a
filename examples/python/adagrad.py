"""Adagrad: logistic regression on sparse bag-of-words features, where rare features get larger steps.

python examples/python/adagrad.py [--quick]
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
epochs = 3 if args.quick else 15

# 2,000 documents over a 500-word vocabulary; a few words (some rare) decide the label
rng = np.random.default_rng(0)
vocabulary, documents = 500, 2000
frequency = 1.0 / np.arange(1, vocabulary + 1)  # Zipf: most words are rare
x = (rng.random((documents, vocabulary)) < 40 * frequency / frequency.sum()).astype(np.float32)
weights = np.zeros(vocabulary, np.float32)
weights[rng.choice(vocabulary, 25, replace=False)] = rng.normal(0, 3, 25)
y = (x @ weights + rng.normal(0, 0.1, documents) > 0).astype(np.float32)[:, None]
split = 1600

torch.manual_seed(0)
model = nn.Linear(vocabulary, 1)
artifact = optgraph.compile(
    model,
    (torch.from_numpy(x[:50]),),
    (torch.from_numpy(y[:50]),),
    nn.BCEWithLogitsLoss(),
    optimizer=optim.Adagrad(lr=0.5, initial_accumulator_value=0.1),
)
session = optgraph.TrainingSession(artifact)
for epoch in range(epochs):
    order = rng.permutation(split)
    losses = [session.step(x[rows], y[rows]) for rows in np.array_split(order, split // 50)]
    print(f"epoch {epoch + 1:2d}  loss {np.mean(losses):.4f}")

accuracy = ((session.eval(x[split:]) > 0) == (y[split:] > 0.5)).mean()
print(f"held-out accuracy: {accuracy:.2%}")
