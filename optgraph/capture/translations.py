"""ONNX translations the exporter lacks, passed as its ``custom_translation_table``.

Each one is covered by a gradient-parity test.
"""

from __future__ import annotations

import functools

import torch
from onnxscript import opset18 as op
from onnxscript.function_libs.torch_lib.ops.core import aten_empty

aten = torch.ops.aten


def empty_permuted(size, physical_layout, dtype: int = -1, layout="", device="", pin_memory=False):
    """``aten.empty_permuted``: ONNX tensors have no strides, so the layout is moot.

    The exporter's own decompositions emit it when they copy a tensor whose
    re-traced strides are not contiguous (a reshape after channels-last pooling).
    """
    return aten_empty(size, dtype=dtype)


def copy(self, src, non_blocking: bool = False):
    """``aten.copy``: ``src`` cast to ``self``'s dtype and broadcast to ``self``'s shape.

    The exporter's translation only casts, so a scalar copied into a slice
    (``ids[:, 0] = start_token``, functionalized into ``copy`` then
    ``select_scatter``) keeps the scalar's rank, and the scatter's Unsqueeze
    is then out of range.
    """
    value = op.CastLike(src, self)
    same = (
        self.shape is not None
        and src.shape is not None
        and len(self.shape) == len(src.shape)
        and all(isinstance(a, int) and a == b for a, b in zip(self.shape, src.shape))
    )
    return value if same else op.Expand(value, op.Shape(self))


def _max_pool_with_indices(x, dims: int, kernel_size, stride, padding, dilation, ceil_mode: bool):
    """One MaxPool for values and indices; torch's per-plane indices from a cheap offset.

    ONNX numbers indices over the whole tensor, torch within each (n, c)
    plane. The exporter's translation runs a second, full-size 1x1 MaxPool
    only to learn each plane's first index; that is ``plane * H * W``, so
    compute it from the shape instead (a tenth of a CNN step on CPU).
    """
    expand = lambda v: [v] * dims if isinstance(v, int) else list(v) * (dims // len(v))  # noqa: E731
    kernel = expand(kernel_size)
    strides = expand(stride) if stride else kernel
    pads = expand(padding) * 2
    unbatched = len(x.shape) == dims + 1
    if unbatched:
        x = op.Unsqueeze(x, op.Constant(value_ints=[0]))
    values, flat = op.MaxPool(
        x, ceil_mode=ceil_mode, dilations=expand(dilation), kernel_shape=kernel, pads=pads, strides=strides
    )
    shape = op.Shape(x)
    batch_and_channels = op.Slice(shape, op.Constant(value_ints=[0]), op.Constant(value_ints=[2]))
    planes = op.ReduceProd(batch_and_channels, keepdims=0)
    plane_size = op.ReduceProd(
        op.Slice(shape, op.Constant(value_ints=[2]), op.Constant(value_ints=[2 + dims])), keepdims=0
    )
    zero, one = op.Constant(value_int=0), op.Constant(value_int=1)
    first = op.Mul(op.Range(zero, planes, one), plane_size)
    first_shape = op.Concat(batch_and_channels, op.Constant(value_ints=[1] * dims), axis=0)
    indices = op.Sub(flat, op.Reshape(first, first_shape))
    if unbatched:
        values = op.Squeeze(values, op.Constant(value_ints=[0]))
        indices = op.Squeeze(indices, op.Constant(value_ints=[0]))
    return values, indices


def max_pool2d_with_indices(self, kernel_size, stride=(), padding=(0, 0), dilation=(1, 1), ceil_mode=False):
    return _max_pool_with_indices(self, 2, kernel_size, stride, padding, dilation, ceil_mode)


def max_pool3d_with_indices(self, kernel_size, stride=(), padding=(0, 0, 0), dilation=(1, 1, 1), ceil_mode=False):
    return _max_pool_with_indices(self, 3, kernel_size, stride, padding, dilation, ceil_mode)


@functools.cache
def custom_translations() -> dict:
    return {
        aten.copy.default: copy,
        aten.empty_permuted.default: empty_permuted,
        aten.max_pool2d_with_indices.default: max_pool2d_with_indices,
        aten.max_pool3d_with_indices.default: max_pool3d_with_indices,
    }


@functools.cache
def onnx_registry():
    """The exporter's registry of translations, with ours added."""
    from torch.onnx._internal.exporter import _registration

    try:
        registry = torchlib_registry()
    except Exception:  # noqa: BLE001 - the exporter's internals moved: its public way, slower
        registry = _registration.ONNXRegistry.from_torchlib()
    for target, function in custom_translations().items():
        registry.register_op(target, function)
    return registry


def torchlib_registry():
    """``ONNXRegistry.from_torchlib()``, the same translations, built in a fifth of the time.

    ``from_torchlib`` asks each of onnxscript's ~540 torchlib functions for its ONNX IR, which parses
    the function's Python source, to read a domain name that it then drops: about 0.5 s of every
    first compile in a process. This registers the same functions for the same ops without asking
    (a test checks that both registries are equal); a translation builds its IR when it is used.
    """
    from onnxscript.function_libs.torch_lib import ops, registration  # importing ops registers them
    from torch.onnx._internal.exporter import _constants, _registration
    from torch.onnx._internal.exporter._torchlib import _torchlib_registry

    del ops
    registry = _registration.ONNXRegistry()
    registry._opset_version = _constants.TORCHLIB_OPSET
    for meta in _torchlib_registry.get_torchlib_ops():
        registry._register(meta.fx_target, meta)
    for name, functions in registration.default_registry.items():
        if name.startswith("internal::"):
            continue
        target = _registration._get_overload(name)
        if target is None:
            continue
        for function, is_complex in [(f, False) for f in functions.overloads] + [(f, True) for f in functions.complex]:
            meta = _registration.OnnxDecompMeta(
                onnx_function=function, fx_target=target, signature=None, is_custom=False, is_complex=is_complex
            )
            registry._register(target, meta)
    registry._cleanup_registry_based_on_opset_version()
    return registry
