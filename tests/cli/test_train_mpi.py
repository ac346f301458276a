"""optgraph train under mpiexec: data-parallel with no other change, rank 0 alone writing, stop and resume.

Each test launches ``mpiexec -n 2`` (the mpich wheel's, beside this Python) on this checkout and
compares with a one-process run in this process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import factories
import numpy as np
import pytest
from cli_helpers import FACTORIES, HERE, ROOT, child_env, cli
from runtimes import mpiexec
from safetensors.numpy import load_file

import optgraph
from optgraph.artifact.names import CHECKPOINT_FILE

RTOL, ATOL = 1e-5, 1e-6  # as tests/distributed: float32 sums in another order


def launch(*args, ranks: int = 2, timeout: float = 180, **popen) -> subprocess.Popen:
    """``mpiexec -n RANKS python ARGS`` in a process group of its own, output piped."""
    command = [mpiexec(), "-n", str(ranks), sys.executable, *map(str, args)]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(), cwd=ROOT,
        start_new_session=True, **popen,
    )  # fmt: skip


def finish(process: subprocess.Popen, timeout: float = 180) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"mpiexec did not end in {timeout} s:\n{out[-3000:]}\n{err[-3000:]}")
    return process.returncode, out, err


def checkpoint(run: Path) -> dict[str, np.ndarray]:
    return load_file(str(run / "checkpoint" / CHECKPOINT_FILE))


def progress(run: Path) -> dict:
    return json.loads((run / "progress.json").read_text())["committed"]["state"]


def assert_same_checkpoint(a: Path, b: Path) -> None:
    first, second = checkpoint(a), checkpoint(b)
    assert sorted(first) == sorted(second)
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)


@pytest.fixture(scope="module")
def sgd_artifact(tmp_path_factory) -> Path:
    """SGD with momentum (no optimizer that normalises the gradients' scale away), clipping, accumulation over
    2 calls, ReduceLROnPlateau on the validation loss."""
    out = tmp_path_factory.mktemp("sgd") / "artifact"
    ran = cli(
        "compile", f"{FACTORIES}:mlp", "-o", out, "--optimizer", "sgd", "--lr", "0.2", "--optimizer-arg",
        "momentum=0.9", "--clip-grad-norm", "0.5", "--grad-accumulation-steps", "2",
        "--scheduler", "ReduceLROnPlateau(factor=0.5, patience=0, threshold=0.5)",
    )  # fmt: skip
    assert ran.rc == 0, ran.err
    return out


def test_two_ranks_with_batch_b_train_as_one_process_with_batch_2b_and_rank_0_alone_writes(
    sgd_artifact, data_files, tmp_path
):
    """Step k of two ranks takes the samples of step k of one process with twice the batch (each epoch's order
    dealt out as DistributedSampler deals it), so losses, validation, learning rates and the whole state agree;
    and only rank 0 prints, writes progress.json, the checkpoint and the plot."""
    train, val = data_files
    log = tmp_path / "writes.log"
    common = ["--data", train, "--val", val, "--epochs", 4]
    process = launch(HERE / "mpi_optgraph.py", log, "train", sgd_artifact, *common, "--batch-size", 8,
                     "--out", tmp_path / "two", "--checkpoint-every-steps", 8)  # fmt: skip
    rc, out, err = finish(process)
    assert rc == 0, (out, err)
    one = cli("train", sgd_artifact, *common, "--batch-size", 16, "--out", tmp_path / "one")
    assert one.rc == 0, one.err

    assert "256 samples, 16 steps of 8 on each of 2 processes (16 a step) per epoch" in out
    epochs = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["1/4", "2/4", "3/4", "4/4"], out  # told once, by rank 0
    assert out.count("done: ") == 1 and out.count("loss curve: ") == 1
    writes = log.read_text().split()
    assert set(writes[1::2]) == {"0"}, f"ranks that wrote: {set(writes[1::2])}"
    assert {"progress", "checkpoint", "plot"} == set(writes[::2])
    assert writes.count("checkpoint") == 4 * 2 + 4, "every 8 steps and every epoch"

    two, ours = progress(tmp_path / "two"), progress(tmp_path / "one")
    assert two["world_size"] == 2 and ours["world_size"] == 1
    np.testing.assert_allclose(two["losses"], ours["losses"], rtol=RTOL)
    lrs = [record["lr"] for record in ours["epochs"]]
    assert lrs[-1] < lrs[0], "the plateau schedule stepped: the validation loss is the one it saw"
    for got, want in zip(two["epochs"], ours["epochs"]):
        assert got["lr"] == want["lr"] and got["steps"] == want["steps"]
        for name, value in want["val"].items():
            assert got["val"][name] == pytest.approx(value, rel=1e-6), name
    for name, value in checkpoint(tmp_path / "one").items():
        np.testing.assert_allclose(checkpoint(tmp_path / "two")[name], value, rtol=RTOL, atol=ATOL, err_msg=name)


def _rank_pid(root: int, rank: int) -> int:
    """The pid of rank ``rank`` among the processes that ``root`` (mpiexec) started, from Linux's /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo, found = [root], []
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(f"{v}={rank}".encode() in environ for v in ("PMI_RANK", "OMPI_COMM_WORLD_RANK")):
            found.append(pid)
    assert len(found) == 1, found
    return found[0]


def _one_process_from(
    saved: Path, data: dict, position: dict, epochs: int, batch_size: int
) -> optgraph.TrainingSession:
    """What one process must do from a checkpoint of two: the rest of the stopped epoch, from the first sample
    the two had not reached, in batches of ``batch_size``, then whole epochs; the schedule after each."""
    session = optgraph.TrainingSession(saved)
    taken = position["batch"] * batch_size * position["world_size"]
    samples = len(data["input"])
    for epoch in range(position["epoch"], epochs):
        order = np.random.default_rng([0, epoch]).permutation(samples)[taken:]
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            session.step(data["input"][rows], data["target"][rows])
        session.scheduler_step()
        taken = 0
    return session


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds rank 1's process in Linux's /proc")
def test_a_stop_on_one_rank_saves_on_both_and_resumes_on_two_ranks_or_one(artifact, tmp_path):
    """SIGINT to rank 1 alone: both ranks stop after the same step and save (exit 130). --resume on two ranks
    then ends bit-identical to an uninterrupted run of two; on one rank, it trains the rest of the stopped
    epoch from the first sample the two had not reached, in its own batches, as one process does."""
    data = factories.classes(3000, seed=2)
    np.savez(tmp_path / "data.npz", **data)
    args = ["-m", "optgraph", "train", artifact, "--data", tmp_path / "data.npz", "--epochs", 3, "--batch-size", 2,
            "--no-plot", "--checkpoint-every-steps", 100]  # fmt: skip
    stopped = tmp_path / "stopped"
    process = launch(*args, "--out", stopped)
    deadline = time.monotonic() + 120
    while not (stopped / "progress.json").exists():  # the first checkpoint: every rank is in the loop
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    os.kill(_rank_pid(process.pid, 1), signal.SIGINT)
    rc, out, err = finish(process)
    assert rc == 130, (out, err)
    assert out.count("stopped in epoch") == 1 and "--resume" in out, out
    position = progress(stopped)
    assert position["world_size"] == 2 and (position["epoch"], position["batch"]) < (3, 0), position
    shutil.copytree(stopped, tmp_path / "stopped-one")
    shutil.copytree(stopped / "checkpoint", tmp_path / "saved")

    resumed = launch(*args, "--out", stopped, "--resume")
    whole = launch(*args, "--out", tmp_path / "whole")
    for process in (resumed, whole):
        rc, out, err = finish(process)
        assert rc == 0, (out, err)
    assert_same_checkpoint(stopped, tmp_path / "whole")
    assert progress(stopped)["losses"] == progress(tmp_path / "whole")["losses"]

    alone = cli(*args[2:], "--out", tmp_path / "stopped-one", "--resume")
    assert alone.rc == 0, alone.err
    assert "saved by 2 processes" in alone.out, alone.out
    reference = _one_process_from(tmp_path / "saved", data, position, 3, 2)
    ours = checkpoint(tmp_path / "stopped-one")
    for name, value in reference.state_dict().items():
        np.testing.assert_array_equal(ours[name], value, err_msg=name)
    assert len(progress(tmp_path / "stopped-one")["losses"]) == len(position["losses"]) + (
        (3000 - position["batch"] * 4) // 2 + 1500 * (2 - position["epoch"])
    )


def test_an_error_on_one_rank_ends_every_rank_and_an_error_on_all_is_told_once(artifact, data_files, tmp_path):
    """A rank that fails alone would leave the others waiting in a collective call: it aborts them all, with its
    exit code and its error. An error that every rank meets (after MPI started) is told once, by rank 0."""
    train, _ = data_files
    args = [HERE / "mpi_optgraph.py", tmp_path / "writes.log"]
    common = ["train", artifact, "--epochs", 1, "--batch-size", 8]
    alone = launch(*args, "--fail-on-rank", 1, *common, "--data", train, "--out", tmp_path / "alone")
    rc, out, err = finish(alone, timeout=60)  # rank 0 waits in the first step's all-reduce: aborted, not hung
    assert rc == 2, (out, err)
    assert f"optgraph train: rank 1: --data {train}: no such file" in err, err
    np.savez(tmp_path / "no-target.npz", input=factories.classes(16)["input"])
    everywhere = launch(*args, *common, "--data", tmp_path / "no-target.npz", "--out", tmp_path / "everywhere")
    rc, out, err = finish(everywhere, timeout=60)
    assert rc == 2, (out, err)
    told = [line for line in err.splitlines() if line.startswith("optgraph train: ")]
    assert len(told) == 1 and "lacks 'target'" in told[0] and not told[0].startswith("optgraph train: rank"), err
