"""Public optimizers: torch.optim's names, arguments, defaults and validation.

Each class only validates its options and says which chain of update rules
(:mod:`optgraph.optim.rules`) implements them; the graph is built elsewhere.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from optgraph.optim import rules as R

Checker = Callable[[Any], None]


def check(ok: Callable[[Any], bool], message: str) -> Checker:
    """A checker that raises ``ValueError(message.format(value))`` unless ``ok(value)``."""

    def checker(value: Any) -> None:
        if not ok(value):
            raise ValueError(message.format(value))

    return checker


def non_negative(what: str, *, nan_passes: bool = False) -> Checker:
    """torch's ``Invalid <what>: <value>`` for a negative value.

    torch writes most of these ``not 0.0 <= value``, which NaN fails; SGD writes ``value < 0.0``,
    which NaN passes (``nan_passes=True``).
    """
    if nan_passes:
        return check(lambda v: not v < 0.0, f"Invalid {what}: {{}}")
    return check(lambda v: 0.0 <= v, f"Invalid {what}: {{}}")


def each(*checkers: Checker) -> Checker:
    """A checker of a tuple option: the i-th checker checks the i-th element, in order."""

    def checker(values: Any) -> None:
        for check_one, value in zip(checkers, values):
            check_one(value)

    return checker


def _beta(index: int) -> Checker:
    return check(lambda v: 0.0 <= v < 1.0, f"Invalid beta parameter at index {index}: {{}}")


#: the Adam family's ``betas``: each in [0, 1)
BETAS = each(_beta(0), _beta(1))
LEARNING_RATE = non_negative("learning rate")
EPSILON = non_negative("epsilon value")
WEIGHT_DECAY = non_negative("weight_decay value")

#: Adam's checks, which most of the family (and Lion) share, in torch's order
_ADAM_CHECKS: dict[str, Checker] = {
    "lr": LEARNING_RATE, "eps": EPSILON, "betas": BETAS, "weight_decay": WEIGHT_DECAY,
}  # fmt: skip


@dataclass(frozen=True)
class ParamGroup:
    """One resolved parameter group: its position, options and parameter names."""

    index: int
    options: dict[str, Any]
    params: tuple[str, ...]


class Optimizer:
    """Base of the public optimizers.

    Args:
        param_groups: ``[{"params": [names or fnmatch patterns], **overrides}, ...]``.
            A parameter joins the first group that matches it; unmatched
            parameters form the default group (the constructor's arguments).
    """

    #: whether torch keeps a per-parameter ``step`` tensor in this optimizer's state
    has_step_slot: ClassVar[bool] = True

    #: option name -> its checker, in the order torch checks them (the first failure is the error)
    checks: ClassVar[dict[str, Checker]] = {}

    def __init__(self, defaults: dict[str, Any], param_groups: Sequence[dict] | None) -> None:
        self._validate(defaults)
        self.defaults = dict(defaults)
        self.param_groups = [self._check_group(i, g) for i, g in enumerate(param_groups or [])]

    # -- subclasses ---------------------------------------------------------
    def check_together(self, options: dict[str, Any]) -> None:
        """Rules across options that torch checks after the per-option ones (SGD's nesterov); none by default."""

    def rules(self, options: dict[str, Any]) -> list[R.UpdateRule]:
        """The chain of update rules for one group's options."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------
    def _validate(self, options: dict[str, Any]) -> None:
        """Raise what torch raises for invalid options: the table first, then the cross-option rules."""
        for option, checker in self.checks.items():
            checker(options[option])
        self.check_together(options)

    @property
    def name(self) -> str:
        return type(self).__name__

    def _check_group(self, index: int, group: dict) -> dict:
        if not isinstance(group, dict) or "params" not in group:
            raise ValueError(f"param_groups[{index}] must be a dict with a 'params' key, got {group!r}")
        patterns = group["params"]
        if isinstance(patterns, str):
            patterns = [patterns]
        if not patterns or not all(isinstance(p, str) for p in patterns):
            raise ValueError(
                f"param_groups[{index}]['params'] must be a non-empty list of parameter names or patterns, "
                f"got {group['params']!r}"
            )
        unknown = sorted(set(group) - set(self.defaults) - {"params"})
        if unknown:
            raise ValueError(
                f"param_groups[{index}] has unknown option(s) {unknown} for {self.name}; "
                f"expected some of {sorted(self.defaults)}"
            )
        options = {**self.defaults, **{k: v for k, v in group.items() if k != "params"}}
        self._validate(options)
        return {"params": list(patterns), **{k: v for k, v in group.items() if k != "params"}}

    def resolve(self, trainable: Sequence[str]) -> list[ParamGroup]:
        """Assign each trainable parameter to a group; the default group comes last."""
        members: list[list[str]] = [[] for _ in self.param_groups]
        default: list[str] = []
        for name in trainable:
            for i, group in enumerate(self.param_groups):
                if any(fnmatch.fnmatchcase(name, p) for p in group["params"]):
                    members[i].append(name)
                    break
            else:
                default.append(name)
        groups = []
        for i, group in enumerate(self.param_groups):
            if not members[i]:
                raise ValueError(
                    f"param_groups[{i}]['params'] = {group['params']} matches no trainable parameter "
                    f"that an earlier group did not take; parameters are {list(trainable)}"
                )
            options = {**self.defaults, **{k: v for k, v in group.items() if k != "params"}}
            groups.append(ParamGroup(i, options, tuple(members[i])))
        if default or not groups:
            groups.append(ParamGroup(len(groups), dict(self.defaults), tuple(default)))
        return groups

    def config(self) -> dict[str, Any]:
        """A JSON-able description for the manifest."""
        return {"name": self.name, "defaults": _jsonable(self.defaults), "param_groups": _jsonable(self.param_groups)}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.defaults.items())
        return f"{self.name}({args})"


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _gradient_rules(o: dict[str, Any], l2_decay: bool = True) -> list[R.UpdateRule]:
    """What every torch optimizer does to the gradient first: negate it (maximize), add L2 decay."""
    chain: list[R.UpdateRule] = [R.Maximize()] if o["maximize"] else []
    if l2_decay and o["weight_decay"] != 0:
        chain.append(R.AddWeightDecay(o["weight_decay"]))
    return chain


def _adam_family(o: dict[str, Any], scale: R.UpdateRule) -> list[R.UpdateRule]:
    """maximize, L2 or decoupled weight decay around an Adam-like scaling, then the learning rate."""
    decoupled = o.get("decoupled_weight_decay", False)
    chain = _gradient_rules(o, l2_decay=not decoupled)
    chain.append(scale)
    if decoupled and o["weight_decay"] != 0:
        chain.append(R.DecayParameter(o["weight_decay"]))
    chain.append(R.ScaleByLearningRate())
    return chain


class SGD(Optimizer):
    """torch.optim.SGD."""

    has_step_slot = False

    checks = {
        "lr": non_negative("learning rate", nan_passes=True),
        "momentum": non_negative("momentum value", nan_passes=True),
        "weight_decay": non_negative("weight_decay value", nan_passes=True),
    }

    def check_together(self, o):
        if o["nesterov"] and (o["momentum"] <= 0 or o["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def __init__(
        self,
        lr: float = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        param_groups: Sequence[dict] | None = None,
    ) -> None:
        defaults = dict(
            lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
            maximize=maximize,
        )  # fmt: skip
        super().__init__(defaults, param_groups)

    def rules(self, o):
        chain = _gradient_rules(o)
        if o["momentum"] != 0:
            chain.append(R.TraceMomentum(o["momentum"], o["dampening"], o["nesterov"]))
        chain.append(R.ScaleByLearningRate())
        return chain


class Adam(Optimizer):
    """torch.optim.Adam: L2 weight decay added to the gradient, or decoupled (``decoupled_weight_decay=True``)."""

    checks = _ADAM_CHECKS

    def __init__(
        self,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        decoupled_weight_decay: bool = False,
        param_groups: Sequence[dict] | None = None,
    ) -> None:
        defaults = dict(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
            decoupled_weight_decay=decoupled_weight_decay,
        )  # fmt: skip
        super().__init__(defaults, param_groups)

    def rules(self, o):
        return _adam_family(o, R.ScaleByAdam(o["betas"][0], o["betas"][1], o["eps"], o["amsgrad"]))


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay (``param *= 1 - lr * weight_decay``)."""

    def __init__(
        self,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        param_groups: Sequence[dict] | None = None,
    ) -> None:
        defaults = dict(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize
        )  # fmt: skip
        Optimizer.__init__(self, defaults, param_groups)

    def rules(self, o):  # AdamW has no decoupled_weight_decay argument: its decay is always decoupled
        return super().rules({**o, "decoupled_weight_decay": True})


class Adagrad(Optimizer):
    """torch.optim.Adagrad."""

    checks = {
        "lr": LEARNING_RATE,
        "lr_decay": non_negative("lr_decay value"),
        "weight_decay": WEIGHT_DECAY,
        "initial_accumulator_value": non_negative("initial_accumulator_value value"),
        "eps": EPSILON,
    }

    def __init__(
        self,
        lr: float = 1e-2,
        lr_decay: float = 0,
        weight_decay: float = 0,
        initial_accumulator_value: float = 0,
        eps: float = 1e-10,
        *,
        maximize: bool = False,
        param_groups: Sequence[dict] | None = None,
    ) -> None:
        defaults = dict(
            lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value, eps=eps, maximize=maximize,
        )  # fmt: skip
        super().__init__(defaults, param_groups)

    def rules(self, o):
        chain = _gradient_rules(o)
        chain.append(R.ScaleByAdagrad(o["eps"], o["initial_accumulator_value"]))
        if o["lr_decay"] != 0:
            chain.append(R.ScaleByLrDecay(o["lr_decay"]))
        chain.append(R.ScaleByLearningRate())
        return chain


class RMSprop(Optimizer):
    """torch.optim.RMSprop."""

    checks = {
        "lr": LEARNING_RATE,
        "eps": EPSILON,
        "momentum": non_negative("momentum value"),
        "weight_decay": WEIGHT_DECAY,
        "alpha": non_negative("alpha value"),
    }

    def __init__(
        self,
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        *,
        maximize: bool = False,
        param_groups: Sequence[dict] | None = None,
    ) -> None:
        defaults = dict(
            lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum, centered=centered,
            maximize=maximize,
        )  # fmt: skip
        super().__init__(defaults, param_groups)

    def rules(self, o):
        chain = _gradient_rules(o)
        chain.append(R.ScaleByRms(o["alpha"], o["eps"], o["centered"], o["momentum"]))
        chain.append(R.ScaleByLearningRate())
        return chain


class Adamax(Optimizer):
    """torch.optim.Adamax."""

    checks = _ADAM_CHECKS

    def __init__(
        self,
        lr: float = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        *,
        maximize: bool = False,
        param_groups: Sequence[dict] | None = None,
    ) -> None:
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, maximize=maximize)
        super().__init__(defaults, param_groups)

    def rules(self, o):
        chain = _gradient_rules(o)
        chain.append(R.ScaleByAdamax(o["betas"][0], o["betas"][1], o["eps"]))
        chain.append(R.ScaleByLearningRate())
        return chain


class Adadelta(Optimizer):
    """torch.optim.Adadelta."""

    checks = {
        "lr": LEARNING_RATE,
        "rho": check(lambda v: 0.0 <= v <= 1.0, "Invalid rho value: {}"),
        "eps": EPSILON,
        "weight_decay": WEIGHT_DECAY,
    }

    def __init__(
        self,
        lr: float = 1.0,
        rho: float = 0.9,
        eps: float = 1e-6,
        weight_decay: float = 0,
        *,
        maximize: bool = False,
        param_groups: Sequence[dict] | None = None,
    ) -> None:
        defaults = dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize)
        super().__init__(defaults, param_groups)

    def rules(self, o):
        chain = _gradient_rules(o)
        chain.append(R.ScaleByAdadelta(o["rho"], o["eps"]))
        chain.append(R.ScaleByLearningRate())
        return chain


