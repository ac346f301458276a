"""``optgraph.compile``: capture, rewrite, and package one training artifact."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from importlib import metadata
from typing import TYPE_CHECKING

import numpy as np

from optgraph import lr_scheduler as schedules
from optgraph import optim
from optgraph.artifact import Artifact, GraphSpec, Manifest, TensorSpec
from optgraph.artifact.names import (
    ALIASES_KEY,
    CLIP_GRAD_NORM_KEY,
    DATA_INPUTS_KEY,
    DYNAMIC_BATCH_KEY,
    GRAD_ACCUMULATION_STEPS_KEY,
    GRAPH_FILES,
    IN_PLACE_KEY,
    INDEX_RANGE_KEY,
    LR_SCHEDULER_KEY,
    OPTIMIZER_KEY,
    OUTPUTS_KEY,
    PARAM_GROUPS_KEY,
    PRODUCER_KEY,
    PROXIMAL_MU_KEY,
    STATE_HAS_STEP_KEY,
    SYMBOLS_KEY,
    TARGETS_KEY,
    GraphName,
    state_of_next,
)

if TYPE_CHECKING:
    import onnx_ir as ir


def compile(  # noqa: A001 - the public name DESIGN.md gives
    model,
    example_inputs,
    example_targets,
    loss_fn: Callable,
    optimizer: optim.Optimizer | None = None,
    lr_scheduler: schedules.LRScheduler | None = None,
    clip_grad_norm: float | None = None,
    grad_accumulation_steps: int = 1,
    dynamic_shapes: dict | None = None,
    *,
    proximal_mu: float | None = None,
    dynamic_batch: bool | None = None,
) -> Artifact:
    """Compile a model, its loss, an optimizer and a schedule into one training artifact.

    Args:
        model: a ``torch.nn.Module``; its parameters' ``requires_grad`` decides what trains.
        example_inputs: tuple of tensors, the positional arguments of ``model.forward``.
        example_targets: tuple of tensors passed to ``loss_fn`` after the model's outputs.
        loss_fn: ``loss_fn(outputs, *targets)`` returning a scalar tensor.
        optimizer: an :mod:`optgraph.optim` optimizer (default ``Adam()``).
        lr_scheduler: an :mod:`optgraph.lr_scheduler` schedule, or None for a constant lr.
        clip_grad_norm: clip the global L2 norm of the gradients, as ``torch.nn.utils.clip_grad_norm_``.
        grad_accumulation_steps: k > 1 adds up the gradients of loss / k over k calls of ``step``
            and updates on every k-th call.
        dynamic_shapes: which dimensions of the inputs and targets may vary from call to call.
            None: dim 0 of each input and target, each with its own symbol; the relations the model
            implies (equal batches, labels flattened to ``batch * seq``) are inferred, and a dim 0
            the model fixes stays fixed. ``{"input_ids": {0: "batch", 1: "seq"}, "target": {0: "tokens"}}``:
            the dimensions named, keyed by ``model.forward``'s parameter names and ``target`` (or
            ``target_0``, ...); each must stay dynamic (a CaptureError says what fixed it), one name
            is one size; an input or target the dict does not name keeps the default (``name: None``
            makes it static). A ``torch.export.Dim("seq", max=64)`` may stand for a name (its bounds
            are checked on every batch), ``torch.export.Dim.AUTO`` for a name to infer. ``{}``: every
            dimension static. The manifest records the symbols and each input's shape in them; a
            session checks every batch against them.
        proximal_mu: FedProx's mu (federated training, ``optgraph.federated``): the train step minimizes
            ``loss + mu/2 * ||w - w_global||^2`` over the trainable parameters ``w``, with the global weights
            ``w_global`` as state (``global.<param>``, the initial parameters until a client sets them each
            round); the loss it reports includes the term. None or 0: no term.
        dynamic_batch: deprecated spelling of ``dynamic_shapes``: True is None, False is ``{}``.

    Returns:
        An :class:`~optgraph.artifact.Artifact`; ``save`` it or open a ``TrainingSession`` on it.
    """
    _check_options(optimizer, lr_scheduler, clip_grad_norm, grad_accumulation_steps, proximal_mu)
    if dynamic_batch is not None:
        warnings.warn(
            "compile(dynamic_batch=...) is deprecated: use dynamic_shapes=None (dynamic_batch=True) "
            "or dynamic_shapes={} (dynamic_batch=False)",
            DeprecationWarning,
            stacklevel=2,
        )
    from optgraph.capture import capture  # torch is imported here, not with optgraph

    captured = capture(model, example_inputs, example_targets, loss_fn, dynamic_shapes, dynamic_batch=dynamic_batch)
    return build_artifact(captured, optimizer, lr_scheduler, clip_grad_norm, grad_accumulation_steps, proximal_mu)


def _check_options(optimizer, lr_scheduler, clip_grad_norm, grad_accumulation_steps, proximal_mu=None) -> None:
    if optimizer is not None and not isinstance(optimizer, optim.Optimizer):
        raise TypeError(f"optimizer must be an optgraph.optim optimizer, got {type(optimizer).__name__}")
    if lr_scheduler is not None and not isinstance(lr_scheduler, schedules.LRScheduler):
        raise TypeError(f"lr_scheduler must be an optgraph.lr_scheduler schedule, got {type(lr_scheduler).__name__}")
    if clip_grad_norm is not None and not clip_grad_norm > 0:
        raise ValueError(f"clip_grad_norm must be a positive float or None, got {clip_grad_norm!r}")
    if (
        not isinstance(grad_accumulation_steps, int)
        or isinstance(grad_accumulation_steps, bool)
        or grad_accumulation_steps < 1
    ):
        raise ValueError(f"grad_accumulation_steps must be a positive integer, got {grad_accumulation_steps!r}")
    if proximal_mu is not None and (
        isinstance(proximal_mu, bool) or not isinstance(proximal_mu, (int, float)) or not 0 <= proximal_mu < np.inf
    ):
        raise ValueError(f"proximal_mu must be a non-negative float or None, got {proximal_mu!r}")


def build_artifact(
    captured,
    optimizer: optim.Optimizer | None = None,
    lr_scheduler: schedules.LRScheduler | None = None,
    clip_grad_norm: float | None = None,
    grad_accumulation_steps: int = 1,
    proximal_mu: float | None = None,
) -> Artifact:
    """Rewrite a :class:`~optgraph.capture.Captured` into an artifact (the capture is left unchanged)."""
    import onnx_ir as ir

    from optgraph.rewrite.pipeline import rewrite_training

    _check_options(optimizer, lr_scheduler, clip_grad_norm, grad_accumulation_steps, proximal_mu)
    proximal_mu = float(proximal_mu) if proximal_mu else None  # 0: plain averaging, no term
    optimizer = optim.Adam() if optimizer is None else optimizer
    schedule = schedules.NoSchedule() if lr_scheduler is None else lr_scheduler
    rewritten = rewrite_training(captured, optimizer, schedule, clip_grad_norm, grad_accumulation_steps, proximal_mu)

    ranges = {
        GraphName.TRAIN_STEP: captured.train_index_ranges,
        GraphName.GRAD_STEP: captured.train_index_ranges,
        GraphName.EVAL: captured.eval_index_ranges,
    }
    graphs = {}
    for name, model in rewritten.graphs.items():
        meta = rewritten.meta | {n: {INDEX_RANGE_KEY: r.to_json()} for n, r in ranges.get(name, {}).items()}
        graphs[name] = _graph_spec(GRAPH_FILES[name], model, rewritten.roles, meta, rewritten.in_place[name])
    state = dict(captured.state) | {n: np.asarray(t.init) for n, t in rewritten.new_state.items()}
    extra = {
        DATA_INPUTS_KEY: captured.data_names,
        TARGETS_KEY: captured.target_names,
        OUTPUTS_KEY: captured.output_names,
        ALIASES_KEY: captured.aliases,
        SYMBOLS_KEY: {name: bounds.to_json() for name, bounds in captured.symbols.items()},
        DYNAMIC_BATCH_KEY: any(shape[:1] and isinstance(shape[0], str) for shape in captured.shapes.values()),
        OPTIMIZER_KEY: {**optimizer.config(), STATE_HAS_STEP_KEY: optimizer.has_step_slot},
        LR_SCHEDULER_KEY: schedule.config(),
        PARAM_GROUPS_KEY: [
            {"index": g.index, "params": list(g.params), "lr": float(g.options["lr"])} for g in rewritten.groups
        ],
        CLIP_GRAD_NORM_KEY: clip_grad_norm,
        GRAD_ACCUMULATION_STEPS_KEY: grad_accumulation_steps,
        PROXIMAL_MU_KEY: proximal_mu,
        PRODUCER_KEY: _producer(),
    }
    serialized = {name: ir.to_proto(m).SerializeToString() for name, m in rewritten.graphs.items()}
    return Artifact(Manifest(graphs, extra), serialized, state)


def _dtype_name(value: ir.Value) -> str:
    return str(np.dtype(value.dtype.numpy()))


def _shape(value: ir.Value) -> list[int | str]:
    return [d if isinstance(d, int) else str(d.value) for d in value.shape]


def _graph_spec(file: str, model: ir.Model, roles: dict, meta: dict, in_place: frozenset[str]) -> GraphSpec:
    inputs = {
        v.name: TensorSpec(v.name, roles[v.name], _dtype_name(v), _shape(v), meta=meta.get(v.name, {}))
        for v in model.graph.inputs
    }
    outputs = []
    for v in model.graph.outputs:
        fed = inputs.get(state_of_next(v.name))
        if fed is not None:
            flags = {IN_PLACE_KEY: True} if v.name in in_place else {}
            outputs.append(TensorSpec(v.name, fed.role, fed.dtype, list(fed.shape), feeds=fed.name, meta=flags))
        else:
            outputs.append(TensorSpec(v.name, roles[v.name], _dtype_name(v), _shape(v), meta=meta.get(v.name, {})))
    return GraphSpec(file, list(inputs.values()), outputs)


def _producer() -> dict[str, str]:
    versions = {"name": "optgraph"}
    for package in ("optgraph", "torch", "onnx", "onnxscript", "onnx-ir"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions
