"""examples/federated: the simulation reaches 90% held-out accuracy on non-IID clients within 10 rounds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr")
pytest.importorskip("sklearn")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "federated"


def _run(command, env, timeout):
    """Run in a process group of its own, and stop the whole group whatever happens (Ray starts many)."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)  # fmt: skip
    try:
        output, _ = process.communicate(timeout=timeout)
        return process.returncode, output
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


def test_the_simulation_reaches_90_percent_within_10_rounds(tmp_path):
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, str(EXAMPLE / "prepare.py"), "--build", str(tmp_path)], env=env, check=True,
                   timeout=300)  # fmt: skip
    started = time.perf_counter()
    command = [
        sys.executable,
        str(EXAMPLE / "simulate.py"),
        "--build",
        str(tmp_path),
        "--clients",
        "3",
        "--rounds",
        "10",
    ]
    code, output = _run(command, env, timeout=240)
    elapsed = time.perf_counter() - started
    assert code == 0, output[-4000:]
    history = json.loads((tmp_path / "history.json").read_text())
    assert [h["round"] for h in history] == list(range(11))
    assert max(h["accuracy"] for h in history) >= 0.9, history
    assert history[-1]["accuracy"] >= 0.9, history
    assert elapsed < 120, f"the simulation took {elapsed:.0f} s"
