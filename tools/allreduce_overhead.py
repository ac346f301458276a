"""What data-parallel training spends on the all-reduce, per step: bytes reduced and milliseconds in ``Allreduce``.

    python -m tools.allreduce_overhead [--model large-mlp] [--batch 256] [--ranks 1 2] [--steps 20]
                                       [--warm-up 5] [--json PATH]

Compiles a workload of ``tools/benchmark.py`` (default the large MLP, 1024-4096-4096-10, with AdamW lr
1e-3) once, then for each rank count runs ``mpiexec -n R`` on it: each rank opens an
``optgraph.distributed.DataParallelSession`` (onnxruntime with its share of the machine's cores), trains
``--warm-up`` steps, then ``--steps`` timed steps on its own batch of ``--batch`` samples (per rank, as
torch DDP counts batches), and reads its ``comm_stats`` around every step. Printed per rank count, as
medians over the timed steps and the worst rank: the whole step, the time inside ``Allreduce`` (the
gradient buckets and the small per-step call with the loss; waiting for the slowest rank is included),
the bytes each rank reduced, the time of the gradient buckets' ``Allreduce`` calls alone (the ranks
started together after a barrier, times 1/N included: what the transfer costs without the waiting), and
the fused ``TrainingSession`` step of one process with all the cores for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def compile_workload(model: str, folder: Path) -> None:
    import torch
    from torch import nn

    import optgraph
    from optgraph import optim
    from tools import benchmark

    torch.manual_seed(0)
    x, y = (torch.from_numpy(a) for a in benchmark._batch(benchmark.SAMPLE_SHAPES[model], 8))
    loss = benchmark.loss_of(model) if model == "transformer" else nn.CrossEntropyLoss()
    artifact = optgraph.compile(benchmark.MODELS[model](), (x,), (y,), loss, optimizer=optim.AdamW(lr=1e-3))
    artifact.save(folder)


def _batch(model: str, batch: int, seed: int):
    from tools import benchmark

    return benchmark._batch(benchmark.SAMPLE_SHAPES[model], batch, seed)


def worker(args) -> None:
    """One rank: warm up, then time each step and the collectives inside it."""
    from optgraph import distributed
    from optgraph.artifact.names import GraphName

    session = distributed.DataParallelSession(args.worker, providers=["CPUExecutionProvider"])
    x, y = _batch(args.model, args.batch, seed=session.rank)
    for _ in range(args.warm_up):
        session.step(x, y)
    steps, reduce_ms, reduced = [], [], []
    for _ in range(args.steps):
        before, start = session.comm_stats, time.perf_counter()
        session.step(x, y)
        after, end = session.comm_stats, time.perf_counter()
        steps.append((end - start) * 1e3)
        reduce_ms.append((after.allreduce_seconds - before.allreduce_seconds) * 1e3)
        reduced.append(after.allreduce_bytes - before.allreduce_bytes)
    # the reduction alone: the ranks start it together, so no rank waits for another's backward
    alone = []
    for _ in range(args.steps):
        session._comm.Barrier()
        start = time.perf_counter()
        session._gradients.average(session._comm, session._scale, lambda call, nbytes: call())
        alone.append((time.perf_counter() - start) * 1e3)
    gradient_bytes = session._gradients.nbytes
    report = {
        "rank": session.rank,
        "ranks": session.world_size,
        "threads": session._runners[GraphName.GRAD_STEP].session.get_session_options().intra_op_num_threads,
        "step_ms": statistics.median(steps),
        "allreduce_ms": statistics.median(reduce_ms),
        "allreduce_alone_ms": statistics.median(alone),
        "bytes_per_step": statistics.median(reduced),
        "gradient_bytes": gradient_bytes,
        "buckets": len(session._gradients.buckets),
    }
    Path(args.out, f"rank{session.rank}.json").write_text(json.dumps(report))


def fused(args) -> None:
    """The single-process baseline: the fused train step, all the cores."""
    import onnxruntime as ort

    import optgraph

    options = ort.SessionOptions()
    options.intra_op_num_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
    session = optgraph.TrainingSession(args.fused, providers=["CPUExecutionProvider"], session_options=options)
    x, y = _batch(args.model, args.batch, seed=0)
    for _ in range(args.warm_up):
        session.step(x, y)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        session.step(x, y)
        times.append((time.perf_counter() - start) * 1e3)
    Path(args.out, "fused.json").write_text(json.dumps({"step_ms": statistics.median(times)}))


def mpiexec() -> str:
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which("mpiexec", path=path)
    if found is None:
        raise SystemExit("no mpiexec: pip install 'optgraph[mpi]'")
    return found


def _child(flags: list[str], ranks: int | None) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "tools.allreduce_overhead", *flags]
    if ranks is not None:
        command = [mpiexec(), "-n", str(ranks), *command]
    subprocess.run(command, env=env, check=True, cwd=ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="large-mlp", help="a workload of tools/benchmark.py")
    parser.add_argument("--batch", type=int, default=256, help="samples per rank and step")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warm-up", type=int, default=5)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # an artifact: run as one rank
    parser.add_argument("--fused", help=argparse.SUPPRESS)  # an artifact: time the fused step
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.fused:
        return fused(args)
    common = ["--model", args.model, "--batch", str(args.batch), "--steps", str(args.steps)]
    common += ["--warm-up", str(args.warm_up)]
    results = {"model": args.model, "batch_per_rank": args.batch, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        artifact = Path(tmp) / "artifact"
        compile_workload(args.model, artifact)
        out = Path(tmp) / "fused"
        out.mkdir()
        _child([*common, "--fused", str(artifact), "--out", str(out)], None)
        results["fused_step_ms"] = json.loads((out / "fused.json").read_text())["step_ms"]
        for ranks in args.ranks:
            out = Path(tmp) / f"ranks{ranks}"
            out.mkdir()
            _child([*common, "--worker", str(artifact), "--out", str(out)], ranks)
            per_rank = [json.loads((out / f"rank{r}.json").read_text()) for r in range(ranks)]
            results["runs"].append({"ranks": ranks, "per_rank": per_rank})
    print(f"## All-reduce per step: {args.model}, batch {args.batch} per rank, AdamW ({os.cpu_count()} cores)\n")
    print(f"fused TrainingSession, one process, all cores: {results['fused_step_ms']:.1f} ms a step\n")
    print(
        "| ranks | threads a rank | step, ms | in Allreduce, ms | share | reduced a step, MB | buckets | reduce alone, ms |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for run in results["runs"]:
        worst = max(run["per_rank"], key=lambda r: r["step_ms"])
        slowest_reduce = max(r["allreduce_ms"] for r in run["per_rank"])
        mb = np.median([r["bytes_per_step"] for r in run["per_rank"]]) / 1e6
        alone = max(r["allreduce_alone_ms"] for r in run["per_rank"])
        print(
            f"| {run['ranks']} | {worst['threads']} | {worst['step_ms']:.1f} | {slowest_reduce:.1f} | "
            f"{slowest_reduce / worst['step_ms']:.0%} | {mb:.1f} | {worst['buckets']} | {alone:.1f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
