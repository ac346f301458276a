"""Learning-rate schedules with torch.optim.lr_scheduler's names and arguments.

A schedule is a function of its state (at least the epoch counter, i.e. the
number of ``scheduler_step()`` calls). It emits that function as graph nodes
(``emit_lr``, float64 like torch's Python floats) and has a plain-Python twin
(``value``) that tests use as the oracle and that gives the initial
``session.lr``. Torch's recursive forms are emitted in closed form.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from optgraph.artifact.names import NO_SCHEDULE_NAME, SCHEDULE_LR, schedule_state_name

if TYPE_CHECKING:  # onnx-ir is needed to compile, not to train
    import onnx_ir as ir

    from optgraph.graph.builder import GraphBuilder


__all__ = [
    "ChainedScheduler", "ConstantLR", "CosineAnnealingLR", "CosineAnnealingWarmRestarts", "ExponentialLR",
    "LRScheduler", "LinearLR", "MultiStepLR", "OneCycleLR", "PolynomialLR", "ReduceLROnPlateau", "SequentialLR",
    "StepLR",
]  # fmt: skip


def _fresh_start(last_epoch: int) -> None:
    """Schedules start at epoch 0 (torch's ``last_epoch=-1``); a run resumes by reopening a saved session."""
    if last_epoch != -1:
        raise KeyError(
            "param 'initial_lr' is not specified in param_groups[0] when resuming scheduler with last_epoch >= 0.\n"
            "optgraph schedules start fresh (last_epoch=-1); to resume, open the saved session directory"
        )


class LRScheduler:
    """Base of the public schedules.

    A schedule whose learning rate depends on more than the epoch (ReduceLROnPlateau)
    sets ``lr_from_state``: the train step then reads the ``schedule.lr`` state
    that its ``emit_advance`` keeps, and ``driven_by_metric`` says that
    ``scheduler_step`` takes a metric (the input ``METRIC``).
    """

    lr_from_state = False
    driven_by_metric = False

    def for_group(self, index: int) -> LRScheduler:
        """This schedule as seen by parameter group ``index`` (per-group arguments such as a list of max_lr)."""
        return self

    def adjust_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """Optimizer options as the schedule sets them at construction (OneCycleLR's momentum)."""
        return options

    def emit_momentum(self, b: GraphBuilder, epoch: ir.Value):
        """Nodes for the momentum / beta1 of this epoch, for a schedule that cycles it; else None."""
        return None

    def extra_state(self, base_lrs: list[float]) -> dict[str, np.ndarray]:
        """Schedule state besides the epoch and ``schedule.lr``, with initial values."""
        return {}

    def emit_advance(self, b, state: dict, metric, base_lrs: list[float]) -> dict:
        """Nodes for one ``scheduler_step``: the next value of every schedule state tensor (by name)."""
        raise NotImplementedError

    def emit_lr(self, b: GraphBuilder, epoch: ir.Value, base_lr: float) -> ir.Value:
        """Graph nodes computing the learning rate (float64 scalar) at ``epoch`` (float64 scalar)."""
        raise NotImplementedError

    def value(self, epoch: int, base_lr: float) -> float:
        """The learning rate at ``epoch``, in plain Python."""
        raise NotImplementedError

    @property
    def name(self) -> str:
        return type(self).__name__

    def config(self) -> dict[str, Any]:
        """A JSON-able description for the manifest."""
        return {"name": self.name, **{k: v for k, v in vars(self).items() if not k.startswith("_")}}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{self.name}({args})"


class NoSchedule(LRScheduler):
    """What ``compile(lr_scheduler=None)`` trains with: the base learning rate at every epoch.

    Not torch's ``ConstantLR`` (a factor for some epochs). Its manifest name,
    ``NO_SCHEDULE_NAME``, is the one version-1 artifacts carry.
    """

    @property
    def name(self) -> str:
        return NO_SCHEDULE_NAME

    def emit_lr(self, b, epoch, base_lr):
        return b.double(base_lr)

    def value(self, epoch, base_lr):
        return base_lr


class StepLR(LRScheduler):
    """torch.optim.lr_scheduler.StepLR: ``base_lr * gamma ** (epoch // step_size)``."""

    def __init__(self, step_size: int, gamma: float = 0.1, last_epoch: int = -1) -> None:
        _fresh_start(last_epoch)
        if not isinstance(step_size, int) or isinstance(step_size, bool) or step_size <= 0:
            raise ValueError(f"Expected positive integer step_size, but got {step_size}")
        self.step_size = step_size
        self.gamma = float(gamma)

    def emit_lr(self, b, epoch, base_lr):
        periods = b.op("Floor", b.op("Div", epoch, b.double(self.step_size)))
        return b.op("Mul", b.double(base_lr), b.op("Pow", b.double(self.gamma), periods))

    def value(self, epoch, base_lr):
        return base_lr * self.gamma ** (epoch // self.step_size)


class MultiStepLR(LRScheduler):
    """torch.optim.lr_scheduler.MultiStepLR: ``base_lr * gamma ** (milestones passed)``."""

    def __init__(self, milestones, gamma: float = 0.1, last_epoch: int = -1) -> None:
        _fresh_start(last_epoch)
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = float(gamma)

    def emit_lr(self, b, epoch, base_lr):
        passed = b.double(0.0)
        for milestone in self.milestones:  # torch counts a milestone repeated k times k times
            passed = b.op("Add", passed, b.cast(b.op("GreaterOrEqual", epoch, b.double(milestone)), epoch.dtype))
        return b.op("Mul", b.double(base_lr), b.op("Pow", b.double(self.gamma), passed))

    def value(self, epoch, base_lr):
        return base_lr * self.gamma ** sum(1 for m in self.milestones if epoch >= m)


class ExponentialLR(LRScheduler):
    """torch.optim.lr_scheduler.ExponentialLR: ``base_lr * gamma ** epoch``."""

    def __init__(self, gamma: float, last_epoch: int = -1) -> None:
        _fresh_start(last_epoch)
        self.gamma = float(gamma)

    def emit_lr(self, b, epoch, base_lr):
        return b.op("Mul", b.double(base_lr), b.op("Pow", b.double(self.gamma), epoch))

    def value(self, epoch, base_lr):
        return base_lr * self.gamma**epoch


def _emit_cosine(b, base_lr: float, eta_min: float, position, period):
    """``eta_min + (base_lr - eta_min) * (1 + cos(pi * position / period)) / 2`` in graph nodes."""
    angle = b.op("Mul", b.double(math.pi), b.op("Div", position, period))
    half = b.op("Mul", b.op("Add", b.double(1.0), b.cos(angle)), b.double(0.5))
    return b.op("Add", b.double(eta_min), b.op("Mul", b.double(base_lr - eta_min), half))


class CosineAnnealingLR(LRScheduler):
    """torch.optim.lr_scheduler.CosineAnnealingLR (closed form, periodic beyond ``T_max`` as torch's)."""

    def __init__(self, T_max: int, eta_min: float = 0.0, last_epoch: int = -1) -> None:  # noqa: N803 - torch's name
        _fresh_start(last_epoch)
        self.T_max = T_max
        self.eta_min = float(eta_min)

    def emit_lr(self, b, epoch, base_lr):
        return _emit_cosine(b, base_lr, self.eta_min, epoch, b.double(self.T_max))

    def value(self, epoch, base_lr):
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * epoch / self.T_max)) / 2


