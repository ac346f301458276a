"""``optgraph compile``: a factory (or a TOML config) to an artifact directory, with a short summary."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from optgraph.artifact.names import (
    DATA_INPUTS_KEY,
    LR_SCHEDULER_KEY,
    MANIFEST_FILE,
    OPTIMIZER_KEY,
    PARAM_GROUPS_KEY,
    TARGETS_KEY,
    GraphName,
)
from optgraph.cli import describe
from optgraph.cli.config import CompileConfig, is_config_file, read_config
from optgraph.cli.errors import UsageError
from optgraph.cli.extras import TORCH, require
from optgraph.cli.options import OPTIMIZERS, SCHEDULES, build, optimizer_call, parse_dynamic, scheduler_call
from optgraph.cli.target import call_factory, load_factory
from optgraph.cli.values import parse_pair

HELP = "compile a model, its loss, an optimizer and a schedule into an artifact directory"

DESCRIPTION = """\
Compile TARGET into an artifact directory that any onnxruntime can train.

TARGET is path/to/file.py:factory or package.module:factory, a function that returns
(model, example_inputs, example_targets, loss_fn), or a .toml file that names it and sets
the options below (flags win over the file; see docs/cli.md).

Every optimizer of optgraph.optim and every schedule of optgraph.lr_scheduler is reachable
by name (any case), with torch's argument names:

  --optimizer adamw --lr 1e-3 --optimizer-arg betas=0.9,0.99 --optimizer-arg weight_decay=0.05
  --param-group 'params=*.bias,*norm*;weight_decay=0'
  --scheduler cosineannealinglr --scheduler-arg T_max=100
  --scheduler 'SequentialLR(schedulers=[LinearLR(start_factor=0.1, total_iters=5),
               CosineAnnealingLR(T_max=95)], milestones=[5])'

Values are Python literals where they are one; a comma list is a tuple; true/false/none/inf
are read in any case; anything else is a string (mode=max).
"""


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "compile", parents=[common], help=HELP, description=DESCRIPTION, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("target", metavar="TARGET", help="file.py:factory, package.module:factory or config.toml")
    p.add_argument("-o", "--out", metavar="DIR", help="the artifact directory to write (new, empty or an artifact)")
    p.add_argument("--optimizer", metavar="NAME", help=f"one of {', '.join(OPTIMIZERS)}, or Name(arg=value, ...)")
    p.add_argument("--lr", type=float, metavar="LR", help="the optimizer's learning rate")
    p.add_argument("--optimizer-arg", action="append", default=[], metavar="NAME=VALUE", help="an optimizer argument")
    p.add_argument(
        "--param-group",
        action="append",
        default=[],
        metavar="SPEC",
        help="a parameter group: 'params=PATTERN[,PATTERN...];NAME=VALUE;...' (repeat for more, first match wins)",
    )
    p.add_argument("--scheduler", metavar="NAME", help=f"one of {', '.join(SCHEDULES)}, Name(arg=value, ...), or none")
    p.add_argument("--scheduler-arg", action="append", default=[], metavar="NAME=VALUE", help="a schedule argument")
    p.add_argument("--clip-grad-norm", type=float, metavar="MAX_NORM", help="clip the gradients' global L2 norm")
    p.add_argument("--grad-accumulation-steps", type=int, metavar="K", help="update every K steps")
    p.add_argument(
        "--dynamic",
        action="append",
        default=[],
        metavar="SPEC",
        help="dynamic dimensions: NAME=DIM:SYMBOL[,DIM:SYMBOL...] (SYMBOL: seq, seq<=64, 1<=seq<=64, auto), "
        "NAME=static, or static for all (default: dim 0 of every input and target)",
    )
    p.add_argument("--factory-arg", action="append", default=[], metavar="NAME=VALUE", help="a factory argument")
    p.set_defaults(run=run)


def configure(args: argparse.Namespace) -> CompileConfig:
    """The config file (if TARGET is one) with the flags applied over it."""
    if is_config_file(args.target):
        config = read_config(Path(args.target))
    else:
        config = CompileConfig(args.target, Path.cwd())
    if args.out is not None:
        config.out = Path(args.out)
    if config.out is None:
        raise UsageError('where to? give -o DIR (or out = "DIR" in the config file)')
    config.factory_args.update(parse_pair(a, "--factory-arg") for a in args.factory_arg)
    config.optimizer = optimizer_call(config.optimizer, args.optimizer, args.lr, args.optimizer_arg, args.param_group)
    config.lr_scheduler = scheduler_call(config.lr_scheduler, args.scheduler, args.scheduler_arg)
    if args.clip_grad_norm is not None:
        config.clip_grad_norm = args.clip_grad_norm
    if args.grad_accumulation_steps is not None:
        config.grad_accumulation_steps = args.grad_accumulation_steps
    config.dynamic_shapes = parse_dynamic(args.dynamic, config.dynamic_shapes)
    clip, steps = config.clip_grad_norm, config.grad_accumulation_steps
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or not clip > 0):
        raise UsageError(f"--clip-grad-norm must be a positive number, got {clip!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UsageError(f"--grad-accumulation-steps must be a positive integer, got {steps!r}")
    return config


def run(args: argparse.Namespace) -> int:
    config = configure(args)
    # built before torch is imported: a wrong name or argument fails at once
    optimizer = None if config.optimizer is None else build(config.optimizer, OPTIMIZERS, "optimizer", "--optimizer")
    schedule = None
    if config.lr_scheduler is not None:
        schedule = build(config.lr_scheduler, SCHEDULES, "schedule", "--scheduler")
    _check_out(config.out)
    require(TORCH, "compiling")

    started = time.perf_counter()
    factory = load_factory(config.target, config.base)
    shown = config.target.rpartition(":")[2]
    model, inputs, targets, loss_fn = call_factory(factory, config.factory_args, shown)

    import optgraph

    built = time.perf_counter()
    artifact = optgraph.compile(
        model,
        inputs,
        targets,
        loss_fn,
        optimizer=optimizer,
        lr_scheduler=schedule,
        clip_grad_norm=config.clip_grad_norm,
        grad_accumulation_steps=config.grad_accumulation_steps,
        dynamic_shapes=_torch_dynamic(config.dynamic_shapes),
    )
    compiled = time.perf_counter()
    out = artifact.save(config.out)
    saved = time.perf_counter()
    print(
        f"compiled {config.target} in {saved - started:.1f} s (model {built - started:.1f} s, "
        f"capture and rewrite {compiled - built:.1f} s, save {saved - compiled:.1f} s) -> {out}"
    )
    print_summary(artifact)
    print(f"next: optgraph inspect {out}   or   optgraph train {out} --data DATA.npz --epochs 10")
    return 0


def _check_out(out: Path) -> None:
    """Refuse at once (not after compiling) a folder that the save would refuse: one holding other files."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {out} is a file; give the artifact directory to write")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_FILE).is_file():
        raise UsageError(f"-o {out} holds files that are not an optgraph artifact; give a new or empty directory")


