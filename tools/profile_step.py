"""Profile ``train_step.onnx`` of an artifact with onnxruntime's profiler: time per op type.

python tools/profile_step.py ARTIFACT_DIR [--batch 64] [--steps 50] [--threads 2]
"""

from __future__ import annotations

import argparse
import collections
import json
import os

import numpy as np
import onnxruntime as ort

import optgraph


def random_batch(session: optgraph.TrainingSession, batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    arrays = []
    for spec in session.manifest.graphs["train_step"].inputs:
        if spec.role not in ("input", "target"):
            continue
        shape = [batch if isinstance(d, str) else d for d in spec.shape]
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
    args = parser.parse_args()
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.enable_profiling = True
    session = optgraph.TrainingSession(args.artifact, providers=["CPUExecutionProvider"], session_options=options)
    batch = random_batch(session, args.batch, np.random.default_rng(0))
    for _ in range(args.steps):
        session.step(*batch)
    runners = session._runners  # noqa: SLF001 - a developer tool
    path = runners["train_step"].session.end_profiling()
    with open(path) as f:
        events = json.load(f)
    os.remove(path)
    for runner in runners.values():
        if runner.name != "train_step" and os.path.exists(other := runner.session.end_profiling()):
            os.remove(other)
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
