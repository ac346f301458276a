"""Step-for-step parity with torch.optim: losses, parameters, buffers and optimizer state.

Every optimizer in ``optgraph.optim.__all__`` has cases here: against ``torch.optim.<name>``
(CASES), or, for an optimizer torch lacks, against a NumPy twin of its published algorithm
(TWINS, TWIN_CASES) fed torch's gradients step for step.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from catalog import OPTIMIZERS
from models import assert_close, assert_state_matches, clone, loss_fn, make_batch, make_model
from torch import nn

import optgraph
from optgraph import lr_scheduler, optim

STEPS = 50

# (id, optimizer name, kwargs): each kwargs goes to torch.optim.<name> and optgraph.optim.<name> alike.
CASES = [
    ("sgd", "SGD", dict(lr=0.05)),
    ("sgd-momentum", "SGD", dict(lr=0.05, momentum=0.9)),
    ("sgd-dampening", "SGD", dict(lr=0.05, momentum=0.9, dampening=0.3)),
    ("sgd-nesterov", "SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("sgd-weight-decay", "SGD", dict(lr=0.05, momentum=0.5, weight_decay=0.01)),
    ("sgd-maximize", "SGD", dict(lr=0.002, momentum=0.9, maximize=True)),
    ("adam", "Adam", dict(lr=0.01)),
    ("adam-betas-eps", "Adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6)),
    ("adam-weight-decay", "Adam", dict(lr=0.01, weight_decay=0.1)),
    ("adam-amsgrad", "Adam", dict(lr=0.01, amsgrad=True)),
    ("adam-maximize", "Adam", dict(lr=0.001, maximize=True)),
    ("adamw", "AdamW", dict(lr=0.01)),
    ("adamw-decay-amsgrad", "AdamW", dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    ("adamw-maximize", "AdamW", dict(lr=0.001, maximize=True)),
    ("adagrad", "Adagrad", dict(lr=0.05)),
    ("adagrad-lr-decay", "Adagrad", dict(lr=0.05, lr_decay=0.01)),
    ("adagrad-decay-init-eps", "Adagrad", dict(lr=0.05, weight_decay=0.1, initial_accumulator_value=0.1, eps=1e-6)),
    ("adagrad-maximize", "Adagrad", dict(lr=0.01, maximize=True)),
    ("adam-decoupled", "Adam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
    ("rmsprop", "RMSprop", dict(lr=0.01)),
    ("rmsprop-alpha-eps-decay", "RMSprop", dict(lr=0.01, alpha=0.9, eps=1e-6, weight_decay=0.1)),
    (
        "rmsprop-momentum",
        "RMSprop",
        dict(lr=0.002, momentum=0.5),
    ),  # torch float32 itself drifts from float64 at lr 5e-3, momentum 0.9
    ("rmsprop-centered-momentum-maximize", "RMSprop", dict(lr=0.001, momentum=0.5, centered=True, maximize=True)),
    ("adamax", "Adamax", dict(lr=0.01)),
    ("adamax-betas-decay-maximize", "Adamax", dict(lr=0.002, betas=(0.8, 0.99), weight_decay=0.1, maximize=True)),
    ("adadelta", "Adadelta", dict()),
    ("adadelta-rho-eps-decay", "Adadelta", dict(lr=0.5, rho=0.8, eps=1e-5, weight_decay=0.1)),
    ("adadelta-maximize", "Adadelta", dict(lr=0.1, maximize=True)),
    ("nadam", "NAdam", dict(lr=0.01)),
    ("nadam-momentum-decay-l2", "NAdam", dict(lr=0.01, momentum_decay=0.01, weight_decay=0.1)),
    ("nadam-decoupled-maximize", "NAdam", dict(lr=0.002, weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
    ("radam", "RAdam", dict(lr=0.01)),
    ("radam-l2", "RAdam", dict(lr=0.01, weight_decay=0.1)),
    ("radam-decoupled-maximize", "RAdam", dict(lr=0.002, weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
    ("rprop", "Rprop", dict(lr=0.001)),
    ("rprop-etas-sizes-maximize", "Rprop", dict(lr=0.001, etas=(0.3, 1.5), step_sizes=(1e-4, 0.01), maximize=True)),
    ("asgd", "ASGD", dict(lr=0.05)),
    ("asgd-averaging-decay", "ASGD", dict(lr=0.05, lambd=1e-3, alpha=0.5, t0=10, weight_decay=0.1)),
    ("asgd-maximize", "ASGD", dict(lr=0.01, t0=5, maximize=True)),
    ("adafactor", "Adafactor", dict()),
    ("adafactor-decay-maximize", "Adafactor", dict(lr=0.05, weight_decay=0.1, maximize=True)),
    ("adafactor-beta2-eps-d", "Adafactor", dict(beta2_decay=-0.5, eps=(1e-6, 1e-2), d=1.5)),
    ("adafactor-group", "Adafactor", dict(lr=0.02, param_groups=[{"params": ["*.bias"], "lr": 0.05, "d": 2.0}])),
]
MODELS = [("mlp", "ce"), ("mlp", "mse"), ("cnn", "ce")]


def _torch_groups(optimizer, reference):
    """torch's parameter groups for ``optimizer``'s, and the parameter names in torch's state order."""
    named = {n: p for n, p in reference.named_parameters() if p.requires_grad}
    groups = optimizer.resolve(list(named))
    torch_groups = [{**group.options, "params": [named[n] for n in group.params]} for group in groups]
    return torch_groups, [n for group in groups for n in group.params]


