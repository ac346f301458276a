"""The ATen decompositions used while tracing the train step.

torch's core decompositions, plus batch norm decomposed before export (the
exporter's batch-norm translation hard-codes inference mode), plus backward
ops that have no ONNX translation, written as forward ops that have one.
Every entry here is covered by a gradient-parity test.
"""

from __future__ import annotations

import functools
import itertools
import math

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


def _conv_weight_grad_im2col(x, grad_out, weight_shape, stride, padding, dilation, groups):
    """dL/dW as batched matrix products over im2col patches built from strided slices.

    One GEMM per sample and group (``patches @ grad_out^T``), summed over the
    batch: dense, well-shaped matrix products instead of a convolution whose
    kernel is the whole feature map.
    """
    nd = len(weight_shape) - 2
    n, c_in, c_out = x.shape[0], x.shape[1], grad_out.shape[1]
    cg, og = c_in // groups, c_out // groups
    kernel, out_size = list(weight_shape[2:]), list(grad_out.shape[2:])
    for d in range(nd):  # zero padding by concatenation: constant_pad_nd's decomposition specialises the batch
        if padding[d]:
            zeros = x.new_zeros([*x.shape[: 2 + d], padding[d], *x.shape[3 + d :]])
            x = torch.cat([zeros, x, zeros], dim=2 + d)
    # One strided slice per tap and dimension, shared by the taps with the same leading offsets (a 3x3
    # kernel takes 3 + 9 slices, not 18), none where it would take everything (a 1x1 kernel, stride 1):
    # fewer Slice nodes, which the exporter's optimizer matches pairwise.
    sliced = {(): x}
    for offsets in itertools.product(*(range(k) for k in kernel)):
        for d, offset in enumerate(offsets):
            if offsets[: d + 1] in sliced:
                continue
            patch = sliced[offsets[:d]]
            start, end = offset * dilation[d], offset * dilation[d] + stride[d] * (out_size[d] - 1) + 1
            size = patch.shape[2 + d]
            whole = start == 0 and stride[d] == 1 and isinstance(size, int) and end == size
            sliced[offsets[: d + 1]] = patch if whole else aten.slice(patch, 2 + d, start, end, stride[d])
    patches = [sliced[offsets] for offsets in itertools.product(*(range(k) for k in kernel))]
    positions = math.prod(out_size)
    taps = math.prod(kernel)
    cols = torch.stack(patches, dim=2).reshape(n * groups, cg * taps, positions)
    grads = grad_out.reshape(n * groups, og, positions).transpose(1, 2)
    per_sample = aten.bmm(cols, grads).reshape(n, groups, cg * taps, og)
    return per_sample.sum(0).transpose(1, 2).reshape(c_out, cg, *kernel)


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
            grad_weight = _conv_weight_grad_im2col(x, grad_out, weight.shape, stride, padding, dilation, groups)
    if output_mask[2]:
        grad_bias = grad_out.sum([0, *range(2, 2 + nd)])
    return grad_input, grad_weight, grad_bias


def _avg_pool_divisors(in_size, out_size, kernel, stride, padding, count_include_pad):
    """Per output position, the divisor torch's avg_pool uses (separable over dimensions)."""
    per_dim = []
    for n_in, n_out, k, st, pad in zip(in_size, out_size, kernel, stride, padding):
        sizes = []
        for o in range(n_out):
            start = o * st - pad
            end = min(start + k, n_in + pad)
            full = end - start
            start, end = max(start, 0), min(end, n_in)
            sizes.append(full if count_include_pad else end - start)
        per_dim.append(sizes)
    return per_dim


