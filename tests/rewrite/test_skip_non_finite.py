"""skip_non_finite on a hand-built train step: a non-finite loss, gradient or new float buffer keeps every state bit."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from optgraph import lr_scheduler, optim
from optgraph.artifact.names import FINITE, LOSS, STEP_COUNTER, UPDATE_APPLIED, grad_name, next_name, state_of_next
from optgraph.graph.builder import BOOL
from optgraph.rewrite.attach_optimizer import attach_optimizer
from optgraph.rewrite.skip_non_finite import report_finite, skip_non_finite

from .toy_capture import TRAINABLE, UPDATED_BUFFERS, Runner, advance, batch, check_types, initial_state, train_model


def train_step(buffers=UPDATED_BUFFERS, guard=True):
    """The toy capture with SGD with momentum attached, guarded unless ``guard`` is false."""
    model = train_model()
    optimizer = optim.SGD(lr=0.1, momentum=0.9)
    record = attach_optimizer(model, optimizer, lr_scheduler.NoSchedule(), optimizer.resolve(TRAINABLE))
    if guard:
        skip_non_finite(model, record.gradients.values(), buffers)
    state = initial_state() | {t.name: t.init for t in record.new_state}
    return model, state


def started_state() -> dict[str, np.ndarray]:
    """The state after two finite steps: counters and momentum buffers are not at their initial values."""
    model, state = train_step()
    run = Runner(model)
    for call in range(2):
        state = advance(state, run(state | batch(call)))
    assert state[STEP_COUNTER] == 2
    return state


def gradient_overflow(state):
    """A finite loss and finite buffers, but ``grad.w[1] = 2 * mean(x[:, 1] * residual)`` overflows float32."""
    state = dict(state)
    state["w"] = np.array([state["w"][0], 0.0], np.float32)  # x[:, 1] takes no part in the forward
    feeds = batch(3)
    feeds["x"][:, 1] = 3e38
    feeds["target"] = np.full_like(feeds["target"], -10.0)  # residuals above 1: x * residual overflows
    return state, feeds


NON_FINITE = {
    "nan-input": lambda s: (s, batch(3) | {"x": np.full((4, 2), np.nan, np.float32)}),
    "inf-target": lambda s: (s, batch(3) | {"target": np.array([0, np.inf, 0, 0], np.float32)}),
    "gradient-only": gradient_overflow,
    "buffer-only": lambda s: (s, batch(3, rows=1)),  # unbiased running_var of one row: 0 / 0
}


@pytest.mark.parametrize("case", NON_FINITE)
def test_non_finite_keeps_every_state_bit_identical(case):
    state, feeds = NON_FINITE[case](started_state())
    plain = Runner(train_step(guard=False)[0])(state | feeds)
    raw = Runner(train_model())(state | feeds)
    sources = [raw[LOSS]] + [raw[grad_name(p)] for p in TRAINABLE] + [raw[next_name(b)] for b in UPDATED_BUFFERS]
    assert not all(np.isfinite(s).all() for s in sources), "the case must produce a non-finite value"
    if case == "gradient-only":
        assert np.isfinite(raw[LOSS]) and all(np.isfinite(raw[next_name(b)]).all() for b in UPDATED_BUFFERS)
    if case == "buffer-only":
        assert np.isfinite(raw[LOSS]) and all(np.isfinite(raw[grad_name(p)]).all() for p in TRAINABLE)
        assert np.isnan(raw[next_name("bn.running_var")]).all()
    model, _ = train_step()
    out = Runner(model)(state | feeds)
    assert out[UPDATE_APPLIED].dtype == np.bool_ and out[UPDATE_APPLIED].shape == ()
    assert not out[UPDATE_APPLIED]
    kept = [name for name in out if state_of_next(name) is not None]
    assert len(kept) == len(plain) - 1, "every state output of the unguarded step is guarded"
    for name in kept:
        current = state[state_of_next(name)]
        assert out[name].dtype == current.dtype and out[name].tobytes() == current.tobytes(), name
    np.testing.assert_array_equal(out[LOSS], plain[LOSS])  # the loss is reported as it is


def test_finite_step_is_applied_unchanged():
    state = started_state()
    for feeds in [batch(5), batch(6, rows=2), gradient_overflow(state)[1] | {"x": batch(6)["x"]}]:
        plain = Runner(train_step(guard=False)[0])(state | feeds)
        out = Runner(train_step()[0])(state | feeds)
        assert out.pop(UPDATE_APPLIED) == np.True_
        assert list(out) == list(plain), "the guard adds one output, last"
        for name, value in plain.items():
            np.testing.assert_array_equal(out[name], value, err_msg=name)


def test_only_the_named_buffers_are_watched():
    """A buffer left out of ``buffers`` does not stop the step (compile passes every buffer the forward updates)."""
    model, _ = train_step(buffers=[b for b in UPDATED_BUFFERS if b != "bn.running_var"])
    out = Runner(model)(started_state() | batch(3, rows=1))
    assert out[UPDATE_APPLIED]
    assert np.isnan(out[next_name("bn.running_var")]).all()


def test_recovers_after_a_skipped_step():
    model, _ = train_step()
    run = Runner(model)
    state = started_state()
    state = advance(state, run(state | NON_FINITE["nan-input"](state)[1]))
    out = run(state | batch(4))
    assert out[UPDATE_APPLIED] and out[next_name(STEP_COUNTER)] == 3


def test_structure():
    model, _ = train_step(guard=False)
    names = [v.name for v in model.graph.outputs]
    state_outputs = [n for n in names if state_of_next(n) is not None]
    model, _ = train_step()
    graph = model.graph
    check_types(model)
    assert [v.name for v in graph.outputs] == names + [UPDATE_APPLIED]
    applied = graph.outputs[-1]
    assert applied.dtype == BOOL and list(applied.shape) == []
    check, guard = [node for node in graph if node.op_type == "If"]
    assert guard.name == "skip_non_finite/If" and check.outputs[0] is guard.inputs[0]
    # a finite step makes one pass over each gradient (its sum); the exact x * 0 check is the else branch's
    sums_were_finite = check.attributes["then_branch"].as_graph()
    exactly = check.attributes["else_branch"].as_graph()
    assert [node.op_type for node in sums_were_finite] == ["Constant"]
    assert not any(node.op_type == "Mul" and node.inputs[0].name.startswith("grad.") for node in graph)
    assert any(node.op_type == "Mul" and node.inputs[0].name.startswith("grad.") for node in exactly)
    assert [v.name for v in guard.outputs] == state_outputs
    assert guard.inputs[0] is applied, "the If branches on the value reported as update_applied"
    outputs = {v.name: v for v in graph.outputs}
    assert outputs[LOSS].producer() is not guard
    then_branch = guard.attributes["then_branch"].as_graph()
    else_branch = guard.attributes["else_branch"].as_graph()
    assert then_branch.name == "apply_update" and else_branch.name == "keep_state"
    assert {node.op_type for node in else_branch} == {"Identity"}
    inputs = {v.name: v for v in graph.inputs}
    assert [node.inputs[0] for node in else_branch] == [inputs[state_of_next(n)] for n in state_outputs]
    # the update lives in the branch only: a skipped step computes none of it
    assert not any(node.name.startswith("optim/") for node in graph)
    assert any(node.name.startswith("optim/") for node in then_branch)
    # every value name stays unique across the graph and its branches (ONNX SSA)
    seen = [v.name for v in graph.inputs]
    for node in ir.traversal.RecursiveGraphIterator(graph):
        seen += [v.name for v in node.outputs]
    assert len(seen) == len(set(seen))


@pytest.mark.parametrize("case", [None, *NON_FINITE])
def test_report_finite_says_what_the_guard_would_do(case):
    """grad_step's report: the same watch as the guard (loss, gradients, new float buffers), and no skipping."""
    model = train_model()
    gradients = [v for v in model.graph.outputs if v.name in {grad_name(p) for p in TRAINABLE}]
    reported = report_finite(model, gradients, UPDATED_BUFFERS)
    assert reported.name == FINITE and reported.dtype == BOOL and reported.shape == ir.Shape([])
    branches = [node.name for node in model.graph if node.op_type == "If"]
    assert len(branches) == 1 and branches[0].startswith("check_finite/check_exactly_If"), "nothing is skipped"
    check_types(model)
    state, feeds = (started_state(), batch(3)) if case is None else NON_FINITE[case](started_state())
    out = Runner(model)(state | feeds)
    guarded = Runner(train_step()[0])(state | feeds)
    assert bool(out[FINITE]) == bool(guarded[UPDATE_APPLIED]) == (case is None)


