"""Time one training step: optgraph on onnxruntime vs eager torch, same model, optimizer and batch.

    python tools/benchmark.py [--threads 2] [--steps 200] [--models mlp cnn]

Both sides use the same number of intra-op threads. optgraph's number is the
whole ``session.step`` (validation, binding, forward, backward, optimizer
update); torch's is ``zero_grad; loss.backward(); opt.step()``.
"""

from __future__ import annotations

import argparse
import time

import onnxruntime as ort
import torch
from torch import nn

import optgraph
from optgraph import optim


def mlp():
    return nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)), (256,)


def cnn():
    return (
        nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 8 * 8, 10),
        ),
        (3, 32, 32),
    )  # fmt: skip


MODELS = {"mlp": mlp, "cnn": cnn}


def _time(fn, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def _interleaved(fns, steps: int, rounds: int = 5) -> list[float]:
    """Median time per call of each function, measured in alternating rounds (machine noise hits both)."""
    for fn in fns:
        _time(fn, 10)
    samples = [[] for _ in fns]
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            samples[i].append(_time(fn, max(1, steps // rounds)))
    return [sorted(s)[len(s) // 2] for s in samples]


def bench(name: str, batch: int, steps: int, threads: int) -> dict:
    torch.manual_seed(0)
    model, shape = MODELS[name]()
    x = torch.randn(batch, *shape)
    y = torch.randint(0, 10, (batch,))
    loss_fn = nn.CrossEntropyLoss()
    artifact = optgraph.compile(model, (x,), (y,), loss_fn, optimizer=optim.AdamW(lr=1e-3))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = optgraph.TrainingSession(artifact, providers=["CPUExecutionProvider"], session_options=options)
    xn, yn = x.numpy(), y.numpy()

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def torch_step():
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()

    ours, theirs = _interleaved([lambda: session.step(xn, yn), torch_step], steps)
    return {"model": name, "batch": batch, "optgraph_ms": ours * 1e3, "torch_ms": theirs * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"onnxruntime {ort.__version__}, torch {torch.__version__}, {args.threads} threads, batch {args.batch}")
    print(f"{'model':6} {'optgraph ms':>12} {'torch ms':>10} {'speed-up':>9}")
    for name in args.models:
        r = bench(name, args.batch, args.steps, args.threads)
        print(f"{name:6} {r['optgraph_ms']:12.3f} {r['torch_ms']:10.3f} {r['torch_ms'] / r['optgraph_ms']:8.2f}x")


if __name__ == "__main__":
    main()
