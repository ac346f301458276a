"""The update-rule vocabulary that every optimizer is built from (optax-shaped).

A rule declares the state slots a parameter needs (``slots``: torch's slot
name -> initial fill) and ``emit``s graph nodes that transform the running
update ``u`` (it starts as the gradient) and the rule's own state. An
optimizer is a chain of rules; the parameter update is ``param + u`` after the
chain (``param * s + u`` with decoupled weight decay), and the only minus sign
lives in :class:`ScaleByLearningRate`. Rules that only multiply by a scalar
say so (``factor``, :class:`Scaled`), and the chain multiplies those scalars
together before one tensor-sized multiplication, as torch's ``addcdiv_(...,
value=-lr / bias_correction1)`` does.

Names say what a rule does to ``u``: ``ScaleBy...`` turns it into a direction
that a later :class:`ScaleByLearningRate` scales, ``Add...``/``Trace...`` adjust
it in place, and ``...Update`` rules compute the whole parameter update
themselves (their step size replaces the learning rate), so they end the chain.

Scalars that torch computes in Python (bias corrections, step sizes) are
computed here in float64 and cast to the parameter's dtype once, which is
what torch's kernels do with a Python float, and element-wise expressions
follow the order of torch's fused kernels (``addcmul``: ``(value * a) * b``),
so the numbers agree to float32 rounding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, NamedTuple

import numpy as np

if TYPE_CHECKING:  # onnx-ir is needed to compile, not to train
    import onnx_ir as ir

    from optgraph.graph.builder import GraphBuilder


@dataclass(frozen=True)
class UpdateContext:
    """What a rule may read besides the update and its own state.

    Attributes:
        builder: where nodes go.
        param: the parameter's current value.
        step: float64 scalar, the optimizer step count including this step (1 first).
        first: bool scalar, true on the first optimizer step.
        lr: float64 scalar, this parameter group's learning rate for this step.
        momentum: float64 scalar set by a schedule that cycles momentum (OneCycleLR):
            it replaces SGD's and RMSprop's ``momentum`` and the Adam family's ``beta1``.
    """

    builder: GraphBuilder
    param: ir.Value
    step: ir.Value
    first: ir.Value
    lr: ir.Value
    momentum: ir.Value | None = None

    def const(self, number: float) -> ir.Value:
        """A constant in the parameter's dtype."""
        return self.builder.const(number, self.param.dtype)

    def to_param_dtype(self, scalar: ir.Value) -> ir.Value:
        """A float64 scalar cast to the parameter's dtype."""
        return self.builder.cast(scalar, self.param.dtype)

    def double(self, number: float) -> ir.Value:
        """A float64 constant, for scalar arithmetic."""
        return self.builder.double(number)

    def cycled(self, number: float) -> ir.Value:
        """``momentum``/``beta1`` as a float64 scalar: the schedule's value if it cycles one, else ``number``."""
        return self.momentum if self.momentum is not None else self.double(number)

    def cycled_const(self, number: float) -> ir.Value:
        """:meth:`cycled` in the parameter's dtype."""
        return self.const(number) if self.momentum is None else self.to_param_dtype(self.momentum)

    def one_minus_cycled_const(self, number: float) -> ir.Value:
        """``1 - momentum`` (or ``1 - beta1``) in the parameter's dtype."""
        if self.momentum is None:
            return self.const(1.0 - number)
        return self.to_param_dtype(self.builder.op("Sub", self.double(1.0), self.momentum))


State = Mapping[str, "ir.Value"]


def lerp(ctx: UpdateContext, avg: ir.Value, x: ir.Value, weight: ir.Value) -> ir.Value:
    """``avg + (x - avg) * weight``: torch's ``avg.lerp_(x, weight)`` for weights below 0.5."""
    b = ctx.builder
    return b.op("Add", avg, b.op("Mul", b.op("Sub", x, avg), weight))


def two_sided_lerp(ctx: UpdateContext, start: ir.Value, end: ir.Value, weight: ir.Value) -> ir.Value:
    """torch's ``start.lerp_(end, weight)`` for any weight in the parameter's dtype.

    torch computes ``start + weight * (end - start)`` when ``|weight| < 0.5`` but
    ``end - (end - start) * (1 - weight)`` otherwise, which rounds differently: a
    weight that crosses 0.5 (Adafactor's ``step ** beta2_decay``) needs both.
    """
    b = ctx.builder
    diff = b.op("Sub", end, start)
    small = b.op("Add", start, b.op("Mul", weight, diff))
    large = b.op("Sub", end, b.op("Mul", diff, b.op("Sub", ctx.const(1.0), weight)))
    return b.op("Where", b.op("Less", b.op("Abs", weight), ctx.const(0.5)), small, large)


