"""Optimizers with torch.optim's names, arguments and defaults (minus ``params``)."""

from __future__ import annotations

from optgraph.optim.optimizers import (
    ASGD,
    SGD,
    Adadelta,
    Adafactor,
    Adagrad,
    Adam,
    Adamax,
    AdamW,
    NAdam,
    Optimizer,
    ParamGroup,
    RAdam,
    RMSprop,
    Rprop,
)

__all__ = [
    "ASGD", "SGD", "Adadelta", "Adafactor", "Adagrad", "Adam", "AdamW", "Adamax", "NAdam", "Optimizer",
    "ParamGroup", "RAdam", "RMSprop", "Rprop",
]  # fmt: skip
