"""Print the sha256 of every file of a matrix of compiled artifacts, to prove a refactor changes no byte.

    python -m tools.artifact_digest > before.json     # on the old commit
    python -m tools.artifact_digest > after.json      # on the new one
    python -m tools.artifact_digest --compare before.json after.json

The matrix: the benchmark's MLP and CNN with AdamW (what ``tools.benchmark``
times), and a small MLP under every optimizer in ``optgraph.optim.__all__`` (from
its defaults) and every schedule in ``optgraph.lr_scheduler.__all__`` but the
composite ones (from ``SCHEDULE_ARGS``, else its defaults: a new schedule that
needs arguments stops the run until they are added there), with clipping,
accumulation, parameter groups and a BatchNorm model. A case that exists on
only one side (a new optimizer) is reported, not failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

# schedules whose constructors need arguments
SCHEDULE_ARGS = {
    "StepLR": {"step_size": 2},
    "MultiStepLR": {"milestones": [1, 3]},
    "ExponentialLR": {"gamma": 0.9},
    "CosineAnnealingLR": {"T_max": 5},
    "CosineAnnealingWarmRestarts": {"T_0": 3},
    "OneCycleLR": {"max_lr": 0.1, "total_steps": 10},
}
# schedules made of other schedules: the "options-mix" case has one
COMPOSITE_SCHEDULES = ("SequentialLR", "ChainedScheduler")


def cases():
    import torch
    from torch import nn

    import optgraph
    from optgraph import lr_scheduler, optim
    from tools import benchmark

    def mlp():
        return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))

    def bn():
        return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))

    def small(build, **options):
        def make():
            torch.manual_seed(0)
            x, y = torch.randn(4, 6), torch.tensor([0, 1, 2, 0])
            return optgraph.compile(build(), (x,), (y,), nn.CrossEntropyLoss(), **options)

        return make

    def bench(name):
        def make():
            torch.manual_seed(0)
            model = benchmark.MODELS[name]()
            x, y = (torch.from_numpy(a) for a in benchmark._batch(benchmark.SAMPLE_SHAPES[name], 8))
            return optgraph.compile(model, (x,), (y,), nn.CrossEntropyLoss(), optimizer=optim.AdamW(lr=1e-3))

        return make

    yield "bench-mlp", bench("mlp")
    yield "bench-cnn", bench("cnn")
    for name in optim.__all__:
        cls = getattr(optim, name)
        if isinstance(cls, type) and issubclass(cls, optim.Optimizer) and cls is not optim.Optimizer:
            yield f"optim-{name}", small(mlp, optimizer=cls())
    for name in lr_scheduler.__all__:
        cls = getattr(lr_scheduler, name)
        if cls is lr_scheduler.LRScheduler or name in COMPOSITE_SCHEDULES:
            continue
        if name not in SCHEDULE_ARGS and not _no_required_args(cls):
            raise SystemExit(f"schedule {name} needs arguments: add them to SCHEDULE_ARGS in {__file__}")
        yield f"schedule-{name}", small(mlp, lr_scheduler=cls(**SCHEDULE_ARGS.get(name, {})))
    yield (
        "options-mix",
        small(
            bn,
            optimizer=optim.SGD(lr=0.1, momentum=0.9, param_groups=[{"params": ["0.*"], "lr": 0.01}]),
            lr_scheduler=lr_scheduler.SequentialLR(
                [lr_scheduler.LinearLR(start_factor=0.5, total_iters=2), lr_scheduler.ExponentialLR(0.9)], [2]
            ),
            clip_grad_norm=1.0,
            grad_accumulation_steps=3,
        ),
    )
    yield "nadam-accumulate", small(bn, optimizer=optim.NAdam(), grad_accumulation_steps=2)
    yield "asgd-clip", small(mlp, optimizer=optim.ASGD(weight_decay=0.1), clip_grad_norm=0.5)


def _no_required_args(cls) -> bool:
    import inspect

    params = inspect.signature(cls).parameters.values()
    return all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params)


def digests() -> dict[str, dict[str, str]]:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in cases():
            folder = Path(tmp) / name
            make().save(folder)
            out[name] = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}
    return out


def compare(before: dict, after: dict) -> int:
    failures = 0
    for name in sorted(set(before) | set(after)):
        if name not in before or name not in after:
            print(f"{name}: only {'after' if name in after else 'before'}")
            continue
        changed = [f for f in sorted(set(before[name]) | set(after[name])) if before[name].get(f) != after[name].get(f)]
        print(f"{name}: {'identical' if not changed else 'CHANGED ' + ', '.join(changed)}")
        failures += bool(changed)
    return 1 if failures else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="compare two outputs of this tool")
    args = parser.parse_args()
    if args.compare:
        before, after = (json.loads(Path(p).read_text()) for p in args.compare)
        sys.exit(compare(before, after))
    print(json.dumps(digests(), indent=1))


if __name__ == "__main__":
    main()
