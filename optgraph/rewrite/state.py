"""Names and records for the state tensors the rewriter adds."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STEP_COUNTER = "counter.step"
EPOCH = "schedule.epoch"
SCHEDULE_LR = "schedule.lr"
NEXT = ".next"


def optim_slot_name(slot: str, param: str) -> str:
    """Checkpoint name of one optimizer slot of one parameter, e.g. ``optim.exp_avg.fc1.weight``."""
    return f"optim.{slot}.{param}"


@dataclass(frozen=True)
class StateTensor:
    """A state tensor the rewriter introduced.

    Attributes:
        name: its checkpoint name and graph input name.
        role: ``optim_state``, ``schedule_state`` or ``counter``.
        init: its initial value.
        meta: extra manifest keys (e.g. ``{"param": ..., "slot": ...}``).
    """

    name: str
    role: str
    init: np.ndarray
    meta: dict
