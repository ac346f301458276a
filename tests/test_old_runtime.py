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
from catalog import OPTIMIZERS, SCHEDULES, construct, in_table_order
from models import make_batch, make_model
from runtimes import OLD_RUNTIMES, assert_old_runtimes_match, old_runtime_python
from safetensors.numpy import save_file
from torch import nn

import optgraph
from optgraph import lr_scheduler, optim

# How every optimizer of optim.__all__ and every schedule of lr_scheduler.__all__ is built here (one the tables
# lack: from its defaults, or a failing case if it needs arguments). Each trains at least once: the i-th
# optimizer with the i-th schedule, in the tables' order, the shorter list starting over.
OPTIMIZER_ARGS = {
    "SGD": lambda: optim.SGD(lr=0.05, momentum=0.9, nesterov=True),
    "Adam": lambda: optim.Adam(lr=0.01, amsgrad=True),
    "AdamW": lambda: optim.AdamW(lr=0.01),
    "Adagrad": lambda: optim.Adagrad(lr=0.05, lr_decay=0.01),
    "RMSprop": lambda: optim.RMSprop(lr=0.01, momentum=0.5, centered=True),
    "Adamax": lambda: optim.Adamax(lr=0.01),
    "Adadelta": lambda: optim.Adadelta(weight_decay=0.01),
    "NAdam": lambda: optim.NAdam(lr=0.01, decoupled_weight_decay=True, weight_decay=0.1),
    "RAdam": lambda: optim.RAdam(lr=0.01),
    "Rprop": lambda: optim.Rprop(lr=0.01),
    "ASGD": lambda: optim.ASGD(lr=0.01, t0=2),
    "Lion": lambda: optim.Lion(lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1),
    "Adafactor": lambda: optim.Adafactor(lr=0.01, weight_decay=0.01),
}
SCHEDULE_ARGS = {
    "StepLR": lambda: lr_scheduler.StepLR(step_size=2, gamma=0.5),
    "MultiStepLR": lambda: lr_scheduler.MultiStepLR(milestones=[1, 3]),
    "OneCycleLR": lambda: lr_scheduler.OneCycleLR(max_lr=0.02, total_steps=10),
    "ExponentialLR": lambda: lr_scheduler.ExponentialLR(gamma=0.9),
    "CosineAnnealingLR": lambda: lr_scheduler.CosineAnnealingLR(T_max=3),
    "LinearLR": lambda: lr_scheduler.LinearLR(start_factor=0.2, total_iters=3),
    "ConstantLR": lambda: lr_scheduler.ConstantLR(factor=0.5, total_iters=2),
    "PolynomialLR": lambda: lr_scheduler.PolynomialLR(total_iters=4),
    "CosineAnnealingWarmRestarts": lambda: lr_scheduler.CosineAnnealingWarmRestarts(T_0=2, T_mult=2),
    "ReduceLROnPlateau": lambda: lr_scheduler.ReduceLROnPlateau(patience=0, factor=0.5),
    "SequentialLR": lambda: lr_scheduler.SequentialLR(
        schedulers=[lr_scheduler.LinearLR(start_factor=0.5, total_iters=2), lr_scheduler.ExponentialLR(gamma=0.8)],
        milestones=[2],
    ),
    "ChainedScheduler": lambda: lr_scheduler.ChainedScheduler(
        schedulers=[lr_scheduler.ExponentialLR(gamma=0.9), lr_scheduler.StepLR(step_size=3, gamma=0.5)]
    ),
}
_OPTIMIZERS = in_table_order(OPTIMIZERS, OPTIMIZER_ARGS)
_SCHEDULES = in_table_order(SCHEDULES, SCHEDULE_ARGS)
UPDATE_RULES = [
    (_OPTIMIZERS[i % len(_OPTIMIZERS)], _SCHEDULES[i % len(_SCHEDULES)])
    for i in range(max(len(_OPTIMIZERS), len(_SCHEDULES)))
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


@pytest.mark.parametrize("rule", range(len(UPDATE_RULES)), ids=[f"{o}-{s}" for o, s in UPDATE_RULES])
def test_every_optimizer_and_schedule_trains_on_onnxruntime_1_19(rule, tmp_path):
    optimizer_name, schedule_name = UPDATE_RULES[rule]
    optimizer = construct(optim, optimizer_name, OPTIMIZER_ARGS, "OPTIMIZER_ARGS")
    schedule = construct(lr_scheduler, schedule_name, SCHEDULE_ARGS, "SCHEDULE_ARGS")
    pythons = _old_runtimes()
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
