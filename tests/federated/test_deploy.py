"""examples/federated/deploy.py: a SuperLink and two SuperNodes as processes finish their rounds under `flwr run`,
and every process the run started (Flower's own SuperExec, ServerApp and ClientApp processes too) is gone after."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

pytest.importorskip("flwr", reason="the deployment run needs flwr (pip install optgraph[federated])")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "examples" / "federated" / "deploy.py"
TAG_VARIABLE = "OPTGRAPH_DEPLOY_TAG"  # deploy.py's: every process it starts inherits it
FLOWER_COMMANDS = {"flower-superlink", "flower-supernode", "flower-superexec", "flwr-serverapp", "flwr-clientapp"}
ROUNDS = 2


def _tagged(tag: str) -> dict[int, str]:
    """Live processes (zombies aside) whose environment holds the tag: pid -> the Flower command it runs, or ''."""
    needle = f"{TAG_VARIABLE}={tag}".encode()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if needle not in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                continue
            if Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        found[int(entry)] = next((Path(a).name for a in argv[:3] if Path(a).name in FLOWER_COMMANDS), "")
    return found


def test_the_deployment_run_finishes_its_rounds_and_stops_every_process(tmp_path):
    tag = uuid.uuid4().hex
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        TAG_VARIABLE: tag,
    }
    command = [sys.executable, str(DEPLOY), "--build", str(tmp_path), "--rounds", str(ROUNDS), "--timeout", "150"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)  # fmt: skip
    seen: dict[int, str] = {}  # every tagged process sampled while the run went on
    done = threading.Event()

    def sample():
        while not done.is_set():
            seen.update(_tagged(tag))
            time.sleep(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        output, _ = process.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)  # deploy.py's own cleanup first
        output, _ = process.communicate(timeout=30)
        pytest.fail(f"deploy.py did not finish within 180 s:\n{output[-6000:]}")
    finally:
        done.set()
        sampler.join()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        left = _tagged(tag)
        for pid in left:  # never leave them behind, whatever the assertions below say
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert process.returncode == 0, output[-6000:]

    # the rounds: the ServerApp's evaluation of each, in the stream `flwr run` printed and in the file it wrote
    for r in range(ROUNDS + 1):
        assert f"round {r}: held-out accuracy" in output, output[-6000:]
    assert f"deployment: held-out accuracy after {ROUNDS} rounds" in output
    history = json.loads((tmp_path / "history.json").read_text())
    assert [h["round"] for h in history] == list(range(ROUNDS + 1))
    assert history[-1]["accuracy"] > history[0]["accuracy"], history

    # separate processes: one SuperLink, two SuperNodes, a ServerApp run by the SuperLink's SuperExec
    commands = sorted(c for c in seen.values() if c)
    assert commands.count("flower-superlink") == 1, commands
    assert commands.count("flower-supernode") == 2, commands
    assert "flwr-serverapp" in commands, commands

    # and all of them stopped: none of the processes seen is alive, nor any other that carries the tag
    assert left == {}, f"processes left running: {left}"
    alive = [pid for pid in seen if pid in _tagged(tag)]
    assert alive == [], alive
