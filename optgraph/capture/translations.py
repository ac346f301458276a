"""ONNX translations the exporter lacks, passed as its ``custom_translation_table``.

Each one is covered by a gradient-parity test.
"""

from __future__ import annotations

import functools

import torch
from onnxscript.function_libs.torch_lib.ops.core import aten_empty

aten = torch.ops.aten


def empty_permuted(size, physical_layout, dtype: int = -1, layout="", device="", pin_memory=False):
    """``aten.empty_permuted``: ONNX tensors have no strides, so the layout is moot.

    The exporter's own decompositions emit it when they copy a tensor whose
    re-traced strides are not contiguous (a reshape after channels-last pooling).
    """
    return aten_empty(size, dtype=dtype)


@functools.cache
def custom_translations() -> dict:
    return {aten.empty_permuted.default: empty_permuted}


@functools.cache
def onnx_registry():
    """The exporter's registry of translations, with ours added."""
    from torch.onnx._internal.exporter import _registration

    registry = _registration.ONNXRegistry.from_torchlib()
    for op, function in custom_translations().items():
        registry.register_op(op, function)
    return registry