def avg_pool_backward(grad_out, x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override=None):
    """aten.avg_pool{2,3}d_backward as one depthwise transposed convolution of ones."""
    nd = grad_out.dim() - 2
    kernel = list(kernel_size) * (nd if len(kernel_size) == 1 else 1)
    stride = list(stride or kernel) * (nd if len(stride or kernel) == 1 else 1)
    padding = list(padding) * (nd if len(padding) == 1 else 1)
    in_size, out_size = list(x.shape[2:]), list(grad_out.shape[2:])
    if divisor_override:
        scaled = grad_out / divisor_override
    else:
        per_dim = _avg_pool_divisors(in_size, out_size, kernel, stride, padding, count_include_pad)
        if all(len(set(sizes)) == 1 for sizes in per_dim):
            scaled = grad_out / float(functools.reduce(lambda a, b: a * b, (sizes[0] for sizes in per_dim)))
        else:
            divisors = torch.ones((), dtype=grad_out.dtype)
            for d, sizes in enumerate(per_dim):
                shape = [1] * nd
                shape[d] = len(sizes)
                divisors = divisors * torch.tensor(sizes, dtype=grad_out.dtype).reshape(shape)
            scaled = grad_out / divisors
    channels = x.shape[1]
    ones = torch.ones([channels, 1, *kernel], dtype=grad_out.dtype, device=grad_out.device)
    natural = [(o - 1) * st - 2 * p + k for o, st, p, k in zip(out_size, stride, padding, kernel)]
    out_pad = [max(n - m, 0) for n, m in zip(in_size, natural)]
    grad_in = aten.convolution(scaled, ones, None, stride, padding, [1] * nd, True, out_pad, channels)
    for d in range(nd):
        if grad_in.shape[2 + d] != in_size[d]:
            grad_in = grad_in.narrow(2 + d, 0, in_size[d])
    return grad_in


def avg_pool_with_divisor(
    x, kernel_size, stride=(), padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None
):
    """aten.avg_pool{2,3}d with ``divisor_override``, which the ONNX translation ignores.

    Rescales the count-include-pad average by (window size / override) per
    output position; other calls keep their usual translation.
    """
    if not divisor_override:
        return NotImplemented
    nd = len(kernel_size) if len(kernel_size) > 1 else x.dim() - 2
    kernel = list(kernel_size) * (nd if len(kernel_size) == 1 else 1)
    stride = list(stride or kernel) * (nd if len(stride or kernel) == 1 else 1)
    padding = list(padding) * (nd if len(padding) == 1 else 1) if not isinstance(padding, int) else [padding] * nd
    op = aten.avg_pool2d.default if nd == 2 else aten.avg_pool3d.default
    mean = op(x, kernel, stride, padding, ceil_mode, True, None)
    per_dim = _avg_pool_divisors(list(x.shape[2:]), list(mean.shape[2:]), kernel, stride, padding, True)
    scale = torch.ones((), dtype=x.dtype)
    for d, sizes in enumerate(per_dim):
        shape = [1] * nd
        shape[d] = len(sizes)
        scale = scale * torch.tensor(sizes, dtype=x.dtype).reshape(shape)
    return mean * (scale / divisor_override)


def threshold_backward(grad_out, x, threshold):
    """ReLU's backward as ``grad * (x > threshold)``: a Mul, where a Where with a
    broadcast scalar is several times slower in onnxruntime."""
    return grad_out * (x > threshold).to(grad_out.dtype)


def _adaptive_pool_matrix(in_size: int, out_size: int, dtype) -> torch.Tensor:
    """(out, in) averaging matrix of adaptive pooling along one dimension (torch's window bounds)."""
    rows = []
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)
        rows.append([1.0 / (end - start) if start <= j < end else 0.0 for j in range(in_size)])
    return torch.tensor(rows, dtype=dtype)  # built from Python lists: in-place writes would be traced


def adaptive_avg_pool_backward(grad_out, x):
    """aten._adaptive_avg_pool{2,3}d_backward: adaptive averaging is separable, so its
    gradient is one small matrix product per spatial dimension."""
    nd = grad_out.dim() - 2
    grad = grad_out
    for d in range(nd):
        matrix = _adaptive_pool_matrix(x.shape[2 + d], grad_out.shape[2 + d], grad_out.dtype)
        # contract dimension 2 + d of grad with the (out, in) matrix, keeping the order of dimensions
        grad = torch.matmul(grad.movedim(2 + d, -1), matrix).movedim(-1, 2 + d)
    return grad