def l2_norm(ctx: UpdateContext, x: ir.Value) -> ir.Value:
    """torch's ``x.norm(2).item()``: the norm of the whole tensor in its dtype, as a float64 scalar."""
    b = ctx.builder
    return b.cast(b.op("Sqrt", b.op("ReduceSum", b.op("Mul", x, x), keepdims=0)), ctx.step.dtype)


def _axes(ctx: UpdateContext, *axes: int) -> ir.Value:
    """The int64 ``axes`` input of a reduction."""
    from optgraph.graph.builder import INT64  # onnx-ir is needed to compile, not to train

    return ctx.builder.const(list(axes), INT64)


def mean_square(ctx: UpdateContext, x: ir.Value, axis: int, size: int) -> ir.Value:
    """torch's ``torch.norm(x, dim=axis, keepdim=True).square_().div_(size)``."""
    b = ctx.builder
    norm = b.op("Sqrt", b.op("ReduceSum", b.op("Mul", x, x), _axes(ctx, axis), keepdims=1))
    return b.op("Div", b.op("Mul", norm, norm), ctx.const(size))


def decayed_square_average(ctx: UpdateContext, avg: ir.Value, x: ir.Value, decay: float) -> ir.Value:
    """``avg * decay + ((1 - decay) * x) * x``: torch's ``avg.mul_(decay).addcmul_(x, x, value=1 - decay)``."""
    b = ctx.builder
    # x's term first: onnxruntime runs nodes in this order, so at most two tensor-sized temporaries are alive
    square = b.op("Mul", b.op("Mul", x, ctx.const(1.0 - decay)), x)
    return b.op("Add", b.op("Mul", avg, ctx.const(decay)), square)


def adam_moments(ctx: UpdateContext, u: ir.Value, state: State, beta1: float, beta2: float):
    """The Adam family's first and second moments after one more gradient."""
    m = lerp(ctx, state["exp_avg"], u, ctx.one_minus_cycled_const(beta1))
    return m, decayed_square_average(ctx, state["exp_avg_sq"], u, beta2)


class Scaled(NamedTuple):
    """The update ``value * (1 / denominator) / divisor``, left for :func:`emit_chain` to compute.

    The chain first multiplies the scalar factors of the rules that follow (the learning rate) into the
    numerator, then computes ``(value * (numerator / denominator)) / divisor``: torch's
    ``param.addcdiv_(value, divisor, value=-lr / denominator)``, rounding for rounding.
    """

    value: ir.Value
    denominator: ir.Value | None = None  # float64 scalar
    divisor: ir.Value | None = None  # a tensor like value


class ParamInfo(NamedTuple):
    """What a rule may know of a parameter when it declares its slots."""

    shape: tuple[int, ...]
    dtype: np.dtype


@dataclass(frozen=True)
class Slot:
    """One state slot of one parameter, with its initial value.

    Attributes:
        fill: the initial value of every element.
        shape: None for the parameter's shape, else the slot's own static shape: ``()`` for a
            scalar, Adafactor's row and column factors, a flat buffer.
        dtype: None for the parameter's dtype, else a numpy dtype name.
    """

    fill: float = 0.0
    shape: tuple[int, ...] | None = None
    dtype: str | None = None

    @classmethod
    def scalar(cls, fill: float, dtype: str = "float32") -> Slot:
        """A scalar slot (torch keeps such values as float32 tensors)."""
        return cls(fill, (), dtype)

    def initial(self, param: ParamInfo) -> np.ndarray:
        """The slot's value before the first step."""
        shape = param.shape if self.shape is None else self.shape
        dtype = param.dtype if self.dtype is None else np.dtype(self.dtype)
        return np.full(shape, self.fill, dtype)


