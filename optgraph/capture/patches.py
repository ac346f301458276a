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
  written out in tensor ops (unrolled over time, the input projection done
  for all time steps at once).

Each patch is covered by a gradient-parity test.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch
import torch.nn.functional as F
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


def _cell(mode: str, x_proj, h, c, w_hh, b_hh):
    """One time step; ``x_proj`` is the input projection with its bias already added."""
    h_proj = F.linear(h, w_hh, b_hh)
    if mode == "LSTM":
        i, f, g, o = (x_proj + h_proj).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
    if mode == "GRU":
        xr, xz, xn = x_proj.chunk(3, dim=-1)
        hr, hz, hn = h_proj.chunk(3, dim=-1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return (1 - z) * n + z * h, c
    pre = x_proj + h_proj
    return (torch.tanh(pre) if mode == "RNN_TANH" else torch.relu(pre)), c


def _unrolled_rnn(self: nn.RNNBase, input: torch.Tensor, hx=None):
    from optgraph.errors import CaptureError

    if not isinstance(input, torch.Tensor):
        raise CaptureError(f"{type(self).__name__}: packed sequences are not supported; pass a padded tensor")
    if getattr(self, "proj_size", 0):
        raise CaptureError(f"{type(self).__name__}: proj_size > 0 is not supported")
    batched = input.dim() == 3
    if not batched:
        input = input.unsqueeze(1 if not self.batch_first else 0)
    x = input.transpose(0, 1) if self.batch_first else input  # (time, batch, features)
    directions = 2 if self.bidirectional else 1
    is_lstm = self.mode == "LSTM"
    if hx is None:
        zeros = x.new_zeros(self.num_layers * directions, x.shape[1], self.hidden_size)
        h0, c0 = zeros, zeros
    elif is_lstm:
        h0, c0 = hx if batched else (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
    else:
        h0, c0 = (hx if batched else hx.unsqueeze(1)), None
    h_n, c_n = [], []
    layer_input = x
    for layer in range(self.num_layers):
        outputs = []
        for direction in range(directions):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            w_ih, w_hh = getattr(self, "weight_ih" + suffix), getattr(self, "weight_hh" + suffix)
            b_ih = getattr(self, "bias_ih" + suffix) if self.bias else None
            b_hh = getattr(self, "bias_hh" + suffix) if self.bias else None
            index = layer * directions + direction
            h, c = h0[index], (c0[index] if is_lstm else None)
            projected = F.linear(layer_input, w_ih, b_ih)  # every time step at once
            steps = range(x.shape[0] - 1, -1, -1) if direction else range(x.shape[0])
            seq = [None] * x.shape[0]
            for t in steps:
                h, c = _cell(self.mode, projected[t], h, c, w_hh, b_hh)
                seq[t] = h
            outputs.append(torch.stack(seq))
            h_n.append(h)
            c_n.append(c)
        layer_input = torch.cat(outputs, dim=-1) if directions == 2 else outputs[0]
        if self.dropout and self.training and layer < self.num_layers - 1:
            layer_input = F.dropout(layer_input, self.dropout, training=True)
    output = layer_input.transpose(0, 1) if self.batch_first else layer_input
    hidden = torch.stack(h_n)
    if not batched:
        output, hidden = output.squeeze(1 if not self.batch_first else 0), hidden.squeeze(1)
    if is_lstm:
        cell = torch.stack(c_n) if batched else torch.stack(c_n).squeeze(1)
        return output, (hidden, cell)
    return output, hidden


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
            module.forward = types.MethodType(_unrolled_rnn, module)
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
