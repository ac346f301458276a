"""Trace a functional train step (and the eval forward) into ONNX.

``make_fx`` over ``functional_call`` + ``torch.autograd.grad`` with the
decompositions of :mod:`optgraph.capture.decompositions`, traced on fake
tensors from a ``ShapeEnv`` in which each dynamic dimension of the data has
its own symbol (a concrete batch would bake ``1/batch`` into mean
reductions; sizes that merely happen to be equal share nothing), then
``torch.export`` with each of those dimensions as ``Dim.AUTO``, which infers
how the model relates them, and the dynamo ONNX exporter, which returns an
onnx-ir model. The ``make_fx`` graph also tells which values the integer
inputs may hold (:mod:`optgraph.capture.index_ranges`).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import sympy
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

from optgraph.artifact.index_range import IndexRange
from optgraph.capture.decompositions import train_decompositions
from optgraph.capture.diagnostics import ModuleTracker
from optgraph.capture.index_ranges import _RELAYOUT, _SAME_LAYOUT, _SITES, _arg, _name, index_ranges
from optgraph.capture.translations import custom_translations, onnx_registry
from optgraph.errors import CaptureError

if TYPE_CHECKING:
    import onnx_ir as ir


@contextlib.contextmanager
def _tracing_context():
    """Kernel choices whose backward traces into translatable ops, and a quiet exporter."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    quiet = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [log.level for log in quiet]
    for log in quiet:
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with sdpa_kernel(SDPBackend.MATH), torch.backends.mkldnn.flags(enabled=False):
                yield
    finally:
        for log, level in zip(quiet, levels):
            log.setLevel(level)


_SCALAR_TO_TENSOR_OVERLOAD = {
    torch.ops.aten.mul.Scalar: torch.ops.aten.mul.Tensor,
    torch.ops.aten.div.Scalar: torch.ops.aten.div.Tensor,
    torch.ops.aten.add.Scalar: torch.ops.aten.add.Tensor,
    torch.ops.aten.sub.Scalar: torch.ops.aten.sub.Tensor,
}


_VIEWS = (torch.ops.aten.view.default, torch.ops.aten._unsafe_view.default)


def _make_exportable(graph_module: torch.fx.GraphModule) -> None:
    """Rewrite the traced graph where ``torch.export`` or the exporter would trip.

    - ``mul.Scalar(t, <symbolic float>)`` -> ``mul.Tensor``: the exporter
      translates only the latter. Symbolic scalars appear wherever a
      decomposition divides by a batch-dependent count (``var``, for instance).
    - ``view`` -> ``reshape``: re-tracing may give an op other strides than
      the first trace did (channels-last pooling outputs), and a view then
      fails; in ONNX both are a Reshape.
    """
    for node in graph_module.graph.nodes:
        target = _SCALAR_TO_TENSOR_OVERLOAD.get(node.target)
        if target is not None and len(node.args) > 1 and isinstance(node.args[1], torch.fx.Node):
            node.target = target
        elif node.target in _VIEWS:
            node.target = torch.ops.aten.reshape.default
    graph_module.recompile()