class NAdam(Optimizer):
    """torch.optim.NAdam."""

    checks = {**_ADAM_CHECKS, "momentum_decay": non_negative("momentum_decay value")}

    def __init__(
        self,
        lr: float = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum_decay: float = 4e-3,
        decoupled_weight_decay: bool = False,
        *,
        maximize: bool = False,
        param_groups: Sequence[dict] | None = None,
    ) -> None:
        defaults = dict(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, momentum_decay=momentum_decay,
            decoupled_weight_decay=decoupled_weight_decay, maximize=maximize,
        )  # fmt: skip
        super().__init__(defaults, param_groups)

    def rules(self, o):
        return _adam_family(o, R.ScaleByNadam(o["betas"][0], o["betas"][1], o["eps"], o["momentum_decay"]))


class RAdam(Optimizer):
    """torch.optim.RAdam."""

    checks = _ADAM_CHECKS

    def __init__(
        self,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        decoupled_weight_decay: bool = False,
        *,
        maximize: bool = False,
        param_groups: Sequence[dict] | None = None,
    ) -> None:
        defaults = dict(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay, maximize=maximize,
        )  # fmt: skip
        super().__init__(defaults, param_groups)

    def rules(self, o):
        return _adam_family(o, R.ScaleByRadam(o["betas"][0], o["betas"][1], o["eps"]))


