"""Every optimizer and schedule of optgraph's ``__all__`` is reachable from the command line and from TOML,
with torch's argument names and torch's own error messages."""

from __future__ import annotations

import pytest
import torch
from catalog import OPTIMIZERS, SCHEDULES, fail_missing, in_table_order, needs_arguments

from optgraph import lr_scheduler, optim
from optgraph.cli import build_parser, compile_cmd
from optgraph.cli.errors import UsageError
from optgraph.cli.options import OPTIMIZERS as CLI_OPTIMIZERS
from optgraph.cli.options import SCHEDULES as CLI_SCHEDULES
from optgraph.cli.options import (
    DimSymbol,
    build,
    call_from_table,
    optimizer_call,
    parse_dynamic,
    parse_param_group,
    scheduler_call,
)
from optgraph.cli.values import Call, parse_call, parse_value

# -- values --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, value",
    [
        ("1e-3", 1e-3), ("10", 10), ("0.9,0.99", (0.9, 0.99)), ("(0.9, 0.99)", (0.9, 0.99)), ("[30, 80]", [30, 80]),
        ("30,", (30,)), ("true", True), ("False", False), ("none", None), ("None,1e-3", (None, 1e-3)),
        ("min", "min"), ("'max'", "max"), ("inf", float("inf")), ("-2", -2),
    ],
)  # fmt: skip
def test_values_are_python_literals_where_they_are_one(text, value):
    assert parse_value(text) == value


def test_calls_nest_and_keep_their_arguments():
    call = parse_call(
        "SequentialLR(schedulers=[LinearLR(0.1, total_iters=5), StepLR(step_size=2)], milestones=[5])", "f"
    )
    assert call.name == "SequentialLR" and call.kwargs["milestones"] == [5]
    inner = call.kwargs["schedulers"]
    assert [c.name for c in inner] == ["LinearLR", "StepLR"]
    assert inner[0].args == [0.1] and inner[0].kwargs == {"total_iters": 5}
    assert parse_call("cosineannealinglr", "f") == Call("cosineannealinglr")
    assert parse_call("ReduceLROnPlateau(mode=max, min_lr=-inf)", "f").kwargs == {
        "mode": "max",
        "min_lr": -float("inf"),
    }


@pytest.mark.parametrize("text", ["StepLR(", "StepLR(**x)", "a.b(1)", "StepLR(step_size=x+1)", "1 + 2"])
def test_calls_that_cannot_be_read(text):
    with pytest.raises(UsageError, match="--scheduler"):
        parse_call(text, "--scheduler")


def test_param_groups_and_dynamic_dimensions():
    assert parse_param_group("params=*.bias,*norm*;weight_decay=0") == {
        "params": ["*.bias", "*norm*"],
        "weight_decay": 0,
    }
    assert parse_param_group("params=fc.weight;lr=0.1;betas=0.8,0.9") == {
        "params": ["fc.weight"], "lr": 0.1, "betas": (0.8, 0.9),
    }  # fmt: skip
    with pytest.raises(UsageError, match="needs params="):
        parse_param_group("weight_decay=0")
    dynamic = parse_dynamic(["input_ids=0:batch,1:2<=seq<=64", "target=static", "mask=1:auto"])
    assert dynamic == {
        "input_ids": {0: DimSymbol("batch"), 1: DimSymbol("seq", 2, 64)},
        "target": None,
        "mask": {1: DimSymbol(None)},
    }
    assert parse_dynamic(["static"]) == {} and parse_dynamic([]) is None
    with pytest.raises(UsageError, match="not a symbol"):
        parse_dynamic(["x=0:seq-1"])


# -- every class, by name, from flags and from TOML ------------------------------------------------

# name -> (--optimizer-arg values, the same as Python keyword arguments); a class not here is built from its defaults
OPTIMIZER_ARGS = {
    "SGD": (
        ["momentum=0.9", "nesterov=true", "weight_decay=1e-4"],
        dict(momentum=0.9, nesterov=True, weight_decay=1e-4),
    ),
    "Adam": (["betas=0.8,0.9", "amsgrad=True"], dict(betas=(0.8, 0.9), amsgrad=True)),
    "AdamW": (["betas=(0.9, 0.99)", "weight_decay=0.05"], dict(betas=(0.9, 0.99), weight_decay=0.05)),
    "Adagrad": (["lr_decay=0.01", "initial_accumulator_value=0.1"], dict(lr_decay=0.01, initial_accumulator_value=0.1)),
    "RMSprop": (["alpha=0.9", "centered=true", "momentum=0.5"], dict(alpha=0.9, centered=True, momentum=0.5)),
    "Rprop": (["etas=0.4,1.3", "step_sizes=1e-5,10"], dict(etas=(0.4, 1.3), step_sizes=(1e-5, 10))),
    "Adafactor": (["eps=none,1e-3", "beta2_decay=-0.7"], dict(eps=(None, 1e-3), beta2_decay=-0.7)),
    "ASGD": (["lambd=1e-3", "t0=100"], dict(lambd=1e-3, t0=100)),
}

