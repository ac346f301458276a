"""Make virtual environments with onnxruntime 1.19.2: the stock wheel and the onnxruntime-training wheel.

    python -m tools.old_runtime_venv [--runtime stock|training|all] [--path DIR] [--peer]

Many shipped apps still carry onnxruntime 1.19, and onnxruntime-training's
on-device training (the peer optgraph compares with) exists only there. Two
environments, one per wheel, because the training wheel replaces the
``onnxruntime`` module:

- ``stock`` (``.venv-ort1.19-stock``): ``onnxruntime==1.19.2``, what an app that
  only runs models ships;
- ``training`` (``.venv-ort1.19``): ``onnxruntime-training==1.19.2``, the last
  onnxruntime-training release.

Both get onnx 1.16 (the onnx of that release) and optgraph's runtime half,
installed without dependencies: training needs no torch.
``tests/test_old_runtime.py`` trains artifacts in each environment and
compares them with current onnxruntime. ``--peer`` adds the CPU torch wheel
to the training environment, which onnxruntime-training's artifact generator
imports, for ``python -m tools.benchmark --peer``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import venv
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parent.parent
COMMON = ["onnx==1.16.2", "safetensors>=0.4", "numpy>=1.24"]


class OldRuntime(NamedTuple):
    """One onnxruntime 1.19.2 wheel and the environment it lives in."""

    label: str  # how tests and messages name it
    path: Path
    packages: list[str]


RUNTIMES = {
    "stock": OldRuntime("onnxruntime 1.19.2", REPO / ".venv-ort1.19-stock", ["onnxruntime==1.19.2", *COMMON]),
    "training": OldRuntime(
        "onnxruntime-training 1.19.2", REPO / ".venv-ort1.19", ["onnxruntime-training==1.19.2", *COMMON]
    ),
}
DEFAULT_PATH = RUNTIMES["training"].path  # tools.benchmark --peer looks for the training wheel here


def python_of(path: Path) -> Path:
    """The interpreter inside the environment at ``path``."""
    return path / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def make(path: Path = DEFAULT_PATH, peer: bool = False, runtime: str = "training") -> Path:
    """Create (or update) the environment of ``runtime`` at ``path``; returns its interpreter."""
    if not python_of(path).exists():
        venv.create(path, with_pip=True)
    python = str(python_of(path))
    subprocess.run([python, "-m", "pip", "install", "-q", *RUNTIMES[runtime].packages], check=True)
    if peer:
        subprocess.run([python, "-m", "pip", "install", "-q", "torch==2.13.0"], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "-e", str(REPO)], check=True)
    version = subprocess.run(
        [python, "-c", "import onnxruntime, onnx; print(onnxruntime.__version__, onnx.__version__)"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    print(f"{path}: {RUNTIMES[runtime].label} (onnxruntime {version[0]}, onnx {version[1]})")
    return python_of(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", choices=[*RUNTIMES, "all"], default="all", help="which wheel (default: both)")
    parser.add_argument("--path", type=Path, help="where to make the environment (one --runtime only)")
    parser.add_argument("--peer", action="store_true", help="add torch, for onnxruntime-training's artifact generator")
    args = parser.parse_args()
    names = list(RUNTIMES) if args.runtime == "all" else [args.runtime]
    if args.path is not None and len(names) != 1:
        parser.error("--path needs --runtime stock or --runtime training")
    if args.peer and "training" not in names:
        parser.error("--peer needs the training environment (--runtime training or all)")
    for name in names:
        make((args.path or RUNTIMES[name].path).resolve(), peer=args.peer and name == "training", runtime=name)


if __name__ == "__main__":
    main()