class LinearLR(LRScheduler):
    """torch.optim.lr_scheduler.LinearLR: the factor goes linearly from start to end over ``total_iters``."""

    def __init__(
        self, start_factor: float = 1.0 / 3, end_factor: float = 1.0, total_iters: int = 5, last_epoch: int = -1
    ) -> None:
        _fresh_start(last_epoch)
        if start_factor > 1.0 or start_factor <= 0:
            raise ValueError("Starting multiplicative factor expected to be greater than 0 and less or equal to 1.")
        if end_factor > 1.0 or end_factor < 0:
            raise ValueError("Ending multiplicative factor expected to be between 0 and 1.")
        self.start_factor = float(start_factor)
        self.end_factor = float(end_factor)
        self.total_iters = total_iters

    def emit_lr(self, b, epoch, base_lr):
        progress = b.op("Div", b.op("Min", epoch, b.double(self.total_iters)), b.double(self.total_iters))
        factor = b.op(
            "Add", b.double(self.start_factor), b.op("Mul", b.double(self.end_factor - self.start_factor), progress)
        )
        return b.op("Mul", b.double(base_lr), factor)

    def value(self, epoch, base_lr):
        progress = min(self.total_iters, epoch) / self.total_iters
        return base_lr * (self.start_factor + (self.end_factor - self.start_factor) * progress)


