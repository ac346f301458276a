"""rewrite_training on a hand-built capture: the graphs, every role, the new state, meta, and the pass order."""

from __future__ import annotations

import copy
import subprocess
import sys
import types

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from optgraph import lr_scheduler, optim
from optgraph.artifact.names import (
    EPOCH,
    FINITE,
    LOSS,
    METRIC,
    MICRO_STEP,
    PACKED_KEY,
    PARAM_KEY,
    SCHEDULE_LR,
    SLOT_KEY,
    STATE_ROLES,
    STEP_COUNTER,
    TRAINABLE_KEY,
    UPDATE_APPLIED,
    GraphName,
    Role,
    accumulator_name,
    grad_name,
    next_name,
    optim_pack_slot_name,
    schedule_state_name,
    state_of_next,
)
from optgraph.rewrite.pipeline import TrainingGraphs, rewrite_training
from optgraph.rewrite.versions import declare_lowest_versions, lowest_ir_version, lowest_opset

from .toy_capture import (
    BUFFERS,
    DATA,
    FROZEN,
    OUTPUTS,
    TARGETS,
    TRAINABLE,
    Runner,
    advance,
    batch,
    captured_fields,
    check_types,
    initial_state,
    train_model,
)


@pytest.fixture(scope="module")
def Captured():  # noqa: N802 - the class
    """The capture's record; importing it imports torch, so without torch a namespace with the same fields.

    The rewrite layer reads only the record's fields (and never imports torch itself).
    """
    try:
        from optgraph.capture import Captured
    except ImportError:
        return types.SimpleNamespace
    return Captured


def rewrite(captured_class, optimizer=None, schedule=None, clip=None, steps=1):
    captured = captured_class(**captured_fields())
    optimizer = optim.Adam(lr=0.01) if optimizer is None else optimizer
    schedule = lr_scheduler.StepLR(2) if schedule is None else schedule
    return captured, rewrite_training(captured, optimizer, schedule, clip, steps)


def io(model: ir.Model) -> tuple[list[str], list[str]]:
    return [v.name for v in model.graph.inputs], [v.name for v in model.graph.outputs]


def test_graphs_and_their_names(Captured):
    captured, result = rewrite(Captured)
    assert isinstance(result, TrainingGraphs)
    assert list(result.graphs) == [
        GraphName.TRAIN_STEP,
        GraphName.SCHEDULER_STEP,
        GraphName.EVAL,
        GraphName.GRAD_STEP,
        GraphName.UPDATE_STEP,
    ]
    assert [str(name) for name in result.graphs] == ["train_step", "scheduler_step", "eval", "grad_step", "update_step"]
    for name in (GraphName.SCHEDULER_STEP, GraphName.GRAD_STEP, GraphName.UPDATE_STEP):
        assert result.graphs[name].graph.name == name.value
    for name in (GraphName.TRAIN_STEP, GraphName.EVAL, GraphName.GRAD_STEP):
        source = captured.eval if name == GraphName.EVAL else captured.train
        assert result.graphs[name] is not source and result.graphs[name].graph is not source.graph
    assert [g.params for g in result.groups] == [tuple(TRAINABLE)]


def test_every_input_and_output_has_a_role(Captured):
    _, result = rewrite(Captured, clip=1.0, steps=2)
    for name, model in result.graphs.items():
        inputs, outputs = io(model)
        for value in inputs:
            assert result.roles.get(value) in Role, f"{name} input {value} has no role"
        for value in outputs:
            fed = state_of_next(value)
            if fed is not None:
                assert fed in inputs, f"{name} output {value} feeds no input of its graph"
                assert result.roles[fed] in STATE_ROLES
            else:
                assert result.roles.get(value) in Role, f"{name} output {value} has no role"


