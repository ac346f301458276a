"""The valid values of integer inputs, read off the traced ATen graph.

torch checks every index it uses (``IndexError: Target -1 is out of
bounds``); an ONNX graph does not, or fails deep inside onnxruntime, or
reads the wrong row: an ONNX ``Gather`` takes -1 as the last class. So at
compile time every index-consuming op of the ``make_fx`` graph (embedding,
gather, index_select, index, scatter, index_put, index_add, nll_loss, ...)
gives the range its index operand must lie in, and the operand is traced
back to a data input or target through ops that keep its values
(view, reshape, unsqueeze, expand, permute, clone, an integer widening cast,
...). Where the trace passes ``where(ne(t, c), t, other)``, the pattern of
an ``ignore_index``, the value ``c`` never reaches the op and is allowed
as well. ``select`` and ``slice`` on the input itself narrow the range to
that part of the input.

All sites on one input combine into one :class:`~optgraph.artifact.index_range.IndexRange`
(the intersection: a value is valid only if every site accepts it), which
the session checks before each step. The record only ever refuses what
torch would refuse: a site whose operand cannot be traced, or whose size is
symbolic, adds nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from optgraph.artifact.index_range import IndexRange

_INT64_MAX = 2**63 - 1

# Ops whose output holds exactly the input's values, element for element in the same layout.
_SAME_LAYOUT = frozenset({"alias", "alias_copy", "detach", "detach_copy", "clone", "lift_fresh_copy", "contiguous"})
# Ops whose output holds exactly the input's values (every one of them), in another layout.
_RELAYOUT = frozenset(
    {
        "view", "_unsafe_view", "reshape", "_reshape_alias", "view_copy", "flatten", "unflatten",
        "unsqueeze", "unsqueeze_copy", "squeeze", "squeeze_copy", "expand", "expand_copy",
        "permute", "permute_copy", "transpose", "transpose_copy", "t", "t_copy", "movedim",
    }
)  # fmt: skip
# Ops that keep a part of the input: traced only when applied to the input's own layout.
_REGION = frozenset({"select", "select_copy", "slice", "slice_copy", "narrow"})


@dataclass(frozen=True)
class _Site:
    """One index operand: it accepts ``low <= v < high``, or a value in ``also``, on ``region`` of its input."""

    low: int
    high: int
    also: frozenset[int]
    region: tuple[range | None, ...] | None

    def accepts(self, value: int) -> bool:
        return self.low <= value < self.high or value in self.also


def _name(node: torch.fx.Node) -> str | None:
    """``aten::scatter_`` -> ``scatter`` (in-place and functional ops index alike)."""
    schema = getattr(node.target, "_schema", None)
    if node.op != "call_function" or schema is None:
        return None
    name = schema.name.split("::")[-1]
    return name[:-1] if name.endswith("_") and not name.endswith("__") else name


def _arg(node: torch.fx.Node, index: int):
    """Argument ``index`` of ``node``, positional or by keyword, or its schema default."""
    if index < len(node.args):
        return node.args[index]
    argument = node.target._schema.arguments[index]
    if argument.name in node.kwargs:
        return node.kwargs[argument.name]
    return argument.default_value if argument.has_default_value() else None


def _val(node) -> torch.Tensor | None:
    value = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return value if isinstance(value, torch.Tensor) else None


def _size(node, dim: int) -> int | None:
    """A static size of ``node``'s dimension ``dim``; None when symbolic or unknown."""
    value = _val(node)
    if value is None or not isinstance(dim, int) or not -value.dim() <= dim < max(value.dim(), 1):
        return None
    size = value.shape[dim] if value.dim() else 1
    return size if isinstance(size, int) else None


def _numel(node) -> int | None:
    value = _val(node)
    if value is None or not all(isinstance(d, int) for d in value.shape):
        return None
    return int(value.numel())


def _is_index_dtype(dtype: torch.dtype) -> bool:
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


# -- the index-consuming ops ------------------------------------------------
# Each returns (index operand, low, high, values it ignores) for every index operand it checks.
Bound = tuple[torch.fx.Node, int, int, frozenset[int]]


def _along_dim(negative: bool) -> Callable[[torch.fx.Node], Iterator[Bound]]:
    """``op(self, dim, index, ...)``: index into ``self.shape[dim]``."""

    def bounds(node):
        size = _size(_arg(node, 0), _arg(node, 1))
        if size is not None:
            yield _arg(node, 2), -size if negative else 0, size, frozenset()

    return bounds


def _rows(index_arg: int, size_arg: int | None = None) -> Callable[[torch.fx.Node], Iterator[Bound]]:
    """``embedding(weight, indices, ...)``: rows of ``weight``; or a row count given as argument ``size_arg``."""

    def bounds(node):
        size = _arg(node, size_arg) if size_arg is not None else _size(_arg(node, 0), 0)
        if isinstance(size, int):
            yield _arg(node, index_arg), 0, size, frozenset()

    return bounds


