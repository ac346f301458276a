"""The factory a compile target names, and what it returns.

A target is ``path/to/file.py:factory`` or ``package.module:factory``. The factory returns
the model, its example inputs, its example targets and the loss, as a tuple of four or as a
dict with those keys (``model``, ``example_inputs``, ``example_targets``, ``loss_fn``); a
single tensor stands for a tuple of one, and None for an empty tuple.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from optgraph.cli.errors import UsageError

FIELDS = ("model", "example_inputs", "example_targets", "loss_fn")


class TargetError(Exception):
    """The user's code failed while it was imported or called: the run failed (not the command line)."""


class Compilable(NamedTuple):
    """What ``optgraph.compile`` takes first: the model, example inputs and targets, and the loss."""

    model: Any
    example_inputs: tuple
    example_targets: tuple
    loss_fn: Callable


def load_factory(target: str, base: Path) -> Callable:
    """The callable ``target`` names; files are found relative to ``base``, modules on the path and in ``base``."""
    where, sep, attr = target.rpartition(":")
    if not sep or not where or not attr.isidentifier():
        raise UsageError(
            f"target {target!r} must be path/to/file.py:factory, package.module:factory or a .toml config file"
        )
    if where.endswith(".py") or "/" in where or os.sep in where:
        module = _import_file(base / where, where)
    else:
        module = _import_module(where, base)
    factory = getattr(module, attr, None)
    if factory is None:
        raise UsageError(f"{where} has no {attr!r}")
    if not callable(factory):
        raise UsageError(f"{where}:{attr} is a {type(factory).__name__}, not a function")
    return factory


def _import_file(path: Path, shown: str):
    if not path.is_file():
        raise UsageError(f"{shown}: no such file")
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # so that the file imports its neighbours
    name = f"_optgraph_target_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - the user's module failed: say so, in one line
        del sys.modules[name]
        raise TargetError(f"importing {shown} failed: {type(e).__name__}: {e}") from e
    return module


def _import_module(name: str, base: Path):
    for folder in (str(base), os.getcwd()):  # the console script's path lacks the working directory
        if folder not in sys.path:
            sys.path.insert(0, folder)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name is not None and (name == e.name or name.startswith(e.name + ".")):
            raise UsageError(f"no module named {e.name!r} (from target {name!r})") from None
        raise TargetError(f"importing {name} failed: {type(e).__name__}: {e}") from e
    except Exception as e:  # noqa: BLE001
        raise TargetError(f"importing {name} failed: {type(e).__name__}: {e}") from e


def call_factory(factory: Callable, kwargs: dict[str, Any], shown: str) -> Compilable:
    """Call the factory and check what it returns."""
    try:
        result = factory(**kwargs)
    except Exception as e:  # noqa: BLE001
        raise TargetError(f"{shown}() raised {type(e).__name__}: {e}") from e
    if isinstance(result, Mapping):
        missing = [f for f in FIELDS if f not in result]
        unknown = sorted(set(result) - set(FIELDS))
        if missing or unknown:
            raise TargetError(
                f"{shown}() returned a dict with keys {sorted(result)}; expected exactly {', '.join(FIELDS)}"
            )
        values = [result[f] for f in FIELDS]
    elif isinstance(result, (tuple, list)) and len(result) == len(FIELDS):
        values = list(result)
    else:
        raise TargetError(
            f"{shown}() returned {type(result).__name__}; expected (model, example_inputs, example_targets, loss_fn)"
        )
    model, inputs, targets, loss_fn = values
    return Compilable(model, _as_tuple(inputs), _as_tuple(targets), loss_fn)


def _as_tuple(value: Any) -> tuple:
    if value is None:
        return ()
    if isinstance(value, (tuple, list)):
        return tuple(value)
    return (value,)