class UpdateRule:
    """Base of all rules: no state, identity update.

    ``element_wise`` says that every element of the new update, state and
    parameter depends only on the elements at the same index (of ``u``, the
    state and ``ctx.param``) and on scalars that are the same for every
    parameter of a group (the step, the learning rate, scalar slots). Such a
    rule computes the same numbers on parameters packed end to end into one
    flat tensor, which is how ``attach_optimizer`` updates a group's small
    parameters together. A rule that reads a whole tensor (a norm, a mean
    over an axis) or keeps a slot of its own non-scalar shape is not.
    """

    element_wise: ClassVar[bool] = True

    def slots(self, param: ParamInfo) -> dict[str, float | Slot]:
        """The state this rule keeps for ``param``: slot name -> a Slot, or a fill for a slot shaped like it."""
        return {}

    def emit(self, ctx: UpdateContext, u: ir.Value, state: State) -> tuple[ir.Value | Scaled, dict[str, ir.Value]]:
        """The new update (or a :class:`Scaled` one, whose scalar factor the chain applies later) and state."""
        raise NotImplementedError

    def factor(self, ctx: UpdateContext) -> ir.Value | None:
        """For a rule whose whole effect is ``u * scalar``: that float64 scalar. :func:`emit_chain` then
        multiplies it into the chain's pending factor instead of calling :meth:`emit`, so that consecutive
        scalars meet each other before they meet a tensor (one tensor-sized pass instead of one each)."""
        return None

    def param_factor(self, ctx: UpdateContext) -> ir.Value | None:
        """For a rule that scales the parameter before the update is added to it (decoupled weight decay,
        torch's ``param.mul_(1 - lr * weight_decay)``): that float64 scalar; :meth:`emit` is not called."""
        return None

    def after_update(self, ctx: UpdateContext, new_param: ir.Value, state: State) -> dict[str, ir.Value]:
        """State that depends on the updated parameter (ASGD's average); most rules have none."""
        return {}


@dataclass(frozen=True)
class Maximize(UpdateRule):
    """Ascend instead of descend: negate the gradient before anything else."""

    def emit(self, ctx, u, state):
        return ctx.builder.op("Neg", u), {}


@dataclass(frozen=True)
class AddWeightDecay(UpdateRule):
    """``u + weight_decay * param``: L2 decay, first in a chain (decoupled decay is :class:`DecayParameter`)."""

    weight_decay: float

    def emit(self, ctx, u, state):
        b = ctx.builder
        return b.op("Add", u, b.op("Mul", ctx.param, ctx.const(self.weight_decay))), {}


@dataclass(frozen=True)
class TraceMomentum(UpdateRule):
    """SGD's momentum buffer; the first step copies the gradient (dampening ignored then)."""

    momentum: float
    dampening: float
    nesterov: bool

    def slots(self, param):
        return {"momentum_buffer": 0.0}

    def emit(self, ctx, u, state):
        b = ctx.builder
        buf = state["momentum_buffer"]
        decayed = b.op("Mul", buf, ctx.cycled_const(self.momentum))
        if self.dampening == 0:
            # the buffer starts at zero, so on the first step this is the gradient itself, as torch's copy
            new_buf = b.op("Add", decayed, u)
        else:
            later = b.op("Add", decayed, b.op("Mul", u, ctx.const(1.0 - self.dampening)))
            new_buf = b.op("Where", ctx.first, u, later)
        if self.nesterov:
            u = b.op("Add", u, b.op("Mul", new_buf, ctx.cycled_const(self.momentum)))
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

    def slots(self, param):
        slots = {"exp_avg": 0.0, "exp_avg_sq": 0.0}
        if self.amsgrad:
            slots["max_exp_avg_sq"] = 0.0
        return slots

    def emit(self, ctx, u, state):
        b = ctx.builder
        m, v = adam_moments(ctx, u, state, self.beta1, self.beta2)
        new_state = {"exp_avg": m, "exp_avg_sq": v}
        if self.amsgrad:
            v = b.op("Max", state["max_exp_avg_sq"], v)
            new_state["max_exp_avg_sq"] = v
        bias_correction1 = b.op("Sub", ctx.double(1.0), b.op("Pow", ctx.cycled(self.beta1), ctx.step))
        bias_correction2_sqrt = b.op(
            "Sqrt", b.op("Sub", ctx.double(1.0), b.op("Pow", ctx.double(self.beta2), ctx.step))
        )
        denom = b.op(
            "Add", b.op("Div", b.op("Sqrt", v), ctx.to_param_dtype(bias_correction2_sqrt)), ctx.const(self.eps)
        )
        # torch: param.addcdiv_(exp_avg, denom, value=-lr / bias_correction1), computed by emit_chain once
        # the learning rate has joined the scalar
        return Scaled(m, bias_correction1, denom), new_state


