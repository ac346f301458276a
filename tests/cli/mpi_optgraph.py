"""``python -m optgraph`` as test_train_mpi.py launches it under mpiexec, with a record of which rank writes what.

    mpiexec -n 2 python tests/cli/mpi_optgraph.py LOG [--fail-on-rank R] ARGS...

Appends ``<what> <rank>`` to LOG for each write of ``progress.json`` (``progress``), of ``loss.png``
(``plot``) and of an artifact directory (``checkpoint``); with ``--fail-on-rank R``, rank R cannot read
its data file (as when it is missing on one machine). Then runs optgraph's command line with ARGS, as
``python -m optgraph ARGS`` does. No torch, no pytest.
"""

from __future__ import annotations

import os
import runpy
import sys

from optgraph.artifact import Artifact
from optgraph.cli import data, plot, run_dir
from optgraph.cli.errors import UsageError

# the launchers' variables for a process's rank: MPICH (Hydra) and Intel MPI, Open MPI, PMIx, Slurm
RANK = next(
    (os.environ[v] for v in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID") if v in os.environ), "?"
)


def recorded(log: str, what: str, function):
    def wrapper(*args, **kwargs):
        with open(log, "a") as f:
            f.write(f"{what} {RANK}\n")
        return function(*args, **kwargs)

    return wrapper


def main() -> None:
    log = sys.argv.pop(1)
    if sys.argv[1] == "--fail-on-rank":
        failing = sys.argv.pop(2)
        del sys.argv[1]
        if failing == RANK:

            def unreadable(path, manifest, flag):
                raise UsageError(f"{flag} {path}: no such file")

            data.load = unreadable
    run_dir.RunDir._write = recorded(log, "progress", run_dir.RunDir._write)
    plot.plot_losses = recorded(log, "plot", plot.plot_losses)
    Artifact.save = recorded(log, "checkpoint", Artifact.save)
    sys.argv[0] = "optgraph"
    runpy.run_module("optgraph", run_name="__main__")


if __name__ == "__main__":
    main()
