"""Make a virtual environment with onnxruntime 1.19.2, the last onnxruntime-training release.

    python tools/old_runtime_venv.py [--path .venv-ort1.19] [--peer]

Many shipped apps still carry onnxruntime 1.19, and onnxruntime-training's
on-device training (the peer optgraph compares with) exists only there. That
package replaces the ``onnxruntime`` module and needs onnx 1.16, so it lives
in its own environment. optgraph's runtime half is installed into it without
dependencies: training needs no torch. ``tests/test_old_runtime.py`` trains
artifacts in this environment and compares them with current onnxruntime.
``--peer`` adds the CPU torch wheel, which onnxruntime-training's artifact
generator imports, for ``tools/benchmark.py --peer``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PATH = REPO / ".venv-ort1.19"
PACKAGES = ["onnxruntime-training==1.19.2", "onnx==1.16.2", "safetensors>=0.4", "numpy>=1.24"]


def python_of(path: Path) -> Path:
    """The interpreter inside the environment at ``path``."""
    return path / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def make(path: Path = DEFAULT_PATH, peer: bool = False) -> Path:
    """Create (or update) the environment; returns its interpreter."""
    if not python_of(path).exists():
        venv.create(path, with_pip=True)
    python = str(python_of(path))
    subprocess.run([python, "-m", "pip", "install", "-q", *PACKAGES], check=True)
    if peer:
        subprocess.run([python, "-m", "pip", "install", "-q", "torch==2.13.0"], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "-e", str(REPO)], check=True)
    version = subprocess.run(
        [python, "-c", "import onnxruntime, onnx; print(onnxruntime.__version__, onnx.__version__)"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    print(f"{path}: onnxruntime {version[0]}, onnx {version[1]}")
    return python_of(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", type=Path, default=DEFAULT_PATH, help="where to make the environment")
    parser.add_argument("--peer", action="store_true", help="add torch, for onnxruntime-training's artifact generator")
    args = parser.parse_args()
    make(args.path.resolve(), args.peer)


if __name__ == "__main__":
    main()
