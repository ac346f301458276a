"""Time one AdamW training step: optgraph on onnxruntime, eager torch, and onnxruntime-training.

    python -m tools.benchmark [--threads 2] [--steps 200] [--rounds 5] [--batch 64] [--models mlp cnn] [--peer]

Each side runs in its own process (two frameworks in one process fight over
spinning thread pools), with the same model, batch and number of intra-op
threads; the sides take turns for ``--rounds`` rounds and the median round
counts, so that machine noise hits all of them alike.

- optgraph: the whole ``session.step`` (validation, binding, forward,
  backward, optimizer update), from an artifact directory, without torch.
- torch: ``zero_grad; loss.backward(); opt.step()``.
- onnxruntime-training 1.19.2 (``--peer``; its environment comes from
  ``python -m tools.old_runtime_venv --peer``): its on-device training API,
  ``module(x, y); optimizer.step(); module.lazy_reset_grad()``, on artifacts
  made by its ``generate_artifacts`` from the same model exported to ONNX.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parent
PEER_PYTHON = TOOLS.parent / ".venv-ort1.19" / "bin" / "python"
WARM_UP = 10


def mlp():
    from torch import nn

    return nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))


def cnn():
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 8 * 8, 10),
    )  # fmt: skip


MODELS = {"mlp": mlp, "cnn": cnn}
SAMPLE_SHAPES = {"mlp": (256,), "cnn": (3, 32, 32)}  # one sample's input; batches add dim 0


def _batch(shape, batch: int):
    rng = np.random.default_rng(0)
    return rng.standard_normal((batch, *shape), dtype=np.float32), rng.integers(0, 10, batch)


def _ms_per_step(step, steps: int) -> float:
    for _ in range(WARM_UP):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps * 1e3


# One side each; these run in a child process.


def time_optgraph(folder: Path, shape, batch: int, steps: int, threads: int) -> float:
    import onnxruntime as ort

    import optgraph

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = optgraph.TrainingSession(folder / "optgraph", providers=["CPUExecutionProvider"], session_options=options)
    x, y = _batch(shape, batch)
    return _ms_per_step(lambda: session.step(x, y), steps)


def time_torch(name: str, shape, batch: int, steps: int, threads: int) -> float:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = MODELS[name]()
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = (torch.from_numpy(a) for a in _batch(shape, batch))

    def step():
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()

    return _ms_per_step(step, steps)


def time_peer(folder: Path, shape, batch: int, steps: int, threads: int) -> float:
    import onnxruntime as ort
    from onnxruntime.training.api import CheckpointState, Module, Optimizer

    peer = folder / "peer"
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    state = CheckpointState.load_checkpoint(str(peer / "checkpoint"))
    module = Module(str(peer / "training_model.onnx"), state, None, device="cpu", session_options=options)
    optimizer = Optimizer(str(peer / "optimizer_model.onnx"), module)
    module.train()
    x, y = _batch(shape, batch)

    def step():
        module(x, y)
        optimizer.step()
        module.lazy_reset_grad()

    return _ms_per_step(step, steps)


def make_peer_artifacts(folder: Path) -> None:
    """onnxruntime-training's artifacts (AdamW, cross-entropy) for the exported forward model."""
    import onnx
    from onnxruntime.training import artifacts

    model = onnx.load(str(folder / "forward.onnx"))
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    params = [t.name for t in model.graph.initializer if not t.name.endswith(buffers)]
    (folder / "peer").mkdir()
    artifacts.generate_artifacts(
        model,
        requires_grad=params,
        loss=artifacts.LossType.CrossEntropyLoss,
        optimizer=artifacts.OptimType.AdamW,
        artifact_directory=str(folder / "peer"),
    )


# The parent: builds every side's artifacts, then takes turns.


def prepare(name: str, batch: int, folder: Path, peer: bool) -> None:
    import torch

    import optgraph
    from optgraph import optim

    torch.manual_seed(0)
    model = MODELS[name]()
    x, y = (torch.from_numpy(a) for a in _batch(SAMPLE_SHAPES[name], batch))
    artifact = optgraph.compile(model, (x,), (y,), torch.nn.CrossEntropyLoss(), optimizer=optim.AdamW(lr=1e-3))
    artifact.save(folder / "optgraph")
    if peer:
        torch.manual_seed(0)
        model = MODELS[name]()
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and in-place notes
        torch.onnx.export(
            model, (x,), str(folder / "forward.onnx"), dynamo=False, opset_version=17, do_constant_folding=False,
            input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"}},
            training=torch.onnx.TrainingMode.TRAINING,
        )  # fmt: skip
        _child(PEER_PYTHON, ["make_peer_artifacts", str(folder)])


def _child(python, args: list[str]) -> str:
    run = subprocess.run([str(python), __file__, "--child", *args], capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:1])} failed:\n{run.stderr[-3000:]}")
    return run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""


def child(args: list[str]) -> None:
    if args[0] == "make_peer_artifacts":
        make_peer_artifacts(Path(args[1]))
        return
    side, folder, name, batch, steps, threads = args
    shape = SAMPLE_SHAPES[name]
    if side == "optgraph":
        ms = time_optgraph(Path(folder), shape, int(batch), int(steps), int(threads))
    elif side == "torch":
        ms = time_torch(name, shape, int(batch), int(steps), int(threads))
    else:
        ms = time_peer(Path(folder), shape, int(batch), int(steps), int(threads))
    print(json.dumps(ms))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--peer", action="store_true", help="also time onnxruntime-training 1.19.2")
    args = parser.parse_args()
    if args.peer and not PEER_PYTHON.exists():
        sys.exit(f"no {PEER_PYTHON}: run python -m tools.old_runtime_venv --peer first")
    sides = {"optgraph": sys.executable, "torch": sys.executable}
    if args.peer:
        sides["ort-training"] = PEER_PYTHON
    import onnxruntime
    import torch

    print(
        f"onnxruntime {onnxruntime.__version__}, torch {torch.__version__}, {args.threads} threads, batch {args.batch}"
    )
    print(f"ms per AdamW step, median of {args.rounds} rounds of {args.steps} steps, each side in its own process")
    print(f"{'model':6}" + "".join(f"{side:>14}" for side in sides) + f"{'torch/optgraph':>16}")
    for name in args.models:
        with tempfile.TemporaryDirectory() as folder:
            prepare(name, args.batch, Path(folder), args.peer)
            times = {side: [] for side in sides}
            for _ in range(args.rounds):
                for side, python in sides.items():
                    command = [side, folder, name, str(args.batch), str(args.steps), str(args.threads)]
                    times[side].append(float(_child(python, command)))
            median = {side: statistics.median(t) for side, t in times.items()}
            cells = "".join(f"{median[side]:14.2f}" for side in sides)
            print(f"{name:6}{cells}{median['torch'] / median['optgraph']:15.2f}x")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
    else:
        main()
