"""Dynamic dimensions: which ones the user asks for, and the names and bounds of the symbols export finds.

``compile(..., dynamic_shapes=...)`` marks dimensions of the data inputs
and targets dynamic (:func:`requested_dims`). Each marked dimension is
traced with its own symbol; ``torch.export`` (every marked dimension as
``Dim.AUTO``) then infers how the model relates them: equal batches become
one symbol, flattened labels ``batch * seq``, a dimension the model fixes
becomes an int. :func:`name_symbols` turns export's symbols (``s27``) into
the names the manifest records: the user's names, ``"batch"`` for the
symbol that is dim 0 of every input and target (or of most of them, two or
more), else ``<input>_dim<k>`` after its first place; a derived dimension
becomes an expression of those names (``"batch*seq"``), in the small
grammar of :mod:`optgraph.artifact.dims`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import sympy
import torch
from torch.utils._sympy.functions import FloorDiv

from optgraph.artifact.dims import DimSyntaxError, SymbolBounds, parse_dim
from optgraph.errors import CaptureError

BATCH_DIM = "batch"
"""The name of the symbol that is the plain dim 0 of the data, where only one symbol is."""

Requested = dict[int, "str | None"]
"""Dynamic dimensions of one input: dim -> the user's name, or None for a name to infer."""


def requested_dims(
    dynamic_shapes, dynamic_batch: bool | None, names: Sequence[str], examples: Sequence[torch.Tensor]
) -> tuple[list[Requested], dict[str, SymbolBounds]]:
    """The dynamic dimensions of each data input and target, from ``compile``'s arguments.

    Args:
        dynamic_shapes: None (dim 0 of every input and target, names inferred), ``{}`` (nothing),
            or ``{name: {dim: symbol}}`` for the inputs and targets it names (``name: None`` or
            ``{}`` makes that one static); those it does not name keep dim 0 dynamic. A symbol is
            a name, a ``torch.export.Dim`` (its name; its ``min`` and ``max`` become bounds the
            session checks) or ``torch.export.Dim.AUTO`` (dynamic where the model allows, name inferred).
        dynamic_batch: the deprecated spelling: True is None, False is ``{}``.
        names: the data inputs' then the targets' names.
        examples: their example tensors.

    Returns:
        The dynamic dimensions of each input and target, and the bounds the user gave, by symbol name.

    Raises:
        CaptureError: an unknown name, a dimension out of range, or a symbol name that is not an identifier.
    """
    if dynamic_batch is not None:
        if not isinstance(dynamic_batch, bool):
            raise CaptureError(f"dynamic_batch must be True or False, got {dynamic_batch!r}")
        if dynamic_shapes is not None and dynamic_batch != bool(dynamic_shapes is not None and dynamic_shapes != {}):
            raise CaptureError(
                f"dynamic_batch={dynamic_batch} contradicts dynamic_shapes={dynamic_shapes!r}; "
                "pass dynamic_shapes alone (dynamic_batch is its deprecated spelling)"
            )
        if dynamic_shapes is None and not dynamic_batch:
            dynamic_shapes = {}
    default: list[Requested] = [{0: None} if t.dim() > 0 else {} for t in examples]
    if dynamic_shapes is None:
        return default, {}
    if not isinstance(dynamic_shapes, Mapping):
        hint = " (dynamic_batch=True/False is now dynamic_shapes=None/{})" if isinstance(dynamic_shapes, bool) else ""
        raise CaptureError(
            "dynamic_shapes must be None, {} or a dict {input or target name: {dim: symbol name}}, "
            f"got {type(dynamic_shapes).__name__}{hint}"
        )
    if not dynamic_shapes:
        return [{} for _ in examples], {}
    positions = {name: i for i, name in enumerate(names)}
    out = list(default)
    bounds: dict[str, SymbolBounds] = {}
    for key, dims in dynamic_shapes.items():
        if key not in positions:
            raise CaptureError(
                f"dynamic_shapes names {key!r}, which is not an input or target; "
                f"expected one of {', '.join(repr(n) for n in names)}"
            )
        example = examples[positions[key]]
        if dims is None:
            out[positions[key]] = {}
            continue
        if not isinstance(dims, Mapping):
            raise CaptureError(
                f"dynamic_shapes[{key!r}] must be a dict {{dim: symbol name}} or None, got {type(dims).__name__}"
            )
        marked: Requested = {}
        for dim, symbol in dims.items():
            if not isinstance(dim, int) or isinstance(dim, bool) or not -example.dim() <= dim < example.dim():
                raise CaptureError(
                    f"dynamic_shapes[{key!r}] has dimension {dim!r}, but {key!r} has {example.dim()} "
                    f"dimension(s) (example shape {list(example.shape)})"
                )
            if symbol is torch.export.Dim.AUTO:
                marked[dim % example.dim()] = None
                continue
            if isinstance(symbol, torch.export.Dim):
                low, high = symbol.min, symbol.max
                limits = SymbolBounds(low if low > 0 else None, int(high) if high < _UNBOUNDED else None)
                symbol = symbol.__name__
                bounds[symbol] = _intersect(bounds.get(symbol, SymbolBounds()), limits)
            if not _is_symbol_name(symbol):
                raise CaptureError(
                    f"dynamic_shapes[{key!r}][{dim}] is {symbol!r}; a symbol must be a name such as 'batch' or "
                    "'seq' (an identifier), a torch.export.Dim or torch.export.Dim.AUTO"
                )
            marked[dim % example.dim()] = symbol
        out[positions[key]] = marked
    return out, bounds