@dataclass(frozen=True)
class ScaleByAdagrad(UpdateRule):
    """Adagrad's ``u / (sqrt(sum) + eps)`` with ``sum += u * u``."""

    eps: float
    initial_accumulator_value: float

    def slots(self, param):
        return {"sum": float(self.initial_accumulator_value)}

    def emit(self, ctx, u, state):
        b = ctx.builder
        total = b.op("Add", state["sum"], b.op("Mul", u, u))
        std = b.op("Add", b.op("Sqrt", total), ctx.const(self.eps))
        return b.op("Div", u, std), {"sum": total}


@dataclass(frozen=True)
class ScaleByLrDecay(UpdateRule):
    """Adagrad's ``lr / (1 + (step - 1) * lr_decay)``, applied to the update."""

    lr_decay: float

    def emit(self, ctx, u, state):
        b = ctx.builder
        divisor = b.op(
            "Add", ctx.double(1.0), b.op("Mul", b.op("Sub", ctx.step, ctx.double(1.0)), ctx.double(self.lr_decay))
        )
        return b.op("Div", u, ctx.to_param_dtype(divisor)), {}


@dataclass(frozen=True)
class ScaleByRms(UpdateRule):
    """RMSprop: ``u / (sqrt(square_avg [- grad_avg^2]) + eps)``, optionally through a momentum buffer."""

    alpha: float
    eps: float
    centered: bool
    momentum: float

    def slots(self, param):
        slots = {"square_avg": 0.0}
        if self.momentum > 0:
            slots["momentum_buffer"] = 0.0
        if self.centered:
            slots["grad_avg"] = 0.0
        return slots

    def emit(self, ctx, u, state):
        b = ctx.builder
        square_avg = decayed_square_average(ctx, state["square_avg"], u, self.alpha)
        new_state = {"square_avg": square_avg}
        if self.centered:
            grad_avg = state["grad_avg"]
            grad_avg = lerp(ctx, grad_avg, u, ctx.const(1 - self.alpha))
            new_state["grad_avg"] = grad_avg
            avg = b.op("Sqrt", b.op("Sub", square_avg, b.op("Mul", grad_avg, grad_avg)))
        else:
            avg = b.op("Sqrt", square_avg)
        avg = b.op("Add", avg, ctx.const(self.eps))
        direction = b.op("Div", u, avg)
        if self.momentum > 0:
            direction = b.op("Add", b.op("Mul", state["momentum_buffer"], ctx.cycled_const(self.momentum)), direction)
            new_state["momentum_buffer"] = direction
        return direction, new_state


@dataclass(frozen=True)
class ScaleByAdamax(UpdateRule):
    """Adamax: ``exp_avg / exp_inf / (1 - beta1^t)`` with ``exp_inf = max(beta2 * exp_inf, |u| + eps)``."""

    beta1: float
    beta2: float
    eps: float

    def slots(self, param):
        return {"exp_avg": 0.0, "exp_inf": 0.0}

    def emit(self, ctx, u, state):
        b = ctx.builder
        m = lerp(ctx, state["exp_avg"], u, ctx.one_minus_cycled_const(self.beta1))
        exp_inf = b.op(
            "Max",
            b.op("Mul", state["exp_inf"], ctx.const(self.beta2)),
            b.op("Add", b.op("Abs", u), ctx.const(self.eps)),
        )
        bias_correction = b.op("Sub", ctx.double(1.0), b.op("Pow", ctx.cycled(self.beta1), ctx.step))
        direction = b.op("Div", b.op("Div", m, exp_inf), ctx.to_param_dtype(bias_correction))
        return direction, {"exp_avg": m, "exp_inf": exp_inf}