# name -> (the --scheduler value, the same schedule built in Python)
SCHEDULE_CASES = {
    "StepLR": ("steplr(step_size=3, gamma=0.5)", lambda: lr_scheduler.StepLR(step_size=3, gamma=0.5)),
    "MultiStepLR": ("MultiStepLR(milestones=[30, 80])", lambda: lr_scheduler.MultiStepLR(milestones=[30, 80])),
    "ExponentialLR": ("ExponentialLR(0.9)", lambda: lr_scheduler.ExponentialLR(0.9)),
    "CosineAnnealingLR": ("CosineAnnealingLR(T_max=100, eta_min=1e-5)",
                          lambda: lr_scheduler.CosineAnnealingLR(T_max=100, eta_min=1e-5)),
    "LinearLR": ("LinearLR(start_factor=0.1, total_iters=4)",
                 lambda: lr_scheduler.LinearLR(start_factor=0.1, total_iters=4)),
    "ConstantLR": ("ConstantLR(factor=0.5, total_iters=3)", lambda: lr_scheduler.ConstantLR(factor=0.5, total_iters=3)),
    "PolynomialLR": ("PolynomialLR(total_iters=10, power=2.0)",
                     lambda: lr_scheduler.PolynomialLR(total_iters=10, power=2.0)),
    "OneCycleLR": ("OneCycleLR(max_lr=0.1, total_steps=100, anneal_strategy=linear)",
                   lambda: lr_scheduler.OneCycleLR(max_lr=0.1, total_steps=100, anneal_strategy="linear")),
    "CosineAnnealingWarmRestarts": ("CosineAnnealingWarmRestarts(T_0=5, T_mult=2)",
                                    lambda: lr_scheduler.CosineAnnealingWarmRestarts(T_0=5, T_mult=2)),
    "ReduceLROnPlateau": ("ReduceLROnPlateau(mode=max, factor=0.5, patience=2)",
                          lambda: lr_scheduler.ReduceLROnPlateau(mode="max", factor=0.5, patience=2)),
    "SequentialLR": (
        "SequentialLR(schedulers=[LinearLR(start_factor=0.1, total_iters=5), CosineAnnealingLR(T_max=95)], "
        "milestones=[5])",
        lambda: lr_scheduler.SequentialLR(
            [lr_scheduler.LinearLR(start_factor=0.1, total_iters=5), lr_scheduler.CosineAnnealingLR(T_max=95)], [5]
        ),
    ),
    "ChainedScheduler": (
        "ChainedScheduler([ConstantLR(factor=0.5, total_iters=2), ExponentialLR(gamma=0.9)])",
        lambda: lr_scheduler.ChainedScheduler(
            [lr_scheduler.ConstantLR(factor=0.5, total_iters=2), lr_scheduler.ExponentialLR(gamma=0.9)]
        ),
    ),
}  # fmt: skip


def _flags(*extra: str):
    return compile_cmd.configure(build_parser().parse_args(["compile", "target.py:make", "-o", "out", *extra]))


def test_the_cli_lists_are_the_public_lists():
    assert list(CLI_OPTIMIZERS) == OPTIMIZERS
    assert list(CLI_SCHEDULES) == SCHEDULES


@pytest.mark.parametrize("name", in_table_order(OPTIMIZERS, OPTIMIZER_ARGS))
def test_every_optimizer_from_flags_and_toml(name):
    flags, kwargs = OPTIMIZER_ARGS.get(name, ([], {}))
    expected = getattr(optim, name)(lr=0.5, **kwargs)
    args = [f for a in flags for f in ("--optimizer-arg", a)]
    config = _flags("--optimizer", name.lower(), "--lr", "0.5", *args)
    assert build(config.optimizer, CLI_OPTIMIZERS, "optimizer", "--optimizer").config() == expected.config()
    table = {"name": name.upper(), "lr": 0.5, **{k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}}
    if name == "Adafactor":
        table.pop("eps")  # TOML has no None: the eps pair is for the command line
        expected = getattr(optim, name)(lr=0.5, **{k: v for k, v in kwargs.items() if k != "eps"})
    assert build(call_from_table(table, "t"), CLI_OPTIMIZERS, "optimizer", "t").config() == expected.config()


