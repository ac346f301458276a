"""Gradient parity of the captured joint graph with torch autograd, on plain onnxruntime.

Each case is a small model around one lowering (conv backward, pooling
backward, batch norm in train mode); the loss, every gradient and every
updated buffer must match torch at two batch sizes from one compile.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from models import CNN, MLP, assert_close
from torch import nn

from optgraph.capture import capture


def conv_net(cin=4, cout=6, image=9, **conv):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, **conv), nn.Tanh(), nn.Flatten()), (cin, image, image)


def pool_net(pool, cin=3, image=9):
    return nn.Sequential(nn.Conv2d(cin, cin, 1), pool, nn.Flatten()), (cin, image, image)


CASES = {
    "conv-plain": conv_net(),
    "conv-stride2-pad1": conv_net(stride=2, padding=1),
    "conv-stride3-uneven": conv_net(stride=3, padding=2, image=10),
    "conv-dilation2": conv_net(dilation=2, padding=2),
    "conv-groups2": conv_net(groups=2),
    "conv-depthwise": conv_net(cout=8, groups=4, stride=2, padding=1),
    "conv-no-bias-pad-rect": conv_net(bias=False, padding=(1, 0), stride=(1, 2)),
    "conv1d": (nn.Sequential(nn.Conv1d(3, 5, 4, stride=2, padding=1), nn.Flatten()), (3, 11)),
    "conv-transpose2d": (
        nn.Sequential(nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1), nn.Flatten()),
        (4, 5, 5),
    ),  # fmt: skip
    "maxpool2": pool_net(nn.MaxPool2d(2)),
    "maxpool3-stride2-pad1": pool_net(nn.MaxPool2d(3, stride=2, padding=1)),
    "maxpool-ceil": pool_net(nn.MaxPool2d(2, ceil_mode=True)),
    "maxpool-dilation": pool_net(nn.MaxPool2d(2, stride=1, dilation=2)),
    "avgpool2": pool_net(nn.AvgPool2d(2)),
    "avgpool3-stride2-pad1": pool_net(nn.AvgPool2d(3, stride=2, padding=1)),
    "avgpool-no-count-pad": pool_net(nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)),
    "avgpool-ceil": pool_net(nn.AvgPool2d(2, ceil_mode=True)),
    "avgpool-ceil-pad-divisor": pool_net(nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, divisor_override=4)),
    "batchnorm2d": (
        nn.Sequential(nn.Conv2d(2, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten()),
        (2, 6, 6),
    ),  # fmt: skip
    "batchnorm-momentum-none": (nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4, momentum=None), nn.ReLU()), (5,)),
    "dropout-p0-flatten": (nn.Sequential(nn.Flatten(), nn.Dropout(0.0), nn.Linear(12, 3)), (3, 2, 2)),
    "two-conv-blocks-flatten": (
        nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1, bias=False),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(8 * 2 * 2, 5),
        ),
        (1, 8, 8),
    ),  # fmt: skip
    "mlp": (MLP(), (8,)),
    "cnn": (CNN(), (1, 8, 8)),
}


def _session(model: ir.Model) -> ort.InferenceSession:
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def _torch_step(model, criterion, x, y):
    model = copy.deepcopy(model).train()
    model.zero_grad()
    loss = criterion(model(x), y)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    return loss, grads, dict(model.named_buffers())


@pytest.mark.parametrize("loss_kind", ["mse", "ce"])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_gradients_match_torch(case, loss_kind):
    torch.manual_seed(0)
    module, shape = CASES[case]
    module = copy.deepcopy(module)
    with torch.no_grad():
        out_dim = module(torch.randn(2, *shape)).reshape(2, -1).shape[1]
    if loss_kind == "mse":
        criterion = nn.MSELoss()

        def target(b):
            return torch.randn(b, out_dim)
    else:
        criterion = nn.CrossEntropyLoss()

        def target(b):
            return torch.randint(0, out_dim, (b,))

    def flat_loss(out, y):
        return criterion(out.reshape(out.shape[0], -1), y)

    captured = capture(module, (torch.randn(4, *shape),), (target(4),), flat_loss)
    session = _session(captured.train)
    outputs = [o.name for o in session.get_outputs()]
    for batch in (3, 7):
        x, y = torch.randn(batch, *shape), target(batch)
        feeds = {captured.data_names[0]: x.numpy(), captured.target_names[0]: y.numpy(), **captured.state}
        got = dict(zip(outputs, session.run(None, feeds)))
        loss, grads, buffers = _torch_step(module, flat_loss, x, y)
        assert_close(got["loss"], loss, f"loss at batch {batch}")
        for name in captured.trainable:
            assert_close(got[f"grad.{name}"], grads[name], f"grad of {name} at batch {batch}")
        for name in captured.updated_buffers:
            assert_close(got[f"{name}.next"], buffers[name], f"{name} at batch {batch}")
        assert set(captured.updated_buffers) == {n for n in buffers if "running" in n or "num_batches" in n}


def test_dynamic_batch_false_fixes_the_batch():
    module, shape = CASES["mlp"]
    captured = capture(module, (torch.randn(4, *shape),), (torch.randint(0, 4, (4,)),), nn.CrossEntropyLoss(),
                       dynamic_batch=False)  # fmt: skip
    assert [d for d in captured.train.graph.inputs[0].shape] == [4, 8]
    np.testing.assert_equal(captured.state["fc1.weight"], module.fc1.weight.detach().numpy())
