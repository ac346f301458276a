"""Data-parallel training under ``mpiexec``: N ranks with batch b train as one process with batch N * b.

Each test compiles in this process, launches ``tests/distributed/worker.py`` on N ranks (no torch there),
and compares every rank's losses and state with a reference: a single ``TrainingSession`` on the
concatenation of the ranks' batches, or torch ``DistributedDataParallel`` for BatchNorm (whose
statistics are per rank, so no single batch reproduces them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from models import MLP, TinyLM, flat_cross_entropy
from runtimes import mpiexec
from torch import nn

import optgraph
from optgraph import NonFiniteError, distributed, lr_scheduler, optim
from optgraph.artifact import Artifact
from optgraph.artifact.names import STEP_COUNTER

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CPU = ["CPUExecutionProvider"]
RTOL, ATOL = 1e-5, 1e-6


def launch(script: Path, ranks: int, args: list[str], check: bool = True, timeout: int = 300):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    command = [mpiexec(), "-n", str(ranks), sys.executable, str(script), *args]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if check:
        assert run.returncode == 0, f"{' '.join(command)} failed:\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}"
    return run


def run_workers(tmp_path: Path, ranks: int, name: str = "run", check: bool = True, **config) -> list:
    out = tmp_path / name
    out.mkdir()
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"out": str(out), **config}))
    launch(HERE / "worker.py", ranks, [str(path)], check=check)
    return [dict(np.load(out / f"rank{r}.npz")) for r in range(ranks)] if check else []


def reference(artifact, data, ranks, batch_size, steps, *, flatten=(), first_epoch=0, scheduler_step=True, **breaks):
    """A single TrainingSession on the ranks' batches concatenated, step for step, as worker.py takes them."""
    session = optgraph.TrainingSession(artifact, providers=CPU)
    names = [*session.manifest.extra["data_inputs"], *session.manifest.extra["targets"]]
    size = len(data[names[0]])
    losses, lrs, step, epoch = [], [], 0, first_epoch
    while step < steps:
        shards = [distributed.shard(size, epoch, 0, r, ranks) for r in range(ranks)]
        for start in range(0, len(shards[0]), batch_size):
            parts = [s[start : start + batch_size] for s in shards]
            batch = []
            for name in names:
                rows = [data[name][p] for p in parts]
                if breaks.get("nan_at") == step and name == names[0]:
                    rows[breaks.get("nan_rank", 0)] = np.full_like(rows[0], np.nan)
                batch.append(np.concatenate([r.reshape(-1) if name in flatten else r for r in rows]))
            if breaks.get("bad_batch_at") == step:
                losses.append(None)  # refused on every rank: no step at all
            else:
                try:
                    losses.append(session.step(*batch))
                except NonFiniteError:
                    losses.append(float("nan"))
            step += 1
            if step == steps:
                break
        epoch += 1
        if scheduler_step:
            session.scheduler_step()
        lrs.append(session.lr)
    return session, losses, lrs


def assert_same_run(results, session, losses, lrs, bad_rank=None):
    """Every rank equals the reference (losses, lr, parameters, buffers, optimizer state) and every other rank."""
    for rank, result in enumerate(results):
        ours = result["losses"]
        for step, (got, want) in enumerate(zip(ours, losses)):
            if want is None:
                assert got == (-1.0 if rank == bad_rank else -2.0), f"rank {rank} step {step}: refused everywhere"
            elif np.isnan(want):
                assert np.isnan(got), f"rank {rank} step {step}: skipped everywhere"
            else:
                np.testing.assert_allclose(got, want, rtol=RTOL, err_msg=f"rank {rank} loss at step {step}")
        np.testing.assert_allclose(result["lrs"], np.array(lrs, dtype=np.float64), rtol=1e-12)
        for name, value in session.state_dict().items():
            np.testing.assert_allclose(
                result[f"state/{name}"], value, rtol=RTOL, atol=ATOL, err_msg=f"rank {rank} {name}"
            )
            assert result[f"state/{name}"].tobytes() == results[0][f"state/{name}"].tobytes(), f"{name}: ranks differ"
        for param, slots in session.optimizer_state_dict().items():
            for slot, value in slots.items():
                got = result[f"optim/{param}/{slot}"]
                np.testing.assert_allclose(got, value, rtol=RTOL, atol=ATOL, err_msg=f"rank {rank} {param} {slot}")