def expected_roles(slots, steps=1, plateau=False):
    roles = {n: Role.INPUT for n in DATA} | {n: Role.TARGET for n in TARGETS}
    roles |= {n: Role.PARAM for n in TRAINABLE + FROZEN} | {n: Role.BUFFER for n in BUFFERS}
    roles |= {STEP_COUNTER: Role.COUNTER, EPOCH: Role.SCHEDULE_STATE, SCHEDULE_LR: Role.SCHEDULE_STATE}
    # the two small parameters of the one group share their update: one pack, its slots flat
    roles |= {optim_pack_slot_name(s, 0, 0): Role.OPTIM_STATE for s in slots}
    if steps > 1:
        roles |= {MICRO_STEP: Role.COUNTER} | {accumulator_name(p): Role.GRAD_ACCUMULATOR for p in TRAINABLE}
    if plateau:
        roles |= {schedule_state_name(n): Role.SCHEDULE_STATE for n in ("best", "num_bad_epochs", "cooldown_counter")}
        roles[METRIC] = Role.INPUT
    roles |= {grad_name(p): Role.GRAD for p in TRAINABLE} | {FINITE: Role.STATUS}
    return roles | {LOSS: Role.LOSS, UPDATE_APPLIED: Role.STATUS} | {n: Role.OUTPUT for n in OUTPUTS}


@pytest.mark.parametrize(
    "optimizer, slots, schedule, steps",
    [
        (optim.Adam(lr=0.01), ["exp_avg", "exp_avg_sq"], lr_scheduler.StepLR(2), 1),
        (optim.SGD(lr=0.1), [], lr_scheduler.NoSchedule(), 3),
        (optim.SGD(lr=0.1, momentum=0.9), ["momentum_buffer"], lr_scheduler.ReduceLROnPlateau(), 2),
    ],
    ids=["adam-steplr", "sgd-accumulate", "momentum-plateau-accumulate"],
)
def test_roles_new_state_and_meta(Captured, optimizer, slots, schedule, steps):
    _, result = rewrite(Captured, optimizer, schedule, clip=0.5, steps=steps)
    plateau = isinstance(schedule, lr_scheduler.ReduceLROnPlateau)
    roles = expected_roles(slots, steps, plateau)
    assert result.roles == roles
    captured_names = set(DATA + TARGETS + TRAINABLE + FROZEN + BUFFERS + OUTPUTS) | {
        LOSS,
        UPDATE_APPLIED,
        METRIC,
        FINITE,
    }
    captured_names |= {grad_name(p) for p in TRAINABLE}
    assert set(result.new_state) == set(roles) - captured_names
    state = initial_state()
    for name, tensor in result.new_state.items():
        assert tensor.name == name and tensor.role == roles[name]
        if tensor.role == Role.GRAD_ACCUMULATOR:
            param = state[tensor.meta[PARAM_KEY]]
            assert tensor.init.dtype == param.dtype and tensor.init.shape == param.shape and not tensor.init.any()
        if tensor.role == Role.OPTIM_STATE:
            flat = np.concatenate([state[p].ravel() for p in TRAINABLE])
            assert tensor.init.dtype == flat.dtype and tensor.init.shape == flat.shape and not tensor.init.any()
    assert result.new_state[SCHEDULE_LR].init.tolist() == [0.1 if isinstance(optimizer, optim.SGD) else 0.01]
    assert result.new_state[STEP_COUNTER].init == 0 and result.new_state[EPOCH].init == 0
    meta = {p: {TRAINABLE_KEY: True} for p in TRAINABLE} | {p: {TRAINABLE_KEY: False} for p in FROZEN}
    meta |= {n: {} for n in result.new_state} | {grad_name(p): {PARAM_KEY: p} for p in TRAINABLE}
    meta |= {optim_pack_slot_name(s, 0, 0): {PACKED_KEY: TRAINABLE, SLOT_KEY: s} for s in slots}
    if steps > 1:
        meta |= {accumulator_name(p): {PARAM_KEY: p} for p in TRAINABLE}
    assert result.meta == meta


