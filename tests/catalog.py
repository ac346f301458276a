"""The optimizers and schedules that tests walk, read from the modules' ``__all__``.

A class added to ``optgraph.optim.__all__`` or ``optgraph.lr_scheduler.__all__``
joins every test that walks these lists. A test keeps the arguments it builds
a class with in a table by class name; a class the table lacks is built from
its defaults, or, when its constructor needs arguments, fails the test with a
message that says to add them (it is never skipped).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NoReturn

import pytest

from optgraph import lr_scheduler, optim


def public_classes(module, base: type) -> list[str]:
    """The names in ``module.__all__`` of ``base``'s subclasses, ``base`` itself left out, in ``__all__``'s order."""
    return [
        name
        for name in module.__all__
        if isinstance(cls := getattr(module, name), type) and issubclass(cls, base) and cls is not base
    ]


OPTIMIZERS = public_classes(optim, optim.Optimizer)
SCHEDULES = public_classes(lr_scheduler, lr_scheduler.LRScheduler)


def needs_arguments(cls: type) -> bool:
    """Whether ``cls()`` lacks a required argument."""
    return any(
        p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        for p in inspect.signature(cls).parameters.values()
    )


def fail_missing(name: str, table_name: str) -> NoReturn:
    pytest.fail(f"{name} is public (__all__) and needs arguments, but {table_name} has none for it: add them there")


def construct(module, name: str, table: dict[str, Callable[[], Any]], table_name: str) -> Any:
    """``table[name]()``; for a class the table lacks, ``module.<name>()``, or a failure if that needs arguments."""
    if name in table:
        return table[name]()
    cls = getattr(module, name)
    if needs_arguments(cls):
        fail_missing(name, table_name)
    return cls()


def in_table_order(names: list[str], table: dict[str, Any]) -> list[str]:
    """``names`` in the table's order (stable when ``__all__`` grows), those missing from the table last."""
    return [n for n in table if n in names] + [n for n in names if n not in table]