# Ops the exporter has no translation for but decomposes in a second full re-trace of
# the graph; decomposing them while we trace lets translation skip that pass (a graph
# that still holds an untranslatable op takes the exporter's full path).
_FOR_ONNX = [aten._adaptive_avg_pool2d.default, aten.max_pool2d_with_indices_backward.default]


def max_pool3d_backward(grad_out, x, kernel_size, stride, padding, dilation, ceil_mode, indices):
    """``aten.max_pool3d_with_indices_backward``, which torch does not decompose (2-D it does, the same way).

    The indices number positions within each (n, c) volume, so the gradient
    is a scatter-add of ``grad_out`` into the flattened volumes (overlapping
    windows that pick the same input add up, as in torch).
    """
    lead = x.shape[:-3]
    volume = x.shape[-3] * x.shape[-2] * x.shape[-1]
    flat = x.new_zeros((*lead, volume)).scatter_add(-1, indices.reshape(*lead, -1), grad_out.reshape(*lead, -1))
    return flat.reshape(x.shape)


def squeeze_dims(x, dims):
    """aten.squeeze.dims as a reshape (torch's own decomposition emits prims)."""
    dims = {d % max(x.dim(), 1) for d in dims}
    if any(not isinstance(x.shape[d], int) for d in dims):
        return NotImplemented  # a symbolic (batch) dimension: leave it to the exporter
    return aten.reshape.default(x, [size for i, size in enumerate(x.shape) if not (i in dims and size == 1)])


def var_mean_correction(x, dim=None, *, correction=None, keepdim=False):
    """aten.var_mean.correction in two passes (torch's own decomposition emits prims)."""
    dims = list(range(x.dim())) if dim is None else [d % x.dim() for d in dim]
    mean = aten.mean.dim(x, dims, True)
    count = 1
    for d in dims:
        count = count * x.shape[d]
    squares = aten.sum.dim_IntList((x - mean) * (x - mean), dims, keepdim)
    var = squares / (count - (1 if correction is None else correction))
    return var, (mean if keepdim else squeeze_dims(mean, dims))


