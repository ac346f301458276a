"""Small reference models and a torch training loop shared by the tests."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, features: int = 8, hidden: int = 16, classes: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(features, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, features):
        return self.head(torch.tanh(self.fc2(torch.relu(self.fc1(features)))))


class CNN(nn.Module):
    """Conv (no bias before BatchNorm), BatchNorm, ReLU, MaxPool, grouped strided conv, AvgPool, Linear."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1, groups=2)
        self.pool2 = nn.AvgPool2d(2)
        self.drop = nn.Dropout(0.0)
        self.fc = nn.Linear(8, classes)

    def forward(self, image):
        x = self.pool1(torch.relu(self.bn1(self.conv1(image))))
        x = self.pool2(torch.relu(self.conv2(x)))
        return self.fc(self.drop(torch.flatten(x, 1)))


class TinyLM(nn.Module):
    """Embedding, one causal TransformerEncoderLayer, a Linear head: logits ``(batch, seq, vocab)``."""

    def __init__(self, vocab: int = 40, width: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        # no biases: the key projection's bias has a zero gradient (softmax ignores a constant per row),
        # and Adam turns that gradient's rounding noise into full-size steps of either sign
        self.layer = nn.TransformerEncoderLayer(width, 2, 2 * width, dropout=0.0, batch_first=True, bias=False)
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens):
        mask = nn.Transformer.generate_square_subsequent_mask(tokens.shape[1])
        return self.head(self.layer(self.embed(tokens), src_mask=mask, is_causal=True))


def flat_cross_entropy(logits, labels):
    """Cross-entropy of token logits ``(batch, seq, vocab)`` against labels flattened to ``(batch * seq,)``."""
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels)


def make_model(kind: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return {"mlp": MLP, "cnn": CNN}[kind]()


def make_batch(kind: str, batch: int, generator: torch.Generator, loss: str = "ce"):
    if kind == "mlp":
        x = torch.randn(batch, 8, generator=generator)
        classes = 4
    else:
        x = torch.randn(batch, 1, 8, 8, generator=generator)
        classes = 10
    if loss == "mse":
        y = torch.randn(batch, classes, generator=generator)
    else:
        y = torch.randint(0, classes, (batch,), generator=generator)
    return x, y


def loss_fn(loss: str):
    return {"ce": nn.CrossEntropyLoss(), "mse": nn.MSELoss()}[loss]


def clone(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)


def assert_close(actual, expected, what: str, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    expected = expected.detach().cpu().numpy() if isinstance(expected, torch.Tensor) else np.asarray(expected)
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=rtol, atol=atol, err_msg=what)


def assert_state_matches(session, reference: nn.Module, when: str) -> None:
    """Every parameter and buffer of ``session`` equals the torch model's (tied names included)."""
    state = session.state_dict()
    for key, value in reference.state_dict().items():
        assert_close(state[key], value, f"{key} {when}")