@pytest.mark.parametrize("name", in_table_order(SCHEDULES, SCHEDULE_CASES))
def test_every_schedule_from_flags(name):
    if name not in SCHEDULE_CASES:
        if needs_arguments(getattr(lr_scheduler, name)):
            fail_missing(name, "SCHEDULE_CASES")
        SCHEDULE_CASES[name] = (name.lower(), getattr(lr_scheduler, name))
    text, make = SCHEDULE_CASES[name]
    config = _flags("--scheduler", text)
    assert build(config.lr_scheduler, CLI_SCHEDULES, "schedule", "--scheduler").config() == make().config()


def test_nested_schedules_from_toml_tables():
    table = {
        "name": "SequentialLR",
        "milestones": [5],
        "schedulers": [
            {"name": "LinearLR", "start_factor": 0.1, "total_iters": 5},
            {"name": "ChainedScheduler", "schedulers": [{"name": "ConstantLR", "factor": 0.5}, {"name": "ExponentialLR", "gamma": 0.9}]},
        ],
    }  # fmt: skip
    built = build(call_from_table(table, "t"), CLI_SCHEDULES, "schedule", "t")
    expected = lr_scheduler.SequentialLR(
        [
            lr_scheduler.LinearLR(start_factor=0.1, total_iters=5),
            lr_scheduler.ChainedScheduler([lr_scheduler.ConstantLR(factor=0.5), lr_scheduler.ExponentialLR(gamma=0.9)]),
        ],
        [5],
    )
    assert built.config() == expected.config()


def test_flags_change_the_config_files_choice():
    base = Call("SGD", [], {"lr": 0.1, "momentum": 0.9})
    assert optimizer_call(base, None, 0.5, ["nesterov=true"], []).kwargs == {
        "lr": 0.5,
        "momentum": 0.9,
        "nesterov": True,
    }
    assert optimizer_call(base, "adam", None, [], []).kwargs == {}
    assert optimizer_call(None, None, 0.01, [], []).name == "Adam"  # compile's default optimizer
    assert scheduler_call(Call("StepLR", [], {"step_size": 3}), "none", []) is None
    assert scheduler_call(Call("StepLR", [], {"step_size": 3}), None, ["gamma=0.5"]).kwargs == {
        "step_size": 3, "gamma": 0.5,
    }  # fmt: skip
    with pytest.raises(UsageError, match="--scheduler-arg needs a schedule"):
        scheduler_call(None, None, ["gamma=0.5"])


# -- torch's own messages ------------------------------------------------------------------------


def _torch_error(make) -> str:
    with pytest.raises((TypeError, ValueError)) as e:
        make()
    return str(e.value)


@pytest.mark.parametrize(
    "flags, torch_call",
    [
        (["--optimizer", "adamw", "--optimizer-arg", "foo=1"],
         lambda p: torch.optim.AdamW(p, foo=1)),
        (["--optimizer", "sgd", "--lr", "-1"], lambda p: torch.optim.SGD(p, lr=-1.0)),
        (["--optimizer", "Adam", "--optimizer-arg", "betas=1.5,0.9"], lambda p: torch.optim.Adam(p, betas=(1.5, 0.9))),
        (["--optimizer", "SGD", "--optimizer-arg", "nesterov=true"], lambda p: torch.optim.SGD(p, nesterov=True)),
    ],
)  # fmt: skip
def test_a_wrong_optimizer_argument_gets_torchs_message(flags, torch_call):
    expected = _torch_error(lambda: torch_call([torch.nn.Parameter(torch.zeros(1))]))
    config = _flags(*flags)
    with pytest.raises(UsageError) as e:
        build(config.optimizer, CLI_OPTIMIZERS, "optimizer", "--optimizer")
    assert str(e.value) == f"--optimizer: {expected}"


def test_a_wrong_schedule_argument_gets_torchs_message():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    expected = _torch_error(lambda: torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gama=0.5))
    with pytest.raises(UsageError) as e:
        build(_flags("--scheduler", "StepLR(step_size=3, gama=0.5)").lr_scheduler, CLI_SCHEDULES, "schedule", "s")
    assert str(e.value) == f"s: {expected}"
    missing = _torch_error(lambda: torch.optim.lr_scheduler.StepLR(optimizer))
    with pytest.raises(UsageError) as e:
        build(_flags("--scheduler", "steplr").lr_scheduler, CLI_SCHEDULES, "schedule", "s")
    assert str(e.value) == f"s: {missing}"


def test_unknown_names_list_the_choices():
    with pytest.raises(
        UsageError, match=r"unknown optimizer 'adamx' \(did you mean Adamax\?\); choose one of ASGD, SGD"
    ):
        build(_flags("--optimizer", "adamx").optimizer, CLI_OPTIMIZERS, "optimizer", "--optimizer")
    with pytest.raises(UsageError, match="unknown schedule 'cosine'"):
        build(_flags("--scheduler", "cosine").lr_scheduler, CLI_SCHEDULES, "schedule", "--scheduler")
