"""Every update rule alone, fast: a tiny graph (param, grad, state in; new param, new state out) run in
onnxruntime for a few steps beside torch's own optimizer on one tensor, or a NumPy formula where torch has none.

The rule classes come from :mod:`optgraph.optim.rules` itself, so a new rule without a case here fails.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch

from optgraph.graph.builder import DOUBLE, GraphBuilder, ir_dtype
from optgraph.optim import rules as R

RULES = sorted(
    (
        cls
        for _, cls in inspect.getmembers(R, inspect.isclass)
        if issubclass(cls, R.UpdateRule) and cls is not R.UpdateRule and cls.__module__ == R.__name__
    ),
    key=lambda cls: cls.__name__,
)
LR = 0.05


class ChainGraph:
    """One parameter's update chain as a standalone onnxruntime session; it keeps the state between steps."""

    def __init__(self, chain: Sequence[R.UpdateRule], shape: tuple[int, ...], dtype, cycled: bool) -> None:
        graph = ir.Graph([], [], nodes=[], opset_imports={"": 18})
        b = GraphBuilder(graph)
        param = b.add_input("param", ir_dtype(dtype), shape)
        grad = b.add_input("grad", ir_dtype(dtype), shape)
        step = b.add_input("step", DOUBLE, [])
        lr = b.add_input("lr", DOUBLE, [])
        momentum = b.add_input("momentum", DOUBLE, []) if cycled else None
        self.state = R.chain_slots(chain, R.ParamInfo(shape, np.dtype(dtype)))
        inputs = {name: b.add_input(f"state.{name}", ir_dtype(v.dtype), v.shape) for name, v in self.state.items()}
        ctx = R.UpdateContext(b, param, step, b.op("Equal", step, b.double(1.0)), lr, momentum)
        new_param, new_state = R.emit_chain(chain, ctx, grad, inputs)
        assert set(new_state) == set(self.state), "a rule must give the next value of every slot it declares"
        b.add_output(new_param, "new_param")
        for name, value in new_state.items():
            b.add_output(value, f"new.{name}")
        proto = ir.to_proto(ir.Model(graph, ir_version=8)).SerializeToString()
        self.session = ort.InferenceSession(proto, providers=["CPUExecutionProvider"])
        self.cycled = cycled

    def __call__(self, param, grad, step, lr, momentum=None):
        feeds = {"param": param, "grad": grad, "step": np.array(step, np.float64), "lr": np.array(lr, np.float64)}
        if self.cycled:
            feeds["momentum"] = np.array(momentum, np.float64)
        feeds.update({f"state.{name}": value for name, value in self.state.items()})
        outputs = dict(zip([o.name for o in self.session.get_outputs()], self.session.run(None, feeds)))
        self.state = {name: outputs[f"new.{name}"] for name in self.state}
        return outputs["new_param"], dict(self.state)


class TorchStep:
    """``torch.optim.<name>`` on one tensor: the reference step, and its state by slot name (``step`` aside)."""

    def __init__(self, name: str, **options) -> None:
        self.name, self.options = name, options
        self.param = self.opt = None

    def __call__(self, param, grad, step, lr, momentum=None):
        if self.opt is None:
            self.param = torch.nn.Parameter(torch.from_numpy(param.copy()))
            self.opt = getattr(torch.optim, self.name)([self.param], lr=lr, **self.options)
        group = self.opt.param_groups[0]
        if momentum is not None:  # what OneCycleLR does to the group
            if "betas" in group:
                group["betas"] = (momentum, group["betas"][1])
            else:
                group["momentum"] = momentum
        self.param.grad = torch.from_numpy(grad.copy())
        self.opt.step()
        state = {k: v.detach().numpy().copy() for k, v in self.opt.state[self.param].items() if k != "step"}
        return self.param.detach().numpy().copy(), state


class LionStep:
    """Lion (Chen et al. 2023, Algorithm 2) in float32 NumPy; torch has none."""

    def __init__(self, beta1: float, beta2: float) -> None:
        self.beta1, self.beta2, self.m = beta1, beta2, None

    def __call__(self, param, grad, step, lr, momentum=None):
        f = param.dtype.type
        beta1 = self.beta1 if momentum is None else momentum
        m = np.zeros_like(param) if self.m is None else self.m
        c = m * f(beta1) + grad * f(1 - beta1)
        self.m = m * f(self.beta2) + grad * f(1 - self.beta2)
        return param + np.sign(c) * f(-lr), {"exp_avg": self.m}


