"""Optimizers with torch.optim's names, arguments and defaults (minus ``params``)."""

from __future__ import annotations

from optgraph.optim.optimizers import SGD, Adagrad, Adam, AdamW, Optimizer, ParamGroup

__all__ = ["SGD", "Adagrad", "Adam", "AdamW", "Optimizer", "ParamGroup"]
