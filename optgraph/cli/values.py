"""Values written on the command line: ``NAME=VALUE`` pairs and ``Name(arg=value, ...)`` calls.

A value is read as a Python literal where it is one (``1e-3``, ``10``, ``(0.9, 0.99)``,
``[30, 80]``, ``'min'``); a comma list is a tuple (``0.9,0.99``); ``true``/``false``,
``none``/``null`` and ``inf``/``nan`` are read in any case; anything else is a string
(``mode=max``). A call is a class name with arguments, nested as deep as needed::

    SequentialLR(schedulers=[LinearLR(start_factor=0.1, total_iters=5), CosineAnnealingLR(T_max=95)],
                 milestones=[5])
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field
from typing import Any

from optgraph.cli.errors import UsageError

_WORDS = {"true": True, "false": False, "none": None, "null": None, "inf": math.inf, "-inf": -math.inf, "nan": math.nan}


@dataclass
class Call:
    """A class named with its arguments: ``Name(*args, **kwargs)``, values possibly calls themselves."""

    name: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)


def parse_value(text: str) -> Any:
    """A command-line value as the Python value it spells (see the module docstring)."""
    stripped = text.strip()
    if stripped.lower() in _WORDS:
        return _WORDS[stripped.lower()]
    try:
        return ast.literal_eval(stripped)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    if "," in stripped:
        return tuple(parse_value(part) for part in stripped.split(",") if part.strip())
    return stripped


def split_pair(text: str, flag: str) -> tuple[str, str]:
    """``"name=value"`` as ``("name", "value")``; a :class:`UsageError` naming ``flag`` otherwise."""
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name.isidentifier():
        raise UsageError(f"{flag} expects NAME=VALUE, got {text!r}")
    return name, value


def parse_pair(text: str, flag: str) -> tuple[str, Any]:
    """``"betas=0.9,0.99"`` as ``("betas", (0.9, 0.99))``."""
    name, value = split_pair(text, flag)
    return name, parse_value(value)


def parse_call(text: str, flag: str) -> Call:
    """``"Name"`` or ``"Name(arg, key=value, ...)"`` as a :class:`Call` (nothing is evaluated)."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as e:
        raise UsageError(f"{flag}: cannot read {text!r}: {e.msg}") from None
    if isinstance(tree, ast.Name):
        return Call(tree.id)
    if not isinstance(tree, ast.Call):
        raise UsageError(f"{flag} expects a name or Name(arg=value, ...), got {text!r}")
    return _call(tree, flag, text)


def _call(node: ast.Call, flag: str, text: str) -> Call:
    if not isinstance(node.func, ast.Name):
        raise UsageError(f"{flag}: {ast.unparse(node.func)!r} in {text!r} is not a class name")
    if any(k.arg is None for k in node.keywords):
        raise UsageError(f"{flag}: **arguments are not supported in {text!r}")
    return Call(
        node.func.id,
        [_value(a, flag, text) for a in node.args],
        {k.arg: _value(k.value, flag, text) for k in node.keywords},
    )


def _value(node: ast.AST, flag: str, text: str) -> Any:
    if isinstance(node, ast.Call):
        return _call(node, flag, text)
    if isinstance(node, ast.Name):  # a bare word: true/false/none/inf, else the string itself (mode=max)
        return _WORDS.get(node.id.lower(), node.id)
    if isinstance(node, (ast.List, ast.Tuple)):
        values = [_value(e, flag, text) for e in node.elts]
        return values if isinstance(node, ast.List) else tuple(values)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Name):
        word = _WORDS.get(node.operand.id.lower())
        if isinstance(word, float):  # -inf
            return -word
    if isinstance(node, ast.Dict) and None not in node.keys:
        return {_value(k, flag, text): _value(v, flag, text) for k, v in zip(node.keys, node.values)}
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise UsageError(
            f"{flag}: cannot read {ast.unparse(node)!r} in {text!r}; "
            "expected numbers, strings, lists, tuples, dicts and Name(...) calls"
        ) from None