class ConstantLR(LRScheduler):
    """torch.optim.lr_scheduler.ConstantLR: ``base_lr * factor`` until ``total_iters``, then ``base_lr``."""

    def __init__(self, factor: float = 1.0 / 3, total_iters: int = 5, last_epoch: int = -1) -> None:
        _fresh_start(last_epoch)
        if factor > 1.0 or factor < 0:
            raise ValueError("Constant multiplicative factor expected to be between 0 and 1.")
        self.factor = float(factor)
        self.total_iters = total_iters

    def emit_lr(self, b, epoch, base_lr):
        done = b.op("GreaterOrEqual", epoch, b.double(self.total_iters))
        return b.op("Where", done, b.double(base_lr), b.double(base_lr * self.factor))

    def value(self, epoch, base_lr):
        return base_lr if epoch >= self.total_iters else base_lr * self.factor


class PolynomialLR(LRScheduler):
    """torch.optim.lr_scheduler.PolynomialLR: ``base_lr * (1 - min(epoch, total_iters) / total_iters) ** power``."""

    def __init__(self, total_iters: int = 5, power: float = 1.0, last_epoch: int = -1) -> None:
        _fresh_start(last_epoch)
        self.total_iters = total_iters
        self.power = float(power)

    def emit_lr(self, b, epoch, base_lr):
        remaining = b.op(
            "Sub",
            b.double(1.0),
            b.op("Div", b.op("Min", epoch, b.double(self.total_iters)), b.double(self.total_iters)),
        )
        return b.op("Mul", b.double(base_lr), b.op("Pow", remaining, b.double(self.power)))

    def value(self, epoch, base_lr):
        return base_lr * (1.0 - min(self.total_iters, epoch) / self.total_iters) ** self.power


class CosineAnnealingWarmRestarts(LRScheduler):
    """torch.optim.lr_scheduler.CosineAnnealingWarmRestarts: cosine cycles of ``T_0 * T_mult ** i`` epochs."""

    def __init__(self, T_0: int, T_mult: int = 1, eta_min: float = 0.0, last_epoch: int = -1) -> None:  # noqa: N803 - torch's names
        _fresh_start(last_epoch)
        if T_0 <= 0 or not isinstance(T_0, int):
            raise ValueError(f"Expected positive integer T_0, but got {T_0}")
        if T_mult < 1 or not isinstance(T_mult, int):
            raise ValueError(f"Expected integer T_mult >= 1, but got {T_mult}")
        if not isinstance(eta_min, (float, int)):
            raise ValueError(f"Expected float or int eta_min, but got {eta_min} of type {type(eta_min)}")
        self.T_0 = T_0
        self.T_mult = T_mult
        self.eta_min = float(eta_min)

    def _cycle(self, epoch: int) -> tuple[int, int]:
        """(position in the cycle, cycle length), by torch's integer recursion."""
        length, position = self.T_0, epoch
        while position >= length:
            position -= length
            length *= self.T_mult
        return position, length

    def emit_lr(self, b, epoch, base_lr):
        if self.T_mult == 1:
            position, length = b.op("Mod", epoch, b.double(self.T_0), fmod=1), b.double(self.T_0)
        else:
            # cycle n starts at T_0 * (T_mult**n - 1) / (T_mult - 1); the small offset keeps floor exact at starts
            ratio = b.op(
                "Add", b.op("Mul", b.op("Div", epoch, b.double(self.T_0)), b.double(self.T_mult - 1)), b.double(1.0)
            )
            cycle = b.op(
                "Floor", b.op("Add", b.op("Div", b.op("Log", ratio), b.double(math.log(self.T_mult))), b.double(1e-9))
            )
            grown = b.op("Pow", b.double(self.T_mult), cycle)
            start = b.op(
                "Div", b.op("Mul", b.double(self.T_0), b.op("Sub", grown, b.double(1.0))), b.double(self.T_mult - 1)
            )
            position, length = b.op("Sub", epoch, start), b.op("Mul", b.double(self.T_0), grown)
        return _emit_cosine(b, base_lr, self.eta_min, position, length)

    def value(self, epoch, base_lr):
        position, length = self._cycle(epoch)
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * position / length)) / 2


BEST = schedule_state_name("best")
NUM_BAD_EPOCHS = schedule_state_name("num_bad_epochs")
COOLDOWN_COUNTER = schedule_state_name("cooldown_counter")


