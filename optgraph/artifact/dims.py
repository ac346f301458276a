"""Symbolic dimensions: the strings in a shape, and the ``symbols`` that bound them.

A dimension of an input's ``shape`` in ``manifest.json`` is an int (fixed), a
symbol name (``"batch"``: any size, the same wherever the name appears), or
an expression of symbols (``"batch*seq"``: a dimension the model derives from
others). Expressions use names, non-negative ints, ``+``, ``-``, ``*``, ``//``
(floor division) and parentheses, nothing else; they are parsed here, once, at
load, and evaluated without ``eval``. The manifest's top-level ``symbols``
maps each symbol name to the bounds the compiler found for it
(``{"seq": {"max": 64}}``; a missing bound is no bound).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from optgraph.artifact.names import MANIFEST_FILE, SYMBOLS_KEY
from optgraph.errors import ArtifactError

"""The top-level manifest key: symbol name -> :class:`SymbolBounds` as JSON."""

MAX_EXPRESSION_LENGTH = 200
_TOKEN = re.compile(r"\s*(?:(?P<int>\d+)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<op>//|[-+*()]))")


class DimSyntaxError(ValueError):
    """A symbolic dimension that is neither a name nor an expression of names."""


@dataclass(frozen=True)
class DimExpr:
    """A parsed symbolic dimension.

    Attributes:
        text: the manifest's string.
        tree: the expression: an int, a name, or ``(op, left, right)`` / ``("neg", operand)``.
        symbols: the names it uses, in order of first appearance.
    """

    text: str
    tree: Any
    symbols: tuple[str, ...]

    @property
    def is_symbol(self) -> bool:
        """A plain name (``"batch"``), not an expression."""
        return isinstance(self.tree, str)

    def evaluate(self, sizes: dict[str, int]) -> int | None:
        """The dimension's size given every symbol's size; None where a floor division divides by 0."""
        return _evaluate(self.tree, sizes)

    def __str__(self) -> str:
        return self.text


def parse_dim(text: str) -> DimExpr:
    """Parse a symbolic dimension; raises :class:`DimSyntaxError` naming what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise DimSyntaxError(f"a symbolic dimension must be a non-empty string, got {text!r}")
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise DimSyntaxError(f"symbolic dimension {text[:40]!r}... is longer than {MAX_EXPRESSION_LENGTH} characters")
    tokens = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            if not text[position:].strip():
                break
            raise DimSyntaxError(
                f"symbolic dimension {text!r}: unexpected {text[position:].strip()[0]!r}; "
                "expected names, ints, + - * // and parentheses"
            )
        kind = match.lastgroup
        value = match.group(kind)
        tokens.append((kind, int(value) if kind == "int" else value))
        position = match.end()
    parser = _Parser(text, tokens)
    tree = parser.expression()
    if parser.index != len(tokens):
        raise DimSyntaxError(f"symbolic dimension {text!r}: unexpected {tokens[parser.index][1]!r}")
    symbols: list[str] = []
    for kind, value in tokens:
        if kind == "name" and value not in symbols:
            symbols.append(value)
    return DimExpr(text, tree, tuple(symbols))


class _Parser:
    """``expression := term (('+' | '-') term)*; term := factor (('*' | '//') factor)*;
    factor := int | name | '-' factor | '(' expression ')'``."""

    def __init__(self, text: str, tokens: list[tuple[str, Any]]) -> None:
        self.text, self.tokens, self.index, self.depth = text, tokens, 0, 0

    def _peek(self) -> Any:
        return self.tokens[self.index][1] if self.index < len(self.tokens) else None

    def _fail(self, what: str):
        found = self._peek()
        raise DimSyntaxError(
            f"symbolic dimension {self.text!r}: expected {what}, found {'the end' if found is None else repr(found)}"
        )

    def expression(self) -> Any:
        tree = self.term()
        while self._peek() in ("+", "-") and self.tokens[self.index][0] == "op":
            op = self.tokens[self.index][1]
            self.index += 1
            tree = (op, tree, self.term())
        return tree

    def term(self) -> Any:
        tree = self.factor()
        while self._peek() in ("*", "//") and self.tokens[self.index][0] == "op":
            op = self.tokens[self.index][1]
            self.index += 1
            tree = (op, tree, self.factor())
        return tree

    def factor(self) -> Any:
        if self.index >= len(self.tokens):
            self._fail("a name, an int or '('")
        kind, value = self.tokens[self.index]
        self.index += 1
        if kind in ("int", "name"):
            return value
        if value == "-":
            return ("neg", self.factor())
        if value == "(":
            self.depth += 1
            if self.depth > 32:
                raise DimSyntaxError(f"symbolic dimension {self.text!r}: parentheses nested too deeply")
            tree = self.expression()
            if self._peek() != ")":
                self._fail("')'")
            self.index += 1
            self.depth -= 1
            return tree
        self.index -= 1
        self._fail("a name, an int or '('")


