"""Memory: training does not grow it (state is preallocated, nothing kept per step), and opening holds the state once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tools.memory_check import measure


def test_rss_is_flat_over_2000_steps():
    readings = measure(steps=2000, batch_size=32, report=lambda line: None)
    growth = readings[-1][1] - readings[0][1]
    assert growth < 4, f"RSS grew by {growth:.1f} MiB over 2000 steps: {readings}"


OPEN_PROBE = """
import sys
sys.modules["torch"] = None  # a training process: no torch
import optgraph


def peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024


before = peak_mb()
session = optgraph.TrainingSession(sys.argv[1], providers=["CPUExecutionProvider"])
print(peak_mb() - before)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak RSS from Linux's /proc")
def test_opening_an_artifact_holds_the_state_once(tmp_path):
    # The checkpoint is read straight into the arrays the session keeps: no copy of the file's bytes, no second
    # copy of each tensor, so the peak while opening is the state itself plus the runtime's own sessions.
    import torch
    from torch import nn

    import optgraph
    from optgraph import optim

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 4))
    x, y = torch.randn(4, 2048), torch.tensor([0, 1, 2, 3])
    optgraph.compile(model, (x,), (y,), nn.CrossEntropyLoss(), optimizer=optim.AdamW()).save(tmp_path / "a")
    state_mb = (tmp_path / "a" / "checkpoint.safetensors").stat().st_size / 2**20  # ~48 MiB: params + 2 slots
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = subprocess.run(
        [sys.executable, "-c", OPEN_PROBE, str(tmp_path / "a")], capture_output=True, text=True, env=env, check=True
    )
    grown = float(run.stdout.split()[-1])
    assert grown < 1.3 * state_mb + 15, f"opening grew the peak RSS by {grown:.0f} MiB for {state_mb:.0f} MiB of state"


@pytest.fixture(scope="module")
def small_artifact(tmp_path_factory):
    import torch
    from torch import nn

    import optgraph

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("small") / "a"
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    optgraph.compile(model, (torch.randn(4, 8),), (torch.tensor([0, 1, 2, 0]),), nn.CrossEntropyLoss()).save(folder)
    return folder


def test_the_train_step_runs_without_a_memory_pattern_unless_asked(small_artifact):
    import onnxruntime as ort

    import optgraph
    from optgraph.session import TRAIN_STEP_MEM_PATTERN

    def patterns(options):
        session = optgraph.TrainingSession(small_artifact, providers=["CPUExecutionProvider"], session_options=options)
        return {name: r.session.get_session_options().enable_mem_pattern for name, r in session._runners.items()}

    assert patterns(None) == {"train_step": False, "scheduler_step": True, "eval": True}
    options = ort.SessionOptions()
    assert patterns(options) == {"train_step": False, "scheduler_step": True, "eval": True}
    assert options.enable_mem_pattern, "the caller's options are left as they were"
    options.add_session_config_entry(TRAIN_STEP_MEM_PATTERN, "1")
    assert patterns(options) == {"train_step": True, "scheduler_step": True, "eval": True}


def test_the_data_parallel_step_runs_without_a_memory_pattern_unless_asked(small_artifact):
    import onnxruntime as ort

    MPI = pytest.importorskip("mpi4py.MPI", reason="mpi4py is not installed: pip install 'optgraph[mpi]'")
    from optgraph import distributed
    from optgraph.session import TRAIN_STEP_MEM_PATTERN

    def patterns(options):
        session = distributed.DataParallelSession(
            small_artifact, comm=MPI.COMM_SELF, providers=["CPUExecutionProvider"], session_options=options
        )
        return {name: r.session.get_session_options().enable_mem_pattern for name, r in session._runners.items()}

    steps = {"grad_step": False, "update_step": False, "scheduler_step": True, "eval": True}
    assert patterns(None) == steps
    options = ort.SessionOptions()
    assert patterns(options) == steps
    assert options.enable_mem_pattern, "the caller's options are left as they were"
    options.add_session_config_entry(TRAIN_STEP_MEM_PATTERN, "1")
    assert patterns(options) == dict.fromkeys(steps, True)


@pytest.mark.parametrize("flags", [[], ["--data-parallel"]], ids=["fused", "data-parallel"])
def test_train_memory_tool_reports_every_stage(small_artifact, flags):
    if flags:
        pytest.importorskip("mpi4py", reason="mpi4py is not installed: pip install 'optgraph[mpi]'")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = subprocess.run(
        [sys.executable, "-m", "tools.train_memory", str(small_artifact), "--batch", "4", "--steps", "3", *flags],
        capture_output=True, text=True, env=env, check=True, cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    report = json.loads(run.stdout.splitlines()[-1])
    assert {"imports", "open", "first step", "after 3 more"} <= report.keys()
    assert report["open"][1] >= report["imports"][1] > 0 and report["median_step_ms"] > 0
