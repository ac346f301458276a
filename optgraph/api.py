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
from optgraph.artifact.dims import SYMBOLS
from optgraph.artifact.index_range import INDEX_RANGE
from optgraph.rewrite.state import NEXT

if TYPE_CHECKING:
    import onnx_ir as ir

GRAPH_FILES = {"train_step": "train_step.onnx", "scheduler_step": "scheduler_step.onnx", "eval": "eval.onnx"}


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
        dynamic_batch: deprecated spelling of ``dynamic_shapes``: True is None, False is ``{}``.

    Returns:
        An :class:`~optgraph.artifact.Artifact`; ``save`` it or open a ``TrainingSession`` on it.
    """
    _check_options(optimizer, lr_scheduler, clip_grad_norm, grad_accumulation_steps)
    if dynamic_batch is not None:
        warnings.warn(
            "compile(dynamic_batch=...) is deprecated: use dynamic_shapes=None (dynamic_batch=True) "
            "or dynamic_shapes={} (dynamic_batch=False)",
            DeprecationWarning,
            stacklevel=2,
        )
    from optgraph.capture import capture  # torch is imported here, not with optgraph

    captured = capture(model, example_inputs, example_targets, loss_fn, dynamic_shapes, dynamic_batch=dynamic_batch)
    return build_artifact(captured, optimizer, lr_scheduler, clip_grad_norm, grad_accumulation_steps)


def _check_options(optimizer, lr_scheduler, clip_grad_norm, grad_accumulation_steps) -> None:
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


def build_artifact(
    captured,
    optimizer: optim.Optimizer | None = None,
    lr_scheduler: schedules.LRScheduler | None = None,
    clip_grad_norm: float | None = None,
    grad_accumulation_steps: int = 1,
) -> Artifact:
    """Rewrite a :class:`~optgraph.capture.Captured` into an artifact (the capture is left unchanged)."""
    import onnx_ir as ir

    from optgraph.rewrite.accumulate import AccumulateGradients, GateOnUpdate
    from optgraph.rewrite.attach_optimizer import AttachOptimizer
    from optgraph.rewrite.clip import ClipGradNorm
    from optgraph.rewrite.scheduler_graph import build_scheduler_step
    from optgraph.rewrite.skip_non_finite import SkipNonFinite
    from optgraph.rewrite.versions import declare_lowest_versions

    _check_options(optimizer, lr_scheduler, clip_grad_norm, grad_accumulation_steps)
    optimizer = optim.Adam() if optimizer is None else optimizer
    schedule = schedules.ConstantSchedule() if lr_scheduler is None else lr_scheduler
    groups = optimizer.resolve(captured.trainable)

    train = ir.from_proto(ir.to_proto(captured.train))  # a copy: the passes work in place
    accumulate = AccumulateGradients(grad_accumulation_steps) if grad_accumulation_steps > 1 else None
    if accumulate is not None:
        accumulate(train)
    if clip_grad_norm is not None:
        ClipGradNorm(float(clip_grad_norm))(train)
    attach = AttachOptimizer(optimizer, schedule, groups)
    attach(train)
    if accumulate is not None:
        gated = set(captured.trainable) | {t.name for t in attach.new_state if t.role in ("optim_state", "counter")}
        GateOnUpdate(accumulate.is_update, gated)(train)
    SkipNonFinite(attach.gradients, captured.updated_buffers)(train)
    opset = train.opset_imports[""]
    scheduler, schedule_state = build_scheduler_step(schedule, groups, opset, train.ir_version)

    added = attach.new_state + schedule_state + (accumulate.new_state if accumulate is not None else [])
    new_state = {t.name: t for t in added}
    roles = {n: "input" for n in captured.data_names} | {n: "target" for n in captured.target_names}
    roles |= {n: "param" for n in captured.trainable + captured.frozen} | {n: "buffer" for n in captured.buffers}
    roles |= {n: t.role for n, t in new_state.items()} | {"loss": "loss", "update_applied": "status"}
    roles |= {n: "output" for n in captured.output_names}
    if schedule.metric_input is not None:
        roles[schedule.metric_input] = "input"
    meta = {n: {"trainable": True} for n in captured.trainable} | {n: {"trainable": False} for n in captured.frozen}
    meta |= {n: t.meta for n, t in new_state.items()}

    models = {"train_step": train, "scheduler_step": scheduler, "eval": captured.eval}
    ranges = {"train_step": captured.train_index_ranges, "eval": captured.eval_index_ranges}
    graphs = {
        name: _graph_spec(
            GRAPH_FILES[name], m, roles, meta | {n: {INDEX_RANGE: r.to_json()} for n, r in ranges.get(name, {}).items()}
        )
        for name, m in models.items()
    }
    state = dict(captured.state) | {n: np.asarray(t.init) for n, t in new_state.items()}
    extra = {
        "data_inputs": captured.data_names,
        "targets": captured.target_names,
        "outputs": captured.output_names,
        "aliases": captured.aliases,
        SYMBOLS: {name: bounds.to_json() for name, bounds in captured.symbols.items()},
        "dynamic_batch": any(shape[:1] and isinstance(shape[0], str) for shape in captured.shapes.values()),
        "optimizer": {**optimizer.config(), "state_has_step": optimizer.has_step_slot},
        "lr_scheduler": schedule.config(),
        "param_groups": [{"index": g.index, "params": list(g.params), "lr": float(g.options["lr"])} for g in groups],
        "clip_grad_norm": clip_grad_norm,
        "grad_accumulation_steps": grad_accumulation_steps,
        "producer": _producer(),
    }
    manifest = Manifest(graphs, extra)
    serialized = {name: ir.to_proto(declare_lowest_versions(m)).SerializeToString() for name, m in models.items()}
    return Artifact(manifest, serialized, state)


def _dtype_name(value: ir.Value) -> str:
    return str(np.dtype(value.dtype.numpy()))


def _shape(value: ir.Value) -> list[int | str]:
    return [d if isinstance(d, int) else str(d.value) for d in value.shape]


def _graph_spec(file: str, model: ir.Model, roles: dict, meta: dict) -> GraphSpec:
    inputs = [
        TensorSpec(v.name, roles[v.name], _dtype_name(v), _shape(v), meta=meta.get(v.name, {}))
        for v in model.graph.inputs
    ]
    input_names = {t.name for t in inputs}
    outputs = []
    for v in model.graph.outputs:
        fed = v.name[: -len(NEXT)] if v.name.endswith(NEXT) else None
        if fed is not None and fed in input_names:
            source = next(t for t in inputs if t.name == fed)
            outputs.append(TensorSpec(v.name, source.role, source.dtype, list(source.shape), feeds=fed))
        else:
            outputs.append(TensorSpec(v.name, roles[v.name], _dtype_name(v), _shape(v)))
    return GraphSpec(file, inputs, outputs)


def _producer() -> dict[str, str]:
    versions = {"name": "optgraph"}
    for package in ("optgraph", "torch", "onnx", "onnxscript", "onnx-ir"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions
