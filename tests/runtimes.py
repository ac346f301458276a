"""Where the other runtimes are, and what to do when one is missing.

Each framework-neutrality test needs a runtime that pip does not give the
main environment: onnxruntime 1.19 in its own venv, Node with
onnxruntime-node, Chromium with onnxruntime-web. Locally a missing one skips
its test; with ``OPTGRAPH_REQUIRE_RUNTIMES=1`` (CI sets it) it fails, so a
broken install cannot pass as a skip.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
OLD_RUNTIME_VENV = Path(os.environ.get("OPTGRAPH_OLD_RUNTIME_VENV", REPO / ".venv-ort1.19"))


def require(ok: bool, what: str, how: str) -> None:
    """Skip (or, when runtimes are required, fail) unless ``ok``."""
    if ok:
        return
    message = f"{what} is not installed: {how}"
    if os.environ.get("OPTGRAPH_REQUIRE_RUNTIMES") == "1":
        pytest.fail(message)
    pytest.skip(message)


def old_runtime_python() -> Path:
    python = OLD_RUNTIME_VENV / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    require(python.exists(), "the onnxruntime 1.19 environment", "run python tools/old_runtime_venv.py")
    return python


def node() -> str:
    binary = shutil.which("node")
    require(binary is not None, "node", "install Node.js 18 or newer")
    installed = (EXAMPLES / "node/node_modules/onnxruntime-node").is_dir()
    require(installed, "onnxruntime-node", "run npm install --ignore-scripts in examples/node")
    return binary


def chromium() -> str:
    binary = next((b for b in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if b), None)
    require(binary is not None, "a headless Chromium", "apt-get install -y chromium")
    installed = (EXAMPLES / "web/node_modules/onnxruntime-web/dist").is_dir()
    require(installed, "onnxruntime-web", "run npm install --ignore-scripts in examples/web")
    return binary