def _advanced(node):
    """``index(self, [i0, None, i2, ...])`` and ``index_put``: negatives count from the end."""
    indices = _arg(node, 1)
    values = [_val(i) for i in indices if i is not None]
    if any(v is None or not _is_index_dtype(v.dtype) for v in values):
        return  # a boolean mask takes several dimensions: positions no longer match
    for dim, index in enumerate(indices):
        size = _size(_arg(node, 0), dim) if index is not None else None
        if size is not None:
            yield index, -size, size, frozenset()


def _flat(node):
    """``take(self, index)`` / ``put(self, index, source)``: the flattened tensor, negatives from the end."""
    numel = _numel(_arg(node, 0))
    if numel is not None:
        yield _arg(node, 1), -numel, numel, frozenset()


def _nll(self_arg: int, target_arg: int, ignore_arg: int) -> Callable[[torch.fx.Node], Iterator[Bound]]:
    """``nll_loss*``: class ``target`` in ``[0, C)`` unless it is ``ignore_index``."""

    def bounds(node):
        value = _val(_arg(node, self_arg))
        if value is not None:
            classes = _size(_arg(node, self_arg), 1 if value.dim() > 1 else 0)
            if classes is not None:
                yield _arg(node, target_arg), 0, classes, frozenset({int(_arg(node, ignore_arg))})

    return bounds


def _one_hot(node):
    classes = _arg(node, 1)
    if isinstance(classes, int) and classes >= 0:
        yield _arg(node, 0), 0, classes, frozenset()


_SITES: dict[str, Callable[[torch.fx.Node], Iterator[Bound]]] = {
    "gather": _along_dim(negative=False),
    "scatter": _along_dim(negative=False),
    "scatter_add": _along_dim(negative=False),
    "scatter_reduce": _along_dim(negative=False),
    "index_select": _along_dim(negative=False),
    "index_add": _along_dim(negative=False),
    "index_copy": _along_dim(negative=False),
    "index_reduce": _along_dim(negative=False),
    "index_fill": _along_dim(negative=True),
    "embedding": _rows(1),
    "embedding_dense_backward": _rows(1, size_arg=2),
    "_embedding_bag": _rows(1),
    "_embedding_bag_forward_only": _rows(1),
    "embedding_bag": _rows(1),
    "index": _advanced,
    "index_put": _advanced,
    "_index_put_impl": _advanced,
    "take": _flat,
    "put": _flat,
    "nll_loss_forward": _nll(0, 1, 4),
    "nll_loss2d_forward": _nll(0, 1, 4),
    "nll_loss_backward": _nll(1, 2, 5),
    "nll_loss2d_backward": _nll(1, 2, 5),
    "one_hot": _one_hot,
}


# -- tracing an index operand back to an input ------------------------------
def _scalar(node) -> int | None:
    """The integer a comparison compares with: a Python int or a ``scalar_tensor``/0-d ``full``."""
    if isinstance(node, bool):
        return None
    if isinstance(node, int):
        return node
    if isinstance(node, torch.fx.Node) and _name(node) in ("scalar_tensor", "full"):
        value = node.args[0] if _name(node) == "scalar_tensor" else node.args[1]
        shape = [] if _name(node) == "scalar_tensor" else node.args[0]
        if isinstance(value, int) and not isinstance(value, bool) and len(shape) == 0:
            return value
    return None


def _unmasked(node: torch.fx.Node) -> tuple[torch.fx.Node, int] | None:
    """``where(ne(t, c), t, other)`` or ``where(eq(t, c), other, t)``: ``(t, c)``; else None."""
    cond, a, b = (_arg(node, i) for i in range(3))
    if not isinstance(cond, torch.fx.Node) or _name(cond) not in ("ne", "eq"):
        return None
    compared, c = _arg(cond, 0), _scalar(_arg(cond, 1))
    if c is None:
        compared, c = _arg(cond, 1), _scalar(_arg(cond, 0))
    kept = a if _name(cond) == "ne" else b
    if c is None or kept is not compared or not isinstance(kept, torch.fx.Node):
        return None
    return kept, c


def _widening(node: torch.fx.Node) -> bool:
    """An integer-to-integer copy that keeps every value (``_to_copy`` to an equal or wider integer)."""
    source, result = _val(_arg(node, 0)), _val(node)
    if source is None or result is None:
        return False
    if not (_is_index_dtype(source.dtype) and _is_index_dtype(result.dtype)):
        return False
    src, dst = torch.iinfo(source.dtype), torch.iinfo(result.dtype)
    return dst.min <= src.min and src.max <= dst.max