# -- equal to one big batch -------------------------------------------------------------------------------


def _mlp_case():
    model = MLP()
    x, y = torch.randn(4, 8), torch.randint(0, 4, (4,))
    rng = np.random.default_rng(1)
    data = {"features": rng.standard_normal((40, 8)).astype(np.float32), "target": rng.integers(0, 4, 40)}
    return model, (x,), (y,), nn.CrossEntropyLoss(), data, ()


def _transformer_case():
    model = TinyLM()
    tokens, labels = torch.randint(0, 40, (3, 5)), torch.randint(0, 40, (15,))
    rng = np.random.default_rng(2)
    data = {"tokens": rng.integers(0, 40, (22, 5)), "target": rng.integers(0, 40, (22, 5))}
    return model, (tokens,), (labels,), flat_cross_entropy, data, ("target",)


CASES = {
    # name: (model case, ranks, per-rank batch, transfer, breaks)
    "mlp-2ranks-nan-and-bad-batch": (
        _mlp_case,
        2,
        4,
        "auto",
        {"nan_at": 5, "nan_rank": 1, "bad_batch_at": 8, "flag_at": {"rank": 1, "step": 3}},
    ),  # fmt: skip
    "mlp-3ranks-uneven-staged": (_mlp_case, 3, 4, "staged", {}),  # 14 samples a rank: batches 4, 4, 4, 2
    "transformer-2ranks": (_transformer_case, 2, 3, "auto", {}),
    "transformer-3ranks-uneven": (_transformer_case, 3, 3, "auto", {}),  # 8 samples a rank: 3, 3, 2
}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """The MLP and the transformer, AdamW with clipping, accumulation over 2 calls and a schedule."""
    made = {}
    for make in (_mlp_case, _transformer_case):
        torch.manual_seed(0)
        model, inputs, targets, loss, data, flatten = make()
        artifact = optgraph.compile(
            model, inputs, targets, loss,
            optimizer=optim.AdamW(lr=0.01), lr_scheduler=lr_scheduler.StepLR(step_size=1, gamma=0.7),
            clip_grad_norm=0.5, grad_accumulation_steps=2,
        )  # fmt: skip
        folder = tmp_path_factory.mktemp(make.__name__)
        artifact.save(folder / "artifact")
        np.savez(folder / "data.npz", **data)
        made[make] = (folder, data, flatten)
    return made


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_ranks_train_as_one_big_batch(artifacts, tmp_path, case):
    """10 AdamW updates (20 calls, 2 per update) with clipping: N ranks x b = 1 process x N*b, every rank alike.

    The MLP run also has a NaN batch on rank 1 (every rank skips that step), a short batch on rank 0
    (InputError there, PeerError on the other rank, nothing changes anywhere): 22 calls then; and a flag
    that rank 1 alone raises, which any_rank gives every rank at the same step.
    """
    make, ranks, batch_size, transfer, breaks = CASES[case]
    folder, data, flatten = artifacts[make]
    breaks = dict(breaks)
    steps = 20 + sum(1 for key in ("nan_at", "bad_batch_at") if key in breaks)
    results = run_workers(
        tmp_path, ranks, artifact=str(folder / "artifact"), data=str(folder / "data.npz"), batch_size=batch_size,
        steps=steps, transfer=transfer, flatten=list(flatten), **breaks,
    )  # fmt: skip
    flag = breaks.pop("flag_at", None)
    session, losses, lrs = reference(folder / "artifact", data, ranks, batch_size, steps, flatten=flatten, **breaks)
    assert_same_run(results, session, losses, lrs, bad_rank=breaks.get("bad_rank", 0))
    for result in results:  # what one rank saw, every rank acts on at the same step
        assert result["agreed"].tolist() == ([flag["step"]] if flag else [])
    stats = results[0]
    gradient_bytes = sum(v.nbytes for k, v in session.state_dict().items() if k in session.optimizer_state_dict())
    assert stats["stats/steps"] == steps
    assert stats["stats/allreduce_calls"] == steps + 10, "one small call a step, one gradient bucket an update"
    assert stats["stats/allreduce_bytes"] == steps * 24 + 10 * gradient_bytes