def _torch_lr(torch_opt):
    """torch's learning rate as ``session.lr`` reports it: one number, or one per group."""
    lrs = [group["lr"] for group in torch_opt.param_groups]
    return lrs[0] if len(lrs) == 1 else lrs


def run_parity(kind, loss, name, kwargs, steps=STEPS, schedule=None, scheduler_every=5, batch=8):
    """Train ``optim.<name>(**kwargs)`` beside ``torch.optim.<name>``; ``param_groups`` become torch's groups."""
    model = make_model(kind)
    reference = clone(model)
    gen = torch.Generator().manual_seed(1)
    example = make_batch(kind, batch, gen, loss)
    optimizer = getattr(optim, name)(**kwargs)
    artifact = optgraph.compile(
        model, (example[0],), (example[1],), loss_fn(loss),
        optimizer=optimizer,
        lr_scheduler=None if schedule is None else getattr(lr_scheduler, schedule[0])(**schedule[1]),
    )  # fmt: skip
    session = optgraph.TrainingSession(artifact, providers=["CPUExecutionProvider"])
    if "param_groups" in kwargs:
        params, names = _torch_groups(optimizer, reference)
        kwargs = {k: v for k, v in kwargs.items() if k != "param_groups"}
    else:
        params = [p for p in reference.parameters() if p.requires_grad]
        names = [n for n, p in reference.named_parameters() if p.requires_grad]
    torch_opt = getattr(torch.optim, name)(params, **kwargs)
    torch_sched = None if schedule is None else getattr(torch.optim.lr_scheduler, schedule[0])(torch_opt, **schedule[1])
    criterion = loss_fn(loss)
    assert_close(session.lr, _torch_lr(torch_opt), "lr after construction", rtol=1e-12, atol=0)
    for step in range(steps):
        x, y = make_batch(kind, batch, gen, loss)
        ours = session.step(x, y)
        torch_opt.zero_grad()
        theirs = criterion(reference(x), y)
        theirs.backward()
        torch_opt.step()
        assert_close(ours, theirs, f"loss at step {step}")
        assert_state_matches(session, reference, f"after step {step}")
        ours_opt = session.optimizer_state_dict()
        for i, slots in torch_opt.state_dict()["state"].items():
            for slot, value in slots.items():
                # Slots such as RMSprop's momentum buffer reach magnitudes of 10-100: the absolute
                # tolerance scales with the slot's size, so float32 rounding of its large entries passes.
                scale = max(1.0, float(value.abs().max())) if value.dim() else 1.0
                assert_close(
                    ours_opt[names[i]][slot], value, f"{slot} of {names[i]} after step {step}", atol=1e-5 * scale
                )
            assert set(ours_opt[names[i]]) == set(slots), f"slots of {names[i]}"
        if torch_sched is not None and (step + 1) % scheduler_every == 0:
            session.scheduler_step()
            torch_sched.step()
            assert_close(session.lr, _torch_lr(torch_opt), f"lr after step {step}", rtol=1e-12, atol=0)
    return session