@dataclass(frozen=True)
class ScaleByAdadelta(UpdateRule):
    """Adadelta: ``sqrt(acc_delta + eps) / sqrt(square_avg + eps) * u``, both averages with ``rho``."""

    rho: float
    eps: float

    def slots(self, param):
        return {"square_avg": 0.0, "acc_delta": 0.0}

    def emit(self, ctx, u, state):
        b = ctx.builder
        square_avg = decayed_square_average(ctx, state["square_avg"], u, self.rho)
        std = b.op("Sqrt", b.op("Add", square_avg, ctx.const(self.eps)))
        delta = b.op("Mul", b.op("Div", b.op("Sqrt", b.op("Add", state["acc_delta"], ctx.const(self.eps))), std), u)
        acc_delta = decayed_square_average(ctx, state["acc_delta"], delta, self.rho)
        return delta, {"square_avg": square_avg, "acc_delta": acc_delta}


@dataclass(frozen=True)
class ScaleByNadam(UpdateRule):
    """NAdam (Dozat): Nesterov momentum with torch's ``mu_t`` warm-up schedule and its running product."""

    beta1: float
    beta2: float
    eps: float
    momentum_decay: float

    def slots(self, param):
        return {"mu_product": Slot.scalar(1.0), "exp_avg": 0.0, "exp_avg_sq": 0.0}

    def _mu(self, ctx, step):
        b = ctx.builder
        decay = b.op("Pow", ctx.double(0.96), b.op("Mul", step, ctx.double(self.momentum_decay)))
        return b.op("Mul", ctx.cycled(self.beta1), b.op("Sub", ctx.double(1.0), b.op("Mul", ctx.double(0.5), decay)))

    def emit(self, ctx, u, state):
        b = ctx.builder
        m, v = adam_moments(ctx, u, state, self.beta1, self.beta2)
        mu = self._mu(ctx, ctx.step)
        mu_next = self._mu(ctx, b.op("Add", ctx.step, ctx.double(1.0)))
        # torch keeps mu_product as a float32 tensor and reads it back as a Python float
        mu_product = b.op("Mul", state["mu_product"], b.cast(mu, state["mu_product"].dtype))
        product = b.cast(mu_product, ctx.step.dtype)
        bias_correction2 = b.op("Sub", ctx.double(1.0), b.op("Pow", ctx.double(self.beta2), ctx.step))
        denom = b.op("Add", b.op("Sqrt", b.op("Div", v, ctx.to_param_dtype(bias_correction2))), ctx.const(self.eps))
        grad_coef = b.op("Div", b.op("Sub", ctx.double(1.0), mu), b.op("Sub", ctx.double(1.0), product))
        avg_coef = b.op("Div", mu_next, b.op("Sub", ctx.double(1.0), b.op("Mul", product, mu_next)))
        direction = b.op(
            "Add",
            b.op("Mul", b.op("Div", u, denom), ctx.to_param_dtype(grad_coef)),
            b.op("Mul", b.op("Div", m, denom), ctx.to_param_dtype(avg_coef)),
        )
        return direction, {"mu_product": mu_product, "exp_avg": m, "exp_avg_sq": v}


@dataclass(frozen=True)
class ScaleByRadam(UpdateRule):
    """RAdam: the bias-corrected first moment, rectified by the variance term once ``rho_t > 5``."""

    beta1: float
    beta2: float
    eps: float

    def slots(self, param):
        return {"exp_avg": 0.0, "exp_avg_sq": 0.0}

    def emit(self, ctx, u, state):
        b = ctx.builder
        m, v = adam_moments(ctx, u, state, self.beta1, self.beta2)
        t = ctx.step
        beta2_t = b.op("Pow", ctx.double(self.beta2), t)
        bias_correction1 = b.op("Sub", ctx.double(1.0), b.op("Pow", ctx.cycled(self.beta1), t))
        bias_correction2 = b.op("Sub", ctx.double(1.0), beta2_t)
        rho_inf = 2 / (1 - self.beta2) - 1
        rho_t = b.op(
            "Sub",
            ctx.double(rho_inf),
            b.op("Div", b.op("Mul", b.op("Mul", ctx.double(2.0), t), beta2_t), bias_correction2),
        )
        rect = b.op(
            "Sqrt",
            b.op(
                "Div",
                b.op(
                    "Mul",
                    b.op("Mul", b.op("Sub", rho_t, ctx.double(4.0)), b.op("Sub", rho_t, ctx.double(2.0))),
                    ctx.double(rho_inf),
                ),
                b.op("Mul", ctx.double((rho_inf - 4) * (rho_inf - 2)), rho_t),
            ),
        )
        corrected = b.op("Div", m, ctx.to_param_dtype(bias_correction1))
        adaptive = b.op(
            "Div", ctx.to_param_dtype(b.op("Sqrt", bias_correction2)), b.op("Add", b.op("Sqrt", v), ctx.const(self.eps))
        )
        rectified = b.op("Mul", b.op("Mul", corrected, adaptive), ctx.to_param_dtype(rect))
        direction = b.op("Where", b.op("Greater", rho_t, ctx.double(5.0)), rectified, corrected)
        return direction, {"exp_avg": m, "exp_avg_sq": v}


