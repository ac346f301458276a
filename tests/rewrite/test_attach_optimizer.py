"""attach_optimizer on a hand-built captured graph: the state it adds, and one step against numpy formulas."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from catalog import OPTIMIZERS, construct

from optgraph import lr_scheduler, optim
from optgraph.artifact.names import (
    EPOCH,
    LOSS,
    PACKED_KEY,
    PARAM_KEY,
    SCHEDULE_LR,
    SLOT_KEY,
    STEP_COUNTER,
    Role,
    grad_name,
    next_name,
    optim_pack_slot_name,
    optim_slot_name,
    param_of_grad,
    state_of_next,
)
from optgraph.graph.builder import GraphBuilder, ir_dtype
from optgraph.rewrite import attach_optimizer as attach_module
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


def attached(optimizer, schedule=None, pack=False) -> tuple[ir.Model, AttachedOptimizer, list]:
    """The toy capture with ``optimizer`` attached; each parameter with its own update unless ``pack``."""
    model = train_model()
    schedule = lr_scheduler.NoSchedule() if schedule is None else schedule
    groups = optimizer.resolve(TRAINABLE)
    return model, attach_optimizer(model, optimizer, schedule, groups, pack=pack), groups


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
    record = attach_optimizer(model, optimizer, lr_scheduler.StepLR(2), optimizer.resolve(TRAINABLE), pack=False)
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


# -- small parameters packed into one update -------------------------------------------------------------------------

# parameters of every rank; "big" is over the test's packing limit, "wide" is float64 (another pack)
SHAPES = {"matrix": ((2, 3), np.float32), "scalar": ((), np.float32), "vector": ((4,), np.float32),
          "big": ((5, 5), np.float32), "cube": ((2, 1, 3), np.float32), "wide": ((3,), np.float64),
          "wider": ((2, 2), np.float64)}  # fmt: skip
PACK_LIMIT = 20  # elements: "big" (25) keeps its own update


def shaped_model(shapes=SHAPES) -> ir.Model:
    """A stand-in capture whose gradients are inputs (``g.<param>``): any shapes and dtypes, any gradient values."""
    graph = ir.Graph([], [], nodes=[], opset_imports={"": 18}, name="shaped")
    b = GraphBuilder(graph)
    for name, (shape, dtype) in shapes.items():
        b.add_input(name, ir_dtype(dtype), list(shape))
    grads = [b.add_input(f"g.{name}", ir_dtype(dtype), list(shape)) for name, (shape, dtype) in shapes.items()]
    for name, grad in zip(shapes, grads):
        b.add_output(b.op("Identity", grad), grad_name(name)).shape = grad.shape
    return ir.Model(graph, ir_version=8)


def shaped_steps(optimizer, pack: bool, steps: int = 5, shapes=SHAPES):
    """Run ``steps`` updates of the shaped model; the record, each step's outputs, and the model."""
    model = shaped_model(shapes)
    record = attach_optimizer(model, optimizer, lr_scheduler.NoSchedule(), optimizer.resolve(list(shapes)), pack=pack)
    run, rng = Runner(model), np.random.default_rng(3)
    state = {n: rng.standard_normal(shape).astype(dtype) for n, (shape, dtype) in shapes.items()}
    state |= {t.name: t.init for t in record.new_state}
    outputs = []
    for _ in range(steps):
        grads = {f"g.{n}": rng.standard_normal(shape).astype(dtype) for n, (shape, dtype) in shapes.items()}
        grads[f"g.{next(iter(shapes))}"].flat[0] = 0.0  # Rprop's and Lion's sign logic
        out = run(state | grads)
        outputs.append(out)
        state = advance(state, out)
    return record, outputs, model


def per_param_slots(record: AttachedOptimizer, out: dict, shapes=SHAPES) -> dict[tuple[str, str], np.ndarray]:
    """Every (param, slot) value of one step's outputs, packs split as ``optimizer_state_dict`` splits them."""
    slots = {}
    for t in record.new_state:
        if t.role != Role.OPTIM_STATE:
            continue
        value = out[next_name(t.name)]
        if PACKED_KEY not in t.meta:
            slots[t.meta[PARAM_KEY], t.meta[SLOT_KEY]] = value
            continue
        start = 0
        for p in t.meta[PACKED_KEY]:
            shape = shapes[p][0]
            size = int(np.prod(shape))
            slots[p, t.meta[SLOT_KEY]] = value if value.ndim == 0 else value[start : start + size].reshape(shape)
            start += 0 if value.ndim == 0 else size
    return slots


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_a_packed_update_is_bit_identical_to_one_per_parameter(name, monkeypatch):
    monkeypatch.setattr(attach_module, "PACK_PARAM_MAX_ELEMENTS", PACK_LIMIT)
    optimizer = construct(optim, name, {}, "this test's table")
    packed, theirs = shaped_steps(optimizer, pack=True), shaped_steps(optimizer, pack=False)
    packs = [t for t in packed[0].new_state if PACKED_KEY in t.meta]
    splits = [node for node in packed[2].graph if node.op_type == "Split"]
    if all(rule.element_wise for rule in optimizer.rules(optimizer.defaults)):
        # one pack per dtype, in parameter order; "big" alone
        assert [len(node.outputs) for node in splits] == [4, 2]
        assert {tuple(t.meta[PACKED_KEY]) for t in packs} <= {("matrix", "scalar", "vector", "cube"), ("wide", "wider")}
        assert not any(t.meta.get(PARAM_KEY) not in (None, "big") for t in packed[0].new_state)
    else:
        assert not packs and not splits, "a chain that is not element-wise keeps one update per parameter"
    for step, (ours, reference) in enumerate(zip(packed[1], theirs[1])):
        for p in SHAPES:
            np.testing.assert_array_equal(ours[next_name(p)], reference[next_name(p)], err_msg=f"{p}, step {step}")
            assert ours[next_name(p)].dtype == reference[next_name(p)].dtype
        ours_slots, their_slots = per_param_slots(packed[0], ours), per_param_slots(theirs[0], reference)
        assert ours_slots.keys() == their_slots.keys()
        for key, value in their_slots.items():
            np.testing.assert_array_equal(ours_slots[key], value, err_msg=f"{key}, step {step}")