def _torch_dynamic(dynamic):
    """The dynamic dimensions with each symbol as compile takes it: a name, a ``torch.export.Dim``, or AUTO."""
    if not dynamic:
        return dynamic
    import torch

    def symbol(s):
        if s.auto:
            return torch.export.Dim.AUTO
        if s.min is None and s.max is None:
            return s.name
        return torch.export.Dim(s.name, min=s.min, max=s.max)

    return {name: None if dims is None else {d: symbol(s) for d, s in dims.items()} for name, dims in dynamic.items()}


def print_summary(artifact) -> None:
    """Parameters, state size, optimizer, schedule, data and graphs, one line each."""
    facts = describe.facts(artifact)
    manifest = artifact.manifest
    setup = describe.training_setup(manifest)
    state = ", ".join(f"{role} {describe.human_bytes(n)}" for role, n in facts.state_bytes.items())
    train = manifest.graphs[GraphName.TRAIN_STEP]
    data = "; ".join(
        f"{name} {t.dtype}[{', '.join(str(d) for d in t.shape)}]"
        for name in manifest.extra[DATA_INPUTS_KEY] + manifest.extra[TARGETS_KEY]
        for t in [train.input(name)]
    )
    graphs = ", ".join(f"{g.name} {g.nodes} nodes" for g in facts.graphs.values())
    print(f"  parameters  {facts.trainable:,} trainable, {facts.frozen:,} frozen ({facts.param_tensors} tensors)")
    print(f"  state       {describe.human_bytes(facts.total_state_bytes)} ({state})")
    print(f"  optimizer   {describe.call_text(setup[OPTIMIZER_KEY], describe.OPTIMIZER_SKIP)}")
    groups = setup[PARAM_GROUPS_KEY] or []
    if len(groups) > 1:
        declared = (setup[OPTIMIZER_KEY] or {}).get("param_groups") or []
        described = []
        for group in groups:
            index, count = group["index"], len(group["params"])
            options = declared[index] if index < len(declared) else {}
            shown = ", ".join(f"{k}={v!r}" for k, v in options.items() if k != "params") or "defaults"
            described.append(f"{index}: {count} tensor(s), {shown}")
        print(f"  groups      {'; '.join(described)}")
    print(f"  schedule    {describe.call_text(setup[LR_SCHEDULER_KEY])}")
    print(f"  data        {data}")
    print(f"  graphs      {graphs}; opset {facts.opset}, IR {facts.ir_version} ({facts.runtime})")
