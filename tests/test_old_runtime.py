"""The artifacts load and train on onnxruntime 1.19.2 exactly as on current onnxruntime.

Both 1.19.2 wheels, stock ``onnxruntime`` and ``onnxruntime-training``, live in
environments of their own (``python -m tools.old_runtime_venv``);
``tests/replay.py`` trains in each and here on the same batches, and the
losses, learning rates and final checkpoints are compared. Compiling costs
far more than a replay, so each case compiles once and replays on both.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from capture.zoo import MODELS
from models import make_batch, make_model
from runtimes import OLD_RUNTIMES, assert_old_runtimes_match, old_runtime_python
from safetensors.numpy import save_file
from torch import nn

import optgraph
from optgraph import lr_scheduler, optim

# Every optimizer with one schedule each, so all schedule graphs are loaded too.
UPDATE_RULES = [
    (optim.SGD(lr=0.05, momentum=0.9, nesterov=True), lr_scheduler.StepLR(step_size=2, gamma=0.5)),
    (optim.Adam(lr=0.01, amsgrad=True), lr_scheduler.MultiStepLR(milestones=[1, 3])),
    (optim.AdamW(lr=0.01), lr_scheduler.OneCycleLR(max_lr=0.02, total_steps=10)),
    (optim.Adagrad(lr=0.05, lr_decay=0.01), lr_scheduler.ExponentialLR(gamma=0.9)),
    (optim.RMSprop(lr=0.01, momentum=0.5, centered=True), lr_scheduler.CosineAnnealingLR(T_max=3)),
    (optim.Adamax(lr=0.01), lr_scheduler.LinearLR(start_factor=0.2, total_iters=3)),
    (optim.Adadelta(weight_decay=0.01), lr_scheduler.ConstantLR(factor=0.5, total_iters=2)),
    (optim.NAdam(lr=0.01, decoupled_weight_decay=True, weight_decay=0.1), lr_scheduler.PolynomialLR(total_iters=4)),
    (optim.RAdam(lr=0.01), lr_scheduler.CosineAnnealingWarmRestarts(T_0=2, T_mult=2)),
    (optim.Rprop(lr=0.01), lr_scheduler.ReduceLROnPlateau(patience=0, factor=0.5)),
    (
        optim.ASGD(lr=0.01, t0=2),
        lr_scheduler.SequentialLR(
            schedulers=[lr_scheduler.LinearLR(start_factor=0.5, total_iters=2), lr_scheduler.ExponentialLR(gamma=0.8)],
            milestones=[2],
        ),
    ),
    (
        optim.SGD(lr=0.05, momentum=0.9),
        lr_scheduler.ChainedScheduler(
            schedulers=[lr_scheduler.ExponentialLR(gamma=0.9), lr_scheduler.StepLR(step_size=3, gamma=0.5)]
        ),
    ),
]
# Models that between them use every kind of node capture emits.
ZOO_MODELS = [
    "conv1d-depthwise-adaptive",
    "conv-transpose2d",
    "instancenorm",
    "rmsnorm-causal-sdpa",
    "pools-adaptive",
    "interpolate-bilinear",
    "residual-cat",
    "embedding-tied-lm",
    "gru-bidirectional-batch-first",
    "transformer-encoder",
    "activations",
]
BATCH_SIZES = (4, 4, 7, 2, 4, 3)


def _batches(make, path):
    """Record one batch per step, of varying sizes, as ``"<step>/<name>"`` tensors."""
    tensors = {}
    for step, size in enumerate(BATCH_SIZES):
        for name, value in make(step, size).items():
            tensors[f"{step}/{name}"] = np.ascontiguousarray(
                value.numpy() if isinstance(value, torch.Tensor) else value
            )
    save_file(tensors, str(path))


def _old_runtimes():
    """Every old runtime's interpreter, checked before any compiling: a missing one skips (or fails, in CI)."""
    return {runtime: old_runtime_python(runtime) for runtime in OLD_RUNTIMES}


def _assert_same_training(artifact: optgraph.Artifact, make_batch_at, tmp_path, pythons):
    artifact.save(tmp_path / "artifact")
    _batches(make_batch_at, tmp_path / "batches.safetensors")
    assert_old_runtimes_match(tmp_path, pythons)


@pytest.mark.parametrize("rule", range(len(UPDATE_RULES)), ids=[type(o).__name__ for o, _ in UPDATE_RULES])
def test_every_optimizer_and_schedule_trains_on_onnxruntime_1_19(rule, tmp_path):
    pythons = _old_runtimes()
    optimizer, schedule = UPDATE_RULES[rule]
    model = make_model("cnn")
    g = torch.Generator().manual_seed(rule)
    x, y = make_batch("cnn", 4, g)
    artifact = optgraph.compile(
        model, (x,), (y,), nn.CrossEntropyLoss(), optimizer=optimizer, lr_scheduler=schedule, clip_grad_norm=1.0
    )

    def batch(step, size):
        x, y = make_batch("cnn", size, g)
        return {"image": x, "target": y}

    _assert_same_training(artifact, batch, tmp_path, pythons)


@pytest.mark.parametrize("name", ZOO_MODELS)
def test_zoo_models_train_on_onnxruntime_1_19(name, tmp_path):
    pythons = _old_runtimes()
    case = MODELS[name]
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    inputs, targets = case.inputs(3, g), case.targets(3, g)
    # SGD: Adam would turn gradients that are rounding noise (attention's key bias) into lr-sized steps
    optimizer = optim.SGD(lr=0.05, momentum=0.9)
    artifact = optgraph.compile(case.make(), inputs, targets, case.loss, optimizer=optimizer, grad_accumulation_steps=2)
    manifest = artifact.manifest
    names = manifest.extra["data_inputs"] + manifest.extra["targets"]

    def batch(step, size):
        return dict(zip(names, case.inputs(size, g) + case.targets(size, g)))

    _assert_same_training(artifact, batch, tmp_path, pythons)
