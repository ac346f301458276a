"""Time the train step with small parameters packed into one update, against one update per parameter.

    python -m tools.pack_timing [--models mlp cnn] [--sizes 1024 65536] [--configs off default 4096:32768]
                                [--optimizer adamw] [--threads 2] [--steps 200] [--rounds 7]

Each configuration is an artifact compiled with packing off (``off``), as optgraph compiles it
(``default``), or with ``attach_optimizer.PACK_PARAM_MAX_ELEMENTS:PACK_MAX_ELEMENTS`` set to the two
numbers given; each trains in its own process (which never imports torch), and the configurations
take turns for ``--rounds`` rounds, so that machine noise hits them alike. A round counts the median
of its steps; the table gives the median and interquartile range of the rounds, and the 10th
percentile of all steps (the steps that other processes left alone), with the train step's node
count (its update's, inside the non-finite guard, in brackets).

Workloads: ``tools.benchmark``'s ``--models`` (``mlp`` is 784-256-256-10 at batch 64, ``cnn`` its
two-conv CNN at batch 32) and, for each of ``--sizes``, a synthetic ``params-<size>``: 8 vectors of
that many elements with a forward of one multiply-sum each (batch 1), so that the update is most of
the step: how large a parameter, and a pack, still gain from packing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tools.benchmark import MODELS, OPTIMIZERS, WARM_UP, batches, loss_of

VECTORS = 8  # parameters of a params-<size> workload


def _vectors(size: int):
    import torch
    from torch import nn

    class Vectors(nn.Module):
        def __init__(self):
            super().__init__()
            self.ps = nn.ParameterList(nn.Parameter(torch.randn(size) * 0.01) for _ in range(VECTORS))

        def forward(self, x):
            return torch.stack([(x * p).sum(1) for p in self.ps], 1)

    return Vectors()


def _workload(name: str):
    """The torch model and the batch of a workload."""
    if name.startswith("params-"):
        size = int(name.removeprefix("params-"))
        rng = np.random.default_rng(0)
        return _vectors(size), (rng.standard_normal((1, size), dtype=np.float32), rng.integers(0, VECTORS, 1))
    return MODELS[name](), batches(name)[0]


def compile_artifact(name: str, optimizer: str, config: str, folder: Path) -> dict:
    """Compile and save one configuration; its node counts."""
    import onnx
    import torch

    import optgraph
    from optgraph import optim
    from optgraph.rewrite import attach_optimizer

    torch.manual_seed(0)
    model, (x, y) = _workload(name)
    opt_name, options = OPTIMIZERS[optimizer]
    attach_optimizer.PACKING = config != "off"
    if config not in ("off", "default"):
        param_limit, pack_limit = config.split(":")
        attach_optimizer.PACK_PARAM_MAX_ELEMENTS, attach_optimizer.PACK_MAX_ELEMENTS = int(param_limit), int(pack_limit)
    loss = loss_of(name) if not name.startswith("params-") else torch.nn.functional.cross_entropy
    artifact = optgraph.compile(
        model, (torch.from_numpy(x),), (torch.from_numpy(y),), loss, optimizer=getattr(optim, opt_name)(**options)
    )
    artifact.save(folder)
    graph = onnx.load(str(folder / "train_step.onnx")).graph
    guard = next((n for n in graph.node if n.op_type == "If"), None)
    update = next((a.g for a in guard.attribute if a.name == "then_branch"), None) if guard is not None else None
    return {"nodes": _count(graph), "update_nodes": _count(update) if update is not None else 0}


def _count(graph) -> int:
    return sum(1 + sum(_count(a.g) for a in n.attribute if a.HasField("g")) for n in graph.node)


def time_artifact(folder: Path, name: str, threads: int, steps: int) -> list[float]:
    """ms of each of ``steps`` calls of ``session.step``, in this process (it never imports torch)."""
    import onnxruntime as ort

    import optgraph

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = optgraph.TrainingSession(folder, providers=["CPUExecutionProvider"], session_options=options)
    if name.startswith("params-"):
        rng = np.random.default_rng(0)
        size = int(name.removeprefix("params-"))
        x, y = rng.standard_normal((1, size), dtype=np.float32), rng.integers(0, VECTORS, 1)
    else:
        x, y = batches(name)[0]
    for _ in range(WARM_UP):
        session.step(x, y)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        session.step(x, y)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["mlp", "cnn"], choices=list(MODELS))
    parser.add_argument("--sizes", nargs="*", type=int, default=[], help="params-<size> workloads")
    parser.add_argument(
        "--configs", nargs="+", default=["off", "default"], help="off, default, or PARAM_LIMIT:PACK_LIMIT (elements)"
    )
    parser.add_argument("--optimizer", default="adamw", choices=list(OPTIMIZERS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    workloads = args.models + [f"params-{s}" for s in args.sizes]
    print(f"ms per {OPTIMIZERS[args.optimizer][0]} step, median of {args.rounds} interleaved rounds of {args.steps}")
    print(f"steps, {args.threads} threads, each configuration in its own process; off = one update per parameter")
    print("| workload | packing | train_step nodes (update) | ms/step: median | IQR of the rounds | 10th percentile |")
    print("| --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory(prefix="optgraph-pack-timing-") as work:
        for name in workloads:
            counts, times = {}, {config: [] for config in args.configs}
            for config in args.configs:
                folder = Path(work) / f"{name}-{config}"
                counts[config] = _run(["compile", name, args.optimizer, str(config), str(folder)])
            for _ in range(args.rounds):
                for config in args.configs:
                    folder = Path(work) / f"{name}-{config}"
                    times[config].append(_run(["time", str(folder), name, str(args.threads), str(args.steps)]))
            for config in args.configs:
                rounds = [statistics.median(r) for r in times[config]]  # a round: the median of its steps
                q = statistics.quantiles(rounds, n=4) if len(rounds) > 1 else rounds * 3
                fast = statistics.quantiles([t for r in times[config] for t in r], n=10)[0]
                nodes = f"{counts[config]['nodes']} ({counts[config]['update_nodes']})"
                cells = f"{statistics.median(rounds):.3f} | {q[0]:.3f}-{q[2]:.3f} | {fast:.3f}"
                print(f"| {name} | {config} | {nodes} | {cells} |", flush=True)


def _run(arguments: list[str]):
    run = subprocess.run(
        [sys.executable, "-m", "tools.pack_timing", "--child", *arguments], capture_output=True, text=True
    )
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(arguments[:2])} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def child(arguments: list[str]) -> None:
    if arguments[0] == "compile":
        name, optimizer, config, folder = arguments[1:]
        print(json.dumps(compile_artifact(name, optimizer, config, Path(folder))))
    else:
        folder, name, threads, steps = arguments[1:]
        print(json.dumps(time_artifact(Path(folder), name, int(threads), int(steps))))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
    else:
        main()
