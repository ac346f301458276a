"""Where the other runtimes are, and what to do when one is missing.

Each framework-neutrality test needs a runtime that pip does not give the
main environment: onnxruntime 1.19.2 (the stock wheel and the
onnxruntime-training wheel) in venvs of their own, Node with
onnxruntime-node, Chromium with onnxruntime-web. Locally a missing one skips
its test; with ``OPTGRAPH_REQUIRE_RUNTIMES=1`` (CI sets it) it fails, so a
broken install cannot pass as a skip.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


def load_tool(name: str):
    """The module ``tools.<name>`` (the repository root is on pytest's ``pythonpath``)."""
    return importlib.import_module(f"tools.{name}")


def load_example(path: str):
    """The Python module ``examples/<path>``: the examples are scripts beside their pages, not a package."""
    file = EXAMPLES / path
    name = f"optgraph_example_{file.stem}"
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_venvs = load_tool("old_runtime_venv")
OLD_RUNTIMES = _venvs.RUNTIMES  # {"stock": OldRuntime(label, path, packages), "training": ...}


def require(ok: bool, what: str, how: str) -> None:
    """Skip (or, when runtimes are required, fail) unless ``ok``."""
    if ok:
        return
    message = f"{what} is not installed: {how}"
    if os.environ.get("OPTGRAPH_REQUIRE_RUNTIMES") == "1":
        pytest.fail(message)
    pytest.skip(message)


def mpiexec() -> str:
    """The MPI launcher beside this Python (the mpich wheel's) or on the PATH; skips (or fails) without one."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which("mpiexec", path=path)
    require(
        importlib.util.find_spec("mpi4py") is not None and found is not None,
        "mpi4py with an MPI launcher (mpiexec)",
        "pip install 'optgraph[mpi]' (mpi4py and the mpich wheel)",
    )
    return found


@functools.cache
def _installed(python: Path) -> dict[str, str]:
    """``{distribution: version}`` of the onnxruntime wheels installed for ``python``."""
    names = sorted({spec.split("==")[0] for r in OLD_RUNTIMES.values() for spec in r.packages if "onnxruntime" in spec})
    script = (
        "import importlib.metadata as m\n"
        f"for name in {names!r}:\n"
        "    try: print(name, m.version(name))\n"
        "    except m.PackageNotFoundError: pass\n"
    )
    run = subprocess.run([str(python), "-c", script], capture_output=True, text=True, check=True)
    return dict(line.split() for line in run.stdout.splitlines())


def old_runtime_python(runtime: str) -> Path:
    """The interpreter of the environment of ``runtime`` (a key of ``OLD_RUNTIMES``), which holds that wheel only."""
    wanted = OLD_RUNTIMES[runtime]
    python = _venvs.python_of(wanted.path)
    how = f"run python -m tools.old_runtime_venv --runtime {runtime}"
    require(python.exists(), f"the {wanted.label} environment", how)
    expected = dict(spec.split("==") for spec in wanted.packages if "onnxruntime" in spec)
    installed = _installed(python)
    assert installed == expected, f"{wanted.path} should hold {expected} alone, holds {installed}: {how}"
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


_NODE_STEPS = """
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { join } from "node:path";
const [packageJson, library, dir, dataFile, namesJson] = process.argv.slice(2);
const ort = createRequire(packageJson)("onnxruntime-node");
const { TrainingSession, readSafetensors } = await import(library);
const manifest = JSON.parse(readFileSync(join(dir, "manifest.json"), "utf8"));
const graphs = Object.fromEntries(Object.entries(manifest.graphs).map(([n, s]) => [n, readFileSync(join(dir, s.file))]));
const checkpoint = readFileSync(join(dir, "checkpoint.safetensors"));
const session = await TrainingSession.create(ort, { manifest, graphs, checkpoint }, { intraOpNumThreads: 1 });
const data = readSafetensors(readFileSync(dataFile));
const tensor = (t) => new ort.Tensor(t.type, t.data, t.dims);
const names = JSON.parse(namesJson);
for (let k = 0; `${names[0]}.${k}` in data; k++) {
  const batch = Object.fromEntries(names.map((name) => [name, tensor(data[`${name}.${k}`])]));
  try {
    console.log(JSON.stringify({ loss: await session.step(batch) }));
  } catch (error) {
    console.log(JSON.stringify({ error: error.message }));
  }
}
"""


def node_steps(workdir: Path, artifact: Path, batches: list[dict]) -> list[dict]:
    """Train ``artifact`` in onnxruntime-node with ``examples/js/optgraph.mjs``, one step per batch (any shapes).

    Each batch maps input names to numpy arrays; returns one ``{"loss": float}`` or ``{"error": message}`` a step.
    """
    import json
    import subprocess

    from safetensors.numpy import save_file

    names = list(batches[0])
    save_file({f"{n}.{k}": b[n] for k, b in enumerate(batches) for n in names}, str(workdir / "steps.safetensors"))
    (workdir / "steps.mjs").write_text(_NODE_STEPS)
    command = [
        node(), "steps.mjs", str(EXAMPLES / "node/package.json"), (EXAMPLES / "js/optgraph.mjs").as_uri(),
        str(artifact), "steps.safetensors", json.dumps(names),
    ]  # fmt: skip
    run = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    return [json.loads(line) for line in run.stdout.splitlines()]


def assert_old_runtimes_match(workdir: Path, pythons: dict[str, Path]) -> None:
    """``workdir/artifact`` replayed on ``workdir/batches.safetensors`` trains alike here and on each old runtime:
    losses, learning rates and the final checkpoint."""
    import json
    import subprocess

    import numpy as np
    from replay import replay
    from safetensors.numpy import load_file

    here = replay(workdir / "artifact", workdir / "batches.safetensors", workdir / "current")
    expected = load_file(str(workdir / "current/checkpoint/checkpoint.safetensors"))
    for runtime, python in pythons.items():
        label = OLD_RUNTIMES[runtime].label
        command = [str(python), str(REPO / "tests/replay.py"), "artifact", "batches.safetensors", runtime]
        run = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
        assert run.returncode == 0, f"training on {label} failed:\n{run.stderr[-3000:]}"
        old = json.loads((workdir / runtime / "history.json").read_text())
        np.testing.assert_allclose(old["losses"], here["losses"], rtol=1e-5, err_msg=f"losses on {label}")
        np.testing.assert_allclose(old["lrs"], here["lrs"], rtol=1e-12, err_msg=f"lrs on {label}")
        actual = load_file(str(workdir / runtime / "checkpoint/checkpoint.safetensors"))
        assert actual.keys() == expected.keys(), label
        for name, value in expected.items():
            np.testing.assert_allclose(actual[name], value, rtol=1e-4, atol=1e-6, err_msg=f"{name} on {label}")
