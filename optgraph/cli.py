"""The ``optgraph`` command line."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="optgraph", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="compile and train a CNN on the 8x8 digits with onnxruntime")
    demo.add_argument("--out", default="optgraph-demo", help="folder for the artifact, checkpoint and model")
    demo.add_argument("--epochs", type=int, default=12)
    demo.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)

    if args.command == "demo":
        from optgraph import demo as demo_module

        accuracy = demo_module.run(args.out, epochs=args.epochs, batch_size=args.batch_size)
        return 0 if accuracy >= 0.95 else 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
