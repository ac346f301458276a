"""build_scheduler_step: the scheduler_step model advances the epoch and computes every group's lr."""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir
import pytest

from optgraph import lr_scheduler, optim
from optgraph.artifact.names import EPOCH, METRIC, SCHEDULE_LR, GraphName, Role, next_name, schedule_state_name
from optgraph.graph.builder import DOUBLE, INT64
from optgraph.rewrite.scheduler_graph import SchedulerStep, build_scheduler_step, initial_lrs

from .toy_capture import IR_VERSION, OPSET, TRAINABLE, Runner, advance, check_types

BASE_LRS = [0.5, 0.1]  # group 0 holds b, the default group (last) holds w
PLATEAU_STATE = [schedule_state_name(n) for n in ("best", "num_bad_epochs", "cooldown_counter")]


def groups():
    return optim.SGD(lr=BASE_LRS[1], param_groups=[{"params": ["b"], "lr": BASE_LRS[0]}]).resolve(TRAINABLE)


def build(schedule) -> SchedulerStep:
    return build_scheduler_step(schedule, groups(), OPSET, IR_VERSION)


def initial(step: SchedulerStep) -> dict[str, np.ndarray]:
    return {EPOCH: np.array(0, np.int64)} | {t.name: t.init for t in step.new_state}


def test_record_and_graph_of_an_epoch_schedule():
    step = build(lr_scheduler.StepLR(step_size=2, gamma=0.5))
    assert isinstance(step.model, ir.Model)
    assert step.model.graph.name == GraphName.SCHEDULER_STEP.value
    assert step.model.ir_version == IR_VERSION and step.model.graph.opset_imports[""] == OPSET
    (lrs,) = step.new_state
    assert (lrs.name, lrs.role, lrs.meta) == (SCHEDULE_LR, Role.SCHEDULE_STATE, {})
    assert lrs.init.dtype == np.float64 and lrs.init.tolist() == BASE_LRS
    graph = step.model.graph
    assert [(v.name, v.dtype, list(v.shape)) for v in graph.inputs] == [(EPOCH, INT64, []), (SCHEDULE_LR, DOUBLE, [2])]
    assert [v.name for v in graph.outputs] == [next_name(EPOCH), next_name(SCHEDULE_LR)]
    assert [v.dtype for v in graph.outputs] == [INT64, DOUBLE]
    assert "Cos" not in {node.op_type for node in graph}
    check_types(step.model)


def test_step_lr_over_epochs():
    schedule = lr_scheduler.StepLR(step_size=2, gamma=0.5)
    step = build(schedule)
    run = Runner(step.model)
    state = initial(step)
    for epoch in range(1, 8):
        out = run(state)
        assert out[next_name(EPOCH)] == epoch
        expected = [base * 0.5 ** (epoch // 2) for base in BASE_LRS]
        assert out[next_name(SCHEDULE_LR)].tolist() == expected, f"epoch {epoch}"
        assert expected == [schedule.value(epoch, base) for base in BASE_LRS], "the Python twin agrees"
        state = advance(state, out)


def test_cosine_annealing_is_float64_exact():
    schedule = lr_scheduler.CosineAnnealingLR(T_max=7, eta_min=0.01)
    step = build(schedule)
    run = Runner(step.model)
    state = initial(step)
    for epoch in range(1, 30):
        out = run(state)
        expected = [0.01 + (base - 0.01) * (1 + math.cos(math.pi * epoch / 7)) / 2 for base in BASE_LRS]
        np.testing.assert_allclose(out[next_name(SCHEDULE_LR)], expected, rtol=0, atol=5e-16)  # a few float64 ulps
        state = advance(state, out)


def test_initial_lrs_are_the_lrs_before_any_step():
    assert initial_lrs(lr_scheduler.StepLR(2), groups()).tolist() == BASE_LRS
    warmup = lr_scheduler.LinearLR(start_factor=0.25, total_iters=4)
    assert initial_lrs(warmup, groups()).tolist() == [base * 0.25 for base in BASE_LRS]
    (lrs,) = build(warmup).new_state
    assert lrs.init.tolist() == [base * 0.25 for base in BASE_LRS]


def test_reduce_lr_on_plateau_record_and_graph():
    step = build(lr_scheduler.ReduceLROnPlateau())
    assert [(t.name, t.role) for t in step.new_state] == [(SCHEDULE_LR, Role.SCHEDULE_STATE)] + [
        (n, Role.SCHEDULE_STATE) for n in PLATEAU_STATE
    ]
    init = {t.name: t.init for t in step.new_state}
    assert init[PLATEAU_STATE[0]].dtype == np.float64 and init[PLATEAU_STATE[0]] == np.inf
    assert init[PLATEAU_STATE[1]].dtype == np.int64 and init[PLATEAU_STATE[1]] == 0
    assert init[PLATEAU_STATE[2]].dtype == np.int64 and init[PLATEAU_STATE[2]] == 0
    graph = step.model.graph
    inputs = {v.name: v for v in graph.inputs}
    assert list(inputs) == [EPOCH, SCHEDULE_LR, *PLATEAU_STATE, METRIC]
    assert inputs[METRIC].dtype == DOUBLE and list(inputs[METRIC].shape) == []
    assert sorted(v.name for v in graph.outputs) == sorted(next_name(n) for n in [EPOCH, SCHEDULE_LR, *PLATEAU_STATE])
    assert step.model.graph.name == GraphName.SCHEDULER_STEP.value
    check_types(step.model)


@pytest.mark.parametrize(
    "options",
    [
        dict(factor=0.5, patience=1),
        dict(mode="max", factor=0.3, patience=0, cooldown=2, threshold=0.1, threshold_mode="abs", min_lr=0.04),
    ],
)
def test_reduce_lr_on_plateau_matches_torch(options):
    torch = pytest.importorskip("torch")
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in BASE_LRS]
    reference_optimizer = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, BASE_LRS)])
    reference = torch.optim.lr_scheduler.ReduceLROnPlateau(reference_optimizer, **options)
    step = build(lr_scheduler.ReduceLROnPlateau(**options))
    run = Runner(step.model)
    state = initial(step)
    metrics = [5.0, 4.0, 4.0, 4.5, 3.9, 3.95, 4.0, 4.0, 1.0, 1.0, 2.0, 3.0, 3.0, 0.5]
    for epoch, metric in enumerate(metrics, start=1):
        out = run(state | {METRIC: np.array(metric)})
        reference.step(metric)
        assert out[next_name(EPOCH)] == epoch
        expected = [g["lr"] for g in reference_optimizer.param_groups]
        np.testing.assert_allclose(out[next_name(SCHEDULE_LR)], expected, rtol=1e-15, err_msg=f"epoch {epoch}")
        assert out[next_name(PLATEAU_STATE[1])] == reference.num_bad_epochs
        assert out[next_name(PLATEAU_STATE[2])] == reference.cooldown_counter
        assert out[next_name(PLATEAU_STATE[0])] == reference.best
        state = advance(state, out)
    assert state[SCHEDULE_LR].tolist() != BASE_LRS, "the metrics must make the schedule cut the lr"
