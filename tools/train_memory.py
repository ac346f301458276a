"""Where a training process's memory goes: resident set size at each stage, torch never imported.

    python -m tools.train_memory ARTIFACT_DIR [--batch 64] [--steps 20] [--mem-pattern on|off] [--arena on|off]
                                 [--data-parallel]

Prints, in MiB, the RSS and the peak RSS (Linux ``VmRSS``/``VmHWM``) after the imports, after opening
the artifact, after the first step and after ``--steps`` more, next to the checkpoint's size, and the
median step time. The batch is random, shaped from the manifest (every symbol = ``--batch``), integer
inputs kept inside their ``index_range``. ``--mem-pattern on`` keeps onnxruntime's memory pattern for the
train step (TrainingSession turns it off there unless told otherwise), ``--arena off`` turns off the
CPU arena; both are how docs/benchmarks.md measured the allocator settings. ``--data-parallel`` trains
with the data-parallel step instead (``grad_step``, then ``update_step``) on one rank, ``MPI.COMM_SELF``:
no launcher needed. Run it once per setting: a process's peak only grows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def memory_mb() -> tuple[float, float]:
    """(RSS, peak RSS) of this process in MiB, from Linux's /proc."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return round(fields["VmRSS"], 1), round(fields["VmHWM"], 1)


def random_batch(specs, batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    from optgraph.artifact.names import INDEX_RANGE_KEY

    arrays = []
    for spec in specs:
        shape = [d if isinstance(d, int) else batch for d in spec.shape]
        if np.issubdtype(np.dtype(spec.dtype), np.integer):
            limits = spec.meta.get(INDEX_RANGE_KEY)
            high = limits["high"] if limits is not None else 2
            arrays.append(rng.integers(0, max(high, 1), shape).astype(spec.dtype))
        else:
            arrays.append(rng.standard_normal(shape).astype(spec.dtype))
    return arrays


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--batch", type=int, default=64, help="the size of every symbolic dimension")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mem-pattern", choices=["on", "off"], help="force onnxruntime's memory pattern")
    parser.add_argument("--arena", choices=["on", "off"], default="on", help="onnxruntime's CPU arena")
    parser.add_argument("--data-parallel", action="store_true", help="the split step of one rank (needs mpi4py)")
    args = parser.parse_args()
    sys.modules["torch"] = None  # a training process: importing torch would fail, and would show in the RSS

    import onnxruntime as ort

    import optgraph
    from optgraph.artifact.names import CHECKPOINT_FILE, GraphName
    from optgraph.session import TRAIN_STEP_MEM_PATTERN

    if args.data_parallel:
        from mpi4py import MPI

        from optgraph import distributed
    stages = {"imports": memory_mb()}
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.enable_cpu_mem_arena = args.arena == "on"
    if args.mem_pattern == "on":
        options.add_session_config_entry(TRAIN_STEP_MEM_PATTERN, "1")
    elif args.mem_pattern == "off":
        options.enable_mem_pattern = False
    if args.data_parallel:
        session = distributed.DataParallelSession(
            args.artifact, comm=MPI.COMM_SELF, providers=["CPUExecutionProvider"], session_options=options
        )
    else:
        session = optgraph.TrainingSession(args.artifact, providers=["CPUExecutionProvider"], session_options=options)
    stages["open"] = memory_mb()
    specs = [t for t in session.manifest.graphs[GraphName.TRAIN_STEP].inputs if not t.is_state]
    batch = random_batch(specs, args.batch, np.random.default_rng(0))
    session.step(*batch)
    stages["first step"] = memory_mb()
    times = []
    for _ in range(args.steps):
        started = time.perf_counter()
        session.step(*batch)
        times.append(time.perf_counter() - started)
    stages[f"after {args.steps} more"] = memory_mb()
    checkpoint = (args.artifact / CHECKPOINT_FILE).stat().st_size / 2**20
    print(f"checkpoint {checkpoint:.1f} MiB; median step {np.median(times) * 1e3:.2f} ms")
    for stage, (rss, peak) in stages.items():
        print(f"{stage:>16}: RSS {rss:8.1f} MiB   peak {peak:8.1f} MiB")
    print(json.dumps({"checkpoint_mb": checkpoint, "median_step_ms": float(np.median(times)) * 1e3, **stages}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
