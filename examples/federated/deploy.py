"""One command: the deployment run, the same ClientApp started for real on 127.0.0.1.

    python examples/federated/deploy.py [--rounds 3] [--build DIR] [--timeout 300]

A SuperLink and two SuperNodes (one per partition of the non-IID split) run as processes of their own, on free
ports chosen now; ``flwr run --stream`` sends them the Flower app in this directory and prints the ServerApp's
log until the run ends. FLWR_HOME is a temporary folder holding the SuperLink connection and the processes' logs;
nothing is downloaded (the SuperLink's installation of the app's dependencies is off: the apps run in this
Python environment). On the way out (the end of the run, an error, Ctrl-C or SIGTERM) every process started
here is stopped, with those Flower started in turn (SuperExec, ServerApp and ClientApp processes). Exit status 0
when the server evaluated every round.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

from digits_federated.task import DEFAULT_BUILD  # noqa: E402

#: every process this launcher starts, and every process those start, carries this variable: the cleanup (and
#: a test) finds them by it in /proc, even those that left their parent's process group or lost their parent
TAG_VARIABLE = "OPTGRAPH_DEPLOY_TAG"
HOST = "127.0.0.1"
NODES = 2
PR_SET_CHILD_SUBREAPER = 36


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def ancestors() -> set[int]:
    """This process and those above it (which may hold the tag too: a test, a shell that exported it)."""
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            break
    return pids


def tagged(tag: str) -> list[int]:
    """The pids of the live processes (zombies aside) whose environment holds ``TAG_VARIABLE=tag``, but for
    this process and its ancestors: those this launcher started, and those they started."""
    needle = f"{TAG_VARIABLE}={tag}".encode()
    found, mine = [], ancestors()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in mine:
            continue
        try:
            if needle not in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                continue
            if Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
        except OSError:  # gone, or not ours
            continue
        found.append(int(entry))
    return found


class Processes:
    """The processes started here, each in a session (and process group) of its own, and their logs."""

    def __init__(self, home: Path, env: dict[str, str], tag: str):
        self.home, self.env, self.tag = home, env, tag
        self.started: dict[str, subprocess.Popen] = {}
        self.services: list[str] = []  # those that must keep running until the end

    def start(self, name: str, command: list[str], service: bool = True, **kwargs) -> subprocess.Popen:
        log = (self.home / f"{name}.log").open("w")
        options = {"stdout": log, "stderr": subprocess.STDOUT} | kwargs
        process = subprocess.Popen(command, env=self.env, start_new_session=True, **options)
        log.close()
        self.started[name] = process
        if service:
            self.services.append(name)
        return process

    def log(self, name: str) -> str:
        return (self.home / f"{name}.log").read_text(errors="replace")

    def check_alive(self) -> None:
        for name in self.services:
            if (code := self.started[name].poll()) is not None:
                raise RuntimeError(f"{name} exited with status {code}")

    def wait_for(self, what: str, ready, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not ready after {timeout:.0f} s")
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM to each process group started and to every tagged process, SIGKILL to what is left after 10 s."""
        # a second Ctrl-C or SIGTERM must not cut the cleanup short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            for process in self.started.values():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, sig)
            for pid in tagged(self.tag):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                reap()
                if not tagged(self.tag):
                    return
                time.sleep(0.1)
        left = tagged(self.tag)
        if left:
            print(f"deploy: processes still alive after SIGKILL: {left}", file=sys.stderr)


