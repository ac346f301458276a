"""The ``optgraph`` command line: compile, inspect, train, export, demo, recover.

Exit codes: 0 on success, 2 when the command line, a config file or a data file is wrong, 1 when
the run fails (the model, the artifact, the runtime, the user's code), 130 when stopped by Ctrl-C.
An error is one line on stderr, ``optgraph <command>: <what went wrong>``; ``--debug`` adds the
traceback. Under ``mpiexec`` (``optgraph train`` data-parallel), a rank that fails ends every rank
with its exit code. Only ``compile`` (and ``demo``) import torch.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback

from optgraph.cli import compile_cmd, demo_cmd, export_cmd, inspect_cmd, recover_cmd, train_cmd
from optgraph.cli.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, UsageError
from optgraph.cli.target import TargetError
from optgraph.errors import OptgraphError, OverwriteError

COMMANDS = (compile_cmd, inspect_cmd, train_cmd, export_cmd, demo_cmd, recover_cmd)
PEER_GRACE_S = 2.0  # how long a failed rank other than 0 waits for rank 0 to tell a shared error (see _failed)


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
        return _failed(args.command, "interrupted", EXIT_INTERRUPTED)
    except Exception as e:  # noqa: BLE001 - every failure ends as one line (and its traceback with --debug)
        if args.debug:
            traceback.print_exc()
        code = EXIT_USAGE if isinstance(e, (UsageError, OverwriteError)) else EXIT_FAILED
        return _failed(args.command, _one_line(e, args.debug), code)


def _failed(command: str, message: str, code: int) -> int:
    """Tell the error; on one rank of a data-parallel run (``optgraph train`` under ``mpiexec``), end every rank.

    The other ranks may be waiting for this one in a collective call, which would never return: MPI_Abort
    ends them all with ``code``. A rank other than 0 waits a moment first, so that an error every rank met
    is told once, by rank 0, whose abort ends the others meanwhile.
    """
    distributed = sys.modules.get("optgraph.distributed")  # imported by a command that may have joined MPI
    rank = distributed.joined_rank() if distributed is not None else None
    if rank:
        time.sleep(PEER_GRACE_S)
        message = f"rank {rank}: {message}"
    print(f"optgraph {command}: {message}", file=sys.stderr, flush=True)
    if rank is not None:
        sys.stdout.flush()
        distributed.abort(code)
    return code


def _one_line(error: Exception, debug: bool) -> str:
    expected = isinstance(error, (UsageError, TargetError, OptgraphError))
    text = str(error) if expected else f"{type(error).__name__}: {error}"
    text = " ".join(text.split())
    if not expected and not debug:
        text += " (run with --debug for the traceback)"
    return text


if __name__ == "__main__":
    sys.exit(main())