class ReduceLROnPlateau(LRScheduler):
    """torch.optim.lr_scheduler.ReduceLROnPlateau: ``scheduler_step(metric)`` cuts the lr by ``factor``
    after ``patience`` epochs without improvement, then waits ``cooldown`` epochs.

    State: ``schedule.best`` (float64), ``schedule.num_bad_epochs`` and
    ``schedule.cooldown_counter`` (int64) and the learning rates in ``schedule.lr``.
    """

    lr_from_state = True
    driven_by_metric = True

    def __init__(
        self,
        mode: str = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr: float | list[float] = 0,
        eps: float = 1e-8,
    ) -> None:
        if factor >= 1.0:
            raise ValueError("Factor should be < 1.0.")
        if mode not in {"min", "max"}:
            raise ValueError("mode " + mode + " is unknown!")
        if threshold_mode not in {"rel", "abs"}:
            raise ValueError("threshold mode " + threshold_mode + " is unknown!")
        self.mode, self.factor, self.patience = mode, float(factor), int(patience)
        self.threshold, self.threshold_mode = float(threshold), threshold_mode
        self.cooldown, self.eps = int(cooldown), float(eps)
        self.min_lr = list(min_lr) if isinstance(min_lr, (list, tuple)) else float(min_lr)

    def _min_lrs(self, groups: int) -> list[float]:
        if isinstance(self.min_lr, list):
            if len(self.min_lr) != groups:
                raise ValueError(f"expected {groups} min_lrs, got {len(self.min_lr)}")
            return [float(m) for m in self.min_lr]
        return [self.min_lr] * groups

    def value(self, epoch, base_lr):  # before any metric, the lr is the base lr
        return base_lr

    def extra_state(self, base_lrs):
        self._min_lrs(len(base_lrs))
        worst = np.inf if self.mode == "min" else -np.inf
        return {
            BEST: np.array(worst, np.float64),
            NUM_BAD_EPOCHS: np.array(0, np.int64),
            COOLDOWN_COUNTER: np.array(0, np.int64),
        }

    def _emit_is_better(self, b, metric, best):
        t = self.threshold
        if self.mode == "min":
            bound = (
                b.op("Mul", best, b.double(1 - t)) if self.threshold_mode == "rel" else b.op("Sub", best, b.double(t))
            )
            return b.op("Less", metric, bound)
        bound = b.op("Mul", best, b.double(t + 1)) if self.threshold_mode == "rel" else b.op("Add", best, b.double(t))
        return b.op("Greater", metric, bound)

    def emit_advance(self, b, state, metric, base_lrs):
        i64 = state[NUM_BAD_EPOCHS].dtype
        zero, one = b.const(0, i64), b.const(1, i64)
        best, bad, cooldown = (
            state[BEST],
            state[NUM_BAD_EPOCHS],
            state[COOLDOWN_COUNTER],
        )
        better = self._emit_is_better(b, metric, best)
        best = b.op("Where", better, metric, best)
        bad = b.op("Where", better, zero, b.op("Add", bad, one))
        in_cooldown = b.op("Greater", cooldown, zero)
        cooldown = b.op("Where", in_cooldown, b.op("Sub", cooldown, one), cooldown)
        bad = b.op("Where", in_cooldown, zero, bad)
        reduce = b.op("Greater", bad, b.const(self.patience, i64))
        lrs = state[SCHEDULE_LR]
        reduced = b.op("Max", b.op("Mul", lrs, b.double(self.factor)), b.double(self._min_lrs(len(base_lrs))))
        worth_it = b.op("Greater", b.op("Sub", lrs, reduced), b.double(self.eps))
        lrs = b.op("Where", b.op("And", reduce, worth_it), reduced, lrs)
        return {
            BEST: best,
            NUM_BAD_EPOCHS: b.op("Where", reduce, zero, bad),
            COOLDOWN_COUNTER: b.op("Where", reduce, b.const(self.cooldown, i64), cooldown),
            SCHEDULE_LR: lrs,
        }