def _evaluate(tree: Any, sizes: dict[str, int]) -> int | None:
    if isinstance(tree, int):
        return tree
    if isinstance(tree, str):
        return sizes[tree]
    if tree[0] == "neg":
        value = _evaluate(tree[1], sizes)
        return None if value is None else -value
    left, right = _evaluate(tree[1], sizes), _evaluate(tree[2], sizes)
    if left is None or right is None:
        return None
    if tree[0] == "+":
        return left + right
    if tree[0] == "-":
        return left - right
    if tree[0] == "*":
        return left * right
    return None if right == 0 else left // right


def solve_for(expr: DimExpr, unknown: str, size: int, sizes: dict[str, int]) -> int | None:
    """The value of ``unknown`` that makes ``expr`` equal ``size``, where ``expr`` is affine in it.

    Every other symbol of ``expr`` must be in ``sizes``. Returns None when the
    expression is not affine in ``unknown`` (checked at three points) or no
    integer value fits.
    """
    at = [expr.evaluate({**sizes, unknown: x}) for x in (0, 1, 2)]
    if any(v is None for v in at):
        return None
    slope, offset = at[1] - at[0], at[0]
    if slope == 0 or at[2] != offset + 2 * slope or (size - offset) % slope:
        return None
    return (size - offset) // slope


@dataclass(frozen=True)
class SymbolBounds:
    """The sizes a symbol may take: ``min <= size <= max`` (None: unbounded on that side)."""

    min: int | None = None
    max: int | None = None

    def to_json(self) -> dict[str, int]:
        return {k: v for k, v in (("min", self.min), ("max", self.max)) if v is not None}

    def describe(self) -> str:
        if self.min is not None and self.max is not None:
            return f"between {self.min} and {self.max}"
        return f"at least {self.min}" if self.min is not None else f"at most {self.max}"

    def accepts(self, size: int) -> bool:
        return (self.min is None or size >= self.min) and (self.max is None or size <= self.max)

    @classmethod
    def from_json(cls, data: Any, where: str) -> SymbolBounds:
        if not isinstance(data, dict) or set(data) - {"min", "max"}:
            raise ArtifactError(
                f"{MANIFEST_FILE}: {where} must be an object with optional 'min' and 'max', got {data!r}"
            )
        values = {}
        for key in ("min", "max"):
            value = data.get(key)
            if value is not None and (type(value) is not int or value < 0):
                raise ArtifactError(f"{MANIFEST_FILE}: {where}.{key} must be a non-negative int, got {value!r}")
            values[key] = value
        if values["min"] is not None and values["max"] is not None and values["min"] > values["max"]:
            raise ArtifactError(f"{MANIFEST_FILE}: {where} has min {values['min']} > max {values['max']}")
        return cls(values["min"], values["max"])


def parse_symbols(data: Any) -> dict[str, SymbolBounds]:
    """The manifest's ``symbols`` (absent: none), checked."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ArtifactError(f"{MANIFEST_FILE}: {SYMBOLS_KEY!r} must be an object, got {type(data).__name__}")
    out = {}
    for name, bounds in data.items():
        try:
            is_name = parse_dim(name).is_symbol
        except DimSyntaxError:
            is_name = False
        if not is_name:
            raise ArtifactError(f"{MANIFEST_FILE}: {SYMBOLS_KEY!r} has {name!r}, which is not a symbol name")
        out[name] = SymbolBounds.from_json(bounds, f"{SYMBOLS_KEY}.{name}")
    return out
