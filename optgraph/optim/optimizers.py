"""Public optimizers: torch.optim's names, arguments, defaults and validation.

Each class only validates its options and says which chain of update rules
(:mod:`optgraph.optim.rules`) implements them; the graph is built elsewhere.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from optgraph.optim import rules as R


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

    def __init__(self, defaults: dict[str, Any], param_groups: Sequence[dict] | None) -> None:
        self._validate(defaults)
        self.defaults = dict(defaults)
        self.param_groups = [self._check_group(i, g) for i, g in enumerate(param_groups or [])]

    # -- subclasses ---------------------------------------------------------
    def _validate(self, options: dict[str, Any]) -> None:
        raise NotImplementedError

    def rules(self, options: dict[str, Any]) -> list[R.UpdateRule]:
        """The chain of update rules for one group's options."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------
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
        chain.append(R.AddWeightDecay(o["weight_decay"]))
    chain.append(R.ScaleByLearningRate())
    return chain


def _check_betas(betas) -> None:
    if not 0.0 <= betas[0] < 1.0:
        raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
    if not 0.0 <= betas[1] < 1.0:
        raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")


def _check_eps(eps) -> None:
    if not 0.0 <= eps:
        raise ValueError(f"Invalid epsilon value: {eps}")


def _check_lr(lr) -> None:
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}")


def _check_weight_decay(weight_decay) -> None:
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")


class SGD(Optimizer):
    """torch.optim.SGD."""

    has_step_slot = False

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

    def _validate(self, o):
        if o["lr"] < 0.0:
            raise ValueError(f"Invalid learning rate: {o['lr']}")
        if o["momentum"] < 0.0:
            raise ValueError(f"Invalid momentum value: {o['momentum']}")
        if o["weight_decay"] < 0.0:
            raise ValueError(f"Invalid weight_decay value: {o['weight_decay']}")
        if o["nesterov"] and (o["momentum"] <= 0 or o["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def rules(self, o):
        chain = _gradient_rules(o)
        if o["momentum"] != 0:
            chain.append(R.TraceMomentum(o["momentum"], o["dampening"], o["nesterov"]))
        chain.append(R.ScaleByLearningRate())
        return chain


class Adam(Optimizer):
    """torch.optim.Adam: L2 weight decay added to the gradient, or decoupled (``decoupled_weight_decay=True``)."""

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

    def _validate(self, o):
        _check_lr(o["lr"])
        _check_eps(o["eps"])
        _check_betas(o["betas"])
        _check_weight_decay(o["weight_decay"])

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

    def _validate(self, o):
        _check_lr(o["lr"])
        if not 0.0 <= o["lr_decay"]:
            raise ValueError(f"Invalid lr_decay value: {o['lr_decay']}")
        _check_weight_decay(o["weight_decay"])
        if not 0.0 <= o["initial_accumulator_value"]:
            raise ValueError(f"Invalid initial_accumulator_value value: {o['initial_accumulator_value']}")
        if not 0.0 <= o["eps"]:
            raise ValueError(f"Invalid epsilon value: {o['eps']}")

    def rules(self, o):
        chain = _gradient_rules(o)
        chain.append(R.ScaleByAdagrad(o["eps"], o["initial_accumulator_value"]))
        if o["lr_decay"] != 0:
            chain.append(R.ScaleByLrDecay(o["lr_decay"]))
        chain.append(R.ScaleByLearningRate())
        return chain


class RMSprop(Optimizer):
    """torch.optim.RMSprop."""

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

    def _validate(self, o):
        _check_lr(o["lr"])
        _check_eps(o["eps"])
        if not 0.0 <= o["momentum"]:
            raise ValueError(f"Invalid momentum value: {o['momentum']}")
        _check_weight_decay(o["weight_decay"])
        if not 0.0 <= o["alpha"]:
            raise ValueError(f"Invalid alpha value: {o['alpha']}")

    def rules(self, o):
        chain = _gradient_rules(o)
        chain.append(R.ScaleByRms(o["alpha"], o["eps"], o["centered"], o["momentum"]))
        chain.append(R.ScaleByLearningRate())
        return chain


class Adamax(Optimizer):
    """torch.optim.Adamax."""

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

    def _validate(self, o):
        _check_lr(o["lr"])
        _check_eps(o["eps"])
        _check_betas(o["betas"])
        _check_weight_decay(o["weight_decay"])

    def rules(self, o):
        chain = _gradient_rules(o)
        chain.append(R.ScaleByAdamax(o["betas"][0], o["betas"][1], o["eps"]))
        chain.append(R.ScaleByLearningRate())
        return chain


class Adadelta(Optimizer):
    """torch.optim.Adadelta."""

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

    def _validate(self, o):
        _check_lr(o["lr"])
        if not 0.0 <= o["rho"] <= 1.0:
            raise ValueError(f"Invalid rho value: {o['rho']}")
        _check_eps(o["eps"])
        _check_weight_decay(o["weight_decay"])

    def rules(self, o):
        chain = _gradient_rules(o)
        chain.append(R.ScaleByAdadelta(o["rho"], o["eps"]))
        chain.append(R.ScaleByLearningRate())
        return chain


class NAdam(Optimizer):
    """torch.optim.NAdam."""

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

    def _validate(self, o):
        _check_lr(o["lr"])
        _check_eps(o["eps"])
        _check_betas(o["betas"])
        _check_weight_decay(o["weight_decay"])
        if not 0.0 <= o["momentum_decay"]:
            raise ValueError(f"Invalid momentum_decay value: {o['momentum_decay']}")

    def rules(self, o):
        return _adam_family(o, R.ScaleByNadam(o["betas"][0], o["betas"][1], o["eps"], o["momentum_decay"]))


class RAdam(Optimizer):
    """torch.optim.RAdam."""

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

    def _validate(self, o):
        _check_lr(o["lr"])
        _check_eps(o["eps"])
        _check_betas(o["betas"])
        _check_weight_decay(o["weight_decay"])

    def rules(self, o):
        return _adam_family(o, R.ScaleByRadam(o["betas"][0], o["betas"][1], o["eps"]))


class Rprop(Optimizer):
    """torch.optim.Rprop (the learning rate seeds every element's step size)."""

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

    def _validate(self, o):
        _check_lr(o["lr"])
        etas = o["etas"]
        if not 0.0 < etas[0] < 1.0 < etas[1]:
            raise ValueError(f"Invalid eta values: {etas[0]}, {etas[1]}")

    def rules(self, o):
        chain: list[R.UpdateRule] = [R.Maximize()] if o["maximize"] else []
        etaminus, etaplus = o["etas"]
        low, high = o["step_sizes"]
        chain.append(R.RpropUpdate(etaminus, etaplus, low, high, float(o["lr"])))
        return chain


class ASGD(Optimizer):
    """torch.optim.ASGD (averaged SGD; the average is the ``ax`` slot)."""

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

    def _validate(self, o):
        _check_lr(o["lr"])
        _check_weight_decay(o["weight_decay"])

    def rules(self, o):
        chain = _gradient_rules(o)
        chain.append(R.AveragedSgdUpdate(o["lambd"], o["alpha"], o["t0"], float(o["lr"])))
        return chain