def _root_cause(error: BaseException) -> BaseException:
    """The innermost exception of a chain: the exporter wraps the useful one several times."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def _is_view(node: torch.fx.Node) -> bool:
    schema = getattr(node.target, "_schema", None)
    return bool(schema and schema.returns and schema.returns[0].alias_info is not None)


def _functional_twin(target):
    """``aten.add_.Tensor`` -> ``aten.add.Tensor`` (None when there is none)."""
    if target is torch.ops.aten.bernoulli_.float:  # dropout's mask
        return torch.ops.aten.bernoulli.p
    name, overload = target._schema.name.split("::")[-1], target._overloadname
    if not name.endswith("_"):
        return None
    packet = getattr(torch.ops.aten, name[:-1], None)
    return getattr(packet, overload, None) if packet is not None else None


def _functionalize_inplace(graph_module: torch.fx.GraphModule) -> bool:
    """Rewrite in-place ops on fresh, unaliased intermediates into their functional twins.

    Only such mutations occur in our traces (buffer updates on clones,
    ``copy_`` in a few decompositions, dropout's ``bernoulli_`` on a fresh
    tensor). Returns False, changing nothing
    material, when some mutation is not of that kind.
    """
    graph = graph_module.graph
    order = {node: i for i, node in enumerate(graph.nodes)}
    rewrites = []
    for node in graph.nodes:
        schema = getattr(node.target, "_schema", None)
        if node.op != "call_function" or schema is None or not schema.is_mutable:
            continue
        target = node.args[0] if node.args else None
        if not isinstance(target, torch.fx.Node) or target.op != "call_function":
            return False
        if _is_view(target) and not target.target._schema.is_mutable:  # an in-place result is fine
            return False
        if any(_is_view(user) and not user.target._schema.is_mutable for user in target.users):
            return False
        before, after = target.meta.get("val"), node.meta.get("val")
        if node.target is torch.ops.aten.copy_.default:
            source = node.args[1]
            value = source.meta.get("val") if isinstance(source, torch.fx.Node) else None
            if value is None or before is None or value.shape != before.shape or value.dtype != before.dtype:
                return False
            rewrites.append((node, lambda n=node: n.args[1]))
        else:
            twin = _functional_twin(node.target)
            if twin is None or before is None or after is None or after.dtype != before.dtype:
                return False
            rewrites.append((node, twin))
    for node, make in rewrites:
        target = node.args[0]  # read now: an earlier rewrite may have replaced it
        if callable(make) and not isinstance(make, torch._ops.OpOverload):
            replacement = make()
        else:
            args, kwargs = node.args, dict(node.kwargs)
            if make is torch.ops.aten.bernoulli.p:  # p may be left at its default in the in-place call
                args, kwargs = (node.args[0], node.args[1] if len(node.args) > 1 else kwargs.pop("p", 0.5)), kwargs
            with graph.inserting_after(node):
                replacement = graph.call_function(make, args, kwargs)
                replacement.meta = dict(node.meta)
        for user in list(target.users):
            if user is not node and order.get(user, -1) > order[node]:
                user.replace_input_with(target, replacement)
        node.replace_all_uses_with(replacement)
        graph.erase_node(node)
    graph_module.recompile()
    return True


class _RecordingShapeEnv(ShapeEnv):
    """A ShapeEnv that remembers which module was running when a symbol became a constant."""

    def __init__(self, tracker: ModuleTracker) -> None:
        super().__init__(duck_shape=False)  # equal example sizes are no reason to share a symbol
        self.tracker = tracker
        self.fixed_in: dict[sympy.Symbol, str] = {}

    def _set_replacement(self, a, tgt, msg) -> None:
        if getattr(tgt, "is_number", False) and a not in self.fixed_in:
            stack = self.tracker.stack
            self.fixed_in[a] = f"in {self.tracker.describe(stack[-1])}" if stack else "in the loss or the backward"
        super()._set_replacement(a, tgt, msg)


def _grown(args: Sequence[torch.Tensor], marked: Sequence[set[int]], every: bool) -> list[torch.Tensor]:
    """``args`` with dynamic dimensions of size 0 or 1 grown to 2 (``every``: each dynamic dimension doubled).

    Values are repeated along the dimension (zeros where it was empty).
    """
    grown = []
    for arg, dims in zip(args, marked):
        for dim in sorted(dims):
            if arg.shape[dim] == 0:
                arg = arg.new_zeros(tuple(2 if k == dim else n for k, n in enumerate(arg.shape)))
            elif every or arg.shape[dim] == 1:
                arg = torch.cat([arg, arg], dim)
        grown.append(arg)
    return grown


@dataclass
class Traced:
    """An exported graph and what the trace learnt about its data inputs.

    Attributes:
        model: the ONNX model (onnx-ir).
        index_ranges: the valid values of each data input that indexes something, by position.
        shapes: export's shape of each data input: ints, and sympy expressions of export's symbols.
        output_shapes: export's shape of each output, alike.
        ranges: (min, max) of each of export's symbols, None where unbounded.
        why_fixed: (input, dim) -> what fixed a dimension marked dynamic, where known.
    """

    model: ir.Model
    index_ranges: dict[int, IndexRange]
    shapes: list[tuple[int | sympy.Expr, ...]]
    output_shapes: list[tuple[int | sympy.Expr, ...] | None]
    ranges: dict[sympy.Symbol, tuple[int | None, int | None]]
    why_fixed: dict[tuple[int, int], str]


def trace_to_onnx(
    fn: Callable,
    args: Sequence[torch.Tensor],
    dynamic: Sequence[Mapping[int, object]],
    what: str,
    tracker: ModuleTracker,
) -> Traced:
    """Trace ``fn(*args)`` and export it to an onnx-ir model.

    Args:
        fn: a function of flat tensors returning a flat tuple of tensors.
        args: example values; the first ``len(dynamic)`` are the data (inputs and targets).
        dynamic: for each data arg, the dimensions to make symbolic (keys; the values are ignored).
        what: a short description for error messages ("train step", "eval forward").
        tracker: the active module tracker, which explains failures.
    """
    marked = [set(dims) if a.dim() > 0 else set() for a, dims in zip(args, dynamic)]
    marked += [set()] * (len(args) - len(marked))
    if all(args[i].shape[k] >= 2 for i, dims in enumerate(marked) for k in dims):
        return _trace(fn, list(args), len(dynamic), marked, what, tracker)
    # torch fixes sizes 0 and 1 (a size-1 dimension broadcasts): trace at larger sizes that keep the
    # example's relations, first growing each such dimension to 2 (equal sizes stay equal), then
    # doubling every dynamic one (labels of batch * a fixed length grow with the batch); else as given.
    for every in (False, True):
        try:
            return _trace(fn, _grown(args, marked, every), len(dynamic), marked, what, tracker)
        except CaptureError:
            continue
    traced = _trace(fn, list(args), len(dynamic), marked, what, tracker)
    for i, dims in enumerate(marked):
        for dim in dims:
            if args[i].shape[dim] < 2 and (i, dim) not in traced.why_fixed:
                traced.why_fixed[(i, dim)] = (
                    f"its example size is {args[i].shape[dim]}, and torch fixes sizes 0 and 1; "
                    "give an example of size 2 or more"
                )
    return traced


def _trace(
    fn: Callable, args: list[torch.Tensor], n_data: int, marked: list[set[int]], what: str, tracker: ModuleTracker
) -> Traced:
    shape_env = _RecordingShapeEnv(tracker)
    # Non-fake inputs are constants the model or loss holds (a loss's class weights): they become graph constants.
    fake_mode = FakeTensorMode(shape_env=shape_env, allow_non_fake_inputs=True)

    def fake(t: torch.Tensor, dims: set[int]) -> torch.Tensor:
        sizes = [DimDynamic.DYNAMIC if i in dims else DimDynamic.STATIC for i in range(t.dim())]
        return fake_mode.from_tensor(t, symbolic_context=StatelessSymbolicContext(dynamic_sizes=sizes))

    with _tracing_context():
        try:
            fakes = [fake(a, d) for a, d in zip(args, marked)]
            symbols = {
                (i, k): fakes[i].shape[k].node.expr
                for i, dims in enumerate(marked)
                for k in dims
                if isinstance(fakes[i].shape[k], torch.SymInt)  # not a size 0 or 1: torch fixes those
            }
            with fake_mode:
                graph_module = make_fx(fn, decomposition_table=train_decompositions(), tracing_mode="fake")(*fakes)
            ranges = index_ranges(graph_module, n_data)
            limits = _position_limits(graph_module, shape_env, symbols)
            _make_exportable(graph_module)
            functional = _functionalize_inplace(graph_module)
        except CaptureError:
            raise
        except Exception as e:  # noqa: BLE001 - any tracer failure becomes a CaptureError
            raise tracker.error(what, _root_cause(e)) from e
        why_fixed = {
            site: shape_env.fixed_in[symbol] for site, symbol in symbols.items() if symbol in shape_env.fixed_in
        }
        # every marked dimension as Dim.AUTO: export infers which are equal, derived or fixed
        shapes = [{k: torch.export.Dim.AUTO for k in dims} or None for dims in marked]
        try:
            exported = torch.export.export(graph_module, tuple(args), dynamic_shapes=shapes, strict=False)
        except Exception as e:  # noqa: BLE001
            hint = " (the model may depend on a fixed size: try dynamic_shapes={})" if any(marked) else ""
            raise CaptureError(f"could not export the traced {what}{hint}: {type(e).__name__}: {e}") from e
        data_shapes, output_shapes, symbol_ranges = _shapes(exported, n_data)
        for (i, k), high in limits.items():
            symbol = data_shapes[i][k]
            if isinstance(symbol, sympy.Symbol) and symbol in symbol_ranges:
                low, known = symbol_ranges[symbol]
                symbol_ranges[symbol] = (low, high if known is None else min(known, high))
        if functional and _all_translatable(exported):
            try:
                model = _translate_decomposed(exported)
                return Traced(model, ranges, data_shapes, output_shapes, symbol_ranges, why_fixed)
            except Exception:  # noqa: BLE001 - take the exporter's full path
                exported = torch.export.export(graph_module, tuple(args), dynamic_shapes=shapes, strict=False)
        try:
            program = torch.onnx.export(
                exported, dynamo=True, verbose=False, report=False, custom_translation_table=custom_translations()
            )
        except Exception as e:  # noqa: BLE001
            raise tracker.error(f"{what} (no ONNX translation)", _root_cause(e)) from e
    return Traced(program.model, ranges, data_shapes, output_shapes, symbol_ranges, why_fixed)


def _position_limits(graph_module: torch.fx.GraphModule, shape_env: ShapeEnv, symbols: dict) -> dict:
    """The largest size of each data dimension that counts positions into a table: ``(input, dim) -> max``.

    ``table[arange(seq)]`` (a learned position embedding, a slice of a rotary
    cache taken by index) reads row ``seq - 1``: torch raises past the table's
    end, an ONNX Gather fails deep in onnxruntime, so the bound goes into the
    manifest and the session refuses a longer batch first.
    """
    found: dict[sympy.Symbol, int] = {}
    for node in graph_module.graph.nodes:
        bounds = _SITES.get(_name(node))
        if bounds is None:
            continue
        for index, low, high, _ in bounds(node):
            offset = 0  # arange(...) + offset, as position ids past a cache are
            while isinstance(index, torch.fx.Node):
                name = _name(index)
                if name in _SAME_LAYOUT or name in _RELAYOUT:
                    index = _arg(index, 0)
                elif name in ("add", "sub") and type(_arg(index, 1)) is int and _arg(index, 2) in (None, 1):
                    offset += _arg(index, 1) if name == "add" else -_arg(index, 1)
                    index = _arg(index, 0)
                else:
                    break
            if not isinstance(index, torch.fx.Node) or _name(index) != "arange":
                continue
            args = [a.meta.get("val") if isinstance(a, torch.fx.Node) else a for a in index.args]
            start, end, step = (0, args[0], 1) if len(args) == 1 else (*args[:2], args[2] if len(args) > 2 else 1)
            if not (type(start) is int and start + offset >= max(low, 0) and step == 1):
                continue
            expr = shape_env.replace(end.node.expr) if isinstance(end, torch.SymInt) else None
            if isinstance(expr, sympy.Symbol):  # values start + offset ... end - 1 + offset < high
                found[expr] = min(found.get(expr, high - offset), high - offset)
    limits = {}
    for site, symbol in symbols.items():
        expr = shape_env.replace(symbol)
        if expr in found:
            limits[site] = found[expr]
    return limits


def _shape_of(node) -> tuple[int | sympy.Expr, ...] | None:
    value = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    if not isinstance(value, torch.Tensor):
        return None
    return tuple(d if isinstance(d, int) else d.node.expr for d in value.shape)


def _shapes(exported: torch.export.ExportedProgram, n_data: int):
    """Export's shapes of the first ``n_data`` user inputs and of the outputs, and the ranges of its symbols."""
    from torch.export.graph_signature import InputKind

    user = [s.arg.name for s in exported.graph_signature.input_specs if s.kind == InputKind.USER_INPUT][:n_data]
    nodes = {n.name: n for n in exported.graph.nodes if n.op == "placeholder"}
    shapes = [_shape_of(nodes[name]) for name in user]
    outputs = [_shape_of(node) for node in exported.graph.output_node().args[0]]
    ranges = {}
    for symbol, bounds in exported.range_constraints.items():
        if isinstance(symbol, sympy.Symbol):
            low, high = bounds.lower, bounds.upper
            ranges[symbol] = (int(low) if low.is_Integer else None, int(high) if high.is_Integer else None)
    return shapes, outputs, ranges


def _all_translatable(exported: torch.export.ExportedProgram) -> bool:
    """Whether every op of the program has an ONNX translation as it is."""
    registry = onnx_registry()
    for node in exported.graph.nodes:
        if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
            if not registry.is_registered(node.target):
                return False
    return True


def _translate_decomposed(exported: torch.export.ExportedProgram):
    """ONNX translation without the exporter's decomposition pass.

    A functional core-ATen graph (ours, after make_fx and
    ``_functionalize_inplace``) needs no decomposition, and that pass
    re-traces the whole program: about half of the translation time. This
    uses the exporter's internal steps (torch is pinned to the releases
    tested); any failure falls back to the public path.
    """
    from torch.onnx._internal.exporter import _core, _fx_passes

    graph_module = exported.graph_module
    _fx_passes.insert_type_promotion_nodes(graph_module)
    exported._graph_module = _fx_passes.remove_assertion_nodes(graph_module)
    program = _core._exported_program_to_onnx_program(exported, registry=onnx_registry())
    program.optimize()
    return program.model
