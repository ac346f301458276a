"""Every example runs at its small size (--quick) and ends by printing its result."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
from cli_helpers import ROOT, child_env

EXAMPLES = sorted((ROOT / "examples" / "python").glob("*.py")) + [ROOT / "examples" / "cli" / "round_trip.py"]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_the_example_runs_and_prints_its_result(path, tmp_path):
    run = subprocess.run(
        [sys.executable, str(path), "--quick"],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=tmp_path,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    last = run.stdout.strip().splitlines()[-1]
    assert any(word in last for word in ("accuracy", "error", "difference", "sample", "learning rates")), last


def test_the_shell_round_trip_runs_on_the_console_script(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "optgraph"  # the console script of this checkout, whatever the environment installed
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m optgraph "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    env = child_env()
    env["PATH"] = os.pathsep.join([str(bin_dir), str(os.path.dirname(sys.executable)), env.get("PATH", "")])
    script = ROOT / "examples" / "cli" / "round_trip.sh"
    run = subprocess.run(["bash", str(script), str(tmp_path / "work")], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "epoch 4/4" in run.stdout and (tmp_path / "work" / "model.onnx").is_file()
    assert (tmp_path / "work" / "run" / "loss.png").is_file()
