"""The ATen decompositions used while tracing the train step.

torch's core decompositions, plus batch norm decomposed before export (the
exporter's batch-norm translation hard-codes inference mode), plus backward
ops that have no ONNX translation, written as forward ops that have one.
Every entry here is covered by a gradient-parity test.
"""

from __future__ import annotations

import functools

import torch
from torch._decomp import core_aten_decompositions, get_decompositions

aten = torch.ops.aten


def _conv_output_padding(in_size, out_size, stride, padding, dilation, kernel):
    """The transposed-conv output padding that maps ``out_size`` back to ``in_size``."""
    return [
        in_size[i] - ((out_size[i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (kernel[i] - 1) + 1)
        for i in range(len(kernel))
    ]


def _conv_weight_grad(x, grad_out, weight_shape, stride, padding, dilation, groups):
    """dL/dW of a (non-transposed) convolution, as one grouped convolution.

    The batch becomes the channel dimension: correlating the input with the
    output gradient, with stride and dilation exchanged, gives the kernel
    gradient for every group at once.
    """
    nd = len(weight_shape) - 2
    n, c_in = x.shape[0], x.shape[1]
    c_out = grad_out.shape[1]
    cg, og = c_in // groups, c_out // groups
    spatial = list(range(3, 3 + nd))
    xt = x.reshape(n, groups, cg, *x.shape[2:]).permute(2, 1, 0, *spatial).reshape(cg, groups * n, *x.shape[2:])
    gt = (
        grad_out.reshape(n, groups, og, *grad_out.shape[2:])
        .permute(1, 2, 0, *spatial)
        .reshape(groups * og, n, *grad_out.shape[2:])
    )
    corr = aten.convolution(xt, gt, None, list(dilation), list(padding), list(stride), False, [0] * nd, groups)
    for i in range(nd):
        corr = corr.narrow(2 + i, 0, weight_shape[2 + i])
    return corr.transpose(0, 1)


def convolution_backward(
    grad_out, x, weight, bias_sizes, stride, padding, dilation, transposed, output_padding, groups, output_mask
):
    """aten.convolution_backward as convolutions (ONNX has no conv-backward op)."""
    nd = weight.dim() - 2
    stride, padding, dilation = (list(v) * (nd if len(v) == 1 else 1) for v in (stride, padding, dilation))
    grad_input = grad_weight = grad_bias = None
    if transposed:
        # A transposed conv is the input-gradient of a plain conv: swap the roles.
        if output_mask[0]:
            grad_input = aten.convolution(grad_out, weight, None, stride, padding, dilation, False, [0] * nd, groups)
        if output_mask[1]:
            # (in, out/groups, k) is the weight layout of that plain conv: y -> x.
            grad_weight = _conv_weight_grad(grad_out, x, weight.shape, stride, padding, dilation, groups)
    else:
        if output_mask[0]:
            pad_out = _conv_output_padding(x.shape[2:], grad_out.shape[2:], stride, padding, dilation, weight.shape[2:])
            grad_input = aten.convolution(grad_out, weight, None, stride, padding, dilation, True, pad_out, groups)
        if output_mask[1]:
            grad_weight = _conv_weight_grad(x, grad_out, weight.shape, stride, padding, dilation, groups)
    if output_mask[2]:
        grad_bias = grad_out.sum([0, *range(2, 2 + nd)])
    return grad_input, grad_weight, grad_bias


@functools.cache
def train_decompositions() -> dict:
    """The decomposition table for tracing a train step."""
    table = dict(core_aten_decompositions())
    table.update(
        get_decompositions(
            [
                aten._native_batch_norm_legit,
                aten._native_batch_norm_legit_functional,
                aten._native_batch_norm_legit_no_training,
                aten.native_batch_norm,
            ]
        )
    )
    table[aten.convolution_backward.default] = convolution_backward
    return table