@dataclass(frozen=True)
class RpropUpdate(UpdateRule):
    """Rprop: per-element step sizes grown by ``etaplus`` / shrunk by ``etaminus`` on sign changes.

    Its update is ``-sign(u) * step_size`` (the learning rate only seeds ``step_size``),
    so the chain ends here rather than in :class:`ScaleByLearningRate`.
    """

    etaminus: float
    etaplus: float
    step_size_min: float
    step_size_max: float
    initial_step_size: float

    def slots(self, param):
        return {"prev": 0.0, "step_size": self.initial_step_size}

    def emit(self, ctx, u, state):
        b = ctx.builder
        sign = b.op("Sign", b.op("Mul", u, state["prev"]))
        factor = b.op(
            "Where",
            b.op("Greater", sign, ctx.const(0.0)),
            ctx.const(self.etaplus),
            b.op("Where", b.op("Less", sign, ctx.const(0.0)), ctx.const(self.etaminus), ctx.const(1.0)),
        )
        step_size = b.op(
            "Min",
            b.op("Max", b.op("Mul", state["step_size"], factor), ctx.const(self.step_size_min)),
            ctx.const(self.step_size_max),
        )
        grad = b.op("Where", b.op("Less", sign, ctx.const(0.0)), ctx.const(0.0), u)
        update = b.op("Neg", b.op("Mul", b.op("Sign", grad), step_size))
        return update, {"prev": grad, "step_size": step_size}


@dataclass(frozen=True)
class AveragedSgdUpdate(UpdateRule):
    """ASGD: ``param * (1 - lambd * eta) - eta * u``, then the average ``ax`` and next ``eta``, ``mu``.

    ``eta`` (the step size, seeded by the learning rate and decayed by ``lambd``,
    ``alpha``) replaces the learning rate, so the chain ends here.
    """

    lambd: float
    alpha: float
    t0: float
    initial_eta: float

    def slots(self, param):
        return {"eta": Slot.scalar(self.initial_eta), "mu": Slot.scalar(1.0), "ax": 0.0}

    def emit(self, ctx, u, state):
        b = ctx.builder
        eta = ctx.to_param_dtype(state["eta"])
        decay = b.op("Mul", ctx.param, b.op("Mul", eta, ctx.const(self.lambd)))
        update = b.op("Neg", b.op("Add", decay, b.op("Mul", u, eta)))
        lr = ctx.lr
        next_eta = b.op(
            "Div",
            lr,
            b.op(
                "Pow",
                b.op("Add", ctx.double(1.0), b.op("Mul", b.op("Mul", ctx.double(self.lambd), lr), ctx.step)),
                ctx.double(self.alpha),
            ),
        )
        next_mu = b.op("Div", ctx.double(1.0), b.op("Max", ctx.double(1.0), b.op("Sub", ctx.step, ctx.double(self.t0))))
        dtype = state["eta"].dtype
        return update, {"eta": b.cast(next_eta, dtype), "mu": b.cast(next_mu, dtype)}

    def after_update(self, ctx, new_param, state):
        b = ctx.builder
        ax, mu = state["ax"], ctx.to_param_dtype(state["mu"])
        averaged = b.op("Add", ax, b.op("Mul", b.op("Sub", new_param, ax), mu))
        # torch copies the parameter while mu == 1 (before t0), and averages after
        return {"ax": b.op("Where", b.op("Equal", state["mu"], b.const(1.0, state["mu"].dtype)), new_param, averaged)}


