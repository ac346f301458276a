"""attach_optimizer on a hand-built captured graph: the state it adds, and one step against numpy formulas."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from optgraph import lr_scheduler, optim
from optgraph.artifact.names import (
    EPOCH,
    LOSS,
    PARAM_KEY,
    SCHEDULE_LR,
    SLOT_KEY,
    STEP_COUNTER,
    Role,
    grad_name,
    next_name,
    optim_slot_name,
    param_of_grad,
    state_of_next,
)
from optgraph.rewrite.attach_optimizer import AttachedOptimizer, attach_optimizer

from .toy_capture import (
    FROZEN,
    TRAINABLE,
    UPDATED_BUFFERS,
    Runner,
    advance,
    batch,
    check_types,
    initial_state,
    train_model,
)

COUNTERS = [(STEP_COUNTER, Role.COUNTER), (EPOCH, Role.SCHEDULE_STATE)]


def attached(optimizer, schedule=None) -> tuple[ir.Model, AttachedOptimizer, list]:
    model = train_model()
    schedule = lr_scheduler.NoSchedule() if schedule is None else schedule
    groups = optimizer.resolve(TRAINABLE)
    return model, attach_optimizer(model, optimizer, schedule, groups), groups


def slots_of(record: AttachedOptimizer) -> list[tuple[str, str, str]]:
    return [(t.name, t.meta[PARAM_KEY], t.meta[SLOT_KEY]) for t in record.new_state if t.role == Role.OPTIM_STATE]


@pytest.mark.parametrize(
    "optimizer, slots",
    [
        (optim.SGD(lr=0.1), []),
        (optim.SGD(lr=0.1, momentum=0.9), ["momentum_buffer"]),
        (optim.Adam(lr=0.01), ["exp_avg", "exp_avg_sq"]),
        (optim.Adam(lr=0.01, amsgrad=True), ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]),
    ],
    ids=["sgd", "sgd-momentum", "adam", "adam-amsgrad"],
)
def test_added_state(optimizer, slots):
    model, record, _ = attached(optimizer)
    state = initial_state()
    assert [(t.name, t.role) for t in record.new_state[:2]] == COUNTERS
    for t in record.new_state[:2]:
        assert t.init.dtype == np.int64 and t.init.shape == () and t.init == 0 and t.meta == {}
    # one slot per (param, slot), named by optim_slot_name, in group order then chain order
    assert slots_of(record) == [(optim_slot_name(s, p), p, s) for p in TRAINABLE for s in slots]
    assert len(record.new_state) == 2 + len(TRAINABLE) * len(slots)
    for t in record.new_state[2:]:
        param = state[t.meta[PARAM_KEY]]
        assert t.init.dtype == param.dtype and t.init.shape == param.shape and not t.init.any()
    assert optim_slot_name("exp_avg", "w") == "optim.exp_avg.w"  # the documented spelling


def test_graph_inputs_and_outputs():
    model = train_model()
    inputs_before = [v.name for v in model.graph.inputs]
    grads_before = {param_of_grad(v.name): v for v in model.graph.outputs if param_of_grad(v.name) is not None}
    others_before = [v for v in model.graph.outputs if param_of_grad(v.name) is None]
    optimizer = optim.Adam(lr=0.01)
    record = attach_optimizer(model, optimizer, lr_scheduler.StepLR(2), optimizer.resolve(TRAINABLE))
    graph = model.graph
    assert [v.name for v in graph.inputs] == inputs_before + [t.name for t in record.new_state]
    assert record.gradients == grads_before, "the gradients it consumed, by parameter"
    assert all(not v.is_graph_output() for v in record.gradients.values())
    names = [v.name for v in graph.outputs]
    assert graph.outputs[: len(others_before)] == others_before, "loss and buffers stay first, as they were"
    expected_new = [
        next_name(n) for p in TRAINABLE for n in [p, optim_slot_name("exp_avg", p), optim_slot_name("exp_avg_sq", p)]
    ]
    assert names[len(others_before) :] == expected_new + [next_name(STEP_COUNTER)]
    for frozen in FROZEN:
        assert next_name(frozen) not in names, "a frozen parameter is never updated"
    assert next_name(EPOCH) not in names, "the epoch belongs to scheduler_step"
    assert SCHEDULE_LR not in {v.name for v in graph.inputs}, "this schedule computes its lr from the epoch"
    inputs = {v.name: v for v in graph.inputs}
    for value in graph.outputs:
        if value.name in expected_new:
            assert value.dtype == inputs[state_of_next(value.name)].dtype
    check_types(model)


def sgd_reference(state, grads, lr, momentum=0.0):
    new = {}
    for p in TRAINABLE:
        g = grads[p].astype(np.float64)
        if momentum:
            slot = optim_slot_name("momentum_buffer", p)
            buf = g if state[STEP_COUNTER] == 0 else momentum * state[slot] + g
            new[slot] = buf
            g = buf
        new[p] = state[p] - lr * g
    return new


def adam_reference(state, grads, lr, beta1=0.9, beta2=0.999, eps=1e-8):
    t = int(state[STEP_COUNTER]) + 1
    new = {}
    for p in TRAINABLE:
        g = grads[p].astype(np.float64)
        m = beta1 * state[optim_slot_name("exp_avg", p)] + (1 - beta1) * g
        v = beta2 * state[optim_slot_name("exp_avg_sq", p)] + (1 - beta2) * g * g
        denom = np.sqrt(v) / np.sqrt(1 - beta2**t) + eps
        new[p] = state[p] - lr * m / (1 - beta1**t) / denom
        new[optim_slot_name("exp_avg", p)], new[optim_slot_name("exp_avg_sq", p)] = m, v
    return new


def run_steps(optimizer, reference, steps=3, schedule=None, epoch=0, extra=None):
    model, record, _ = attached(optimizer, schedule)
    plain, run = Runner(train_model()), Runner(model)
    state = initial_state() | {t.name: t.init for t in record.new_state} | (extra or {})
    state[EPOCH] = np.array(epoch, np.int64)
    for call in range(steps):
        feeds = state | batch(call)
        grads = {p: plain(feeds)[grad_name(p)] for p in TRAINABLE}
        out = run(feeds)
        for name, value in reference(state, grads).items():
            np.testing.assert_allclose(
                out[next_name(name)], value, rtol=2e-6, atol=1e-8, err_msg=f"{name}, call {call}"
            )
        assert out[next_name(STEP_COUNTER)] == state[STEP_COUNTER] + 1
        plain_out = plain(feeds)
        for name in [LOSS] + [next_name(b) for b in UPDATED_BUFFERS]:
            assert out[name].tobytes() == plain_out[name].tobytes(), "the forward is untouched"
        state = advance(state, out)
        assert state[EPOCH] == epoch, "the train step leaves the epoch alone"
    return state


def test_sgd_step():
    run_steps(optim.SGD(lr=0.1), lambda s, g: sgd_reference(s, g, 0.1))


def test_sgd_momentum_steps():
    run_steps(optim.SGD(lr=0.1, momentum=0.9), lambda s, g: sgd_reference(s, g, 0.1, 0.9))


def test_adam_steps():
    run_steps(optim.Adam(lr=0.01), lambda s, g: adam_reference(s, g, 0.01), steps=4)


def test_adam_resumed_at_step_5_uses_bias_correction_of_step_6():
    rng = np.random.default_rng(7)
    extra = {STEP_COUNTER: np.array(5, np.int64)}
    for p, value in initial_state().items():
        if p in TRAINABLE:
            extra[optim_slot_name("exp_avg", p)] = rng.normal(size=value.shape).astype(np.float32)
            extra[optim_slot_name("exp_avg_sq", p)] = rng.uniform(0.1, 1, size=value.shape).astype(np.float32)
    state = run_steps(optim.Adam(lr=0.01), lambda s, g: adam_reference(s, g, 0.01), steps=1, extra=extra)
    assert state[STEP_COUNTER] == 6


@pytest.mark.parametrize("epoch", [0, 1, 2, 5])
def test_lr_follows_the_schedule_epoch(epoch):
    lr = 0.1 * 0.5 ** (epoch // 2)
    run_steps(
        optim.SGD(lr=0.1),
        lambda s, g: sgd_reference(s, g, lr),
        steps=1,
        schedule=lr_scheduler.StepLR(2, 0.5),
        epoch=epoch,
    )


def test_lr_from_schedule_state_per_group():
    """ReduceLROnPlateau keeps the lr in schedule.lr (one per group, default group last): the step reads it."""
    optimizer = optim.SGD(lr=0.1, param_groups=[{"params": ["b"], "lr": 0.5}])
    model, record, groups = attached(optimizer, lr_scheduler.ReduceLROnPlateau())
    assert [g.params for g in groups] == [("b",), ("w",)]
    inputs = {v.name: v for v in model.graph.inputs}
    assert inputs[SCHEDULE_LR].dtype == ir.DataType.DOUBLE and list(inputs[SCHEDULE_LR].shape) == [2]
    assert SCHEDULE_LR not in {t.name for t in record.new_state}, "scheduler_step owns schedule.lr"
    plain, run = Runner(train_model()), Runner(model)
    state = initial_state() | {t.name: t.init for t in record.new_state}
    feeds = state | batch(0) | {SCHEDULE_LR: np.array([0.2, 0.03])}
    grads = plain(feeds)
    out = run(feeds)
    for p, lr in [("b", 0.2), ("w", 0.03)]:
        np.testing.assert_allclose(out[next_name(p)], state[p] - lr * grads[grad_name(p)].astype(np.float64), rtol=1e-6)
