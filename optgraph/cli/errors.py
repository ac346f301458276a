"""How a command ends: its exit codes, and the error that means the command line was wrong."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # the run failed: the model, the artifact, the runtime, the user's code
EXIT_USAGE = 2  # the command line, a config file or a data file does not fit (argparse's own code too)
EXIT_INTERRUPTED = 130  # stopped by Ctrl-C or SIGTERM (after saving, where the command saves), as shells report it


class UsageError(Exception):
    """The command line, a config file or a data file is wrong; the message says what and what was expected."""
