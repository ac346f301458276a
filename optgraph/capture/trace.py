"""Trace a functional train step (and the eval forward) into ONNX.

``make_fx`` over ``functional_call`` + ``torch.autograd.grad`` with the
decompositions of :mod:`optgraph.capture.decompositions`, traced on fake
tensors whose only symbolic dimension is dim 0 of the data (a concrete batch
would bake ``1/batch`` into mean reductions), then ``torch.export`` and the
dynamo ONNX exporter, which returns an onnx-ir model. The ``make_fx`` graph
also tells which values the integer inputs may hold
(:mod:`optgraph.capture.index_ranges`).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

from optgraph.artifact.index_range import IndexRange
from optgraph.capture.decompositions import train_decompositions
from optgraph.capture.diagnostics import ModuleTracker
from optgraph.capture.index_ranges import index_ranges
from optgraph.capture.translations import custom_translations, onnx_registry
from optgraph.errors import CaptureError

if TYPE_CHECKING:
    import onnx_ir as ir

BATCH_DIM = "batch"


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


def _trace_size(t: torch.Tensor) -> torch.Tensor:
    """A batch of at least 2 rows, so the tracer cannot specialise batch 1."""
    return torch.cat([t, t]) if t.shape[0] == 1 else t


def trace_to_onnx(
    fn: Callable,
    args: Sequence[torch.Tensor],
    batched: Sequence[bool],
    dynamic_batch: bool,
    what: str,
    tracker: ModuleTracker,
) -> tuple[ir.Model, dict[int, IndexRange]]:
    """Trace ``fn(*args)`` and export it to an onnx-ir model.

    Args:
        fn: a function of flat tensors returning a flat tuple of tensors.
        args: example values.
        batched: for each arg, whether its dim 0 is the batch.
        dynamic_batch: make the batch dimension symbolic.
        what: a short description for error messages ("train step", "eval forward").
        tracker: the active module tracker, which explains failures.

    Returns:
        The model, and the valid values of each batched arg that indexes something, by position.
    """
    dynamic = [dynamic_batch and flag and a.dim() > 0 for a, flag in zip(args, batched)]
    args = [_trace_size(a) if d else a for a, d in zip(args, dynamic)]
    # Non-fake inputs are constants the model or loss holds (a loss's class weights): they become graph constants.
    fake_mode = FakeTensorMode(shape_env=ShapeEnv(), allow_non_fake_inputs=True)

    def fake(t: torch.Tensor, dyn: bool) -> torch.Tensor:
        sizes = [DimDynamic.DYNAMIC if (dyn and i == 0) else DimDynamic.STATIC for i in range(t.dim())]
        return fake_mode.from_tensor(t, symbolic_context=StatelessSymbolicContext(dynamic_sizes=sizes))

    with _tracing_context():
        try:
            fakes = [fake(a, d) for a, d in zip(args, dynamic)]
            with fake_mode:
                graph_module = make_fx(fn, decomposition_table=train_decompositions(), tracing_mode="fake")(*fakes)
            ranges = index_ranges(graph_module, sum(batched))
            _make_exportable(graph_module)
            functional = _functionalize_inplace(graph_module)
        except CaptureError:
            raise
        except Exception as e:  # noqa: BLE001 - any tracer failure becomes a CaptureError
            raise tracker.error(what, _root_cause(e)) from e
        batch = torch.export.Dim(BATCH_DIM) if any(dynamic) else None
        shapes = [{0: batch} if d else None for d in dynamic]
        try:
            exported = torch.export.export(graph_module, tuple(args), dynamic_shapes=shapes, strict=False)
        except Exception as e:  # noqa: BLE001
            hint = " (the model may depend on a fixed batch size: try dynamic_batch=False)" if any(dynamic) else ""
            raise CaptureError(f"could not export the traced {what}{hint}: {type(e).__name__}: {e}") from e
        if functional and _all_translatable(exported):
            try:
                return _translate_decomposed(exported), ranges
            except Exception:  # noqa: BLE001 - take the exporter's full path
                exported = torch.export.export(graph_module, tuple(args), dynamic_shapes=shapes, strict=False)
        try:
            program = torch.onnx.export(
                exported, dynamo=True, verbose=False, report=False, custom_translation_table=custom_translations()
            )
        except Exception as e:  # noqa: BLE001
            raise tracker.error(f"{what} (no ONNX translation)", _root_cause(e)) from e
    return program.model, ranges


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
