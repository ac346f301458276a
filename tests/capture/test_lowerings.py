"""Op patterns that real models brought, each lowered by one general mechanism, with gradient parity.

- weight norm (``nn.utils.parametrizations.weight_norm``): its fused backward,
  ``aten._weight_norm_interface_backward``, has a decomposition
  (wav2vec2's convolutional position embedding);
- ``F.pad`` in constant mode: its kernel read concrete sizes and pinned the
  batch (MobileNetV2's TensorFlow-style padding); it is now slices and
  concatenations;
- a scalar written into a slice (``ids[:, 0] = start``, T5's shift of the
  labels into decoder inputs): ``aten.copy`` broadcasts its source, so the
  scatter that functionalization makes of it gets a source of the right rank;
- an index selected along a dimension (packed attention's q, k and v): its
  backward pads the gradient with zeros in one pass, not an ``Expand`` and
  a ``Where``.

Each case compiles once and checks the loss and every gradient at two batch
sizes, then loads the full artifact into a ``TrainingSession`` and takes a step.
"""

from __future__ import annotations

import copy

import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from models import assert_close
from torch import nn

import optgraph
from optgraph import optim
from optgraph.api import build_artifact
from optgraph.capture import capture

weight_norm = nn.utils.parametrizations.weight_norm


class WeightNormConv(nn.Module):
    """A grouped Conv1d under weight norm over dim 2, as wav2vec2's position embedding, then a linear head."""

    def __init__(self, dim: int = 2) -> None:
        super().__init__()
        self.conv = weight_norm(nn.Conv1d(4, 6, 3, padding=1, groups=2), name="weight", dim=dim)
        self.head = weight_norm(nn.Linear(6 * 7, 3))  # dim 0

    def forward(self, x):
        return self.head(F.gelu(self.conv(x)).flatten(1))


class Pads(nn.Module):
    """Constant padding: asymmetric ("same" before a strided conv), negative (a crop), with a fill value."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2)
        self.head = nn.Linear(4 * 4 * 4 + 3 * 7 * 10, 3)

    def forward(self, x):
        same = self.conv(F.pad(x, (0, 1, 0, 1)))  # (8, 8) -> (9, 9) -> (4, 4)
        cropped = F.pad(x, (-1, 3, 0, -1), value=0.5)  # (8, 8) -> (7, 10)
        return self.head(torch.cat([same.flatten(1), cropped.flatten(1)], dim=1))


class MobileBlock(nn.Module):
    """MobileNetV2's stem: TensorFlow "same" padding, then a strided depthwise conv, BatchNorm and ReLU6."""

    def __init__(self) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(4, 4, 3, stride=2, groups=4, bias=False)
        self.norm = nn.BatchNorm2d(4)
        self.head = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.head(F.relu6(self.norm(self.depthwise(F.pad(x, (0, 1, 0, 1))))).flatten(1))


class ShiftRight(nn.Module):
    """Token ids shifted right with a start token written into column 0, as T5 makes decoder inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, ids):
        shifted = ids.new_zeros(ids.shape)
        shifted[..., 1:] = ids[..., :-1].clone()
        shifted[..., 0] = 7
        return self.head(self.embed(shifted).mean(1))


class Selects(nn.Module):
    """Rows chosen by index from one projection, as packed attention selects q, k and v; one index negative."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 3 * 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        packed = self.proj(x).unflatten(-1, (3, 5)).transpose(0, 1)  # (3, batch, 5)
        q, k, v = packed[0], packed[1], packed[-1]
        return self.head(q * k.sigmoid() + v) + x[:, 2:3]


CASES = {
    "weight-norm-conv1d-last-dim": (WeightNormConv, lambda b: torch.randn(b, 4, 7)),
    "weight-norm-conv1d-dim0": (lambda: WeightNormConv(dim=0), lambda b: torch.randn(b, 4, 7)),
    "pad-constant": (Pads, lambda b: torch.randn(b, 3, 8, 8)),
    "pad-depthwise-batchnorm-relu6": (MobileBlock, lambda b: 2 * torch.randn(b, 4, 8, 8)),
    "scalar-into-slice": (ShiftRight, lambda b: torch.randint(0, 10, (b, 5))),
    "select-backward-as-pad": (Selects, lambda b: torch.randn(b, 4)),
}


@pytest.mark.parametrize("name", list(CASES), ids=list(CASES))
def test_lowering_matches_torch(name):
    make, inputs = CASES[name]
    torch.manual_seed(0)
    model = make()
    loss_fn = nn.CrossEntropyLoss()
    captured = capture(model, (inputs(4),), (torch.randint(0, 3, (4,)),), loss_fn)
    proto = ir.to_proto(captured.train)
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    for batch in (3, 6):
        x, y = inputs(batch), torch.randint(0, 3, (batch,))
        feeds = {captured.data_names[0]: x.numpy(), captured.target_names[0]: y.numpy(), **captured.state}
        got = dict(zip(outputs, session.run(None, feeds)))
        reference = copy.deepcopy(model)
        loss = loss_fn(reference(x), y)
        loss.backward()
        assert_close(got["loss"], loss, f"loss at batch {batch}")
        for param, value in reference.named_parameters():
            assert_close(got[f"grad.{param}"], value.grad, f"grad of {param} at batch {batch}", atol=1e-6)

    trainer = optgraph.TrainingSession(build_artifact(captured, optim.AdamW()), providers=["CPUExecutionProvider"])
    x, y = inputs(5), torch.randint(0, 3, (5,))
    assert_close(trainer.eval(x), copy.deepcopy(model).eval()(x), "eval output")
    assert_close(trainer.step(x, y), loss_fn(model(x), y), "loss of the first step")