def reap() -> None:
    """Collect every exited child, those orphaned to this subreaper included."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def tee(stream, path: Path) -> None:
    """Print each line of ``stream`` as it comes, and keep it in ``path``."""
    with path.open("a") as transcript:
        for line in stream:
            print(line, end="", flush=True)
            transcript.write(line)
            transcript.flush()


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((HOST, port)) == 0


def deploy(build: Path, rounds: int, timeout: float) -> list[dict]:
    """Run the federation; the server's history (one entry per evaluation, round 0 the initial model)."""
    if not (build / "artifact" / "manifest.json").exists():
        from prepare import prepare

        prepare(build)
    (build / "history.json").unlink(missing_ok=True)
    tag = os.environ.get(TAG_VARIABLE) or uuid.uuid4().hex
    # processes whose parents exit (the SuperLink's SuperExec runs in a session of its own) become children of
    # this one, so that they are reaped here rather than left as zombies of init
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    with tempfile.TemporaryDirectory(prefix="flwr-home-") as home:
        home = Path(home)
        link = free_port()
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "deploy"\n\n[superlink.deploy]\naddress = "{HOST}:{link}"\ninsecure = true\n'
        )
        bin_dir = str(Path(sys.executable).parent)  # flower-superexec, flwr-serverapp, flwr-clientapp
        env = os.environ | {
            TAG_VARIABLE: tag,
            "FLWR_HOME": str(home),
            "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
            # the apps import optgraph from this checkout, whatever the environment has installed
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
            # offline: no installation of the app's dependencies, no telemetry, no update check
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "PYTHONUNBUFFERED": "1",
        }
        processes = Processes(home, env, tag)
        deadline = time.monotonic() + timeout
        try:
            processes.start(
                "superlink",
                [f"{bin_dir}/flower-superlink", "--insecure", "--host", HOST, "--port", str(link),
                 "--isolation", "subprocess", "--disable-runtime-dependency-installation"],
            )  # fmt: skip
            processes.wait_for("the SuperLink", lambda: port_open(link), 60)
            for i in range(NODES):
                port = free_port()
                processes.start(
                    f"supernode-{i}",
                    [f"{bin_dir}/flower-supernode", "--insecure", "--superlink", f"{HOST}:{link}",
                     "--host", HOST, "--port", str(port), "--isolation", "subprocess",
                     "--node-config", f"partition-id={i} num-partitions={NODES}"],
                )  # fmt: skip
            for i in range(NODES):
                processes.wait_for(f"SuperNode {i}", lambda i=i: "SuperNode ID" in processes.log(f"supernode-{i}"), 60)
            config = f"num-clients={NODES} num-server-rounds={rounds} build={json.dumps(str(build))}"
            run = processes.start(
                "flwr-run",
                [f"{bin_dir}/flwr", "run", str(HERE), "deploy", "--stream", "--run-config", config],
                service=False,
                stdout=subprocess.PIPE,
                text=True,
            )
            echo = threading.Thread(target=tee, args=(run.stdout, home / "flwr-run.log"), daemon=True)
            echo.start()
            while run.poll() is None:
                processes.check_alive()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the run did not finish within {timeout:.0f} s")
                time.sleep(0.2)
            echo.join(timeout=5)
            if run.returncode != 0:
                raise RuntimeError(f"flwr run exited with status {run.returncode}")
            history_file = build / "history.json"
            history = json.loads(history_file.read_text()) if history_file.exists() else []
            if [h["round"] for h in history] != list(range(rounds + 1)):
                raise RuntimeError(f"the server evaluated rounds {[h['round'] for h in history]}, not 0..{rounds}")
            return history
        except BaseException:
            for name in processes.started:
                print(f"--- {name}.log (end) ---\n{processes.log(name)[-2000:]}", file=sys.stderr)
            raise
        finally:
            processes.stop()


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--build", type=Path, default=DEFAULT_BUILD)
    parser.add_argument("--timeout", type=float, default=300, help="seconds for the whole run")
    args = parser.parse_args(argv)
    # SIGTERM (a CI runner's timeout, kill) stops the processes as Ctrl-C does
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    history = deploy(args.build.resolve(), args.rounds, args.timeout)
    accuracy = history[-1]["accuracy"]
    print(f"deployment: held-out accuracy after {len(history) - 1} rounds: {accuracy:.2%}")
    return accuracy


if __name__ == "__main__":
    main()