def constant_pad_nd(x, pad, value=0):
    """``aten.constant_pad_nd`` (``F.pad`` in constant mode) as slices and concatenations.

    torch's kernel, and its Python decomposition, read every size as a
    concrete integer and so pin the batch (a TensorFlow-style "same" padding
    before a strided convolution, for one). Negative padding crops; positive
    padding concatenates a block of ``value`` on that side, whose shape is
    ``x``'s own, symbols included.
    """
    fresh = False  # a new tensor, as the op returns, rather than a view of x
    for i in range(len(pad) // 2):
        d = x.dim() - 1 - i
        left, right = pad[2 * i], pad[2 * i + 1]
        if left < 0 or right < 0:
            x = aten.slice.Tensor(x, d, max(-left, 0), x.shape[d] + min(right, 0))
        if left > 0 or right > 0:
            block = [*x.shape[:d], 0, *x.shape[d + 1 :]]
            parts = []
            for width in (left, right):
                block[d] = width
                parts.append(x.new_full(block, value) if width > 0 else None)
            x = torch.cat([p for p in (parts[0], x, parts[1]) if p is not None], dim=d)
            fresh = True
    return x if fresh else aten.clone.default(x)


def weight_norm_interface_backward(grad_w, saved_v, saved_g, saved_norms, dim):
    """``aten._weight_norm_interface_backward``: the gradients of ``w = g * v / ||v||``.

    torch's fused weight norm (``nn.utils.weight_norm`` or the
    ``parametrizations.weight_norm`` parametrization, norm over every
    dimension but ``dim``) has a backward kernel and no decomposition; this is
    the formula of torch's ``_weight_norm_differentiable_backward``, for any
    ``dim``. ``saved_g`` and ``saved_norms`` are shaped to broadcast against ``v``.
    """
    dims = [d for d in range(saved_v.dim()) if d != dim % saved_v.dim()]
    norms = saved_norms.to(saved_g.dtype)
    per_dim_sums = (grad_w * saved_v).sum(dims, keepdim=True)
    grad_v = (saved_g / norms) * (grad_w - saved_v * (per_dim_sums / (norms * norms)))
    grad_g = per_dim_sums / norms
    return grad_v, grad_g


def select_backward(grad_output, input_sizes, dim: int, index: int):
    """``aten.select_backward``: ``grad_output`` put back at ``index`` of ``dim`` among zeros, as one pad.

    torch's decomposition writes it into zeros with ``select_scatter``, which becomes an ``Expand`` of the
    gradient and a broadcasting ``Where``: two passes over the whole input where a pad (a concatenation
    with zeros, as constant padding is lowered) makes one.
    Packed attention projections (``nn.MultiheadAttention`` selects q, k and v from one tensor) take
    this backward in every layer. A size or index that is not a plain int keeps torch's way.
    """
    size = input_sizes[dim]
    if type(size) is not int or type(index) is not int:
        return NotImplemented
    rank = len(input_sizes)
    dim, index = dim % rank, index % size
    pad = [0, 0] * (rank - 1 - dim) + [index, size - 1 - index]  # from the last dimension backwards
    return aten.constant_pad_nd(grad_output.unsqueeze(dim), pad, 0.0)


_PINS_BATCH = [
    aten.lstm.input, aten.lstm.data, aten.gru.input, aten.gru.data,
    aten.rnn_tanh.input, aten.rnn_tanh.data, aten.rnn_relu.input, aten.rnn_relu.data,
]  # fmt: skip


@functools.cache
def train_decompositions() -> dict:
    """The decomposition table for tracing a train step."""
    table = dict(core_aten_decompositions())
    table.update(get_decompositions(_FOR_ONNX))
    table[aten.squeeze.dims] = squeeze_dims
    table[aten.var_mean.correction] = var_mean_correction
    # Python decompositions of these composite ops call int() on sizes and so pin the
    # batch dimension; torch's C++ composites trace symbolically.
    for op in _PINS_BATCH:
        table.pop(op, None)
    table.update(
        get_decompositions(
            [
                aten._native_batch_norm_legit,
                aten._native_batch_norm_legit_functional,
                aten._native_batch_norm_legit_no_training,
                aten.native_batch_norm,
                # the C++ composites of interpolate read concrete sizes and would pin the batch
                aten.upsample_nearest1d.vec,
                aten.upsample_nearest2d.vec,
                aten.upsample_nearest3d.vec,
                aten.upsample_linear1d.vec,
                aten.upsample_bilinear2d.vec,
                aten.upsample_trilinear3d.vec,
            ]
        )
    )
    table[aten.convolution_backward.default] = convolution_backward
    table[aten.select_backward.default] = select_backward
    table[aten.avg_pool2d_backward.default] = avg_pool_backward
    table[aten.avg_pool3d_backward.default] = avg_pool_backward
    table[aten._adaptive_avg_pool2d_backward.default] = adaptive_avg_pool_backward
    table[aten._adaptive_avg_pool3d_backward.default] = adaptive_avg_pool_backward
    table[aten.threshold_backward.default] = threshold_backward
    table[aten.max_pool3d_with_indices_backward.default] = max_pool3d_backward
    table[aten._weight_norm_interface_backward.default] = weight_norm_interface_backward
    table[aten.constant_pad_nd.default] = constant_pad_nd
    table[aten.avg_pool2d.default] = avg_pool_with_divisor
    table[aten.avg_pool3d.default] = avg_pool_with_divisor
    return table
