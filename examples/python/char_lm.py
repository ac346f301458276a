"""A character-level language model on the docstrings of Python's own standard library.

A GRU reads characters of the docstrings of ``textwrap``, ``string``, ``json`` and ``argparse``
and predicts the next one. One artifact trains on batches of any size and sequences of any
length (``dynamic_shapes``); the GRU is an ONNX ``Scan`` over time, so the graph does not
grow with the length. At the end it writes a few characters after a prompt.

    python examples/python/char_lm.py [--quick]
"""

import argparse
import inspect

import numpy as np
import torch
from torch import nn

import optgraph
from optgraph import lr_scheduler, optim

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--quick", action="store_true", help="fewer steps (what the tests run)")
args = parser.parse_args()
steps, seq = (30, 16) if args.quick else (1500, 64)


def docstrings() -> str:
    import argparse as a
    import json
    import string
    import textwrap

    texts = []
    for module in (textwrap, string, json, a):
        texts.append(inspect.getdoc(module) or "")
        for _, member in inspect.getmembers(module):
            if (inspect.isfunction(member) or inspect.isclass(member)) and inspect.getdoc(member):
                texts.append(inspect.getdoc(member))
    return "\n\n".join(dict.fromkeys(texts))  # each once, in order


text = docstrings()
vocabulary = sorted(set(text))
index = {c: i for i, c in enumerate(vocabulary)}
ids = np.array([index[c] for c in text], np.int64)
print(f"{len(text):,} characters of docstrings, {len(vocabulary)} distinct")


class CharLM(nn.Module):
    def __init__(self, vocab: int, width: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.rnn = nn.GRU(width, width, batch_first=True)
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens):
        hidden, _ = self.rnn(self.embed(tokens))
        return self.head(hidden)


def next_char_loss(logits, targets):
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def batch(size: int, length: int, rng):
    starts = rng.integers(0, len(ids) - length - 1, size)
    window = np.stack([ids[s : s + length + 1] for s in starts])
    return window[:, :-1], window[:, 1:]


rng = np.random.default_rng(0)
torch.manual_seed(0)
x, y = batch(4, 16, rng)
artifact = optgraph.compile(
    CharLM(len(vocabulary)),
    (torch.from_numpy(x),),
    (torch.from_numpy(y),),
    next_char_loss,
    optimizer=optim.Adam(lr=3e-3),
    lr_scheduler=lr_scheduler.CosineAnnealingLR(T_max=steps, eta_min=3e-4),
    dynamic_shapes={"tokens": {0: "batch", 1: "seq"}, "target": {0: "batch", 1: "seq"}},
)
session = optgraph.TrainingSession(artifact)
first = None
for step in range(steps):
    loss = session.step(*batch(32, seq, rng))
    session.scheduler_step()
    first = loss if first is None else first
    if (step + 1) % max(steps // 6, 1) == 0:
        print(f"step {step + 1:4d}  loss {loss:.3f}  ({np.exp(loss):.1f} choices per character)")

prompt = "Return the "
tokens = [index[c] for c in prompt]
for _ in range(40):  # greedy: the most likely next character, the whole prefix fed each time
    logits = session.eval(np.array([tokens], np.int64))
    tokens.append(int(logits[0, -1].argmax()))
print(f"loss {first:.3f} -> {loss:.3f}; sample: {''.join(vocabulary[t] for t in tokens)!r}")
