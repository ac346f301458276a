"""accumulate_gradients and gate_on_update on a hand-built captured graph, over several calls."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from optgraph.artifact.names import (
    LOSS,
    MICRO_STEP,
    PARAM_KEY,
    Role,
    accumulator_name,
    grad_name,
    next_name,
    param_of_grad,
    state_of_next,
)
from optgraph.graph.builder import BOOL, GraphBuilder
from optgraph.rewrite.accumulate import Accumulation, accumulate_gradients, gate_on_update
from optgraph.rewrite.state import StateTensor

from .toy_capture import TRAINABLE, Runner, advance, batch, check_types, initial_state, train_model

IS_UPDATE = "is_update"  # the test exposes the pass's bool as an output


def accumulated(steps: int) -> tuple[ir.Model, Accumulation]:
    model = train_model()
    accumulation = accumulate_gradients(model, steps)
    GraphBuilder(model.graph).add_output(accumulation.is_update, IS_UPDATE)
    return model, accumulation


def initial(accumulation: Accumulation) -> dict[str, np.ndarray]:
    return initial_state() | {t.name: t.init for t in accumulation.new_state}


def test_new_state_record():
    model, accumulation = accumulated(3)
    state = initial_state()
    expected = [StateTensor(MICRO_STEP, Role.COUNTER, np.array(0, np.int64))] + [
        StateTensor(accumulator_name(p), Role.GRAD_ACCUMULATOR, np.zeros_like(state[p]), {PARAM_KEY: p})
        for p in TRAINABLE
    ]
    assert [(t.name, t.role, t.meta) for t in accumulation.new_state] == [(t.name, t.role, t.meta) for t in expected]
    for got, want in zip(accumulation.new_state, expected):
        assert got.init.dtype == want.init.dtype and got.init.shape == want.init.shape
        np.testing.assert_array_equal(got.init, want.init)
    assert accumulator_name("w") == "accum.grad.w"  # the documented spelling, built from names
    assert accumulation.is_update.dtype == BOOL and accumulation.is_update.producer().op_type == "Equal"


def test_graph_inputs_and_outputs():
    model = train_model()
    inputs_before = [v.name for v in model.graph.inputs]
    outputs_before = [v.name for v in model.graph.outputs]
    accumulation = accumulate_gradients(model, 3)
    graph = model.graph
    added = [t.name for t in accumulation.new_state]
    assert [v.name for v in graph.inputs] == inputs_before + added
    assert [v.name for v in graph.outputs] == outputs_before + [next_name(n) for n in added[1:]] + [
        next_name(MICRO_STEP)
    ]
    inputs = {v.name: v for v in graph.inputs}
    for t in accumulation.new_state:
        assert inputs[t.name].dtype == ir.DataType(ir.tensor(t.init).dtype)
        assert list(inputs[t.name].shape) == list(t.init.shape)
    for value in graph.outputs:
        param = param_of_grad(value.name)
        if param is not None:  # the public gradient is now the running sum
            assert value.producer().op_type == "Add" and value.producer().name.startswith("accumulate/")
            assert inputs[accumulator_name(param)] in value.producer().inputs
    check_types(model)


@pytest.mark.parametrize("steps", [2, 3])
def test_sums_of_g_over_k_and_restart_every_kth_call(steps):
    model, accumulation = accumulated(steps)
    plain, run = Runner(train_model()), Runner(model)
    state = initial(accumulation)
    sums = {p: np.zeros_like(state[p]) for p in TRAINABLE}
    for call in range(1, 3 * steps + 2):
        feeds = state | batch(call)
        micro = plain(feeds)
        out = run(feeds)
        assert bool(out[IS_UPDATE]) == (call % steps == 0), f"call {call}"
        assert out[next_name(MICRO_STEP)] == call
        for p in TRAINABLE:
            # torch: (loss / k).backward() adds g / k into .grad; the pass adds in the same float32 order
            sums[p] = sums[p] + micro[grad_name(p)] / np.float32(steps)
            np.testing.assert_array_equal(out[grad_name(p)], sums[p])
            restarted = out[next_name(accumulator_name(p))]
            if call % steps == 0:
                np.testing.assert_array_equal(restarted, np.zeros_like(sums[p]))
                sums[p] = np.zeros_like(sums[p])
            else:
                np.testing.assert_array_equal(restarted, sums[p])
        for name in [LOSS, next_name("bn.running_mean"), next_name("bn.num_batches_tracked")]:
            assert out[name].tobytes() == micro[name].tobytes(), "the forward is untouched"
        state = advance(state, out)


def test_sum_of_k_micro_batches_is_the_gradient_of_their_mean_loss():
    """k equal-sized micro-batches accumulate to the gradient of the whole batch (what k is for)."""
    steps, rows = 3, 4
    model, accumulation = accumulated(steps)
    run = Runner(model)
    state = initial(accumulation)
    whole = {k: np.concatenate([batch(i, rows)[k] for i in range(steps)]) for k in ("x", "target")}
    for i in range(steps):
        out = run(state | batch(i, rows))
        state = advance(state, out)
    full = Runner(train_model())(initial_state() | whole)
    for p in TRAINABLE:
        np.testing.assert_allclose(out[grad_name(p)], full[grad_name(p)], rtol=1e-5, atol=1e-7)


def with_sgd(model: ir.Model, lr: float) -> None:
    """A minimal optimizer after accumulation: ``p.next = p - lr * grad`` (the gradient stays an output too)."""
    graph = model.graph
    b = GraphBuilder(graph)
    inputs = {v.name: v for v in graph.inputs}
    for value in list(graph.outputs):
        param = param_of_grad(value.name)
        if param is not None:
            b.add_output(b.op("Sub", inputs[param], b.op("Mul", value, b.const(lr))), next_name(param))


def test_gate_on_update_keeps_gated_state_between_updates():
    steps, lr = 3, 0.1
    model, accumulation = accumulated(steps)
    with_sgd(model, lr)
    gated = set(TRAINABLE) | {"bn.num_batches_tracked", "not.an.output"}
    gate_on_update(model, accumulation.is_update, gated)
    check_types(model)
    run = Runner(model)
    state = initial(accumulation)
    for call in range(1, 2 * steps + 2):
        out = run(state | batch(call))
        update = call % steps == 0
        assert bool(out[IS_UPDATE]) == update
        for p in TRAINABLE:
            if update:
                expected = state[p] - out[grad_name(p)] * np.float32(lr)
                np.testing.assert_array_equal(out[next_name(p)], expected)
                assert not np.array_equal(out[next_name(p)], state[p])
            else:
                assert out[next_name(p)].tobytes() == state[p].tobytes(), f"{p} moved on call {call}"
        count = out[next_name("bn.num_batches_tracked")]
        assert count == state["bn.num_batches_tracked"] + (1 if update else 0)
        # ungated state moves on every call: the running statistics and the accumulators
        assert not np.array_equal(out[next_name("bn.running_mean")], state["bn.running_mean"])
        assert out[next_name(MICRO_STEP)] == call
        state = advance(state, out)
    assert state["bn.num_batches_tracked"] == 2


def test_gate_on_update_structure():
    model, accumulation = accumulated(2)
    with_sgd(model, 0.1)
    names = [v.name for v in model.graph.outputs]
    ungated = {v.name: v for v in model.graph.outputs if v.name not in {next_name(p) for p in TRAINABLE}}
    gate_on_update(model, accumulation.is_update, set(TRAINABLE))
    graph = model.graph
    assert [v.name for v in graph.outputs] == names, "names and order are kept"
    inputs = {v.name: v for v in graph.inputs}
    for value in graph.outputs:
        if value.name in ungated:
            assert value is ungated[value.name]
            continue
        node = value.producer()
        assert node.op_type == "Where" and node.name.startswith("accumulate/gate/")
        param = state_of_next(value.name)
        assert node.inputs[0] is accumulation.is_update and node.inputs[2] is inputs[param]
        assert node.inputs[1].name == f"{value.name}.ungated"
    assert len(graph.inputs) == len(inputs), "gating adds no input"
