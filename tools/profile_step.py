"""Profile ``train_step.onnx`` of an artifact with onnxruntime's profiler: time per op type.

python -m tools.profile_step ARTIFACT_DIR [--batch 64] [--steps 50] [--threads 2] [--out DIR]

onnxruntime's profiles (chrome-trace JSON, one per graph) go to a temporary
folder that is removed afterwards, or are kept in ``--out DIR``; nothing is
written to the working directory.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

import optgraph
from optgraph.artifact.dims import DimExpr, parse_dim
from optgraph.artifact.names import GraphName, Role


def random_batch(session: optgraph.TrainingSession, batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A batch for the train step: every symbol of size ``batch``, and a dimension derived from symbols (a
    target of ``64*batch`` tokens) of the size they give."""
    arrays = []
    for spec in session.manifest.graphs[GraphName.TRAIN_STEP].inputs:
        if spec.role not in (Role.INPUT, Role.TARGET):
            continue
        dims = [parse_dim(d) if isinstance(d, str) else d for d in spec.shape]
        shape = [d.evaluate(dict.fromkeys(d.symbols, batch)) if isinstance(d, DimExpr) else d for d in dims]
        if spec.dtype.startswith("int"):
            arrays.append(rng.integers(0, 2, size=shape).astype(spec.dtype))
        else:
            arrays.append(rng.standard_normal(shape).astype(spec.dtype))
    return arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--nodes", type=int, default=10, help="how many of the slowest nodes to list")
    parser.add_argument("--out", type=Path, help="keep onnxruntime's profiles in this folder (default: discard them)")
    args = parser.parse_args()
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        events = profile(args, args.out)
    else:
        with tempfile.TemporaryDirectory(prefix="optgraph-profile-") as folder:
            events = profile(args, Path(folder))
    report(events, args)


def profile(args: argparse.Namespace, folder: Path) -> list[dict]:
    """Train ``args.steps`` steps with profiling on, profiles written in ``folder``; train_step's events."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.enable_profiling = True
    options.profile_file_prefix = str(folder.resolve() / "onnxruntime_profile")
    session = optgraph.TrainingSession(args.artifact, providers=["CPUExecutionProvider"], session_options=options)
    batch = random_batch(session, args.batch, np.random.default_rng(0))
    for _ in range(args.steps):
        session.step(*batch)
    paths = session.end_profiling()
    with open(paths[GraphName.TRAIN_STEP]) as f:
        return json.load(f)


def report(events: list[dict], args: argparse.Namespace) -> None:
    per_op: collections.Counter = collections.Counter()
    per_node: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
            per_node[(e["args"]["op_name"], e["name"][: -len("_kernel_time")])] += e["dur"]
    total = sum(per_op.values())
    print(f"{total / args.steps / 1e3:.2f} ms of kernels per step")
    for op, dur in per_op.most_common(15):
        print(f"{op:24} {dur / total:6.1%}  {dur / args.steps / 1e3:8.3f} ms")
    print("slowest nodes:")
    for (op, node), dur in per_node.most_common(args.nodes):
        print(f"  {op:16} {node[:60]:60} {dur / args.steps / 1e3:8.3f} ms")


if __name__ == "__main__":
    main()
