"""optgraph demo (the README's first command), its missing-extra message, and every command's --help."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest
from cli_helpers import assert_falling_curve, child, child_env, cli, one_line_error

from optgraph.cli import COMMANDS


def test_the_demo_reaches_95_percent_in_under_a_minute(tmp_path):
    # the minute is measured in CPU time (the demo's own, user and system): the wall clock of a shared
    # test machine depends on what else runs; on 2 idle cores the demo takes about 15 s
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = child("demo", "--out", tmp_path / "demo", "--progress", cwd=tmp_path)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert run.returncode == 0, run.stdout + run.stderr
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu < 60, cpu
    accuracy = float(run.stdout.strip().splitlines()[-1].removeprefix("held-out accuracy: ").rstrip("%"))
    assert accuracy >= 95
    assert "epoch 12/12" in run.stdout and "epoch 1/12" in run.stderr  # the epoch lines and the progress bar
    assert_falling_curve(tmp_path / "demo" / "loss.png")
    assert (tmp_path / "demo" / "model.onnx").is_file()


@pytest.mark.parametrize("module, package", [("sklearn", "scikit-learn"), ("torch", "torch")])
def test_the_demo_names_the_extra_it_misses(module, package):
    script = f"import sys\nsys.modules[{module!r}] = None\nfrom optgraph.cli import main\nsys.exit(main(['demo']))"
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=child_env(), timeout=60)
    assert run.returncode == 1
    line = one_line_error(run, "demo")
    assert f"the demo needs {package}, which is not installed: pip install" in line
    assert "Traceback" not in run.stderr


def test_python_m_optgraph_lists_the_commands():
    run = child("--help")
    assert run.returncode == 0
    for command in ("compile", "inspect", "train", "export", "demo", "recover"):
        assert command in run.stdout


@pytest.mark.parametrize("command", [c.__name__.rsplit(".", 1)[1].removesuffix("_cmd") for c in COMMANDS])
def test_every_command_has_help(command):
    ran = cli(command, "--help")
    assert ran.rc == 0 and ran.out.startswith(f"usage: optgraph {command}")


def test_an_unknown_command_is_a_usage_error():
    ran = cli("fly")
    assert ran.rc == 2 and ran.err.count("\n") == 1
    assert ran.err.startswith("optgraph: argument COMMAND: invalid choice: 'fly'")


def test_recover_with_nothing_to_recover_is_one_line(tmp_path):
    # the repair itself is checked in tests/artifact/test_storage.py (a save killed between its renames)
    ran = cli("recover", tmp_path)
    assert ran.rc == 1 and "no interrupted save to recover" in one_line_error(ran, "recover")