def _reported(dtype: np.dtype):
    """A graph whose loss is its input and whose one gradient is another input, with report_finite added."""
    loss = ir.Value(name="loss_in", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([]))
    gradient = ir.Value(name="g", type=ir.TensorType(ir.DataType.from_numpy(np.dtype(dtype))), shape=ir.Shape([3]))
    nodes = [ir.node("Identity", [loss], name="l"), ir.node("Identity", [gradient], name="gw")]
    nodes[0].outputs[0].name, nodes[1].outputs[0].name = LOSS, grad_name("w")
    for node, value in zip(nodes, (loss, gradient)):
        node.outputs[0].dtype, node.outputs[0].shape = value.dtype, value.shape
    graph = ir.Graph([loss, gradient], [n.outputs[0] for n in nodes], nodes=nodes, opset_imports={"": 18})
    model = ir.Model(graph, ir_version=9)
    report_finite(model, [nodes[1].outputs[0]])
    return Runner(model)


@pytest.mark.parametrize(
    "dtype, values, finite",
    [
        (np.float32, [1.0, -2.0, 3.0], True),
        (np.float32, [3e38, 3e38, 3e38], True),  # every value finite, their float32 sum is not
        (np.float32, [-3e38, -3e38, 1.0], True),
        (np.float32, [3e38, np.inf, -3e38], False),
        (np.float32, [np.inf, -np.inf, 0.0], False),  # a sum of NaN: caught on the fast path
        (np.float32, [np.nan, 0.0, 0.0], False),
        (np.float16, [60000.0, 60000.0, 0.0], True),  # float16 sums overflow at 65504
        (np.float16, [60000.0, np.inf, 0.0], False),
        (np.float64, [1e308, 1e308, 0.0], True),  # and a float64 sum in float32 beyond 3.4e38
        (np.float64, [1e300, np.nan, 0.0], False),
    ],
)
def test_finite_means_every_value_finite_even_where_their_sum_overflows(dtype, values, finite):
    out = _reported(dtype)({"loss_in": np.array(0.5, np.float32), "g": np.array(values, dtype)})
    assert out[FINITE] == np.bool_(finite)
    if finite:
        out = _reported(dtype)({"loss_in": np.array(np.inf, np.float32), "g": np.array(values, dtype)})
        assert not out[FINITE], "the loss is watched too"
