"""Schedules: session.lr after construction and after every scheduler_step equals torch's."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from catalog import SCHEDULES, fail_missing, needs_arguments
from models import assert_close, make_batch, make_model
from torch import nn

import optgraph
from optgraph import lr_scheduler, optim

# The parity test's arguments: a list of variants per schedule of lr_scheduler.__all__ (composites name their
# parts). A public schedule missing here runs from its defaults, or fails if its constructor needs arguments.
SCHEDULE_CASES = {
    "StepLR": [dict(step_size=3), dict(step_size=7, gamma=0.5), dict(step_size=1, gamma=0.97)],
    "MultiStepLR": [dict(milestones=[3, 7, 7, 20], gamma=0.5)],
    "ExponentialLR": [dict(gamma=0.95)],
    "CosineAnnealingLR": [dict(T_max=10, eta_min=0.001), dict(T_max=7)],
    "LinearLR": [dict(), dict(start_factor=0.1, end_factor=0.9, total_iters=20)],
    "ConstantLR": [dict(), dict(factor=0.5, total_iters=10)],
    "PolynomialLR": [dict(total_iters=30, power=2.0)],
    "CosineAnnealingWarmRestarts": [dict(T_0=5), dict(T_0=3, T_mult=2, eta_min=0.01)],
    "SequentialLR": [
        dict(
            schedulers=[("LinearLR", dict(start_factor=0.1, total_iters=5)), ("CosineAnnealingLR", dict(T_max=20))],
            milestones=[5],
        ),
        dict(
            schedulers=[
                ("ConstantLR", dict(factor=0.5, total_iters=3)),
                ("ExponentialLR", dict(gamma=0.9)),
                ("StepLR", dict(step_size=4)),
            ],
            milestones=[3, 30],
        ),
    ],
    "ChainedScheduler": [
        dict(schedulers=[("ExponentialLR", dict(gamma=0.97)), ("StepLR", dict(step_size=10, gamma=0.5))]),
        dict(schedulers=[("LinearLR", dict(start_factor=0.2, total_iters=8)), ("CosineAnnealingLR", dict(T_max=30))]),
    ],
    "OneCycleLR": [
        dict(max_lr=[0.5, 0.2], total_steps=120),
        dict(
            max_lr=0.4,
            epochs=11,
            steps_per_epoch=11,
            pct_start=0.25,
            anneal_strategy="linear",
            three_phase=True,
            div_factor=10.0,
            final_div_factor=100.0,
        ),
    ],
    # steps on a metric: test_reduce_lr_on_plateau_matches_torch below
    "ReduceLROnPlateau": [],
}


def _variants(name: str) -> list[dict | None]:
    """The parity test's arguments for schedule ``name``; None for a missing schedule that needs some."""
    if name in SCHEDULE_CASES:
        return SCHEDULE_CASES[name]
    return [None] if needs_arguments(getattr(lr_scheduler, name)) else [{}]


PARITY = [(name, variant) for name in SCHEDULES for variant in range(len(_variants(name)))]


def build(module, name, kwargs, optimizer=None):
    """A schedule from ``module`` (optgraph.lr_scheduler, or torch's given an optimizer), nested ones too."""
    kwargs = dict(kwargs)
    if "schedulers" in kwargs:
        kwargs["schedulers"] = [build(module, n, k, optimizer) for n, k in kwargs["schedulers"]]
    if optimizer is not None and name == "ChainedScheduler":  # torch: ChainedScheduler(schedulers, optimizer=None)
        return module.ChainedScheduler(optimizer=optimizer, **kwargs)
    if optimizer is not None:
        return getattr(module, name)(optimizer, **kwargs)
    return getattr(module, name)(**kwargs)


