"""Helpers of the command-line tests: running optgraph in this process or in a child, and checking its output."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from optgraph.cli import main
from optgraph.cli.plot import EPOCH_COLOR

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
FACTORIES = HERE / "factories.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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


def assert_falling_curve(path) -> None:
    """A real PNG whose stored series falls and whose drawn epoch line goes down from left to right."""
    from PIL import Image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = Image.open(path)
    image.load()
    series = json.loads(image.text["Description"])
    assert series["epoch_loss"][-1] < series["epoch_loss"][0]
    pixels = np.asarray(image.convert("RGB")).astype(int)
    top = pixels[: int(pixels.shape[0] * 0.6)]  # the loss panel; the legend is at the bottom
    color = np.array([int(EPOCH_COLOR[i : i + 2], 16) for i in (1, 3, 5)])
    ys, xs = np.nonzero(np.abs(top - color).sum(axis=2) < 60)
    assert len(xs) > 100, len(xs)
    assert np.corrcoef(xs, ys)[0, 1] > 0.5  # image rows grow downwards: a falling line
