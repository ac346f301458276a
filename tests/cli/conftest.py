"""Running the command line in the test process or in a child, and artifacts compiled once per worker."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from optgraph.cli import main

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
FACTORIES = HERE / "factories.py"
sys.path.insert(0, str(HERE))

import factories  # noqa: E402


@dataclass
class Ran:
    rc: int
    out: str
    err: str


def cli(*args: str) -> Ran:
    """``optgraph ARGS`` in this process, its output captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:  # argparse's own usage errors
            rc = e.code
    return Ran(rc, out.getvalue(), err.getvalue())


def child_env() -> dict[str, str]:
    """The environment of a child process that imports this checkout's optgraph."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def child(*args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """``python -m optgraph ARGS`` in a child process."""
    command = [sys.executable, "-m", "optgraph", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=child_env(), **kwargs)


def one_line_error(ran, command: str) -> str:
    """The error a command printed: exactly one line, starting with ``optgraph <command>:``."""
    err = ran.err if isinstance(ran, Ran) else ran.stderr
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"optgraph {command}: "), lines[0]
    return lines[0]


ADAMW_FLAGS = [
    "--optimizer", "adamw", "--lr", "1e-2", "--optimizer-arg", "betas=0.9,0.99",
    "--param-group", "params=*.bias,*norm*;weight_decay=0",
    "--scheduler", "SequentialLR(schedulers=[LinearLR(start_factor=0.1, total_iters=2), CosineAnnealingLR(T_max=8)], "
    "milestones=[2])",
    "--clip-grad-norm", "1.0",
]  # fmt: skip


@pytest.fixture(scope="session")
def compiled(tmp_path_factory):
    """The MLP compiled from flags (AdamW, a parameter group, warm-up then cosine, clipping), and its summary."""
    out = tmp_path_factory.mktemp("compiled") / "artifact"
    ran = cli("compile", f"{FACTORIES}:mlp", "-o", out, *ADAMW_FLAGS)
    assert ran.rc == 0, ran.err
    return out, ran


@pytest.fixture(scope="session")
def artifact(compiled) -> Path:
    return compiled[0]


@pytest.fixture(scope="session")
def data_files(tmp_path_factory) -> tuple[Path, Path]:
    """Training (256 samples) and validation (64) data for the MLP, as .npz and .safetensors."""
    from safetensors.numpy import save_file

    folder = tmp_path_factory.mktemp("data")
    train, val = folder / "train.npz", folder / "val.safetensors"
    np.savez(train, **factories.classes(256, seed=0))
    save_file(factories.classes(64, seed=1), str(val))
    return train, val


TOML = """\
target = "{factories}:mlp"
out = "art"
grad_accumulation_steps = 2
dynamic_shapes = "static"

[factory_args]
hidden = 6

[optimizer]
name = "sgd"
lr = 0.1
momentum = 0.9
[[optimizer.param_groups]]
params = ["*.bias"]
lr = 0.05

[lr_scheduler]
name = "ReduceLROnPlateau"
factor = 0.5
patience = 0
threshold = 0.05
"""


@pytest.fixture(scope="session")
def toml_compiled(tmp_path_factory):
    """The MLP from a TOML config: SGD with a group, ReduceLROnPlateau, accumulation over 2, static shapes (batch 4)."""
    folder = tmp_path_factory.mktemp("toml")
    config = folder / "config.toml"
    config.write_text(TOML.format(factories=FACTORIES.as_posix()))
    ran = cli("compile", config, "--lr", "0.2")
    assert ran.rc == 0, ran.err
    return folder / "art", ran


@pytest.fixture(scope="session")
def frozen_compiled(tmp_path_factory):
    """The MLP with its first layer frozen (a factory returning a dict), Adam and OneCycleLR over 16 updates."""
    out = tmp_path_factory.mktemp("frozen") / "artifact"
    schedule = "OneCycleLR(max_lr=0.05, total_steps=16)"
    ran = cli("compile", f"{FACTORIES}:frozen_mlp", "-o", out, "--optimizer", "adam", "--scheduler", schedule)
    assert ran.rc == 0, ran.err
    return out, ran