_UNBOUNDED = 2**62


def _intersect(a: SymbolBounds, b: SymbolBounds) -> SymbolBounds:
    low = max((v for v in (a.min, b.min) if v is not None), default=None)
    high = min((v for v in (a.max, b.max) if v is not None), default=None)
    return SymbolBounds(low, high)


def _is_symbol_name(symbol) -> bool:
    if not isinstance(symbol, str) or not symbol.isascii():
        return False
    try:
        return parse_dim(symbol).is_symbol
    except DimSyntaxError:
        return False


@dataclass
class SymbolicShapes:
    """The shapes of the data inputs and targets, in manifest form, and the bounds of their symbols."""

    shapes: list[list[int | str]]
    symbols: dict[str, SymbolBounds]


def name_symbols(
    shapes: Sequence[Sequence[int | sympy.Expr]],
    names: Sequence[str],
    requested: Sequence[Requested],
    ranges: Mapping[sympy.Symbol, tuple[int | None, int | None]],
    why_fixed: Mapping[tuple[int, int], str] | None = None,
    user_bounds: Mapping[str, SymbolBounds] | None = None,
) -> SymbolicShapes:
    """Name export's symbols and write each shape with the names.

    Args:
        shapes: export's shape of each data input and target (ints and sympy expressions).
        names: their names.
        requested: their dynamic dimensions, as :func:`requested_dims` gives them.
        ranges: the (min, max) export knows for a symbol (None: unbounded).
        why_fixed: for a requested dimension that came out fixed, what fixed it, where known.
        user_bounds: bounds the user gave (``torch.export.Dim("seq", max=64)``), by symbol name.

    Raises:
        CaptureError: a dimension the user named came out fixed, two names the model makes equal,
            or one name for two dimensions the model makes different.
    """
    why_fixed = why_fixed or {}
    # 1. The user's names: each names one expression of export's symbols.
    named: dict[str, sympy.Expr] = {}
    where: dict[str, tuple[int, int]] = {}
    root_name: dict[sympy.Symbol, str] = {}
    merged: dict[sympy.Symbol, sympy.Symbol] = {}  # a symbol the user ties to another by giving both one name
    order = sorted(
        ((i, dim, name) for i, dims in enumerate(requested) for dim, name in dims.items() if name is not None),
        key=lambda t: not isinstance(shapes[t[0]][t[1]], sympy.Symbol),  # plain symbols first
    )
    for i, dim, name in order:
        expr = shapes[i][dim]
        site = f"{names[i]!r} dimension {dim}"
        if not isinstance(expr, sympy.Expr) or expr.is_number:
            because = why_fixed.get((i, dim))
            raise CaptureError(
                f"dynamic_shapes marks {site} dynamic as {name!r}, but the model fixes it to {int(expr)}"
                f"{f' ({because})' if because else ''}; leave it static (name it in no dict) or change the model"
            )
        expr = expr.xreplace(merged)
        if name in named and named[name] != expr:
            other = named[name]
            if isinstance(expr, sympy.Symbol) and isinstance(other, sympy.Symbol) and expr not in root_name:
                merged[expr] = other  # the user says they are equal; the model does not mind
                continue
            raise CaptureError(
                f"dynamic_shapes names {site} {name!r}, as {names[where[name][0]]!r} dimension {where[name][1]}, "
                f"but the model makes them differ ({_text(expr, {})} vs {_text(other, {})} in export's symbols); "
                "give them different names"
            )
        if isinstance(expr, sympy.Symbol):
            if expr in root_name and root_name[expr] != name:
                first = where[root_name[expr]]
                raise CaptureError(
                    f"dynamic_shapes names {site} {name!r} and {names[first[0]]!r} dimension {first[1]} "
                    f"{root_name[expr]!r}, but the model makes them equal; give them one name"
                )
            root_name[expr] = name
        named.setdefault(name, expr)
        where.setdefault(name, (i, dim))
    shapes = [[d.xreplace(merged) if isinstance(d, sympy.Expr) else d for d in shape] for shape in shapes]

    # 2. Names for the other symbols.
    symbols = sorted(
        {s for shape in shapes for d in shape if isinstance(d, sympy.Expr) for s in d.free_symbols},
        key=lambda s: _first_site(s, shapes),
    )
    taken = set(named)
    batch = _batch_symbol(shapes)
    for symbol in symbols:
        if symbol in root_name:
            continue
        if symbol == batch and BATCH_DIM not in taken:
            name = BATCH_DIM
        else:
            i, dim = _first_site(symbol, shapes)
            name = base = f"{names[i]}_dim{dim}"
            count = 1
            while name in taken:
                count += 1
                name = f"{base}_{count}"
        root_name[symbol] = name
        taken.add(name)

    # 3. The shapes as text, and the bounds of each named symbol.
    texts = []
    for i, shape in enumerate(shapes):
        row: list[int | str] = []
        for dim, d in enumerate(shape):
            if isinstance(d, int) or (isinstance(d, sympy.Expr) and d.is_number):
                row.append(int(d))
                continue
            text = _text(d, root_name)
            if text is None:  # outside the manifest's grammar: a fresh symbol, checked for itself alone
                text = base = f"{names[i]}_dim{dim}"
                count = 1
                while text in taken:
                    count += 1
                    text = f"{base}_{count}"
                taken.add(text)
            row.append(text)
        texts.append(row)
    bounds = {}
    for symbol, name in root_name.items():
        low, high = ranges.get(symbol, (None, None))
        limits = SymbolBounds(low if low is not None and low > 2 else None, high)  # >= 2 only from 0/1 specialisation
        limits = _intersect(limits, (user_bounds or {}).get(name, SymbolBounds()))
        if limits.min is not None and limits.max is not None and limits.min > limits.max:
            raise CaptureError(f"the bounds given for {name!r} leave no size the model accepts ({limits.describe()})")
        bounds.setdefault(name, limits)
    return SymbolicShapes(texts, {n: bounds.get(n, SymbolBounds()) for n in _used(texts)})


