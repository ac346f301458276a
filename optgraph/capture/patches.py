"""Module forwards replaced while tracing, where torch's own one cannot be traced.

``BatchNorm(momentum=None)`` computes its cumulative-average factor with
``float(num_batches_tracked)``, a data-dependent Python number; here the
factor stays a tensor. Each patch is covered by a gradient-parity test.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch
from torch import nn


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


@contextlib.contextmanager
def traceable_modules(model: nn.Module) -> Iterator[None]:
    """Install traceable forwards on the modules that need them, for the duration of a trace."""
    patched = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.momentum is None:
            module.forward = types.MethodType(_cumulative_batch_norm, module)
            patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward
