"""``optgraph recover``: put back the artifact that a killed save moved aside."""

from __future__ import annotations

import argparse

HELP = "put back the artifact a killed save moved aside (where atomic exchange was unavailable)"


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser("recover", parents=[common], help=HELP, description=HELP)
    p.add_argument("directory", help="the artifact or checkpoint directory the save was writing")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from optgraph.artifact import recover_interrupted_save

    print(f"restored {recover_interrupted_save(args.directory)}")
    return 0