def name_outputs(
    inputs: Sequence[Sequence[int | sympy.Expr]],
    input_texts: Sequence[Sequence[int | str]],
    outputs: Sequence[Sequence[int | sympy.Expr] | None],
    output_names: Sequence[str],
) -> list[list[int | str] | None]:
    """Output shapes in the names of the inputs' symbols (export's symbol where an output has its own).

    Args:
        inputs: export's shapes of the graph's data inputs.
        input_texts: the same shapes as the manifest writes them.
        outputs: export's shapes of the outputs (None: not a tensor).
        output_names: the outputs' names, for symbols no input has.
    """
    names: dict[sympy.Symbol, str] = {}
    for shape, texts in zip(inputs, input_texts):
        for d, text in zip(shape, texts):
            if isinstance(d, sympy.Symbol) and isinstance(text, str) and parse_dim(text).is_symbol:
                names.setdefault(d, text)
    out: list[list[int | str] | None] = []
    for shape, output in zip(outputs, output_names):
        if shape is None:
            out.append(None)
            continue
        row: list[int | str] = []
        for k, d in enumerate(shape):
            if isinstance(d, int) or d.is_number:
                row.append(int(d))
            elif d.free_symbols <= set(names) and (text := _text(d, names)) is not None:
                row.append(text)
            else:
                row.append(f"{output}_dim{k}")
        out.append(row)
    return out