@pytest.mark.parametrize("kind,loss", MODELS, ids=[f"{kind}-{loss}" for kind, loss in MODELS])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_optimizer_matches_torch(case, kind, loss):
    _, name, kwargs = case
    run_parity(kind, loss, name, kwargs)


class LionTwin:
    """Lion, Algorithm 2 of Chen et al. 2023 (decoupled weight decay), in float32 NumPy.

    ``c = beta1 * m + (1 - beta1) * g``; ``param -= lr * (sign(c) + weight_decay * param)``;
    ``m = beta2 * m + (1 - beta2) * g``.
    """

    def __init__(self):
        self.state = {}

    def step(self, name, param, grad, o):
        f = np.float32
        beta1, beta2 = o["betas"]
        if o["maximize"]:
            grad = -grad
        m = self.state.get(name, {}).get("exp_avg", np.zeros_like(param))
        c = m * f(beta1) + grad * f(1 - beta1)
        update = np.sign(c)
        if o["weight_decay"] != 0:
            update = update + param * f(o["weight_decay"])
        self.state[name] = {"exp_avg": m * f(beta2) + grad * f(1 - beta2)}
        return param + update * f(-o["lr"])


#: optimizers torch lacks -> their NumPy twin
TWINS = {"Lion": LionTwin}

TWIN_CASES = [
    ("lion", "Lion", dict()),
    ("lion-lr-betas", "Lion", dict(lr=3e-4, betas=(0.8, 0.95))),
    ("lion-decay-maximize", "Lion", dict(lr=2e-4, weight_decay=0.5, maximize=True)),
    ("lion-group", "Lion", dict(param_groups=[{"params": ["*.bias"], "lr": 5e-4, "betas": (0.95, 0.98)}])),
]
TWIN_STEPS = 30


def run_twin_parity(kind, loss, name, kwargs, steps=TWIN_STEPS, batch=8):
    """Train ``optim.<name>(**kwargs)`` beside a torch model updated by ``TWINS[name]`` from torch's gradients."""
    model = make_model(kind)
    reference = clone(model)
    gen = torch.Generator().manual_seed(1)
    example = make_batch(kind, batch, gen, loss)
    optimizer = getattr(optim, name)(**kwargs)
    artifact = optgraph.compile(model, (example[0],), (example[1],), loss_fn(loss), optimizer=optimizer)
    session = optgraph.TrainingSession(artifact, providers=["CPUExecutionProvider"])
    named = {n: p for n, p in reference.named_parameters() if p.requires_grad}
    options = {n: group.options for group in optimizer.resolve(list(named)) for n in group.params}
    twin, criterion = TWINS[name](), loss_fn(loss)
    for step in range(steps):
        x, y = make_batch(kind, batch, gen, loss)
        ours = session.step(x, y)
        reference.zero_grad()
        theirs = criterion(reference(x), y)
        theirs.backward()
        with torch.no_grad():
            for n, p in named.items():
                p.copy_(torch.from_numpy(twin.step(n, p.numpy().copy(), p.grad.numpy().copy(), options[n])))
        assert_close(ours, theirs, f"loss at step {step}")
        assert_state_matches(session, reference, f"after step {step}")
        ours_opt = session.optimizer_state_dict()
        assert set(ours_opt) == set(twin.state), "parameters with optimizer state"
        for n, slots in twin.state.items():
            assert set(ours_opt[n]) == set(slots), f"slots of {n}"
            for slot, value in slots.items():
                assert_close(ours_opt[n][slot], value, f"{slot} of {n} after step {step}")


@pytest.mark.parametrize("kind,loss", MODELS, ids=[f"{kind}-{loss}" for kind, loss in MODELS])
@pytest.mark.parametrize("case", TWIN_CASES, ids=[c[0] for c in TWIN_CASES])
def test_optimizer_matches_its_twin(case, kind, loss):
    _, name, kwargs = case
    run_twin_parity(kind, loss, name, kwargs)


