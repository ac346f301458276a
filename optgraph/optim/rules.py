"""The update-rule vocabulary that every optimizer is built from (optax-shaped).

A rule declares the state slots a parameter needs (``slots``: torch's slot
name -> initial fill) and ``emit``s graph nodes that transform the running
update ``u`` (it starts as the gradient) and the rule's own state. An
optimizer is a chain of rules; the parameter update is ``param + u`` after the
chain, and the only minus sign lives in :class:`ScaleByLearningRate`.

Scalars that torch computes in Python (bias corrections, step sizes) are
computed here in float64 and cast to the parameter's dtype once, which is
what torch's kernels do with a Python float, so the numbers agree to float32
rounding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # onnx-ir is needed to compile, not to train
    import onnx_ir as ir

    from optgraph.rewrite.builder import GraphBuilder


@dataclass(frozen=True)
class UpdateContext:
    """What a rule may read besides the update and its own state.

    Attributes:
        b: where nodes go.
        param: the parameter's current value.
        step: float64 scalar, the optimizer step count including this step (1 first).
        first: bool scalar, true on the first optimizer step.
        lr: float64 scalar, this parameter group's learning rate for this step.
    """

    b: GraphBuilder
    param: ir.Value
    step: ir.Value
    first: ir.Value
    lr: ir.Value

    def k(self, number: float) -> ir.Value:
        """A constant in the parameter's dtype."""
        return self.b.const(number, self.param.dtype)

    def to_param_dtype(self, scalar: ir.Value) -> ir.Value:
        """A float64 scalar cast to the parameter's dtype."""
        return self.b.cast(scalar, self.param.dtype)

    def d(self, number: float) -> ir.Value:
        """A float64 constant, for scalar arithmetic."""
        return self.b.double(number)


State = Mapping[str, "ir.Value"]


class UpdateRule:
    """Base of all rules: no state, identity update."""

    def slots(self) -> dict[str, float]:
        return {}

    def emit(self, ctx: UpdateContext, u: ir.Value, state: State) -> tuple[ir.Value, dict[str, ir.Value]]:
        raise NotImplementedError


@dataclass(frozen=True)
class Maximize(UpdateRule):
    """Ascend instead of descend: negate the gradient before anything else."""

    def emit(self, ctx, u, state):
        return ctx.b.op("Neg", u), {}


@dataclass(frozen=True)
class AddWeightDecay(UpdateRule):
    """``u + weight_decay * param``: L2 decay first in a chain, decoupled decay after a scaling rule."""

    weight_decay: float

    def emit(self, ctx, u, state):
        b = ctx.b
        return b.op("Add", u, b.op("Mul", ctx.param, ctx.k(self.weight_decay))), {}


@dataclass(frozen=True)
class TraceMomentum(UpdateRule):
    """SGD's momentum buffer; the first step copies the gradient (dampening ignored then)."""

    momentum: float
    dampening: float
    nesterov: bool

    def slots(self):
        return {"momentum_buffer": 0.0}

    def emit(self, ctx, u, state):
        b = ctx.b
        buf = state["momentum_buffer"]
        decayed = b.op("Mul", buf, ctx.k(self.momentum))
        if self.dampening == 0:
            later = b.op("Add", decayed, u)
        else:
            later = b.op("Add", decayed, b.op("Mul", u, ctx.k(1.0 - self.dampening)))
        new_buf = b.op("Where", ctx.first, u, later)
        if self.nesterov:
            u = b.op("Add", u, b.op("Mul", new_buf, ctx.k(self.momentum)))
        else:
            u = new_buf
        return u, {"momentum_buffer": new_buf}