def _batch_symbol(shapes) -> sympy.Symbol | None:
    """The symbol that is dim 0 of every input and target with a symbolic dim 0, else of most of them (two or more)."""
    counts: dict[sympy.Symbol, int] = {}
    for shape in shapes:
        if shape and isinstance(shape[0], sympy.Symbol):
            counts[shape[0]] = counts.get(shape[0], 0) + 1
    ranked = sorted(counts.values(), reverse=True)
    if len(ranked) == 1 or (len(ranked) > 1 and ranked[0] > ranked[1] and ranked[0] >= 2):
        return max(counts, key=counts.get)
    return None


def _first_site(symbol: sympy.Symbol, shapes) -> tuple[int, int]:
    """The first (input, dim) that is ``symbol`` alone, else the first whose expression uses it."""
    plain = [(i, k) for i, s in enumerate(shapes) for k, d in enumerate(s) if isinstance(d, sympy.Expr) and d == symbol]
    if plain:
        return plain[0]
    return next(
        (i, k)
        for i, s in enumerate(shapes)
        for k, d in enumerate(s)
        if isinstance(d, sympy.Expr) and symbol in d.free_symbols
    )


def _used(texts: list[list[int | str]]) -> list[str]:
    used: list[str] = []
    for row in texts:
        for d in row:
            if isinstance(d, str):
                used.extend(s for s in parse_dim(d).symbols if s not in used)
    return used


def _text(expr: sympy.Expr, names: Mapping[sympy.Symbol, str]) -> str | None:
    """``expr`` in the manifest's grammar (names, ints, + - * //, parentheses); None if it does not fit."""
    try:
        text = _print(expr, names)
    except _Unprintable:
        return None
    parsed = parse_dim(text)
    # the printed text must mean the same: compare at a few points
    for trial in range(3):
        values = {s: 2 + 3 * trial + k for k, s in enumerate(sorted(expr.free_symbols, key=str))}
        if parsed.evaluate({names.get(s, str(s)): v for s, v in values.items()}) != int(expr.xreplace(values)):
            return None
    return text


class _Unprintable(Exception):
    pass


def _print(expr: sympy.Expr, names: Mapping[sympy.Symbol, str]) -> str:
    if expr.is_Integer:
        value = int(expr)
        return str(value) if value >= 0 else f"-{-value}"
    if isinstance(expr, sympy.Symbol):
        return names.get(expr, str(expr))
    if isinstance(expr, sympy.Add):
        terms = sorted(expr.args, key=lambda t: (t.is_number, sympy.default_sort_key(t)))
        text = _print(terms[0], names)
        for term in terms[1:]:
            coefficient, rest = term.as_coeff_Mul()
            if coefficient < 0:
                text += f" - {_print(-term, names)}"
            else:
                text += f" + {_print(term, names)}"
        return text
    if isinstance(expr, sympy.Mul):
        coefficient, rest = expr.as_coeff_Mul()
        if coefficient == -1:
            return f"-{_factor(rest, names)}"
        factors = [] if coefficient == 1 else [_factor(coefficient, names)]
        factors += [_factor(f, names) for f in sympy.Mul.make_args(rest)]
        return "*".join(factors)
    if isinstance(expr, sympy.Pow) and expr.exp.is_Integer and 1 < int(expr.exp) <= 4:
        return "*".join([_factor(expr.base, names)] * int(expr.exp))
    if isinstance(expr, FloorDiv):
        return f"{_factor(expr.args[0], names)}//{_factor(expr.args[1], names)}"
    raise _Unprintable(expr)


def _factor(expr: sympy.Expr, names: Mapping[sympy.Symbol, str]) -> str:
    text = _print(expr, names)
    simple = expr.is_Symbol or (expr.is_Integer and int(expr) >= 0) or isinstance(expr, sympy.Pow)
    return text if simple else f"({text})"