def test_graph_inputs_and_outputs(Captured):
    captured, result = rewrite(Captured, clip=1.0, steps=2)
    train_inputs, train_outputs = io(result.graphs[GraphName.TRAIN_STEP])
    captured_inputs = io(captured.train)[0]
    assert train_inputs[: len(captured_inputs)] == captured_inputs
    assert set(train_inputs) == set(captured_inputs) | set(result.new_state) - {SCHEDULE_LR}
    assert train_outputs[0] == LOSS and train_outputs[-1] == UPDATE_APPLIED
    assert not any(name.startswith(grad_name("")) for name in train_outputs), "the optimizer consumed the gradients"
    fed = {state_of_next(n) for n in train_outputs} - {None}
    assert fed == set(train_inputs) - set(DATA + TARGETS + FROZEN) - {"offset", EPOCH}
    assert io(result.graphs[GraphName.SCHEDULER_STEP]) == (
        [EPOCH, SCHEDULE_LR],
        [next_name(EPOCH), next_name(SCHEDULE_LR)],
    )
    assert io(result.graphs[GraphName.EVAL]) == io(captured.eval)


def test_capture_is_left_unchanged(Captured):
    captured = Captured(**captured_fields())
    train_bytes = ir.to_proto(captured.train).SerializeToString()
    eval_bytes = ir.to_proto(captured.eval).SerializeToString()
    fields = {k: copy.deepcopy(v) for k, v in vars(captured).items() if k not in ("train", "eval")}
    rewrite_training(captured, optim.Adam(), lr_scheduler.ReduceLROnPlateau(), 1.0, 3)
    assert ir.to_proto(captured.train).SerializeToString() == train_bytes
    assert ir.to_proto(captured.eval).SerializeToString() == eval_bytes
    for key, value in fields.items():
        if key == "state":
            assert list(captured.state) == list(value)
            for name, array in value.items():
                assert captured.state[name].tobytes() == array.tobytes()
        else:
            assert getattr(captured, key) == value, key


def test_each_graph_declares_its_lowest_versions(Captured):
    captured, result = rewrite(Captured, clip=1.0, steps=2)
    for model in result.graphs.values():
        opset = lowest_opset(model)
        assert model.opset_imports[""] == model.graph.opset_imports[""] == opset
        assert model.ir_version == lowest_ir_version(model, opset)
        check_types(model)
    restamped = declare_lowest_versions(ir.from_proto(ir.to_proto(captured.eval)))
    eval_bytes = ir.to_proto(result.graphs[GraphName.EVAL]).SerializeToString()
    assert eval_bytes == ir.to_proto(restamped).SerializeToString(), "eval is the capture's, re-stamped"


def test_state_outputs_have_the_type_of_the_state_they_feed_and_pass_the_onnx_checker(Captured):
    """A rewritten graph must be valid ONNX: onnx.checker requires a shape on every main-graph output.

    The toy capture declares every output's shape, like torch.onnx's graphs. The passes name
    new state outputs (``w.next``, ``optim.exp_avg.w.next``, ``counter.step.next``,
    ``schedule.lr.next``, ...) but leave their shapes unset, so train_step and scheduler_step
    fail ``onnx.checker.check_model`` (onnxruntime does not mind).
    """
    _, result = rewrite(Captured, clip=1.0, steps=2)
    for name, model in result.graphs.items():
        inputs = {v.name: v for v in model.graph.inputs}
        untyped = [
            v.name
            for v in model.graph.outputs
            if state_of_next(v.name) in inputs and (v.shape is None or v.dtype != inputs[state_of_next(v.name)].dtype)
        ]
        assert not untyped, f"{name}: state outputs without the shape of their input: {untyped}"
        mismatched = [
            v.name
            for v in model.graph.outputs
            if state_of_next(v.name) in inputs and list(v.shape) != list(inputs[state_of_next(v.name)].shape)
        ]
        assert not mismatched, f"{name}: state outputs whose shape differs from their input's: {mismatched}"
        onnx.checker.check_model(ir.to_proto(model), full_check=True)


