"""Models that cannot be captured get a CaptureError naming the op and the module path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from optgraph.capture import capture
from optgraph.errors import CaptureError


@torch.library.custom_op("optgraph_test::opaque_scale", mutates_args=())
def opaque_scale(x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(x.detach().numpy() * 2.0)


class NumpyBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        return torch.from_numpy(np.asarray(grad) * 2)


class CustomOp(nn.Module):
    def forward(self, x):
        return opaque_scale(x)


class OpaqueFunction(nn.Module):
    def forward(self, x):
        return NumpyBackward.apply(x)


class NoDerivative(nn.Module):
    def forward(self, x):
        return torch.igamma(x.abs() + 1, torch.ones_like(x))


def nested(block: nn.Module) -> nn.Module:
    model = nn.Module()
    model.encoder = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Tanh(), block))
    model.head = nn.Linear(4, 2)
    model.forward = lambda x: model.head(model.encoder(x))
    return model


class Net(nn.Module):
    def __init__(self, block):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Tanh(), block))
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.encoder(x))


CASES = {
    "custom-python-op": (CustomOp(), r"optgraph_test::opaque_scale"),
    "opaque-autograd-function": (OpaqueFunction(), r"NumpyBackward"),
    "aten-op-without-derivative": (NoDerivative(), r"igamma"),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_uncapturable_model_names_op_and_module(case):
    block, op = CASES[case]
    model = Net(block)
    with pytest.raises(CaptureError, match=op) as error:
        capture(model, (torch.randn(3, 4),), (torch.randn(3, 2),), nn.MSELoss())
    assert "encoder.1.1" in str(error.value)
    assert "Traceback" not in str(error.value)
    assert len(str(error.value)) < 1500


def test_non_scalar_loss_is_a_capture_error():
    with pytest.raises(CaptureError, match=r"loss_fn must return a scalar tensor, got \('batch', 2\)"):
        capture(nn.Linear(4, 2), (torch.randn(3, 4),), (torch.randn(3, 2),), nn.MSELoss(reduction="none"))


def test_bad_examples_are_capture_errors():
    with pytest.raises(CaptureError, match="example_inputs must be a tuple of torch tensors, got list"):
        capture(nn.Linear(4, 2), [np.zeros((3, 4))], (torch.randn(3, 2),), nn.MSELoss())
    with pytest.raises(CaptureError, match="model.forward takes 1 positional argument"):
        capture(nn.Linear(4, 2), (torch.randn(3, 4), torch.randn(3, 4)), (torch.randn(3, 2),), nn.MSELoss())


class BranchesOnValues(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y = self.fc(x)
        if y.sum() > 0:  # data-dependent control flow
            return y * 2
        return y


def test_data_dependent_control_flow_says_where_and_what_to_change():
    with pytest.raises(CaptureError) as caught:
        capture(BranchesOnValues(), (torch.randn(3, 4),), (torch.randint(0, 2, (3,)),), nn.CrossEntropyLoss())
    message = str(caught.value)
    line = BranchesOnValues.forward.__code__.co_firstlineno + 2
    assert f"test_capture_errors.py:{line} (forward)" in message
    assert "compute both branches and pick with `torch.where`" in message