class SequentialLR(LRScheduler):
    """torch.optim.lr_scheduler.SequentialLR: ``schedulers[i]`` runs from ``milestones[i-1]``, restarted at 0."""

    def __init__(self, schedulers, milestones, last_epoch: int = -1) -> None:
        _fresh_start(last_epoch)
        schedulers, milestones = list(schedulers), [int(m) for m in milestones]
        if len(schedulers) < 1:
            raise ValueError(f"{type(self).__name__} expects at least one scheduler, but got no scheduler.")
        for i, s in enumerate(schedulers):
            if not isinstance(s, LRScheduler) or isinstance(s, ReduceLROnPlateau):
                raise TypeError(f"schedulers[{i}] must be an optgraph schedule other than ReduceLROnPlateau, got {s!r}")
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(
                "Sequential Schedulers expects number of schedulers provided to be one more "
                f"than the number of milestone points, but got number of schedulers {len(schedulers)} and the "
                f"number of milestones to be equal to {len(milestones)}"
            )
        self._schedulers = schedulers
        self.milestones = milestones

    def config(self):
        return {"name": self.name, "milestones": self.milestones, "schedulers": [s.config() for s in self._schedulers]}

    def emit_lr(self, b, epoch, base_lr):
        lr = self._schedulers[0].emit_lr(b, epoch, base_lr)
        for start, schedule in zip(self.milestones, self._schedulers[1:]):
            phase = schedule.emit_lr(b, b.op("Sub", epoch, b.double(start)), base_lr)
            lr = b.op("Where", b.op("GreaterOrEqual", epoch, b.double(start)), phase, lr)
        return lr

    def value(self, epoch, base_lr):
        index = sum(1 for m in self.milestones if epoch >= m)
        start = self.milestones[index - 1] if index else 0
        return self._schedulers[index].value(epoch - start, base_lr)


class ChainedScheduler(LRScheduler):
    """torch.optim.lr_scheduler.ChainedScheduler: every schedule steps at once; their factors multiply.

    Torch's chaining composes the schedules' recursive (multiplicative) forms,
    so only schedules whose learning rate is the base times a factor can chain.
    """

    _ADDITIVE = ("CosineAnnealingWarmRestarts",)

    def __init__(self, schedulers) -> None:
        schedulers = list(schedulers)
        if len(schedulers) < 1:
            raise ValueError(
                f"{type(self).__name__} expects at least one scheduler to be chained, but got no scheduler."
            )
        for i, s in enumerate(schedulers):
            if not isinstance(s, LRScheduler) or isinstance(s, ReduceLROnPlateau):
                raise TypeError(f"schedulers[{i}] must be an optgraph schedule other than ReduceLROnPlateau, got {s!r}")
            if s.name in self._ADDITIVE or getattr(s, "eta_min", 0.0):
                raise ValueError(f"schedulers[{i}] ({s!r}) sets the learning rate outright, it cannot be chained")
        self._schedulers = schedulers

    def config(self):
        return {"name": self.name, "schedulers": [s.config() for s in self._schedulers]}

    def emit_lr(self, b, epoch, base_lr):
        lr = b.double(base_lr)
        for schedule in self._schedulers:
            lr = b.op("Mul", lr, schedule.emit_lr(b, epoch, 1.0))
        return lr

    def value(self, epoch, base_lr):
        lr = base_lr
        for schedule in self._schedulers:
            lr *= schedule.value(epoch, 1.0)
        return lr


def _per_group(value, index: int, what: str):
    if isinstance(value, (list, tuple)):
        if index >= len(value):
            raise ValueError(f"{what} has {len(value)} values, but the optimizer has more parameter groups")
        return value[index]
    return value