def _narrow(region: list[range | None], dims: list[int], node: torch.fx.Node, name: str) -> bool:
    """Apply ``select``/``slice``/``narrow`` (on the input's own layout) to ``region``; False if not static."""
    dim = _arg(node, 1)
    if not isinstance(dim, int):
        return False
    dim = dim + len(dims) if dim < 0 else dim
    if not 0 <= dim < len(dims):
        return False
    whole = region[dims[dim]]
    if name in ("select", "select_copy"):
        index = _arg(node, 2)
        if whole is None or not isinstance(index, int) or not -len(whole) <= index < len(whole):
            return False
        position = whole[index]
        region[dims[dim]] = range(position, position + 1)
        del dims[dim]
        return True
    if name == "narrow":
        start, length = _arg(node, 2), _arg(node, 3)
        if not (isinstance(start, int) and isinstance(length, int)):
            return False
        end, step = start + length, 1
    else:
        start, end, step = (_arg(node, i) for i in (2, 3, 4))
        start, end, step = 0 if start is None else start, _INT64_MAX if end is None else end, step or 1
    if not all(isinstance(v, int) for v in (start, end, step)):
        return False
    if whole is None:  # a symbolic dimension: only the whole of it can be told
        return start == 0 and end >= _INT64_MAX and step == 1
    region[dims[dim]] = whole[start:end:step]
    return True


def _trace(index: torch.fx.Node, inputs: dict[torch.fx.Node, int]) -> tuple[int, frozenset[int], tuple | None] | None:
    """Follow an index operand back to an input: ``(input position, masked values, region)``, or None."""
    masked: set[int] = set()
    narrowing: list[tuple[torch.fx.Node, str]] = []  # select/slice met, nearest the op first
    node = index
    while True:
        if not isinstance(node, torch.fx.Node):
            return None
        if node.op == "placeholder":
            break
        name = _name(node)
        if name in _SAME_LAYOUT or (name == "_to_copy" and _widening(node)):
            node = _arg(node, 0)
        elif name in _REGION:
            narrowing.append((node, name))
            node = _arg(node, 0)
        elif name in _RELAYOUT or name == "where":
            if narrowing:  # a part taken after a relayout: its position in the input is not tracked
                return None
            if name == "where":
                unmasked = _unmasked(node)
                if unmasked is None:
                    return None
                node, value = unmasked
                masked.add(value)
            else:
                node = _arg(node, 0)
        else:
            return None
    position = inputs.get(node)
    value = _val(node)
    if position is None or value is None or not _is_index_dtype(value.dtype):
        return None
    region: list[range | None] = [_static_range(d) for d in value.shape]
    dims = list(range(value.dim()))
    for part, name in reversed(narrowing):
        if not _narrow(region, dims, part, name):
            return None
    region = [None if r == _static_range(d) else r for r, d in zip(region, value.shape)]
    return position, frozenset(masked), None if all(r is None for r in region) else tuple(region)


def _static_range(size) -> range | None:
    return range(size) if isinstance(size, int) else None


# -- combining the sites of one input ---------------------------------------
def _common_region(regions: list[tuple | None]) -> tuple | None | bool:
    """The part every site sees; False when it cannot be told (differing strides) or is empty."""
    if all(r == regions[0] for r in regions):
        return regions[0]
    parts = [r for r in regions if r is not None]
    common = list(parts[0])
    for region in parts[1:]:
        for dim, (a, b) in enumerate(zip(common, region)):
            if a is None or b is None:
                common[dim] = a if b is None else b
            elif a.step != 1 or b.step != 1:
                return False
            else:
                common[dim] = range(max(a.start, b.start), min(a.stop, b.stop))
                if len(common[dim]) == 0:
                    return False
    return tuple(common)


def _combine(sites: list[_Site]) -> IndexRange | None:
    region = _common_region([s.region for s in sites])
    if region is False:
        return None
    low, high = max(s.low for s in sites), min(s.high for s in sites)
    candidates = set().union(*(s.also for s in sites))
    also = sorted(v for v in candidates if not low <= v < high and all(s.accepts(v) for s in sites))
    return IndexRange(low, high, tuple(also), region)


def index_ranges(graph_module: torch.fx.GraphModule, count: int) -> dict[int, IndexRange]:
    """The :class:`~optgraph.artifact.index_range.IndexRange` of each of the first ``count`` inputs that indexes something.

    Args:
        graph_module: a ``make_fx`` graph of ATen ops.
        count: how many leading placeholders are data (inputs and targets).

    Returns:
        Input position -> its valid values; inputs that index nothing are absent.
    """
    placeholders = [n for n in graph_module.graph.nodes if n.op == "placeholder"][:count]
    inputs = {node: i for i, node in enumerate(placeholders)}
    sites: dict[int, list[_Site]] = {}
    for node in graph_module.graph.nodes:
        bounds = _SITES.get(_name(node))
        if bounds is None:
            continue
        for index, low, high, ignored in bounds(node):
            traced = _trace(index, inputs) if isinstance(index, torch.fx.Node) else None
            if traced is None:
                continue
            position, masked, region = traced
            sites.setdefault(position, []).append(_Site(low, high, frozenset(masked | ignored), region))
    ranges = {position: _combine(found) for position, found in sites.items()}
    return {position: r for position, r in sorted(ranges.items()) if r is not None}