# -- BatchNorm: as torch DDP ------------------------------------------------------------------------------


def test_batchnorm_statistics_are_torch_ddps(tmp_path):
    """Rank 0's state after every call, and the mean loss, equal torch DDP's (gloo), without and with no_sync.

    Rank 1 starts from other weights (both sides broadcast rank 0's at the start); each rank's BatchNorm
    uses its own batch, and after each update every rank takes rank 0's running statistics (DDP's
    broadcast_buffers=True), so the other ranks' state equals rank 0's after every update.
    """
    sys.path.insert(0, str(HERE))
    from ddp_reference import bn_model

    rng = np.random.default_rng(3)
    data = {"input": rng.standard_normal((30, 6)).astype(np.float32), "target": rng.integers(0, 3, 30)}
    np.savez(tmp_path / "data.npz", **data)
    config = {
        "world": 2, "lr": 0.01, "clip": 1.0, "seed": 0, "batch_size": 4, "steps": 8, "accumulation": [1, 2],
        "data": str(tmp_path / "data.npz"), "out": str(tmp_path), "store": str(tmp_path / "store"),
    }  # fmt: skip
    (tmp_path / "ddp.json").write_text(json.dumps(config))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    ddp = subprocess.run(
        [sys.executable, str(HERE / "ddp_reference.py"), str(tmp_path / "ddp.json")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-5000:]
    x, y = torch.from_numpy(data["input"][:4]), torch.from_numpy(data["target"][:4])
    for k in config["accumulation"]:
        artifact = optgraph.compile(
            bn_model(0), (x,), (y,), nn.CrossEntropyLoss(),
            optimizer=optim.AdamW(lr=config["lr"]), clip_grad_norm=config["clip"], grad_accumulation_steps=k,
        )  # fmt: skip
        artifact.save(tmp_path / f"art{k}")
        other = Artifact.load(tmp_path / f"art{k}")  # rank 1's start: the same graphs, other weights
        other.state.update({n: v.detach().numpy() for n, v in bn_model(1).state_dict().items()})
        other.save(tmp_path / f"art{k}-rank1")
        results = run_workers(
            tmp_path, 2, f"k{k}", artifacts=[str(tmp_path / f"art{k}"), str(tmp_path / f"art{k}-rank1")],
            data=str(tmp_path / "data.npz"), batch_size=4, steps=8, record_every_step=True, scheduler_step=False,
        )  # fmt: skip
        expected = np.load(tmp_path / f"ddp_k{k}.npz")
        np.testing.assert_allclose(results[0]["losses"], expected["losses"], rtol=RTOL)
        for step in range(8):
            updated = (step + 1) % k == 0
            names = [n[len(f"step{step}/") :] for n in expected.files if n.startswith(f"step{step}/")]
            assert "1.running_mean" in names and "1.num_batches_tracked" in names
            for name in names:
                want, got = expected[f"step{step}/{name}"], results[0][f"step{step}/{name}"]
                np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=f"k={k} step {step} {name}")
                if updated:
                    assert results[1][f"step{step}/{name}"].tobytes() == got.tobytes(), f"{name}: rank 1 differs"
        mid_cycle = results[1]["step0/1.running_mean"] if k > 1 else None
        if mid_cycle is not None:  # between updates each rank has its own statistics, as in DDP
            assert not np.array_equal(mid_cycle, results[0]["step0/1.running_mean"])


# -- checkpoints: a killed rank, a resume on another number of ranks -------------------------------------