def test_accumulation_comes_before_clipping(Captured):
    """torch clips the accumulated .grad: the factor comes from the norm of the sum, not of each micro-batch."""
    lr, max_norm, steps = 0.1, 0.3, 2
    _, result = rewrite(Captured, optim.SGD(lr=lr), lr_scheduler.NoSchedule(), clip=max_norm, steps=steps)
    run, plain = Runner(result.graphs[GraphName.TRAIN_STEP]), Runner(train_model())
    state = initial_state() | {n: t.init for n, t in result.new_state.items()}
    batches = [batch(10), batch(11)]
    grads = [plain(state | b) for b in batches]  # the parameters do not move between micro-batches
    first = run(state | batches[0])
    assert first[UPDATE_APPLIED]
    for p in TRAINABLE:
        assert first[next_name(p)].tobytes() == state[p].tobytes(), "no update on the first micro-batch"
    state = advance(state, first)
    second = run(state | batches[1])

    def clip(gs):
        total = np.sqrt(sum(np.sum(np.square(g, dtype=np.float64)) for g in gs.values()))
        return {p: g * min(max_norm / (total + 1e-6), 1.0) for p, g in gs.items()}

    summed = {p: sum(g[grad_name(p)].astype(np.float64) / steps for g in grads) for p in TRAINABLE}
    expected = {p: state[p] - lr * g for p, g in clip(summed).items()}
    clipped_each = [clip({p: g[grad_name(p)].astype(np.float64) / steps for p in TRAINABLE}) for g in grads]
    other_order = {p: state[p] - lr * sum(c[p] for c in clipped_each) for p in TRAINABLE}
    for p in TRAINABLE:
        np.testing.assert_allclose(second[next_name(p)], expected[p], rtol=1e-6)
        assert not np.allclose(other_order[p], expected[p], rtol=1e-4), "the batches must tell the orders apart"
    assert second[next_name(STEP_COUNTER)] == 1 and second[next_name(MICRO_STEP)] == 2
    # and in the graph: the clip reads the accumulator's sums
    graph = result.graphs[GraphName.TRAIN_STEP].graph
    squares = [n for n in graph if n.op_type == "ReduceSumSquare" and n.name.startswith("clip_grad_norm/")]
    per_gradient = [n.inputs[0].producer() for n in squares if n.inputs[0].producer().op_type != "Concat"]
    assert len(per_gradient) == len(TRAINABLE)
    assert all(node.op_type == "Add" and node.name.startswith("accumulate/") for node in per_gradient)


def test_training_matches_numpy(Captured):
    """SGD with momentum, StepLR, clipping and k=2 over six calls and three epochs, against numpy."""
    lr, momentum, max_norm, steps = 0.1, 0.9, 0.4, 2
    schedule = lr_scheduler.StepLR(step_size=1, gamma=0.5)
    optimizer = optim.SGD(lr=lr, momentum=momentum)
    _, result = rewrite(Captured, optimizer, schedule, clip=max_norm, steps=steps)
    run, plain = Runner(result.graphs[GraphName.TRAIN_STEP]), Runner(train_model())
    scheduler = Runner(result.graphs[GraphName.SCHEDULER_STEP])
    state = initial_state() | {n: t.init for n, t in result.new_state.items()}
    ref = {p: state[p].astype(np.float64) for p in TRAINABLE}
    buf, acc, updates = {}, {p: 0.0 for p in TRAINABLE}, 0
    for call in range(6):
        epoch = call // steps
        feeds = state | batch(20 + call)
        grads = plain(feeds)
        out = run(feeds)
        for p in TRAINABLE:
            acc[p] = acc[p] + grads[grad_name(p)].astype(np.float64) / steps
        if (call + 1) % steps == 0:
            total = np.sqrt(sum(np.sum(np.square(acc[p])) for p in TRAINABLE))
            coef = min(max_norm / (total + 1e-6), 1.0)
            for p in TRAINABLE:
                g = acc[p] * coef
                buf[p] = g if updates == 0 else momentum * buf[p] + g
                ref[p] = ref[p] - lr * 0.5**epoch * buf[p]
            acc, updates = {p: 0.0 for p in TRAINABLE}, updates + 1
        for p in TRAINABLE:
            np.testing.assert_allclose(out[next_name(p)], ref[p], rtol=1e-5, atol=1e-7, err_msg=f"{p}, call {call}")
        assert out[next_name(STEP_COUNTER)] == updates
        state = advance(state, out)
        if (call + 1) % steps == 0:
            state = advance(state, scheduler(state))
            assert state[EPOCH] == epoch + 1
            assert state[SCHEDULE_LR].tolist() == [lr * 0.5 ** (epoch + 1)]