@dataclass
class Case:
    """A chain of rules, the reference that should agree with it, and how to drive both."""

    id: str
    chain: Callable[[], list[R.UpdateRule]]
    reference: Callable[[], Callable]
    shape: tuple[int, ...] = (3, 4)
    dtype: type = np.float32
    steps: int = 6
    cycled: Sequence[float] | None = None
    rtol: float = 1e-5
    atol: float = 1e-6
    grad_scale: float = 1.0


def sgd(*rules):
    return lambda: [*rules, R.ScaleByLearningRate()]


CASES = [
    Case("scale-by-learning-rate", sgd(), lambda: TorchStep("SGD")),
    Case("maximize", sgd(R.Maximize()), lambda: TorchStep("SGD", maximize=True)),
    Case("add-weight-decay", sgd(R.AddWeightDecay(0.1)), lambda: TorchStep("SGD", weight_decay=0.1)),
    Case(
        "trace-momentum-dampening",
        sgd(R.TraceMomentum(0.9, 0.3, False)),
        lambda: TorchStep("SGD", momentum=0.9, dampening=0.3),
    ),
    Case(
        "trace-momentum-nesterov",
        sgd(R.TraceMomentum(0.9, 0, True)),
        lambda: TorchStep("SGD", momentum=0.9, nesterov=True),
    ),
    Case(
        "trace-momentum-cycled",
        sgd(R.TraceMomentum(0.9, 0, False)),
        lambda: TorchStep("SGD", momentum=0.9),
        cycled=[0.95, 0.9, 0.85, 0.8, 0.85, 0.9],
    ),
    Case(
        "scale-by-adam-amsgrad",
        sgd(R.ScaleByAdam(0.8, 0.99, 1e-6, True)),
        lambda: TorchStep("Adam", betas=(0.8, 0.99), eps=1e-6, amsgrad=True),
    ),
    Case(
        "scale-by-adam-cycled",
        sgd(R.ScaleByAdam(0.9, 0.999, 1e-8, False)),
        lambda: TorchStep("Adam"),
        cycled=[0.95, 0.9, 0.85, 0.8, 0.85, 0.9],
    ),
    Case(
        "decay-parameter",
        sgd(R.ScaleByAdam(0.9, 0.999, 1e-8, False), R.DecayParameter(0.1)),
        lambda: TorchStep("AdamW", weight_decay=0.1),
    ),
    Case(
        "scale-by-adagrad",
        sgd(R.ScaleByAdagrad(1e-6, 0.1)),
        lambda: TorchStep("Adagrad", eps=1e-6, initial_accumulator_value=0.1),
    ),
    Case(
        "scale-by-lr-decay",
        sgd(R.ScaleByAdagrad(1e-10, 0.0), R.ScaleByLrDecay(0.1)),
        lambda: TorchStep("Adagrad", lr_decay=0.1),
    ),
    Case(
        "scale-by-rms-centered-momentum",
        sgd(R.ScaleByRms(0.9, 1e-6, True, 0.5)),
        lambda: TorchStep("RMSprop", alpha=0.9, eps=1e-6, centered=True, momentum=0.5),
    ),
    Case(
        "scale-by-adamax",
        sgd(R.ScaleByAdamax(0.8, 0.99, 1e-6)),
        lambda: TorchStep("Adamax", betas=(0.8, 0.99), eps=1e-6),
    ),
    Case("scale-by-adadelta", sgd(R.ScaleByAdadelta(0.8, 1e-5)), lambda: TorchStep("Adadelta", rho=0.8, eps=1e-5)),
    Case(
        "scale-by-nadam",
        sgd(R.ScaleByNadam(0.9, 0.999, 1e-8, 0.01)),
        lambda: TorchStep("NAdam", momentum_decay=0.01),
    ),
    # rho_t passes 5 at step 6 with beta2 = 0.999: both branches
    Case("scale-by-radam", sgd(R.ScaleByRadam(0.9, 0.999, 1e-8)), lambda: TorchStep("RAdam"), steps=9),
    Case(
        "rprop-update",
        lambda: [R.RpropUpdate(0.3, 1.5, 1e-4, 0.1, LR)],
        lambda: TorchStep("Rprop", etas=(0.3, 1.5), step_sizes=(1e-4, 0.1)),
        steps=8,
    ),
    Case(
        "averaged-sgd-update",
        lambda: [R.AveragedSgdUpdate(1e-2, 0.5, 3, LR)],
        lambda: TorchStep("ASGD", lambd=1e-2, alpha=0.5, t0=3),
    ),
    Case("scale-by-lion", sgd(R.ScaleByLion(0.9, 0.99)), lambda: LionStep(0.9, 0.99)),
    Case(
        "scale-by-lion-cycled",
        sgd(R.ScaleByLion(0.9, 0.99)),
        lambda: LionStep(0.9, 0.99),
        cycled=[0.95, 0.9, 0.85, 0.8, 0.85, 0.9],
    ),
    Case(
        "adafactor-matrix",
        lambda: [R.AdafactorUpdate(-0.8, None, 1e-3, 1.0, 0.0)],
        lambda: TorchStep("Adafactor"),
    ),
    Case(
        "adafactor-vector-decay",
        lambda: [R.AdafactorUpdate(-0.8, None, 1e-3, 1.0, 0.1)],
        lambda: TorchStep("Adafactor", weight_decay=0.1),
        shape=(5,),
    ),
    Case(
        "adafactor-batched-eps-d",
        lambda: [R.AdafactorUpdate(-0.5, 1e-6, 1e-2, 1.5, 0.0)],
        lambda: TorchStep("Adafactor", beta2_decay=-0.5, eps=(1e-6, 1e-2), d=1.5),
        shape=(2, 3, 4),
    ),
    Case(
        "adafactor-float64",
        lambda: [R.AdafactorUpdate(-0.8, None, 1e-3, 1.0, 0.1)],
        lambda: TorchStep("Adafactor", weight_decay=0.1),
        dtype=np.float64,
        rtol=1e-12,
        atol=1e-14,
    ),
    Case(
        "adafactor-small-grads",  # eps1 clamps the mean of row_var
        lambda: [R.AdafactorUpdate(-0.8, None, 1e-3, 1.0, 0.0)],
        lambda: TorchStep("Adafactor"),
        grad_scale=1e-4,
    ),
    Case(
        "adafactor-tiny-grads",  # eps1 ** 2 clamps the variance estimate
        lambda: [R.AdafactorUpdate(-0.8, None, 1e-3, 1.0, 0.0)],
        lambda: TorchStep("Adafactor"),
        grad_scale=1e-7,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rule_matches_reference(case):
    rng = np.random.default_rng(0)
    param = rng.standard_normal(case.shape).astype(case.dtype)
    ours_param, theirs_param = param, param
    graph, reference = ChainGraph(case.chain(), case.shape, case.dtype, case.cycled is not None), case.reference()
    for step in range(1, case.steps + 1):
        # an occasional exact zero and sign flips exercise Rprop's and Lion's sign logic
        grad = (rng.standard_normal(case.shape) * case.grad_scale).astype(case.dtype)
        grad.flat[0] = 0.0
        momentum = None if case.cycled is None else case.cycled[step - 1]
        ours_param, ours = graph(ours_param, grad, step, LR, momentum)
        theirs_param, theirs = reference(theirs_param, grad, step, LR, momentum)
        assert ours_param.dtype == case.dtype
        np.testing.assert_allclose(ours_param, theirs_param, case.rtol, case.atol, err_msg=f"param at step {step}")
        assert set(ours) == set(theirs), f"slots at step {step}"
        for name, value in theirs.items():
            assert ours[name].shape == value.shape, f"{name} shape"
            np.testing.assert_allclose(ours[name], value, case.rtol, case.atol, err_msg=f"{name} at step {step}")


def test_every_rule_has_a_case():
    """A new rule in rules.py needs a case above (it may share a chain with others)."""
    covered = {type(rule) for case in CASES for rule in case.chain()}
    missing = [cls.__name__ for cls in RULES if cls not in covered]
    assert not missing, f"rules without a case in tests/optim/test_rules.py: {missing}"


def test_two_sided_lerp_takes_torchs_branch():
    """Weights below 0.5 interpolate from the start, others from the end, as torch's lerp kernel does."""
    start = np.array([1.0, -3.0, 0.1, 7.0], np.float32)
    end = np.array([2.0, 5.0, -0.3, 7.5], np.float32)
    graph = ir.Graph([], [], nodes=[], opset_imports={"": 18})
    b = GraphBuilder(graph)
    inputs = [b.add_input(n, ir_dtype(np.float32), [4]) for n in ("start", "end")]
    weight = b.add_input("weight", ir_dtype(np.float32), [])
    ctx = R.UpdateContext(b, inputs[0], b.double(1.0), b.const(True, ir.DataType.BOOL), b.double(0.1))
    b.add_output(R.two_sided_lerp(ctx, *inputs, weight), "out")
    proto = ir.to_proto(ir.Model(graph, ir_version=8)).SerializeToString()
    session = ort.InferenceSession(proto, providers=["CPUExecutionProvider"])
    for w in (0.0, 0.2, 0.49, 0.5, 0.5743, 0.9, 1.0):
        (ours,) = session.run(None, {"start": start, "end": end, "weight": np.array(w, np.float32)})
        f = np.float32
        expected = start + f(w) * (end - start) if abs(w) < 0.5 else end - (end - start) * (f(1) - f(w))
        np.testing.assert_array_equal(ours, expected, err_msg=f"weight {w}")
        theirs = torch.lerp(torch.from_numpy(start), torch.from_numpy(end), w).numpy()
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, err_msg="torch fuses a multiply-add: one rounding apart")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_an_element_wise_chain_updates_a_concatenation_as_its_parts(case):
    """What ``element_wise`` promises: on two tensors packed end to end, the chain computes each one's numbers."""
    chain = case.chain()
    if not all(rule.element_wise for rule in chain):
        assert not R.packable(chain, R.ParamInfo(case.shape, np.dtype(case.dtype)))
        pytest.skip("not element-wise (Adafactor): it keeps one update per parameter")
    shapes = [case.shape, (5,)]
    sizes = [int(np.prod(s)) for s in shapes]
    assert R.packable(chain, R.ParamInfo((sum(sizes),), np.dtype(case.dtype)))
    cycled = case.cycled is not None
    parts = [ChainGraph(chain, shape, case.dtype, cycled) for shape in shapes]
    packed = ChainGraph(chain, (sum(sizes),), case.dtype, cycled)
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(shape).astype(case.dtype) for shape in shapes]
    flat = np.concatenate([p.ravel() for p in params])
    for step in range(1, case.steps + 1):
        grads = [(rng.standard_normal(shape) * case.grad_scale).astype(case.dtype) for shape in shapes]
        grads[0].flat[0] = 0.0
        momentum = None if case.cycled is None else case.cycled[step - 1]
        results = [graph(p, g, step, LR, momentum) for graph, p, g in zip(parts, params, grads)]
        params = [r[0] for r in results]
        flat, state = packed(flat, np.concatenate([g.ravel() for g in grads]), step, LR, momentum)
        np.testing.assert_array_equal(flat, np.concatenate([p.ravel() for p in params]), err_msg=f"step {step}")
        for name, value in state.items():
            if value.ndim == 0:  # a scalar slot: the same for every part
                assert all(r[1][name] == value for r in results), f"{name} at step {step}"
            else:
                expected = np.concatenate([r[1][name].ravel() for r in results])
                np.testing.assert_array_equal(value, expected, err_msg=f"{name} at step {step}")


def test_a_slot_of_its_own_shape_keeps_a_rule_out_of_packs():
    class RowSums(R.UpdateRule):  # claims element-wise, but keeps a slot per row
        def slots(self, param):
            return {"rows": R.Slot(0.0, shape=(param.shape[0], 1))}

    class Scalar(R.UpdateRule):
        def slots(self, param):
            return {"count": R.Slot.scalar(0.0), "buffer": 0.0, "copy": R.Slot(1.0, dtype="float64")}

    info = R.ParamInfo((3, 4), np.dtype(np.float32))
    assert not R.packable([R.ScaleByLearningRate(), RowSums()], info)
    assert R.packable([Scalar(), R.ScaleByLearningRate()], info)