def test_pack_state_is_flat_and_names_its_parameters(monkeypatch):
    monkeypatch.setattr(attach_module, "PACK_PARAM_MAX_ELEMENTS", PACK_LIMIT)
    record, _, _ = shaped_steps(optim.NAdam(), pack=True, steps=1)
    slots = {t.name: t for t in record.new_state if t.role == Role.OPTIM_STATE}
    assert list(slots) == [
        *(optim_pack_slot_name(s, 0, 0) for s in ["mu_product", "exp_avg", "exp_avg_sq"]),
        *(optim_slot_name(s, "big") for s in ["mu_product", "exp_avg", "exp_avg_sq"]),
        *(optim_pack_slot_name(s, 0, 1) for s in ["mu_product", "exp_avg", "exp_avg_sq"]),
    ]
    first = slots[optim_pack_slot_name("exp_avg", 0, 0)]
    assert first.meta == {PACKED_KEY: ["matrix", "scalar", "vector", "cube"], SLOT_KEY: "exp_avg"}
    assert first.init.shape == (6 + 1 + 4 + 6,) and first.init.dtype == np.float32
    assert slots[optim_pack_slot_name("exp_avg", 0, 1)].init.dtype == np.float64
    mu = slots[optim_pack_slot_name("mu_product", 0, 0)]
    assert mu.init.shape == () and mu.init == 1.0, "a scalar slot is one value for the whole pack"
    assert optim_pack_slot_name("exp_avg", 2, 1) == "optim.exp_avg.pack2_1"  # the documented spelling


def test_packing_limits(monkeypatch):
    monkeypatch.setattr(attach_module, "PACK_PARAM_MAX_ELEMENTS", PACK_LIMIT)
    monkeypatch.setattr(attach_module, "PACK_MAX_ELEMENTS", 12)
    record, _, _ = shaped_steps(optim.SGD(momentum=0.9), pack=True, steps=1)
    packs = [t.meta[PACKED_KEY] for t in record.new_state if PACKED_KEY in t.meta]
    # float32: matrix (6) + scalar (1) + vector (4) fill one pack, cube (6) alone is no pack; float64: 3 + 4
    assert packs == [["matrix", "scalar", "vector"], ["wide", "wider"]]
    monkeypatch.setattr(attach_module, "PACKING", False)
    record, _, _ = shaped_steps(optim.SGD(momentum=0.9), pack=None, steps=1)
    assert not any(PACKED_KEY in t.meta for t in record.new_state), "the module's switch"


def test_groups_pack_apart_and_a_name_taken_by_a_parameter_is_not_reused(monkeypatch):
    monkeypatch.setattr(attach_module, "PACK_PARAM_MAX_ELEMENTS", PACK_LIMIT)
    shapes = {"a": ((2,), np.float32), "b": ((3,), np.float32), "pack1_0": ((2,), np.float32), "c": ((2,), np.float32)}
    optimizer = optim.Adam(param_groups=[{"params": ["c", "pack*"], "lr": 0.1}])
    record, _, _ = shaped_steps(optimizer, pack=True, steps=2, shapes=shapes)
    packs = {t.name: t.meta[PACKED_KEY] for t in record.new_state if PACKED_KEY in t.meta}
    # group 0 (c, pack1_0) packs; the default group 1 would name its pack pack1_0, a parameter's name: unpacked
    assert packs == {optim_pack_slot_name(s, 0, 0): ["pack1_0", "c"] for s in ["exp_avg", "exp_avg_sq"]}
    names = [t.name for t in record.new_state]
    assert len(names) == len(set(names))
    assert optim_slot_name("exp_avg", "a") in names and optim_slot_name("exp_avg", "pack1_0") not in names
