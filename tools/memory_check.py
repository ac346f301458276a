"""Train the MLP for many steps and report the process's resident memory (RSS) as it goes.

    python -m tools.memory_check [--steps 5000] [--batch-size 64] [--max-growth-mb 4]

A session keeps its state on the device and swaps two preallocated buffers
per state tensor, so after the first steps nothing should grow. RSS is read
after a warm-up of 200 steps and then every ``steps // 5``; the tool exits 1
when the last reading exceeds the first by more than ``--max-growth-mb``.
Scheduler steps, eval calls and a varying batch size are mixed in so that
every graph and binding path runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

WARM_UP = 200


def rss_mb() -> float:
    """Resident set size now, in MiB (Linux: /proc; elsewhere the peak, which only grows)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


def compile_mlp(batch_size: int):
    """The benchmark's MLP, with AdamW and a cosine schedule."""
    import torch
    from torch import nn

    import optgraph
    from optgraph import lr_scheduler, optim
    from tools.benchmark import SAMPLE_SHAPES, mlp

    torch.manual_seed(0)
    model = mlp()
    x, y = torch.randn(batch_size, *SAMPLE_SHAPES["mlp"]), torch.randint(0, 10, (batch_size,))
    return optgraph.compile(
        model, (x,), (y,), nn.CrossEntropyLoss(),
        optimizer=optim.AdamW(lr=1e-3), lr_scheduler=lr_scheduler.CosineAnnealingLR(T_max=50),
    )  # fmt: skip


def measure(steps: int, batch_size: int, report=print) -> list[tuple[int, float]]:
    """Run ``steps`` training steps; returns ``(step, RSS MiB)`` readings, the first after the warm-up."""
    import optgraph
    from tools.benchmark import SAMPLE_SHAPES

    session = optgraph.TrainingSession(compile_mlp(batch_size), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    batches = [
        (rng.standard_normal((size, *SAMPLE_SHAPES["mlp"]), dtype=np.float32), rng.integers(0, 10, size))
        for size in (batch_size, batch_size, batch_size // 2 + 1)
    ]
    readings = []
    every = max(1, steps // 5)
    started = time.perf_counter()
    for step in range(1, steps + WARM_UP + 1):
        x, y = batches[step % len(batches)]
        session.step(x, y)
        if step % 100 == 0:
            session.scheduler_step()
            session.eval(x)
        if step >= WARM_UP and (step - WARM_UP) % every == 0:
            readings.append((step - WARM_UP, rss_mb()))
            report(f"step {step - WARM_UP:6d}  RSS {readings[-1][1]:8.1f} MiB  ({time.perf_counter() - started:.1f} s)")
    return readings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-growth-mb", type=float, default=4.0)
    args = parser.parse_args()
    readings = measure(args.steps, args.batch_size)
    growth = readings[-1][1] - readings[0][1]
    print(
        f"RSS before {readings[0][1]:.1f} MiB, after {args.steps} steps {readings[-1][1]:.1f} MiB: growth {growth:+.1f} MiB"
    )
    return 0 if growth <= args.max_growth_mb else 1


if __name__ == "__main__":
    sys.exit(main())