@dataclass(frozen=True)
class ScaleByLion(UpdateRule):
    """Lion (Chen et al. 2023, Algorithm 2): ``sign(beta1 * m + (1 - beta1) * u)``, then ``m`` moves with ``beta2``.

    The direction interpolates the momentum with ``beta1``; the momentum itself
    is updated with ``beta2`` (``exp_avg = beta2 * exp_avg + (1 - beta2) * u``).
    """

    beta1: float
    beta2: float

    def slots(self, param):
        return {"exp_avg": 0.0}

    def emit(self, ctx, u, state):
        b = ctx.builder
        m = state["exp_avg"]
        interpolated = b.op(
            "Add", b.op("Mul", m, ctx.cycled_const(self.beta1)), b.op("Mul", u, ctx.one_minus_cycled_const(self.beta1))
        )
        new_m = b.op("Add", b.op("Mul", m, ctx.const(self.beta2)), b.op("Mul", u, ctx.const(1.0 - self.beta2)))
        return b.op("Sign", interpolated), {"exp_avg": new_m}


@dataclass(frozen=True)
class AdafactorUpdate(UpdateRule):
    """Adafactor as torch.optim.Adafactor: a factored second moment and a relative, clipped step.

    A parameter with two or more dimensions keeps the mean square of the
    gradient over its last dimension (``row_var``) and over its second to last
    (``col_var``); their outer product over ``row_var``'s mean estimates the
    second moment. A vector keeps it whole (``variance``). The step is
    ``max(eps2, rms(param)) * min(lr, 1 / sqrt(step))``, with ``rms(param)``
    measured before weight decay, divided by ``max(1, rms(update) / d)``; the
    decay ``param * lr * weight_decay`` is decoupled (torch's
    ``param.mul_(1 - lr * weight_decay)``, to float32 rounding). Scalars follow
    torch's Python floats in float64; the step size replaces the learning
    rate, so the chain ends here.

    Not element-wise: it reads norms of the whole parameter and update, and factors its second moment by axis.
    """

    element_wise: ClassVar[bool] = False

    beta2_decay: float
    eps1: float | None
    eps2: float
    d: float
    weight_decay: float

    def slots(self, param):
        shape = param.shape
        if len(shape) > 1:
            return {
                "row_var": Slot(0.0, shape=(*shape[:-1], 1)),
                "col_var": Slot(0.0, shape=(*shape[:-2], 1, shape[-1])),
            }
        return {"variance": 0.0}

    def emit(self, ctx, u, state):
        b = ctx.builder
        shape = tuple(ctx.param.shape.numpy())
        numel = int(np.prod(shape))
        eps1 = float(np.finfo(ctx.param.dtype.numpy()).eps) if self.eps1 is None else self.eps1
        step = ctx.step
        # torch's one_minus_beta2_t, rho_t and alpha, Python floats there
        weight = ctx.to_param_dtype(b.op("Pow", step, ctx.double(self.beta2_decay)))
        rho = b.op("Min", ctx.lr, b.op("Div", ctx.double(1.0), b.op("Pow", step, ctx.double(0.5))))
        param_rms = b.op("Div", l2_norm(ctx, ctx.param), ctx.double(numel**0.5))
        alpha = b.op("Mul", b.op("Max", ctx.double(self.eps2), param_rms), rho)
        if "row_var" in state:
            row_var = two_sided_lerp(ctx, state["row_var"], mean_square(ctx, u, -1, shape[-1]), weight)
            col_var = two_sided_lerp(ctx, state["col_var"], mean_square(ctx, u, -2, shape[-2]), weight)
            new_state = {"row_var": row_var, "col_var": col_var}
            # row_var @ col_var (an outer product: one term each), over row_var's mean clamped at eps1
            row_mean = b.op("Div", b.op("ReduceSum", row_var, _axes(ctx, -2), keepdims=1), ctx.const(shape[-2]))
            estimate = b.op("Div", b.op("Mul", row_var, col_var), b.op("Max", row_mean, ctx.const(eps1)))
        else:
            estimate = two_sided_lerp(ctx, state["variance"], b.op("Mul", u, u), weight)
            new_state = {"variance": estimate}
        # torch's rsqrt is 1 / sqrt; eps1 ** 2 is a Python float there
        update = b.op("Mul", b.op("Reciprocal", b.op("Sqrt", b.op("Max", estimate, ctx.const(eps1 * eps1)))), u)
        update_rms = b.op("Div", l2_norm(ctx, update), ctx.double((numel**0.5) * self.d))
        step_size = b.op("Div", b.op("Neg", alpha), b.op("Max", ctx.double(1.0), update_rms))
        update = b.op("Mul", update, ctx.to_param_dtype(step_size))
        if self.weight_decay != 0:
            decay = ctx.to_param_dtype(b.op("Mul", ctx.lr, ctx.double(self.weight_decay)))
            update = b.op("Sub", update, b.op("Mul", ctx.param, decay))
        return update, new_state


