"""``optgraph demo``: compile and train a CNN on scikit-learn's 8x8 digits."""

from __future__ import annotations

import argparse

from optgraph.cli.extras import SKLEARN, TORCH, require

HELP = "compile and train a CNN on the 8x8 digits with onnxruntime (needs optgraph[compile,demo])"


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser("demo", parents=[common], help=HELP, description=HELP)
    p.add_argument("--out", default="optgraph-demo", help="folder for the artifact, checkpoint, model and loss curve")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar (default: on a terminal)")  # fmt: skip
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    require(TORCH, "the demo")
    require(SKLEARN, "the demo")
    from optgraph import demo

    accuracy = demo.run(args.out, epochs=args.epochs, batch_size=args.batch_size, progress=args.progress)
    return 0 if accuracy >= demo.TARGET_ACCURACY else 1
