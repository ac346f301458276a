"""Profiling: session.end_profiling() names each graph's profile, and tools/profile_step.py writes nothing into
the working directory."""

from __future__ import annotations

import json
import subprocess
import sys

import onnxruntime as ort
import pytest
import torch
from models import make_batch, make_model
from runtimes import REPO
from torch import nn

import optgraph
from optgraph import optim

CPU = ["CPUExecutionProvider"]
GRAPHS = {"train_step", "scheduler_step", "eval"}


@pytest.fixture(scope="module")
def mlp_dir(tmp_path_factory):
    x, y = make_batch("mlp", 4, torch.Generator().manual_seed(0))
    artifact = optgraph.compile(make_model("mlp"), (x,), (y,), nn.CrossEntropyLoss(), optimizer=optim.SGD(lr=0.1))
    return artifact.save(tmp_path_factory.mktemp("profile") / "artifact")


def test_end_profiling_returns_one_profile_per_graph_where_the_prefix_says(mlp_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / "out" / "run")
    (tmp_path / "out").mkdir()
    session = optgraph.TrainingSession(mlp_dir, providers=CPU, session_options=options)
    x, y = make_batch("mlp", 4, torch.Generator().manual_seed(1))
    session.step(x.numpy(), y.numpy())
    paths = session.end_profiling()
    assert set(paths) == GRAPHS
    for graph, path in paths.items():
        assert path.parent == tmp_path / "out" and path.name.startswith(f"run_{graph}_"), path
        assert isinstance(json.loads(path.read_text()), list)
    assert options.profile_file_prefix == str(tmp_path / "out" / "run")  # the caller's options are left as given
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert session.end_profiling() == {}


def test_end_profiling_without_profiling_is_empty(mlp_dir):
    assert optgraph.TrainingSession(mlp_dir, providers=CPU).end_profiling() == {}


@pytest.mark.parametrize("keep", [False, True], ids=["temporary", "out-dir"])
def test_profile_step_writes_nothing_into_the_working_directory(mlp_dir, tmp_path, keep):
    work = tmp_path / "work"
    work.mkdir()
    command = [sys.executable, str(REPO / "tools/profile_step.py"), str(mlp_dir), "--batch", "4", "--steps", "3"]
    if keep:
        command += ["--out", str(tmp_path / "profiles")]
    run = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "ms of kernels per step" in run.stdout
    assert list(work.iterdir()) == []
    if keep:
        kept = sorted(p.name for p in (tmp_path / "profiles").iterdir())
        expected = [f"onnxruntime_profile_{graph}_" for graph in sorted(GRAPHS)]
        assert len(kept) == 3 and all(map(str.startswith, kept, expected)), kept


def test_profile_step_sizes_a_target_derived_from_the_batch(tmp_path):
    """A language model's labels flattened to ``(batch * seq,)``: the manifest says ``8*batch``, not ``batch``."""
    from models import TinyLM, flat_cross_entropy

    tokens = torch.randint(0, 40, (2, 8), generator=torch.Generator().manual_seed(0))
    artifact = optgraph.compile(
        TinyLM(), (tokens,), (tokens.reshape(-1),), flat_cross_entropy, optimizer=optim.SGD(lr=0.1)
    )
    folder = artifact.save(tmp_path / "lm")
    target = next(t for t in artifact.manifest.graphs["train_step"].inputs if t.role == "target")
    assert target.shape == ["8*batch"], target.shape  # the case this checks
    command = [sys.executable, str(REPO / "tools/profile_step.py"), str(folder), "--batch", "3", "--steps", "2"]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "ms of kernels per step" in run.stdout