def test_a_non_finite_micro_batch_keeps_the_accumulators(Captured):
    """The guard comes last: it keeps the gated state and the accumulation state alike."""
    _, result = rewrite(Captured, optim.Adam(), lr_scheduler.NoSchedule(), clip=1.0, steps=3)
    run = Runner(result.graphs[GraphName.TRAIN_STEP])
    state = initial_state() | {n: t.init for n, t in result.new_state.items()}
    state = advance(state, run(state | batch(1)))
    assert state[MICRO_STEP] == 1 and state[accumulator_name("w")].any()
    out = run(state | batch(2) | {"target": np.full(4, np.nan, np.float32)})
    assert not out[UPDATE_APPLIED]
    kept = [n for n in out if state_of_next(n) is not None]
    assert {state_of_next(n) for n in kept} >= {MICRO_STEP, STEP_COUNTER} | {accumulator_name(p) for p in TRAINABLE}
    for name in kept:
        assert out[name].tobytes() == state[state_of_next(name)].tobytes(), name


def test_the_rewrite_layer_does_not_import_torch():
    code = (
        "import sys, optgraph.rewrite.pipeline, optgraph.artifact.names, optgraph.graph.builder; "
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("steps", [1, 2], ids=["update-every-call", "accumulate-2"])
def test_grad_step_then_update_step_is_the_train_step(Captured, steps):
    """The split graphs, run as one rank runs them (update_step on updating calls only), give train_step's state."""
    _, result = rewrite(Captured, optim.Adam(lr=0.01), lr_scheduler.StepLR(1), clip=0.3, steps=steps)
    train, grad, update = (
        Runner(result.graphs[n]) for n in (GraphName.TRAIN_STEP, GraphName.GRAD_STEP, GraphName.UPDATE_STEP)
    )
    fused = split = initial_state() | {n: t.init for n, t in result.new_state.items()}
    assert {v.name for v in result.graphs[GraphName.UPDATE_STEP].graph.inputs} >= {grad_name(p) for p in TRAINABLE}
    for call in range(6):
        feeds = batch(40 + call)
        expected = train(fused | feeds)
        fused = advance(fused, expected)
        got = grad(split | feeds)
        assert got[FINITE] and got[LOSS] == expected[LOSS]
        if (call + 1) % steps == 0:
            updated = update(split | {grad_name(p): got[grad_name(p)] for p in TRAINABLE})
            assert updated[UPDATE_APPLIED]
            got |= updated
        split = advance(split, got)
        for name, value in fused.items():
            assert split[name].tobytes() == value.tobytes(), f"{name} after call {call}"


def test_the_split_graphs_take_their_names_from_the_contract(Captured):
    _, result = rewrite(Captured, clip=1.0, steps=2)
    grad_inputs, grad_outputs = io(result.graphs[GraphName.GRAD_STEP])
    update_inputs, update_outputs = io(result.graphs[GraphName.UPDATE_STEP])
    gradients = [grad_name(p) for p in TRAINABLE]
    assert [n for n in grad_outputs if n in gradients] == gradients and grad_outputs[-1] == FINITE
    assert update_inputs[: len(gradients)] == gradients and update_outputs[-1] == UPDATE_APPLIED
    assert update_inputs[len(gradients) : len(gradients) + len(TRAINABLE)] == TRAINABLE
    assert result.in_place[GraphName.GRAD_STEP] == frozenset(), "kept only once the ranks agree"
    assert {next_name(p) for p in TRAINABLE} <= result.in_place[GraphName.UPDATE_STEP]
    for model in (result.graphs[GraphName.GRAD_STEP], result.graphs[GraphName.UPDATE_STEP]):
        names = [v.name for node in model.graph.all_nodes() for v in node.outputs]
        assert len(names) == len(set(names)), "ONNX values are named once"
    update_values = {v.name for node in result.graphs[GraphName.UPDATE_STEP].graph.all_nodes() for v in node.outputs}
    assert not update_values & set(gradients), "in update_step the gradient names are the inputs'"
