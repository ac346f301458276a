"""Learning-rate schedules with torch.optim.lr_scheduler's names and arguments.

A schedule is a function of its state (at least the epoch counter, i.e. the
number of ``scheduler_step()`` calls). It emits that function as graph nodes
(``emit_lr``, float64 like torch's Python floats) and has a plain-Python twin
(``value``) that tests use as the oracle and that gives the initial
``session.lr``. Torch's recursive forms are emitted in closed form.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # onnx-ir is needed to compile, not to train
    import onnx_ir as ir

    from optgraph.rewrite.builder import GraphBuilder


class LRScheduler:
    """Base of the public schedules."""

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


class ConstantSchedule(LRScheduler):
    """No schedule: the base learning rate at every epoch."""

    def emit_lr(self, b, epoch, base_lr):
        return b.double(base_lr)

    def value(self, epoch, base_lr):
        return base_lr


class StepLR(LRScheduler):
    """torch.optim.lr_scheduler.StepLR: ``base_lr * gamma ** (epoch // step_size)``."""

    def __init__(self, step_size: int, gamma: float = 0.1) -> None:
        if not isinstance(step_size, int) or isinstance(step_size, bool) or step_size <= 0:
            raise ValueError(f"Expected positive integer step_size, but got {step_size}")
        self.step_size = step_size
        self.gamma = float(gamma)

    def emit_lr(self, b, epoch, base_lr):
        periods = b.op("Floor", b.op("Div", epoch, b.double(self.step_size)))
        return b.op("Mul", b.double(base_lr), b.op("Pow", b.double(self.gamma), periods))

    def value(self, epoch, base_lr):
        return base_lr * self.gamma ** (epoch // self.step_size)