def test_every_optimizer_has_a_parity_case():
    """A new optimizer in ``optim.__all__`` needs a case against torch.optim or a twin."""
    optimizers = set(OPTIMIZERS)
    against_torch = {name for _, name, _ in CASES}
    against_twin = {name for _, name, _ in TWIN_CASES}
    assert optimizers - against_torch - against_twin == set(), "optimizers without a parity case"
    assert against_twin <= set(TWINS), "twin cases without a twin"
    assert not {n for n in against_torch if not hasattr(torch.optim, n)}, "torch.optim lacks these: give them a twin"
    assert not set(TWINS) & against_torch, "an optimizer torch has is checked against torch, not a twin"


@pytest.mark.parametrize("name,kwargs", [("SGD", dict(lr=0.1, momentum=0.9)), ("Adam", dict(lr=0.01))])
def test_step_lr_matches_torch(name, kwargs):
    run_parity(
        "cnn", "ce", name, kwargs, steps=40, schedule=("StepLR", dict(step_size=2, gamma=0.5)), scheduler_every=5
    )


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_accumulation_clipping_and_param_groups_match_torch(kind):
    """3 micro-batches per update, global-norm clipping, two parameter groups: as torch, step for step."""
    k, max_norm = 3, 0.5
    model = make_model(kind)
    reference = clone(model)
    gen = torch.Generator().manual_seed(2)
    x, y = make_batch(kind, 6, gen)
    groups = [{"params": ["*.bias"], "lr": 0.02, "weight_decay": 0.0, "betas": (0.8, 0.95)}]
    artifact = optgraph.compile(
        model, (x,), (y,), nn.CrossEntropyLoss(), optimizer=optim.AdamW(lr=0.01, param_groups=groups),
        clip_grad_norm=max_norm, grad_accumulation_steps=k,
    )  # fmt: skip
    session = optgraph.TrainingSession(artifact, providers=["CPUExecutionProvider"])
    named = dict(reference.named_parameters())
    torch_opt = torch.optim.AdamW(
        [{"params": [p for n, p in named.items() if n.endswith(".bias")], "lr": 0.02, "weight_decay": 0.0,
          "betas": (0.8, 0.95)},
         {"params": [p for n, p in named.items() if not n.endswith(".bias")]}],
        lr=0.01,
    )  # fmt: skip
    names = [n for n in named if n.endswith(".bias")] + [n for n in named if not n.endswith(".bias")]
    clipped = 0
    for call in range(8 * k):
        x, y = make_batch(kind, 4 + call % 3, gen)
        loss = session.step(x, y)
        expected = nn.functional.cross_entropy(reference(x), y)
        (expected / k).backward()
        if (call + 1) % k == 0:
            norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), max_norm)
            clipped += int(norm > max_norm)
            torch_opt.step()
            torch_opt.zero_grad()
        assert_close(loss, expected, f"loss of call {call}")
        assert_state_matches(session, reference, f"after call {call}")
        ours = session.optimizer_state_dict()
        for i, slots in torch_opt.state_dict()["state"].items():
            for slot, value in slots.items():
                assert_close(ours[names[i]][slot], value, f"{slot} of {names[i]} after call {call}")
    assert clipped > 0, "clipping never engaged: the test would not catch a wrong clip"


ONE_CYCLE = [
    ("SGD", dict(lr=0.01, momentum=0.9), dict(max_lr=0.05, total_steps=60)),
    ("SGD", dict(lr=0.01, nesterov=True, momentum=0.9), dict(max_lr=0.05, total_steps=60, three_phase=True)),
    ("AdamW", dict(lr=0.01), dict(max_lr=0.01, total_steps=60, anneal_strategy="linear")),
    ("RMSprop", dict(lr=0.01), dict(max_lr=0.002, total_steps=60, base_momentum=0.5, max_momentum=0.8)),
    ("NAdam", dict(lr=0.01), dict(max_lr=0.01, total_steps=60)),
]


@pytest.mark.parametrize("name,kwargs,schedule", ONE_CYCLE, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(ONE_CYCLE)])
def test_one_cycle_momentum_cycling_matches_torch(name, kwargs, schedule):
    """OneCycleLR stepped every batch cycles momentum / beta1: the optimizer state follows torch's."""
    run_parity("mlp", "ce", name, kwargs, steps=50, schedule=("OneCycleLR", schedule), scheduler_every=1)