@dataclass(frozen=True)
class ScaleByLearningRate(UpdateRule):
    """``-lr * u``: the last rule of every chain, and the one place with a minus sign."""

    def factor(self, ctx):
        return ctx.builder.op("Neg", ctx.lr)

    def emit(self, ctx, u, state):
        return ctx.builder.op("Mul", u, ctx.to_param_dtype(self.factor(ctx))), {}


@dataclass(frozen=True)
class DecayParameter(UpdateRule):
    """Decoupled weight decay: ``param * (1 - lr * weight_decay)`` before the update is added (AdamW)."""

    weight_decay: float

    def param_factor(self, ctx):
        b = ctx.builder
        return b.op("Sub", ctx.double(1.0), b.op("Mul", ctx.lr, ctx.double(self.weight_decay)))

    def emit(self, ctx, u, state):
        raise TypeError("DecayParameter scales the parameter, not the update: emit_chain applies its param_factor")


def chain_slots(rules: Sequence[UpdateRule], param: ParamInfo) -> dict[str, np.ndarray]:
    """The initial value of every slot the rules of a chain keep for ``param`` (names are unique within a chain)."""
    slots: dict[str, np.ndarray] = {}
    for rule in rules:
        for name, slot in rule.slots(param).items():
            if name in slots:
                raise ValueError(f"two rules of one chain declare the state slot {name!r}")
            slots[name] = (slot if isinstance(slot, Slot) else Slot(float(slot))).initial(param)
    return slots


def packable(rules: Sequence[UpdateRule], param: ParamInfo) -> bool:
    """Whether a chain may update ``param`` packed with other parameters into one flat tensor.

    Every rule must be element-wise, and every slot shaped like the parameter (it packs into a
    flat slot) or a scalar (one value for the whole pack: the group's parameters share it).
    """
    return all(rule.element_wise for rule in rules) and all(
        not isinstance(slot, Slot) or slot.shape in (None, ()) for rule in rules for slot in rule.slots(param).values()
    )


def emit_chain(
    rules: Sequence[UpdateRule], ctx: UpdateContext, grad: ir.Value, state: State
) -> tuple[ir.Value, dict[str, ir.Value]]:
    """Run a chain: returns the new parameter value and the new state slots.

    Scalar factors (a rule's :meth:`~UpdateRule.factor`, a :class:`Scaled` update) are multiplied together
    in float64 and applied to the tensor once, where the next rule needs the tensor or at the end.
    """
    b = ctx.builder
    # the update is (u * numerator / denominator) / divisor until a rule needs it as a tensor
    u, numerator, denominator, divisor, param_factor = grad, None, None, None, None
    new_state: dict[str, ir.Value] = {}

    def times(x: ir.Value | None, y: ir.Value) -> ir.Value:
        return y if x is None else b.op("Mul", x, y)

    def computed() -> ir.Value:
        scalar = numerator
        if denominator is not None:
            scalar = b.op("Div", ctx.double(1.0) if numerator is None else numerator, denominator)
        value = u if scalar is None else b.op("Mul", u, ctx.to_param_dtype(scalar))
        return value if divisor is None else b.op("Div", value, divisor)

    for rule in rules:
        if (scale := rule.factor(ctx)) is not None:
            numerator = times(numerator, scale)
            continue
        if (scale := rule.param_factor(ctx)) is not None:
            param_factor = times(param_factor, scale)
            continue
        u = computed()
        numerator = denominator = divisor = None
        u, rule_state = rule.emit(ctx, u, state)
        if isinstance(u, Scaled):
            u, denominator, divisor = u
        new_state.update(rule_state)
    u = computed()
    param = ctx.param if param_factor is None else b.op("Mul", ctx.param, ctx.to_param_dtype(param_factor))
    new_param = b.op("Add", param, u)
    for rule in rules:
        new_state.update(rule.after_update(ctx, new_param, state))
    return new_param, new_state