@dataclass(frozen=True)
class ScaleByAdam(UpdateRule):
    """Adam's bias-corrected ``exp_avg / (sqrt(exp_avg_sq) / sqrt(bc2) + eps) / bc1``."""

    beta1: float
    beta2: float
    eps: float
    amsgrad: bool

    def slots(self):
        slots = {"exp_avg": 0.0, "exp_avg_sq": 0.0}
        if self.amsgrad:
            slots["max_exp_avg_sq"] = 0.0
        return slots

    def emit(self, ctx, u, state):
        b = ctx.b
        m, v = state["exp_avg"], state["exp_avg_sq"]
        # torch: exp_avg.lerp_(grad, 1 - beta1); exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        m = b.op("Add", m, b.op("Mul", b.op("Sub", u, m), ctx.k(1.0 - self.beta1)))
        v = b.op("Add", b.op("Mul", v, ctx.k(self.beta2)), b.op("Mul", b.op("Mul", u, u), ctx.k(1.0 - self.beta2)))
        new_state = {"exp_avg": m, "exp_avg_sq": v}
        if self.amsgrad:
            v = b.op("Max", state["max_exp_avg_sq"], v)
            new_state["max_exp_avg_sq"] = v
        bias_correction1 = b.op("Sub", ctx.d(1.0), b.op("Pow", ctx.d(self.beta1), ctx.step))
        bias_correction2_sqrt = b.op("Sqrt", b.op("Sub", ctx.d(1.0), b.op("Pow", ctx.d(self.beta2), ctx.step)))
        denom = b.op("Add", b.op("Div", b.op("Sqrt", v), ctx.to_param_dtype(bias_correction2_sqrt)), ctx.k(self.eps))
        direction = b.op("Div", b.op("Div", m, denom), ctx.to_param_dtype(bias_correction1))
        return direction, new_state


@dataclass(frozen=True)
class ScaleByAdagrad(UpdateRule):
    """Adagrad's ``u / (sqrt(sum) + eps)`` with ``sum += u * u``."""

    eps: float
    initial_accumulator_value: float

    def slots(self):
        return {"sum": float(self.initial_accumulator_value)}

    def emit(self, ctx, u, state):
        b = ctx.b
        total = b.op("Add", state["sum"], b.op("Mul", u, u))
        std = b.op("Add", b.op("Sqrt", total), ctx.k(self.eps))
        return b.op("Div", u, std), {"sum": total}


@dataclass(frozen=True)
class ScaleByLrDecay(UpdateRule):
    """Adagrad's ``lr / (1 + (step - 1) * lr_decay)``, applied to the update."""

    lr_decay: float

    def emit(self, ctx, u, state):
        b = ctx.b
        divisor = b.op("Add", ctx.d(1.0), b.op("Mul", b.op("Sub", ctx.step, ctx.d(1.0)), ctx.d(self.lr_decay)))
        return b.op("Div", u, ctx.to_param_dtype(divisor)), {}


@dataclass(frozen=True)
class ScaleByLearningRate(UpdateRule):
    """``-lr * u``: the last rule of every chain, and the one place with a minus sign."""

    def emit(self, ctx, u, state):
        b = ctx.b
        return b.op("Mul", u, ctx.to_param_dtype(b.op("Neg", ctx.lr))), {}


def chain_slots(rules: Sequence[UpdateRule]) -> dict[str, float]:
    """Every slot the rules of a chain declare (names are unique within a chain)."""
    slots: dict[str, float] = {}
    for rule in rules:
        for name, fill in rule.slots().items():
            if name in slots:
                raise ValueError(f"two rules of one chain declare the state slot {name!r}")
            slots[name] = fill
    return slots


def emit_chain(
    rules: Sequence[UpdateRule], ctx: UpdateContext, grad: ir.Value, state: State
) -> tuple[ir.Value, dict[str, ir.Value]]:
    """Run a chain: returns the new parameter value and the new state slots."""
    u = grad
    new_state: dict[str, ir.Value] = {}
    for rule in rules:
        u, rule_state = rule.emit(ctx, u, state)
        new_state.update(rule_state)
    return ctx.b.op("Add", ctx.param, u), new_state
