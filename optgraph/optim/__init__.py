"""Optimizers with torch.optim's names, arguments and defaults (minus ``params``).

Lion, which torch lacks, takes its paper's arguments and defaults.
"""

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
    Lion,
    NAdam,
    Optimizer,
    ParamGroup,
    RAdam,
    RMSprop,
    Rprop,
)

__all__ = [
    "ASGD", "SGD", "Adadelta", "Adafactor", "Adagrad", "Adam", "AdamW", "Adamax", "Lion", "NAdam", "Optimizer",
    "ParamGroup", "RAdam", "RMSprop", "Rprop",
]  # fmt: skip