@pytest.fixture(scope="module")
def mlp_example():
    return make_model("mlp"), make_batch("mlp", 4, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name,variant", PARITY, ids=[f"{n}-{v}" for n, v in PARITY])
def test_schedule_matches_torch_for_100_epochs(mlp_example, name, variant):
    kwargs = _variants(name)[variant]
    if kwargs is None:
        fail_missing(name, "SCHEDULE_CASES")
    model, (x, y) = mlp_example
    groups = [{"params": ["head.*"], "lr": 0.3}]
    artifact = optgraph.compile(
        model, (x,), (y,), nn.CrossEntropyLoss(),
        optimizer=optim.SGD(lr=0.1, param_groups=groups), lr_scheduler=build(lr_scheduler, name, kwargs),
    )  # fmt: skip
    session = optgraph.TrainingSession(artifact, providers=["CPUExecutionProvider"])
    params = dict(model.named_parameters())
    torch_opt = torch.optim.SGD(
        [{"params": [params["head.weight"], params["head.bias"]], "lr": 0.3},
         {"params": [p for n, p in params.items() if not n.startswith("head.")]}], lr=0.1,
    )  # fmt: skip
    torch_sched = build(torch.optim.lr_scheduler, name, kwargs, torch_opt)
    schedule = build(lr_scheduler, name, kwargs)
    for epoch in range(101):
        expected = [g["lr"] for g in torch_opt.param_groups]
        # torch's recursive forms against our closed forms: the drift must stay at float64 rounding
        assert session.lr == pytest.approx(expected, rel=1e-12, abs=1e-15), f"epoch {epoch}"
        assert [schedule.for_group(i).value(epoch, base) for i, base in enumerate((0.3, 0.1))] == pytest.approx(
            expected, rel=1e-12, abs=1e-15
        )
        session.scheduler_step()
        torch_opt.step()
        torch_sched.step()


def test_step_lr_rejects_bad_step_size():
    with pytest.raises(ValueError, match="positive integer step_size"):
        lr_scheduler.StepLR(step_size=0)


BAD_SCHEDULES = [
    ("OneCycleLR", dict(max_lr=0.1)),
    ("OneCycleLR", dict(max_lr=0.1, total_steps=0)),
    ("OneCycleLR", dict(max_lr=0.1, total_steps=10, pct_start=2.0)),
    ("OneCycleLR", dict(max_lr=0.1, total_steps=10, anneal_strategy="step")),
    ("ReduceLROnPlateau", dict(factor=1.0)),
    ("ReduceLROnPlateau", dict(mode="avg")),
    ("ReduceLROnPlateau", dict(threshold_mode="pct")),
    ("LinearLR", dict(start_factor=0)),
    ("LinearLR", dict(end_factor=1.5)),
    ("ConstantLR", dict(factor=2.0)),
    ("CosineAnnealingWarmRestarts", dict(T_0=0)),
    ("CosineAnnealingWarmRestarts", dict(T_0=5, T_mult=0)),
]


@pytest.mark.parametrize("name,kwargs", BAD_SCHEDULES, ids=[f"{n}-{k}" for n, k in BAD_SCHEDULES])
def test_schedule_errors_match_torch(name, kwargs):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(Exception) as theirs:
        getattr(torch.optim.lr_scheduler, name)(opt, **kwargs)
    with pytest.raises(type(theirs.value)) as ours:
        getattr(lr_scheduler, name)(**kwargs)
    assert str(ours.value) == str(theirs.value)


PLATEAU = [
    ("min-rel", dict(patience=2), [1.0, 0.9, 0.95, 0.95, 0.95, 0.8, 0.85, 0.85, 0.85, 0.85, 0.7] * 4),
    (
        "max-abs-cooldown",
        dict(mode="max", threshold=0.05, threshold_mode="abs", patience=1, cooldown=2),
        [0.1, 0.2, 0.22, 0.21, 0.2, 0.19, 0.3, 0.31, 0.29, 0.28, 0.27, 0.5] * 4,
    ),
    ("min-lr-eps", dict(factor=0.5, patience=0, min_lr=[0.05, 0.01]), [1.0] + [2.0] * 20 + [float("nan")] * 3),
    (
        "min-abs-threshold",
        dict(threshold=0.1, threshold_mode="abs", patience=3, cooldown=1),
        [5.0 - 0.02 * i for i in range(60)],
    ),  # fmt: skip
]


@pytest.mark.parametrize("case", PLATEAU, ids=[c[0] for c in PLATEAU])
def test_reduce_lr_on_plateau_matches_torch(mlp_example, case):
    _, kwargs, metrics = case
    model, (x, y) = mlp_example
    reference = copy.deepcopy(model)
    groups = [{"params": ["head.*"], "lr": 0.3}]
    artifact = optgraph.compile(
        model, (x,), (y,), nn.CrossEntropyLoss(),
        optimizer=optim.SGD(lr=0.1, param_groups=groups), lr_scheduler=lr_scheduler.ReduceLROnPlateau(**kwargs),
    )  # fmt: skip
    session = optgraph.TrainingSession(artifact, providers=["CPUExecutionProvider"])
    params = dict(reference.named_parameters())
    torch_opt = torch.optim.SGD(
        [{"params": [params["head.weight"], params["head.bias"]], "lr": 0.3},
         {"params": [p for n, p in params.items() if not n.startswith("head.")]}], lr=0.1,
    )  # fmt: skip
    torch_sched = torch.optim.lr_scheduler.ReduceLROnPlateau(torch_opt, **kwargs)
    reductions = 0
    for epoch, metric in enumerate(metrics):
        assert session.lr == [g["lr"] for g in torch_opt.param_groups], f"epoch {epoch}"
        loss = session.step(x, y)  # the train step uses the schedule's current lr
        torch_opt.zero_grad()
        expected = nn.functional.cross_entropy(reference(x), y)
        expected.backward()
        torch_opt.step()
        assert_close(loss, expected, f"loss at epoch {epoch}")
        before = session.lr
        session.scheduler_step(metric)
        torch_sched.step(metric)
        reductions += session.lr != before
    assert reductions >= 2, "the metric sequence must trigger reductions"
    for key, value in reference.state_dict().items():
        assert_close(session.state_dict()[key], value, key)


def test_plateau_needs_a_metric_and_others_refuse_one(mlp_example):
    model, (x, y) = mlp_example
    artifact = optgraph.compile(model, (x,), (y,), nn.CrossEntropyLoss(), lr_scheduler=lr_scheduler.ReduceLROnPlateau())
    session = optgraph.TrainingSession(artifact, providers=["CPUExecutionProvider"])
    with pytest.raises(TypeError, match="needs the metric"):
        session.scheduler_step()
    plain = optgraph.TrainingSession(optgraph.compile(model, (x,), (y,), nn.CrossEntropyLoss()))
    with pytest.raises(TypeError, match="takes no metric"):
        plain.scheduler_step(0.5)


@pytest.mark.parametrize("name", SCHEDULES)
def test_signature_is_torchs_minus_the_optimizer(name):
    import inspect

    ours = inspect.signature(getattr(lr_scheduler, name)).parameters
    theirs = inspect.signature(getattr(torch.optim.lr_scheduler, name)).parameters
    assert list(ours) == [n for n in theirs if n != "optimizer"]
    for arg, param in ours.items():
        assert param.default == theirs[arg].default, f"{name}.{arg} default"


def test_only_a_fresh_start_is_supported():
    lr_scheduler.StepLR(step_size=3, last_epoch=-1)
    with pytest.raises(KeyError, match="initial_lr"):
        lr_scheduler.StepLR(step_size=3, last_epoch=4)


def test_float64_cosine_is_exact_without_a_cos_kernel():
    """Schedules build float64 cos from arithmetic (old runtimes lack the kernel); it must equal math.cos."""
    import onnx_ir as ir
    import onnxruntime as ort

    from optgraph.graph.builder import DOUBLE, GraphBuilder

    graph = ir.Graph([], [], nodes=[], opset_imports={"": 18})
    b = GraphBuilder(graph)
    b.add_output(b.cos(b.add_input("x", DOUBLE, ["n"])), "y")
    assert "Cos" not in {node.op_type for node in graph}
    session = ort.InferenceSession(ir.to_proto(ir.Model(graph, ir_version=8)).SerializeToString())
    x = np.concatenate([np.linspace(-50, 50, 100_001), np.pi * np.arange(-400, 400) / 7, [1e4 + 0.25, -3e3]])
    (y,) = session.run(None, {"x": x})
    error = np.abs(y - np.cos(x)) / np.maximum(1, np.abs(x))
    assert error.max() < 4e-16, f"cos({x[error.argmax()]}) is off by {error.max():.1e}"
