"""The record of a state tensor that a rewrite adds (optimizer slots, counters, schedule state)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from optgraph.artifact.names import Role


@dataclass(frozen=True)
class StateTensor:
    """A state tensor the rewriter introduced.

    Attributes:
        name: its checkpoint name and graph input name.
        role: ``Role.OPTIM_STATE``, ``SCHEDULE_STATE``, ``COUNTER`` or ``GRAD_ACCUMULATOR``.
        init: its initial value.
        meta: extra manifest keys (e.g. ``{PARAM_KEY: ..., SLOT_KEY: ...}``; a pack: ``{PACKED_KEY: [...], SLOT_KEY: ...}``).
    """

    name: str
    role: Role
    init: np.ndarray
    meta: dict = field(default_factory=dict)
