"""The ``optgraph`` command line: compile, inspect, train, export, demo, recover.

Exit codes: 0 on success, 2 when the command line, a config file or a data file is wrong, 1 when
the run fails (the model, the artifact, the runtime, the user's code), 130 when stopped by Ctrl-C.
An error is one line on stderr, ``optgraph <command>: <what went wrong>``; ``--debug`` adds the
traceback. Only ``compile`` (and ``demo``) import torch.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from optgraph.cli import compile_cmd, demo_cmd, export_cmd, inspect_cmd, recover_cmd, train_cmd
from optgraph.cli.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, UsageError
from optgraph.cli.target import TargetError
from optgraph.errors import OptgraphError, OverwriteError

COMMANDS = (compile_cmd, inspect_cmd, train_cmd, export_cmd, demo_cmd, recover_cmd)


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error in one line (exit 2, as argparse)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="optgraph", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="print the traceback of an error"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print(f"optgraph {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - every failure ends as one line (and its traceback with --debug)
        if args.debug:
            traceback.print_exc()
        print(f"optgraph {args.command}: {_one_line(e, args.debug)}", file=sys.stderr)
        return EXIT_USAGE if isinstance(e, (UsageError, OverwriteError)) else EXIT_FAILED


def _one_line(error: Exception, debug: bool) -> str:
    expected = isinstance(error, (UsageError, TargetError, OptgraphError))
    text = str(error) if expected else f"{type(error).__name__}: {error}"
    text = " ".join(text.split())
    if not expected and not debug:
        text += " (run with --debug for the traceback)"
    return text


if __name__ == "__main__":
    sys.exit(main())
