"""Invalid optimizer arguments raise what torch raises, message included."""

from __future__ import annotations

import inspect

import pytest
import torch
from catalog import OPTIMIZERS

from optgraph import optim

BAD = [
    ("SGD", dict(lr=-0.1)),
    ("SGD", dict(momentum=-0.5)),
    ("SGD", dict(weight_decay=-1e-3)),
    ("SGD", dict(nesterov=True)),
    ("SGD", dict(nesterov=True, momentum=0.9, dampening=0.1)),
    ("Adam", dict(lr=-1.0)),
    ("Adam", dict(eps=-1e-8)),
    ("Adam", dict(betas=(1.0, 0.999))),
    ("Adam", dict(betas=(0.9, -0.1))),
    ("Adam", dict(weight_decay=-0.1)),
    ("AdamW", dict(betas=(0.9, 1.5))),
    ("AdamW", dict(lr=-0.01)),
    ("AdamW", dict(eps=-1e-8)),
    ("AdamW", dict(weight_decay=-0.1)),
    ("Adagrad", dict(lr=-0.01)),
    ("Adagrad", dict(lr_decay=-0.1)),
    ("Adagrad", dict(weight_decay=-0.1)),
    ("Adagrad", dict(initial_accumulator_value=-1.0)),
    ("Adagrad", dict(eps=-1.0)),
    ("RMSprop", dict(lr=-0.1)),
    ("RMSprop", dict(eps=-0.1)),
    ("RMSprop", dict(momentum=-0.1)),
    ("RMSprop", dict(weight_decay=-0.1)),
    ("RMSprop", dict(alpha=-0.1)),
    ("Adamax", dict(eps=-1.0)),
    ("Adamax", dict(betas=(0.9, 1.0))),
    ("Adamax", dict(lr=-1.0)),
    ("Adamax", dict(weight_decay=-1.0)),
    ("Adadelta", dict(rho=1.5)),
    ("Adadelta", dict(lr=-1.0)),
    ("Adadelta", dict(eps=-1e-6)),
    ("Adadelta", dict(weight_decay=-0.1)),
    ("NAdam", dict(momentum_decay=-0.1)),
    ("NAdam", dict(betas=(-0.1, 0.9))),
    ("NAdam", dict(lr=-1.0)),
    ("NAdam", dict(eps=-1.0)),
    ("NAdam", dict(weight_decay=-1.0)),
    ("RAdam", dict(weight_decay=-0.1)),
    ("RAdam", dict(lr=-1.0)),
    ("RAdam", dict(eps=-1.0)),
    ("RAdam", dict(betas=(0.9, 1.0))),
    ("RAdam", dict(lr=-1.0, eps=-1.0, betas=(2.0, 2.0), weight_decay=-1.0)),
    ("Rprop", dict(etas=(1.5, 2.0))),
    ("Rprop", dict(lr=-0.5)),
    ("ASGD", dict(weight_decay=-1.0)),
    ("ASGD", dict(lr=-1.0)),
    ("Adafactor", dict(lr=-0.1)),
    ("Adafactor", dict(beta2_decay=0.5)),
    ("Adafactor", dict(eps=(-1e-30, 1e-3))),
    ("Adafactor", dict(eps=(None, -1e-3))),
    ("Adafactor", dict(d=0.5)),
    ("Adafactor", dict(weight_decay=-0.1)),
    ("Adafactor", dict(lr=-0.1, d=0.5)),
    ("Lion", dict(lr=-1e-4)),
    ("Lion", dict(betas=(1.0, 0.99))),
    ("Lion", dict(betas=(0.9, -0.1))),
    ("Lion", dict(weight_decay=-0.1)),
    ("Lion", dict(lr=-1e-4, betas=(1.0, 0.99))),
]

#: optimizers torch lacks -> the torch.optim class whose checks and messages they share
STAND_INS = {"Lion": "Adam"}

#: values torch accepts, NaN among them (SGD checks ``lr < 0.0``, which NaN passes)
GOOD = [
    ("SGD", dict(lr=float("nan"))),
    ("SGD", dict(momentum=float("nan"))),
    ("Adafactor", dict(eps=(None, 0.0), d=1.0, beta2_decay=0.0)),
    ("Lion", dict(lr=0.0, betas=(0.0, 0.0), weight_decay=0.0)),
]


def _torch_class(name):
    return getattr(torch.optim, STAND_INS.get(name, name))


@pytest.mark.parametrize("name,kwargs", BAD, ids=[f"{n}-{'-'.join(k)}" for n, k in BAD])
def test_same_error_as_torch(name, kwargs):
    with pytest.raises(Exception) as theirs:
        _torch_class(name)([torch.nn.Parameter(torch.zeros(2))], **kwargs)
    with pytest.raises(type(theirs.value)) as ours:
        getattr(optim, name)(**kwargs)
    assert str(ours.value) == str(theirs.value)


@pytest.mark.parametrize("name,kwargs", GOOD, ids=[f"{n}-{'-'.join(k)}" for n, k in GOOD])
def test_accepted_as_by_torch(name, kwargs):
    _torch_class(name)([torch.nn.Parameter(torch.zeros(2))], **kwargs)
    getattr(optim, name)(**kwargs)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_checks_its_options_and_has_bad_cases(name):
    """The table names only the optimizer's own options, and BAD tries each of them."""
    cls = getattr(optim, name)
    options = set(cls().defaults)
    assert set(cls.checks) <= options, f"{name}.checks names options it does not have"
    tried = {option for n, kwargs in BAD if n == name for option in kwargs}
    assert set(cls.checks) <= tried, f"BAD has no case for {sorted(set(cls.checks) - tried)} of {name}"


def test_param_group_overrides_are_validated_too():
    with pytest.raises(ValueError, match="Invalid learning rate: -1"):
        optim.Adam(param_groups=[{"params": ["fc.*"], "lr": -1}])
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['momentum'\] for Adam"):
        optim.Adam(param_groups=[{"params": ["fc.*"], "momentum": 0.9}])
    with pytest.raises(ValueError, match="must be a dict with a 'params' key"):
        optim.SGD(param_groups=[{"lr": 0.1}])


def test_param_group_that_matches_nothing_is_an_error():
    opt = optim.SGD(param_groups=[{"params": ["decoder.*"], "lr": 0.1}])
    with pytest.raises(ValueError, match=r"matches no trainable parameter"):
        opt.resolve(["encoder.weight"])


#: the published defaults of optimizers torch lacks (Lion: Chen et al. 2023)
PAPER_DEFAULTS = {"Lion": dict(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, maximize=False)}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_defaults_are_torchs(name):
    ours = inspect.signature(getattr(optim, name)).parameters
    if not hasattr(torch.optim, name):
        assert name in PAPER_DEFAULTS, f"torch has no {name}: write its published defaults in PAPER_DEFAULTS"
        assert getattr(optim, name)().defaults == PAPER_DEFAULTS[name]
        return
    theirs = inspect.signature(getattr(torch.optim, name)).parameters
    for arg, param in ours.items():
        if arg == "param_groups":
            continue
        assert arg in theirs, f"{name}.{arg} is not a torch argument"
        assert param.default == theirs[arg].default, f"{name}.{arg} default"