class Rprop(Optimizer):
    """torch.optim.Rprop (the learning rate seeds every element's step size)."""

    checks = {
        "lr": LEARNING_RATE,
        "etas": check(lambda e: 0.0 < e[0] < 1.0 < e[1], "Invalid eta values: {0[0]}, {0[1]}"),
    }

    def __init__(
        self,
        lr: float = 1e-2,
        etas: tuple[float, float] = (0.5, 1.2),
        step_sizes: tuple[float, float] = (1e-6, 50),
        *,
        maximize: bool = False,
        param_groups: Sequence[dict] | None = None,
    ) -> None:
        defaults = dict(lr=lr, etas=tuple(etas), step_sizes=tuple(step_sizes), maximize=maximize)
        super().__init__(defaults, param_groups)

    def rules(self, o):
        chain: list[R.UpdateRule] = [R.Maximize()] if o["maximize"] else []
        etaminus, etaplus = o["etas"]
        low, high = o["step_sizes"]
        chain.append(R.RpropUpdate(etaminus, etaplus, low, high, float(o["lr"])))
        return chain


class ASGD(Optimizer):
    """torch.optim.ASGD (averaged SGD; the average is the ``ax`` slot)."""

    checks = {"lr": LEARNING_RATE, "weight_decay": WEIGHT_DECAY}

    def __init__(
        self,
        lr: float = 1e-2,
        lambd: float = 1e-4,
        alpha: float = 0.75,
        t0: float = 1e6,
        weight_decay: float = 0,
        *,
        maximize: bool = False,
        param_groups: Sequence[dict] | None = None,
    ) -> None:
        defaults = dict(lr=lr, lambd=lambd, alpha=alpha, t0=t0, weight_decay=weight_decay, maximize=maximize)
        super().__init__(defaults, param_groups)

    def rules(self, o):
        chain = _gradient_rules(o)
        chain.append(R.AveragedSgdUpdate(o["lambd"], o["alpha"], o["t0"], float(o["lr"])))
        return chain


