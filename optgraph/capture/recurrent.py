"""``LSTM`` / ``GRU`` / ``RNN`` as loops over time that export to ONNX ``Scan``, forward and backward.

torch's fused kernels (``aten.lstm`` and kin) read the batch size as a
concrete integer, which pins the batch dimension, and have no ONNX
translation. Here the input projection of every time step is one matrix
product, and then each layer is one ``torch.ops.higher_order.scan`` over
time whose body is one step of the cell, for both directions of a
bidirectional layer at once. The exporter turns the scan into an ONNX
``Scan``, so the graph has the same size for any sequence length and the
time dimension can be dynamic.

The backward is written out here (:class:`_Layer`), not left to torch's
autograd of ``scan``: that one saves, once per time step, whatever the step
computes from the weights alone (the transposed recurrent weight, a zero
tensor), and so grows by a weight's size times the sequence length. Here the
forward scan returns each step's gate activations (and the cell state), a
reversed scan carries the state gradients back through time and returns each
step's gate gradients, and the weight gradients are then one matrix product
over all steps. The formulas are those of torch's cells; the tests check
them against torch's own kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch._higher_order_ops.scan import scan_op
from torch.nn import functional as F

from optgraph.errors import CaptureError


@dataclass(frozen=True)
class _Spec:
    """What a layer computes: the cell (torch's ``mode``), the directions, and which weights it has."""

    mode: str  # "LSTM", "GRU", "RNN_TANH" or "RNN_RELU"
    directions: int
    bias: bool
    proj: bool  # LSTM with proj_size > 0

    @property
    def lstm(self) -> bool:
        return self.mode == "LSTM"


def _step(spec: _Spec, x, h, c, w_t, b, wr_t):
    """One time step of one direction: the new ``h`` and ``c``, and what the backward step needs.

    ``x`` is the input projection with its bias; ``w_t`` and ``wr_t`` are the
    transposed recurrent and projection weights.
    """
    hp = h @ w_t if b is None else torch.addmm(b, h, w_t)
    if spec.lstm:
        i, f, g, o = (x + hp).chunk(4, dim=-1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c = f * c + i * g
        h = o * torch.tanh(c)
        return (h if wr_t is None else h @ wr_t), c, [torch.cat([i, f, g, o], dim=-1), c.clone()]
    if spec.mode == "GRU":
        xr, xz, xn = x.chunk(3, dim=-1)
        hr, hz, hn = hp.chunk(3, dim=-1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return n + z * (h - n), None, [torch.cat([r, z, n], dim=-1), hn]
    a = x + hp
    return (torch.tanh(a) if spec.mode == "RNN_TANH" else torch.relu(a)), None, []


def _step_backward(spec: _Spec, dh, dc, dy, saved, w, wr):
    """One step back through time for one direction.

    Args:
        dh, dc: the gradients of the state this step returned (``dc`` is None but for LSTM).
        dy: the gradient of this step's output.
        saved: what :func:`_step` saved, then the previous ``c`` (LSTM), ``h`` (GRU), or this
            step's output (RNN).
        w, wr: the recurrent and projection weights, as the module holds them.

    Returns:
        The gradients of the previous ``h`` and ``c``, of the input projection, of the recurrent
        projection ``h @ w.T + b`` (the same tensor but for GRU), and of this step's full ``h``
        (for the projection weight).
    """
    dh = dh + dy
    if spec.lstm:
        acts, c, c_prev = saved
        i, f, g, o = acts.chunk(4, dim=-1)
        tanh_c = torch.tanh(c)
        dm = dh if wr is None else dh @ wr
        dc = dc + dm * o * (1 - tanh_c * tanh_c)
        da = torch.cat(
            [dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - g * g), dm * tanh_c * o * (1 - o)], dim=-1
        )
        return da @ w, dc * f, da, da, dh
    if spec.mode == "GRU":
        acts, hn, h_prev = saved
        r, z, n = acts.chunk(3, dim=-1)
        dn = dh * (1 - z) * (1 - n * n)
        dz = dh * (h_prev - n) * z * (1 - z)
        dr = dn * hn * r * (1 - r)
        dhp = torch.cat([dr, dz, dn * r], dim=-1)
        return dh * z + dhp @ w, None, torch.cat([dr, dz, dn], dim=-1), dhp, dh
    (h,) = saved
    da = dh * (1 - h * h) if spec.mode == "RNN_TANH" else torch.where(h > 0, dh, torch.zeros_like(dh))
    return da @ w, None, da, da, dh


def _scan(body, init: list, xs: list, constants: list) -> tuple[list, list]:
    """``scan_op`` over dim 0 of ``xs``: the last carries and the stacked step outputs."""
    out = scan_op(body, init, xs, constants)
    return list(out[: len(init)]), list(out[len(init) :])


def _forward(spec: _Spec, xs, h0, c0, w, b, wr, save: bool):
    """Every direction over time in one scan: outputs, last ``h``, last ``c``, and (``save``) what backward needs."""
    dirs = range(spec.directions)
    w_t = [t.t() for t in w]
    wr_t = [t.t() for t in wr]
    n_saved = _n_saved(spec) if save else 0

    def body(*flat):
        it = iter(flat)
        h = [next(it) for _ in dirs]
        c = [next(it) for _ in dirs] if spec.lstm else [None] * spec.directions
        x = [next(it) for _ in dirs]
        weights = [next(it) for _ in dirs]
        biases = [next(it) for _ in dirs] if spec.bias else [None] * spec.directions
        projections = [next(it) for _ in dirs] if spec.proj else [None] * spec.directions
        steps = [_step(spec, x[d], h[d], c[d], weights[d], biases[d], projections[d]) for d in dirs]
        new_h, new_c = [s[0] for s in steps], ([s[1] for s in steps] if spec.lstm else [])
        outputs = [s[0].clone() for s in steps]  # a step output may not alias a carry
        saved = [t for s in steps for t in s[2]] if save else []
        return (*new_h, *new_c, *outputs, *saved)

    # every carry a tensor of its own: a scan given one tensor object twice reads the second for both
    init = [t.clone() for t in h0] + ([t.clone() for t in c0] if spec.lstm else [])
    last, stacked = _scan(body, init, list(xs), [*w_t, *b, *wr_t])
    h_n, c_n = last[: spec.directions], (last[spec.directions :] if spec.lstm else [])
    ys, saved = stacked[: spec.directions], stacked[spec.directions :]
    return ys, h_n, c_n, [saved[d * n_saved : (d + 1) * n_saved] for d in dirs]


def _n_saved(spec: _Spec) -> int:
    """How many tensors :func:`_step` saves per step and direction."""
    return 2 if spec.mode in ("LSTM", "GRU") else 0


def _shifted(first, stacked):
    """``[first, stacked[0], ..., stacked[-2]]``: each step's previous value."""
    return torch.cat([first.unsqueeze(0), stacked[:-1]])


class _Layer(torch.autograd.Function):
    """One layer over time, every direction; inputs and outputs are flat lists of tensors, grouped by kind.

    Inputs: ``xs`` (input projections, each in the order its direction reads), ``h0``, ``c0`` (LSTM),
    ``w`` (recurrent weights), ``b`` (recurrent biases, if any), ``wr`` (projection weights, if any),
    ``directions`` tensors of each. Outputs: ``ys`` (each step's ``h``, in reading order), ``h_n``, ``c_n``.
    """

    @staticmethod
    def forward(ctx, spec: _Spec, *flat):
        xs, h0, c0, w, b, wr = _unflatten(spec, flat)
        ys, h_n, c_n, saved = _forward(spec, xs, h0, c0, w, b, wr, save=True)
        ctx.spec = spec
        ctx.save_for_backward(*h0, *c0, *w, *wr, *ys, *(t for s in saved for t in s))
        return (*ys, *h_n, *c_n)

    @staticmethod
    def backward(ctx, *grads):
        spec = ctx.spec
        n, dirs = spec.directions, range(spec.directions)
        it = iter(ctx.saved_tensors)
        take = lambda count: [next(it) for _ in range(count)]  # noqa: E731
        h0, c0, w = take(n), take(n if spec.lstm else 0), take(n)
        wr, ys = take(n if spec.proj else 0), take(n)
        saved = [take(_n_saved(spec)) for _ in dirs]
        dys, dh_n, dc_n = grads[:n], grads[n : 2 * n], grads[2 * n :]

        # per direction and step: what _step_backward reads, reversed in time
        per_step = []
        for d in dirs:
            if spec.lstm:
                acts, c = saved[d]
                per_step.append([acts, c, _shifted(c0[d], c)])
            elif spec.mode == "GRU":
                per_step.append([*saved[d], _shifted(h0[d], ys[d])])
            else:
                per_step.append([ys[d]])
        width = len(per_step[0])

        def body(*flat):
            it = iter(flat)
            dh = [next(it) for _ in dirs]
            dc = [next(it) for _ in dirs] if spec.lstm else [None] * n
            dy = [next(it) for _ in dirs]
            steps = [[next(it) for _ in range(width)] for _ in dirs]
            weights = [next(it) for _ in dirs]
            projections = [next(it) for _ in dirs] if spec.proj else [None] * n
            back = [_step_backward(spec, dh[d], dc[d], dy[d], steps[d], weights[d], projections[d]) for d in dirs]
            carries = [r[0] for r in back] + ([r[1] for r in back] if spec.lstm else [])
            outputs = [r[2] for r in back]
            if spec.mode == "GRU":
                outputs += [r[3] for r in back]
            if spec.proj:
                outputs += [r[4].clone() for r in back]
            return (*carries, *outputs)

        init = [g.clone() for g in dh_n] + ([g.clone() for g in dc_n] if spec.lstm else [])
        xs = [g.flip(0) for g in dys] + [t.flip(0) for s in per_step for t in s]
        last, stacked = _scan(body, init, xs, [*w, *wr])
        stacked = [t.flip(0) for t in stacked]
        dh0, dc0 = last[:n], (last[n:] if spec.lstm else [])
        dxs = stacked[:n]
        dhps = stacked[n : 2 * n] if spec.mode == "GRU" else dxs
        dhs = stacked[-n:] if spec.proj else []

        needs = ctx.needs_input_grad[1:]
        need_w, need_b, need_wr = _unflatten(spec, needs)[3:]
        dw, db, dwr = [], [], []
        for d in dirs:
            h_prev = _shifted(h0[d], ys[d])
            gates = dhps[d].reshape(-1, dhps[d].shape[-1])
            dw.append(gates.t() @ h_prev.reshape(-1, h_prev.shape[-1]) if need_w[d] else None)
            if spec.bias:
                db.append(gates.sum(0) if need_b[d] else None)
            if spec.proj:
                acts, c = saved[d]
                m = acts.chunk(4, dim=-1)[3] * torch.tanh(c)  # the hidden state before its projection
                dh = dhs[d].reshape(-1, dhs[d].shape[-1])
                dwr.append(dh.t() @ m.reshape(-1, m.shape[-1]) if need_wr[d] else None)
        return (None, *dxs, *dh0, *dc0, *dw, *db, *dwr)


def _unflatten(spec: _Spec, flat):
    """``(xs, h0, c0, w, b, wr)`` from :class:`_Layer`'s flat inputs (empty lists for what the layer lacks)."""
    n = spec.directions
    counts = [n, n, n if spec.lstm else 0, n, n if spec.bias else 0, n if spec.proj else 0]
    groups, start = [], 0
    for count in counts:
        groups.append(list(flat[start : start + count]))
        start += count
    return groups


def _layer(spec: _Spec, xs, h0, c0, w, b, wr):
    """One layer: per direction, the outputs ``(time, batch, hidden)`` in reading order, last ``h``, last ``c``."""
    flat = [*xs, *h0, *c0, *w, *b, *wr]
    if torch.is_grad_enabled() and any(t.requires_grad for t in flat):
        out = _Layer.apply(spec, *flat)
        n = spec.directions
        return list(out[:n]), list(out[n : 2 * n]), list(out[2 * n :])
    ys, h_n, c_n, _ = _forward(spec, xs, h0, c0, w, b, wr, save=False)
    return ys, h_n, c_n


def rnn_forward(self: nn.RNNBase, input: torch.Tensor, hx=None):
    """``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` forward as scans over time: torch's arguments and results."""
    if not isinstance(input, torch.Tensor):
        raise CaptureError(f"{type(self).__name__}: packed sequences are not supported; pass a padded tensor")
    batched = input.dim() == 3
    if not batched:
        input = input.unsqueeze(1 if not self.batch_first else 0)
    x = input.transpose(0, 1) if self.batch_first else input  # (time, batch, features)
    directions = 2 if self.bidirectional else 1
    spec = _Spec(self.mode, directions, bool(self.bias), bool(self.proj_size))
    states = self.num_layers * directions
    if hx is None:
        h0 = [x.new_zeros(x.shape[1], self.proj_size or self.hidden_size) for _ in range(states)]
        c0 = [x.new_zeros(x.shape[1], self.hidden_size) for _ in range(states)] if spec.lstm else []
    else:
        h, c = hx if spec.lstm else (hx, None)
        if not batched:
            h, c = h.unsqueeze(1), (c.unsqueeze(1) if spec.lstm else None)
        h0, c0 = list(h.unbind(0)), (list(c.unbind(0)) if spec.lstm else [])
    h_n, c_n = [], []
    layer_input = x
    for layer in range(self.num_layers):
        names = [f"_l{layer}" + ("_reverse" if d else "") for d in range(directions)]
        projected = [
            F.linear(layer_input, getattr(self, "weight_ih" + s), getattr(self, "bias_ih" + s, None)) for s in names
        ]
        first = layer * directions
        ys, hs, cs = _layer(
            spec,
            [p.flip(0) if d else p for d, p in enumerate(projected)],  # the reverse direction reads backwards
            h0[first : first + directions],
            c0[first : first + directions],
            [getattr(self, "weight_hh" + s) for s in names],
            [getattr(self, "bias_hh" + s) for s in names] if spec.bias else [],
            [getattr(self, "weight_hr" + s) for s in names] if spec.proj else [],
        )
        h_n += hs
        c_n += cs
        ys = [y.flip(0) if d else y for d, y in enumerate(ys)]
        layer_input = torch.cat(ys, dim=-1) if directions == 2 else ys[0]
        if self.dropout and self.training and layer < self.num_layers - 1:
            layer_input = F.dropout(layer_input, self.dropout, training=True)
    output = layer_input.transpose(0, 1) if self.batch_first else layer_input
    hidden = torch.stack(h_n)
    if not batched:
        output, hidden = output.squeeze(1 if not self.batch_first else 0), hidden.squeeze(1)
    if spec.lstm:
        cell = torch.stack(c_n)
        return output, (hidden, cell if batched else cell.squeeze(1))
    return output, hidden
