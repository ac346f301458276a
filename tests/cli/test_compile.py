"""optgraph compile: from flags and from a TOML config, its summary, and its errors (one line, exit 2 or 1)."""

from __future__ import annotations

import re

import pytest
from cli_helpers import FACTORIES, cli, one_line_error

from optgraph import lr_scheduler, optim
from optgraph.artifact import Artifact
from optgraph.artifact.names import (
    GRAD_ACCUMULATION_STEPS_KEY,
    LR_SCHEDULER_KEY,
    OPTIMIZER_KEY,
    STATE_HAS_STEP_KEY,
    GraphName,
)


def _optimizer_config(artifact: Artifact) -> dict:
    config = dict(artifact.manifest.extra[OPTIMIZER_KEY])
    config.pop(STATE_HAS_STEP_KEY)
    return config


def test_compile_from_flags_builds_what_they_say_and_prints_a_summary(compiled):
    out, ran = compiled
    artifact = Artifact.load(out)
    expected = optim.AdamW(
        lr=1e-2, betas=(0.9, 0.99), param_groups=[{"params": ["*.bias", "*norm*"], "weight_decay": 0}]
    )
    assert _optimizer_config(artifact) == expected.config()
    schedule = lr_scheduler.SequentialLR(
        [lr_scheduler.LinearLR(start_factor=0.1, total_iters=2), lr_scheduler.CosineAnnealingLR(T_max=8)], [2]
    )
    assert artifact.manifest.extra[LR_SCHEDULER_KEY] == schedule.config()
    text = ran.out
    assert re.search(r"^compiled .*factories\.py:mlp in \d+\.\d s .* -> ", text, re.M), text
    assert "parameters  83 trainable, 0 frozen (6 tensors)" in text  # 4*8+8 + 8+8 + 8*3+3
    assert re.search(r"state       \d+(\.\d)? [KMG]?i?B \(param ", text), text
    assert "optimizer   AdamW(lr=0.01, betas=(0.9, 0.99)," in text
    assert "groups      0: 3 tensor(s), weight_decay=0; 1: 3 tensor(s), defaults" in text
    assert "schedule    SequentialLR(milestones=[2], schedulers=[LinearLR(start_factor=0.1," in text
    assert "data        input float32[batch, 4]; target int64[batch]" in text
    assert re.search(r"graphs      train_step \d+ nodes, scheduler_step \d+ nodes, eval \d+ nodes; opset \d+", text)
    assert ran.err == ""


def test_compile_from_a_toml_config_with_flags_over_it(toml_compiled):
    out, ran = toml_compiled
    artifact = Artifact.load(out)
    expected = optim.SGD(lr=0.2, momentum=0.9, param_groups=[{"params": ["*.bias"], "lr": 0.05}])
    assert _optimizer_config(artifact) == expected.config()
    plateau = lr_scheduler.ReduceLROnPlateau(factor=0.5, patience=0, threshold=0.05)
    assert artifact.manifest.extra[LR_SCHEDULER_KEY] == plateau.config()
    assert artifact.manifest.extra[GRAD_ACCUMULATION_STEPS_KEY] == 2
    train = artifact.manifest.graphs[GraphName.TRAIN_STEP]
    assert train.input("input").shape == [4, 4]  # dynamic_shapes = "static"
    assert train.input("0.weight").shape == [6, 4]  # factory_args hidden = 6
    assert "parameters  63 trainable" in ran.out


def test_a_factory_may_return_a_dict_and_freeze_layers(frozen_compiled):
    out, ran = frozen_compiled
    assert "parameters  43 trainable, 40 frozen (6 tensors)" in ran.out
    assert "schedule    OneCycleLR(max_lr=0.05, total_steps=16," in ran.out


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["nope.py:make"], 2, "nope.py: no such file"),
        (["no_such_module_xyz:make"], 2, "no module named 'no_such_module_xyz'"),
        ([f"{FACTORIES}:nothing"], 2, "has no 'nothing'"),
        (["make"], 2, "must be path/to/file.py:factory"),
        ([f"{FACTORIES}:broken"], 1, "broken() raised RuntimeError: the factory failed on purpose"),
        ([f"{FACTORIES}:mlp", "--optimizer", "adamx"], 2, "unknown optimizer 'adamx' (did you mean Adamax?)"),
        ([f"{FACTORIES}:mlp", "--scheduler", "cosine"], 2, "unknown schedule 'cosine'"),
        ([f"{FACTORIES}:mlp", "--optimizer-arg", "betas"], 2, "--optimizer-arg expects NAME=VALUE, got 'betas'"),
        ([f"{FACTORIES}:mlp", "--optimizer-arg", "foo=1"], 2, "unexpected keyword argument 'foo'"),
        ([f"{FACTORIES}:mlp", "--scheduler", "StepLR(step_size=0)"], 2, "Expected positive integer step_size, but got 0"),
        ([f"{FACTORIES}:mlp", "--scheduler-arg", "gamma=0.5"], 2, "--scheduler-arg needs a schedule"),
        ([f"{FACTORIES}:mlp", "--grad-accumulation-steps", "0"], 2, "must be a positive integer, got 0"),
        ([f"{FACTORIES}:mlp", "--dynamic", "x=0:seq"], 1, "dynamic_shapes names 'x', which is not an input or target"),
    ],
)  # fmt: skip
def test_a_bad_compile_is_one_line_and_its_exit_code(tmp_path, args, code, message):
    ran = cli("compile", *args, "-o", tmp_path / "out")
    assert ran.rc == code, ran.err
    assert message in one_line_error(ran, "compile")
    assert not (tmp_path / "out").exists()


def test_bad_usage_of_compile_itself(tmp_path):
    ran = cli("compile", f"{FACTORIES}:mlp")
    assert ran.rc == 2 and "give -o DIR" in one_line_error(ran, "compile")
    ran = cli("compile")
    assert ran.rc == 2 and "the following arguments are required: TARGET" in one_line_error(ran, "compile")
    (tmp_path / "notes.txt").write_text("mine")
    ran = cli("compile", f"{FACTORIES}:mlp", "-o", tmp_path)
    assert ran.rc == 2 and "holds files that are not an optgraph artifact" in one_line_error(ran, "compile")
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "text, message",
    [
        ('target = "x.py:f"\nschedule = 1\n', "unknown key(s) schedule"),
        ('target = "x.py:f"\n[optimizer]\nlr = 1\n', "optimizer must be a table with a 'name'"),
        ("target = \n", "not valid TOML"),
        ('out = "x"\n', "'target' must name the factory"),
        ('target = "x.py:f"\ndynamic_shapes = 3\n', 'dynamic_shapes must be "static" or a table'),
    ],
)
def test_a_bad_config_file_is_a_usage_error(tmp_path, text, message):
    config = tmp_path / "config.toml"
    config.write_text(text)
    ran = cli("compile", config, "-o", tmp_path / "out")
    assert ran.rc == 2 and message in one_line_error(ran, "compile")


def test_debug_adds_the_traceback(tmp_path):
    ran = cli("compile", f"{FACTORIES}:broken", "-o", tmp_path / "out", "--debug")
    assert ran.rc == 1
    assert "Traceback (most recent call last)" in ran.err and "the factory failed on purpose" in ran.err
    assert ran.err.strip().splitlines()[-1].startswith("optgraph compile: broken() raised RuntimeError")
