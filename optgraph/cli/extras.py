"""The optional packages a command needs, and the one line that says how to install a missing one."""

from __future__ import annotations

import importlib.util
import sys

from optgraph.cli.target import TargetError

TORCH = ("torch", "torch", "pip install torch==2.13.0 'optgraph[compile]'")
SKLEARN = ("sklearn", "scikit-learn", "pip install 'optgraph[demo]'")
MATPLOTLIB = ("matplotlib", "matplotlib", "pip install 'optgraph[plot]'")


def installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    if module in sys.modules:
        return sys.modules[module] is not None  # None: imports of it are blocked
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(extra: tuple[str, str, str], what: str) -> None:
    """A :class:`TargetError` (exit 1) naming the package and its install command, unless it is installed."""
    module, package, install = extra
    if not installed(module):
        raise TargetError(f"{what} needs {package}, which is not installed: {install}")
