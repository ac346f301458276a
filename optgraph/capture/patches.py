"""Module forwards replaced while tracing, where torch's own one cannot be traced.

- ``BatchNorm(momentum=None)`` computes its cumulative-average factor with
  ``float(num_batches_tracked)``, a data-dependent Python number; here the
  factor stays a tensor.
- ``F.interpolate`` (nearest, linear, bilinear, trilinear): torch's C++
  composite reads concrete sizes and pins the batch; here it runs torch's
  own Python decomposition, which traces symbolically.
- ``F.one_hot``: torch's decomposition compares with an ``arange``, which
  takes any value silently; here it is torch's own kernel, a ``scatter``
  of ones, whose index range the compiled artifact then checks as torch
  does (see :mod:`optgraph.capture.index_ranges`).
- ``LSTM`` / ``GRU`` / ``RNN``: torch's fused kernels read the batch size as
  a concrete integer, which pins the batch dimension; here the recurrence is
  a scan over time (:mod:`optgraph.capture.recurrent`), exported as ONNX
  ``Scan`` for any sequence length.

Each patch is covered by a gradient-parity test.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from optgraph.capture.recurrent import rnn_forward


def _cumulative_batch_norm(self: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    self._check_input_dim(x)
    if not (self.training and self.track_running_stats):
        return type(self).forward(self, x)
    self.num_batches_tracked.add_(1)
    factor = 1.0 / self.num_batches_tracked.to(x.dtype)
    dims = [0, *range(2, x.dim())]
    var, mean = torch.var_mean(x, dim=dims, correction=0)
    with torch.no_grad():
        unbiased = torch.var(x, dim=dims, correction=1)
        self.running_mean.mul_(1 - factor).add_(mean * factor)
        self.running_var.mul_(1 - factor).add_(unbiased * factor)
    shape = [1, -1] + [1] * (x.dim() - 2)
    out = (x - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + self.eps)
    if self.affine:
        out = out * self.weight.reshape(shape) + self.bias.reshape(shape)
    return out


_INTERPOLATIONS = {
    ("nearest", 3): (torch.ops.aten.upsample_nearest1d.vec, False),
    ("nearest", 4): (torch.ops.aten.upsample_nearest2d.vec, False),
    ("nearest", 5): (torch.ops.aten.upsample_nearest3d.vec, False),
    ("linear", 3): (torch.ops.aten.upsample_linear1d.vec, True),
    ("bilinear", 4): (torch.ops.aten.upsample_bilinear2d.vec, True),
    ("trilinear", 5): (torch.ops.aten.upsample_trilinear3d.vec, True),
}


def _traceable_interpolate(original):
    from torch._decomp import decomposition_table

    def interpolate(input, size=None, scale_factor=None, mode="nearest", align_corners=None,
                    recompute_scale_factor=None, antialias=False):  # fmt: skip
        found = _INTERPOLATIONS.get((mode, input.dim()))
        if found is None or antialias or recompute_scale_factor or found[0] not in decomposition_table:
            return original(input, size, scale_factor, mode, align_corners, recompute_scale_factor, antialias)
        op, takes_align_corners = found
        spatial = input.dim() - 2
        if size is not None:
            output_size = [size] * spatial if isinstance(size, int) else list(size)
            scales = None
        else:
            output_size = None
            scales = [float(scale_factor)] * spatial if isinstance(scale_factor, (int, float)) else list(scale_factor)
        args = (
            (input, output_size, bool(align_corners), scales) if takes_align_corners else (input, output_size, scales)
        )
        return decomposition_table[op](*args)

    return interpolate


def _checked_one_hot(original):
    def one_hot(tensor, num_classes=-1):
        if num_classes < 0 or tensor.dtype != torch.int64:
            return original(tensor, num_classes)  # torch's checks and messages
        zeros = tensor.new_zeros((*tensor.shape, num_classes))
        return zeros.scatter(-1, tensor.unsqueeze(-1), 1)

    return one_hot


@contextlib.contextmanager
def traceable_modules(model: nn.Module) -> Iterator[None]:
    """Install traceable forwards on the modules that need them, for the duration of a trace."""
    patched = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.momentum is None:
            module.forward = types.MethodType(_cumulative_batch_norm, module)
            patched.append(module)
        elif isinstance(module, nn.RNNBase):
            module.forward = types.MethodType(rnn_forward, module)
            patched.append(module)
    original_interpolate, original_one_hot = F.interpolate, F.one_hot
    F.interpolate = _traceable_interpolate(original_interpolate)
    F.one_hot = _checked_one_hot(original_one_hot)
    try:
        yield
    finally:
        F.interpolate, F.one_hot = original_interpolate, original_one_hot
        for module in patched:
            del module.forward
