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
    recover = commands.add_parser(
        "recover", help="put back the artifact a killed save moved aside (where atomic exchange was unavailable)"
    )
    recover.add_argument("directory", help="the artifact or checkpoint directory the save was writing")
    args = parser.parse_args(argv)

    if args.command == "demo":
        from optgraph import demo as demo_module

        accuracy = demo_module.run(args.out, epochs=args.epochs, batch_size=args.batch_size)
        return 0 if accuracy >= 0.95 else 1
    if args.command == "recover":
        from optgraph.artifact import recover_interrupted_save
        from optgraph.errors import ArtifactError

        try:
            print(f"restored {recover_interrupted_save(args.directory)}")
        except ArtifactError as e:
            print(f"optgraph recover: {e}", file=sys.stderr)
            return 1
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