class Lion(Optimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", Algorithm 2).

    ``c = beta1 * m + (1 - beta1) * g``; ``param -= lr * (sign(c) + weight_decay * param)``;
    ``m = beta2 * m + (1 - beta2) * g``. torch has no Lion: the defaults are the paper's,
    the checks Adam's, and the state one ``exp_avg`` per parameter (no ``step``).
    """

    has_step_slot = False
    checks = {"lr": LEARNING_RATE, "betas": BETAS, "weight_decay": WEIGHT_DECAY}

    def __init__(
        self,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        param_groups: Sequence[dict] | None = None,
    ) -> None:
        defaults = dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, maximize=maximize)
        super().__init__(defaults, param_groups)

    def rules(self, o):
        return _adam_family({**o, "decoupled_weight_decay": True}, R.ScaleByLion(o["betas"][0], o["betas"][1]))


class Adafactor(Optimizer):
    """torch.optim.Adafactor (without ``foreach``): factored second moments, a relative and clipped step.

    ``eps[0]`` None means the parameter dtype's machine epsilon, as in torch.
    """

    checks = {
        "lr": check(lambda v: 0.0 <= v, "Learning rate should be >= 0 but is: {}"),
        "beta2_decay": check(lambda v: 0.0 >= v, "beta2_decay should be <= 0 but is: {}"),
        "eps": each(
            check(lambda v: v is None or 0.0 <= v, "epsilon1 should be >= 0 but is: {}"),
            check(lambda v: 0.0 <= v, "epsilon2 should be >= 0 but is: {}"),
        ),
        "d": check(lambda v: 1.0 <= v, "Clipping threshold d should be >= 1 but is: {}"),
        "weight_decay": check(lambda v: 0.0 <= v, "weight_decay should be >= 0 but is: {}"),
    }

    def __init__(
        self,
        lr: float = 1e-2,
        beta2_decay: float = -0.8,
        eps: tuple[float | None, float] = (None, 1e-3),
        d: float = 1.0,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        param_groups: Sequence[dict] | None = None,
    ) -> None:
        defaults = dict(
            lr=lr, beta2_decay=beta2_decay, eps=tuple(eps), d=d, weight_decay=weight_decay, maximize=maximize
        )
        super().__init__(defaults, param_groups)

    def rules(self, o):
        chain: list[R.UpdateRule] = [R.Maximize()] if o["maximize"] else []
        eps1, eps2 = o["eps"]
        chain.append(R.AdafactorUpdate(o["beta2_decay"], eps1, eps2, o["d"], o["weight_decay"]))
        return chain