class OneCycleLR(LRScheduler):
    """torch.optim.lr_scheduler.OneCycleLR, stepped once per batch, with its momentum / beta1 cycling.

    The learning rate ignores the optimizer's ``lr``: it runs from ``max_lr / div_factor``
    up to ``max_lr`` and down to ``max_lr / div_factor / final_div_factor``.
    """

    def __init__(
        self,
        max_lr: float | list[float],
        total_steps: int | None = None,
        epochs: int | None = None,
        steps_per_epoch: int | None = None,
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        cycle_momentum: bool = True,
        base_momentum: float | list[float] = 0.85,
        max_momentum: float | list[float] = 0.95,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
        last_epoch: int = -1,
    ) -> None:
        _fresh_start(last_epoch)
        if total_steps is not None:
            if total_steps <= 0 or not isinstance(total_steps, int):
                raise ValueError(f"Expected positive integer total_steps, but got {total_steps}")
        elif epochs is not None and steps_per_epoch is not None:
            if not isinstance(epochs, int) or epochs <= 0:
                raise ValueError(f"Expected positive integer epochs, but got {epochs}")
            if not isinstance(steps_per_epoch, int) or steps_per_epoch <= 0:
                raise ValueError(f"Expected positive integer steps_per_epoch, but got {steps_per_epoch}")
            total_steps = epochs * steps_per_epoch
        else:
            raise ValueError("You must define either total_steps OR (epochs AND steps_per_epoch)")
        if pct_start < 0 or pct_start > 1 or not isinstance(pct_start, float):
            raise ValueError(f"Expected float between 0 and 1 pct_start, but got {pct_start}")
        if anneal_strategy not in ["cos", "linear"]:
            raise ValueError(f"anneal_strategy must be one of 'cos' or 'linear', instead got {anneal_strategy}")
        self.max_lr, self.total_steps, self.pct_start = max_lr, total_steps, pct_start
        self.anneal_strategy, self.cycle_momentum = anneal_strategy, cycle_momentum
        self.base_momentum, self.max_momentum = base_momentum, max_momentum
        self.div_factor, self.final_div_factor, self.three_phase = div_factor, final_div_factor, three_phase

    def for_group(self, index):
        group = OneCycleLR.__new__(OneCycleLR)
        group.__dict__.update(self.__dict__)
        group.max_lr = float(_per_group(self.max_lr, index, "max_lr"))
        group.base_momentum = float(_per_group(self.base_momentum, index, "base_momentum"))
        group.max_momentum = float(_per_group(self.max_momentum, index, "max_momentum"))
        return group

    def adjust_options(self, options):
        if not self.cycle_momentum:
            return options
        if "betas" in options:
            return {**options, "betas": (self.max_momentum, options["betas"][1])}
        if "momentum" in options:
            return {**options, "momentum": self.max_momentum}
        raise ValueError("optimizer must support momentum or beta1 with `cycle_momentum` option enabled")

    def _phases(self) -> list[tuple[float, str, str]]:
        """(end step, start key, end key) of each phase; keys name lr and momentum anchors."""
        total, pct = self.total_steps, self.pct_start
        if self.three_phase:
            return [
                (float(pct * total) - 1, "initial", "max"),
                (float(2 * pct * total) - 2, "max", "initial"),
                (total - 1, "initial", "min"),
            ]
        return [(float(pct * total) - 1, "initial", "max"), (total - 1, "max", "min")]

    def _anchors(self) -> tuple[dict[str, float], dict[str, float]]:
        initial = self.max_lr / self.div_factor
        lrs = {"initial": initial, "max": self.max_lr, "min": initial / self.final_div_factor}
        # momentum moves against the learning rate: high while the lr is low
        momenta = {"initial": self.max_momentum, "max": self.base_momentum, "min": self.max_momentum}
        return lrs, momenta

    def _value(self, step: float, anchors: dict[str, float]) -> float:
        start_step = 0.0
        phases = self._phases()
        for i, (end_step, start, end) in enumerate(phases):
            if step <= end_step or i == len(phases) - 1:
                pct = (step - start_step) / (end_step - start_step)
                return self._anneal(anchors[start], anchors[end], pct)
            start_step = end_step
        raise AssertionError("unreachable")

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def _emit(self, b, step, anchors: dict[str, float]):
        phases = self._phases()
        result = None
        start_step = 0.0
        pieces = []
        for end_step, start, end in phases:
            pct = b.op("Div", b.op("Sub", step, b.double(start_step)), b.double(end_step - start_step))
            if self.anneal_strategy == "cos":
                wave = b.op("Add", b.cos(b.op("Mul", b.double(math.pi), pct)), b.double(1.0))
                value = b.op(
                    "Add", b.double(anchors[end]), b.op("Mul", b.double((anchors[start] - anchors[end]) / 2.0), wave)
                )
            else:
                value = b.op("Add", b.op("Mul", b.double(anchors[end] - anchors[start]), pct), b.double(anchors[start]))
            pieces.append((end_step, value))
            start_step = end_step
        result = pieces[-1][1]
        for end_step, value in reversed(pieces[:-1]):
            result = b.op("Where", b.op("LessOrEqual", step, b.double(end_step)), value, result)
        return result

    def emit_lr(self, b, epoch, base_lr):
        return self._emit(b, epoch, self._anchors()[0])

    def emit_momentum(self, b, epoch):
        return self._emit(b, epoch, self._anchors()[1]) if self.cycle_momentum else None

    def value(self, epoch, base_lr):
        return self._value(epoch, self._anchors()[0])

    def momentum(self, epoch: int) -> float:
        """The momentum / beta1 at ``epoch``, in plain Python."""
        return self._value(epoch, self._anchors()[1])