def test_a_killed_rank_leaves_a_loadable_checkpoint_and_three_ranks_resume_it(artifacts, tmp_path):
    """Two ranks save every 3 calls into one directory (and into one of its own each time); rank 1 is
    SIGKILLed as it enters the second save, so rank 0 may be killed while writing it. The directory holds a
    complete checkpoint, of the first save or of the second, and three ranks resume from it, and from the
    first save (taken between the two calls of an update), as one big batch does."""
    folder, data, _ = artifacts[_mlp_case]
    ckpt = tmp_path / "ckpt"
    common = {"data": str(folder / "data.npz"), "batch_size": 4, "scheduler_step": False}
    run_workers(
        tmp_path, 2, "killed", check=False, artifact=str(folder / "artifact"), steps=12, save_every=3,
        save_dir=str(ckpt), keep_saves=True, kill={"rank": 1, "at_save": 2}, **common,
    )  # fmt: skip
    assert not (tmp_path / "killed" / "rank0.npz").exists(), "the run was to die with its rank"
    updates = int(Artifact.load(ckpt).state[STEP_COUNTER])
    assert updates in (1, 3), "3 calls (one update and half of one) or 6 (three updates)"
    optgraph.TrainingSession(ckpt, providers=CPU)
    for name, saved in [("resumed", ckpt), ("resumed-mid-cycle", tmp_path / "ckpt-1")]:
        resumed = run_workers(tmp_path, 3, name, artifact=str(saved), steps=6, first_epoch=1, **common)
        session, losses, lrs = reference(saved, data, 3, 4, 6, first_epoch=1, scheduler_step=False)
        assert_same_run(resumed, session, losses, lrs)
    assert int(Artifact.load(tmp_path / "ckpt-1").state[STEP_COUNTER]) == 1


# -- the example script: what `optgraph train` will do under mpiexec ---------------------------------------


def test_the_example_trains_under_mpiexec_and_alone(artifacts, tmp_path):
    from safetensors.numpy import save_file

    folder, data, _ = artifacts[_mlp_case]
    save_file(data, str(tmp_path / "data.safetensors"))
    script = ROOT / "examples" / "data_parallel.py"
    args = [str(folder / "artifact"), str(tmp_path / "data.safetensors"), "--epochs", "2", "--batch-size", "4"]
    run = launch(script, 2, [*args, "--save", str(tmp_path / "two")])
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert [line["step"] for line in lines[:-1]] == list(range(10)), "rank 0 alone prints: 20 samples a rank, 2 epochs"
    assert lines[-1] == {"saved": str(tmp_path / "two"), "processes": 2, "steps": 10}
    assert int(Artifact.load(tmp_path / "two").state[STEP_COUNTER]) == 5
    alone = subprocess.run(
        [sys.executable, str(script), *args, "--save", str(tmp_path / "one")],
        env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert json.loads(alone.stdout.splitlines()[-1]) == {"saved": str(tmp_path / "one"), "processes": 1, "steps": 20}


def test_the_allreduce_overhead_tool_on_its_smallest_workload(tmp_path):
    mpiexec()  # skips (fails in CI) without mpi4py and a launcher
    out = tmp_path / "overhead.json"
    command = [sys.executable, "-m", "tools.allreduce_overhead", "--model", "mlp", "--batch", "8", "--ranks", "1", "2"]
    run = subprocess.run(
        [*command, "--steps", "2", "--warm-up", "1", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert (
        "| ranks | threads a rank | step, ms | in Allreduce, ms |" in run.stdout and "reduce alone, ms |" in run.stdout
    )
    results = json.loads(out.read_text())
    assert results["fused_step_ms"] > 0 and [r["ranks"] for r in results["runs"]] == [1, 2]
    gradient_bytes = 4 * (784 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10)
    for run in results["runs"]:
        assert len(run["per_rank"]) == run["ranks"]
        for rank in run["per_rank"]:
            assert rank["gradient_bytes"] == gradient_bytes and rank["bytes_per_step"] == gradient_bytes + 24
