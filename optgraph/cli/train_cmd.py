"""``optgraph train``: train an artifact on a data file, with progress, checkpoints, resume and a loss curve."""

from __future__ import annotations

import argparse
from pathlib import Path

from optgraph.cli.errors import EXIT_INTERRUPTED, UsageError
from optgraph.cli.metrics import METRICS
from optgraph.cli.trainer import SCHEDULER_EVERY, TrainOptions, epoch_line, train

HELP = "train an artifact on a .npz or .safetensors file (no torch needed)"

DESCRIPTION = """\
Train the artifact DIR on --data, one array per input and target named as the manifest names
them (optgraph inspect DIR lists them), with the samples along dim 0. Batches are shuffled
from --seed; the schedule steps after each epoch (ReduceLROnPlateau with the validation loss,
or the mean training loss without --val), OneCycleLR after each optimizer update.

--out DIR gets checkpoint/ (an artifact: optgraph export, or optgraph.TrainingSession, take it),
progress.json (where the loop stands) and loss.png. Ctrl-C saves a checkpoint and stops;
the same command with --resume continues exactly where it stopped.

Under mpiexec -n N (or srun), every process trains on its share of each epoch's order and
they average their gradients: data-parallel, as torch DDP, with --batch-size samples per
process and step. Rank 0 alone prints and writes --out; see docs/cli.md.

Validation (--val) runs the eval graph (eval mode, no update) and reports standard losses
computed from its outputs: the artifact does not hold the training loss function. The
default is cross_entropy and accuracy for class-index targets, mse otherwise.
"""


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "train", parents=[common], help=HELP, description=DESCRIPTION, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("artifact", metavar="DIR", help="the artifact to train (from optgraph compile, or a checkpoint)")
    p.add_argument("--data", required=True, metavar="FILE", help="training data: .npz or .safetensors")
    p.add_argument("--val", metavar="FILE", help="validation data, the same arrays")
    p.add_argument("--epochs", type=int, metavar="N", help="train until epoch N (on --resume: the run's own N)")
    p.add_argument(
        "--batch-size", type=int, metavar="B", help="samples per step and process (default 32, or the static batch)"
    )
    p.add_argument("--seed", type=int, help="the shuffling seed (default 0)")
    p.add_argument("--out", metavar="DIR", help="the run's folder (default: DIR-train beside the artifact)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    p.add_argument("--checkpoint-every", type=int, default=1, metavar="K", help="save every K epochs (default 1)")
    p.add_argument(
        "--checkpoint-every-steps", type=int, default=0, metavar="S", help="also save every S steps of an epoch"
    )
    p.add_argument("--drop-last", action="store_true", default=None, help="skip the last, smaller batch of an epoch")
    p.add_argument(
        "--val-metric",
        action="append",
        choices=list(METRICS),
        metavar="NAME",
        help=f"a validation metric, repeatable, the first drives ReduceLROnPlateau: {', '.join(METRICS)}",
    )
    p.add_argument("--scheduler-every", choices=SCHEDULER_EVERY, help="step the schedule every epoch or update")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar (default: on a terminal)")  # fmt: skip
    p.add_argument("--no-plot", dest="plot", action="store_false", help="do not write loss.png")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    artifact = Path(args.artifact)
    for flag, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be positive, got {value}")
    if args.checkpoint_every < 1 or args.checkpoint_every_steps < 0:
        raise UsageError("--checkpoint-every must be positive and --checkpoint-every-steps not negative")
    if args.out:
        out = Path(args.out)
    else:
        resolved = artifact.resolve()
        out = resolved.parent / f"{resolved.name}-train"
    options = TrainOptions(
        artifact=artifact,
        data=Path(args.data),
        out=out,
        epochs=args.epochs,
        batch_size=args.batch_size,
        val=Path(args.val) if args.val else None,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        checkpoint_every_steps=args.checkpoint_every_steps,
        resume=args.resume,
        drop_last=args.drop_last,
        scheduler_every=args.scheduler_every,
        val_metrics=args.val_metric,
        progress=args.progress,
        plot=args.plot,
    )
    result = train(options)
    run_dir = result.run
    if result.rank != 0:  # a data-parallel run: rank 0 reports
        return EXIT_INTERRUPTED if result.interrupted else 0
    if result.interrupted:
        epoch, batch = result.position
        print(
            f"stopped in epoch {epoch + 1} after batch {batch}: checkpoint saved to {run_dir.checkpoint}; "
            "the same command with --resume continues from there",
            flush=True,
        )
        return EXIT_INTERRUPTED
    if result.epochs:
        print(f"done: {epoch_line(result.epochs[-1], len(result.epochs))}; checkpoint {run_dir.checkpoint}")
    if result.plot is not None:
        print(f"loss curve: {result.plot}")
    print(f"inference model: optgraph export {run_dir.checkpoint} -o model.onnx")
    return 0
