"""The model zoo: real layer types, losses and input kinds that capture must get right.

Each case builds a model, makes inputs and targets for any batch size, and
names its loss. Dropout is 0 here (parity needs determinism); dropout with
p > 0 is tested statistically elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Case:
    make: Callable[[], nn.Module]
    inputs: Callable[[int, torch.Generator], tuple]
    targets: Callable[[int, torch.Generator], tuple]
    loss: Callable


def randn(*shape):
    return lambda b, g: (torch.randn(b, *shape, generator=g),)


def classes(n, *shape):
    return lambda b, g: (torch.randint(0, n, (b, *shape), generator=g),)


def regress(*shape):
    return lambda b, g: (torch.randn(b, *shape, generator=g),)


class Head(nn.Module):
    """``body`` then flatten then a linear layer to ``out`` features."""

    def __init__(self, body: nn.Module, features: int, out: int = 5) -> None:
        super().__init__()
        self.body = body
        self.head = nn.Linear(features, out)

    def forward(self, x):
        return self.head(torch.flatten(self.body(x), 1))


def head(body, features, out=5):
    return lambda: Head(body(), features, out)


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.up = nn.Conv2d(16, 4, 1)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        h = F.relu(self.bn1(self.stem(x)))
        r = F.relu(self.bn2(self.conv(h)) + h)
        return self.fc(torch.flatten(self.up(torch.cat([r, h], dim=1)), 1))


class PoolUnbatched(nn.Module):
    """max_pool2d on a 3-D tensor: torch reads it as one unbatched (C, H, W) image, C being the batch here."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Linear(6, 6)
        self.fc = nn.Linear(9, 5)

    def forward(self, x):
        return self.fc(torch.flatten(F.max_pool2d(self.mix(x), 2), 1))


class Interpolate(nn.Module):
    def __init__(self, mode: str, align_corners: bool | None = None, scale: float = 2.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.mode, self.align_corners, self.scale = mode, align_corners, scale
        size = int(5 * scale)
        self.fc = nn.Linear(3 * size * size, 5)

    def forward(self, x):
        up = F.interpolate(self.conv(x), scale_factor=self.scale, mode=self.mode, align_corners=self.align_corners)
        return self.fc(torch.flatten(up, 1))


class Embed(nn.Module):
    def __init__(self, tied: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 12, padding_idx=0)
        self.mix = nn.Linear(12, 12)
        self.out = nn.Linear(12, 20, bias=False)
        if tied:
            self.out.weight = self.embed.weight
        self.tied = tied

    def forward(self, tokens):
        h = torch.tanh(self.mix(self.embed(tokens)))
        if self.tied:
            return self.out(h)  # (batch, time, vocab) language-model logits
        return self.out(h.mean(1))


class Recurrent(nn.Module):
    def __init__(self, kind: str, **kwargs) -> None:
        super().__init__()
        self.rnn = getattr(nn, kind)(6, 8, **kwargs)
        directions = 2 if kwargs.get("bidirectional") else 1
        self.batch_first = kwargs.get("batch_first", False)
        self.fc = nn.Linear(8 * directions, 5)

    def forward(self, x):
        out, _ = self.rnn(x if self.batch_first else x.transpose(0, 1))
        last = out[:, -1] if self.batch_first else out[-1]
        return self.fc(last)


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(6, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.fc = nn.Linear(16, 5)

    def forward(self, x, padding_mask):
        h = self.proj(x)
        out, _ = self.attn(h, h, h, key_padding_mask=padding_mask)
        return self.fc(out.mean(1))


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(30, 16)
        layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.fc = nn.Linear(16, 4)

    def forward(self, tokens, padding_mask):
        return self.fc(self.encoder(self.embed(tokens), src_key_padding_mask=padding_mask)[:, 0])


class CausalSelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24)
        self.out = nn.Linear(8, 8)
        self.norm = nn.RMSNorm(8)

    def forward(self, x):
        q, k, v = self.qkv(self.norm(x)).reshape(x.shape[0], x.shape[1], 3, 2, 4).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(x.shape)) + x


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(3, 8)
        self.fc = nn.Linear(8, 2)

    def forward(self, left, right):
        return self.fc(torch.relu(self.a(left)) * torch.sigmoid(self.b(right)))


class Activations(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(8, 8) for _ in range(7))
        self.acts = [
            nn.GELU(),
            nn.GELU(approximate="tanh"),
            nn.SiLU(),
            nn.Tanh(),
            nn.Sigmoid(),
            torch.atan,
            nn.Softplus(),
        ]
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        for layer, act in zip(self.layers, self.acts):
            x = act(layer(x))
        return self.fc(x)


class Frozen(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.base = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
        self.base.requires_grad_(False)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        return self.fc(self.base(x))


def mlp(out=5):
    return lambda: nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, out))


class Pair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(8, 6)

    def forward(self, a, b):
        return self.net(a), self.net(b)


def bool_mask(time):
    def make(b, g):
        lengths = torch.randint(1, time + 1, (b,), generator=g)
        return torch.arange(time)[None, :] >= lengths[:, None]

    return make


def with_mask(features, time, vocab=None):
    def make(b, g):
        x = torch.randint(0, vocab, (b, time), generator=g) if vocab else torch.randn(b, time, features, generator=g)
        return (x, bool_mask(time)(b, g))

    return make


def probabilities(n):
    return lambda b, g: (torch.softmax(torch.randn(b, n, generator=g), 1),)


def with_ignored(n, ignore=-100):
    def make(b, g):
        y = torch.randint(0, n, (b,), generator=g)
        y[::3] = ignore
        return (y,)

    return make


def mse_flat(out, y):
    return F.mse_loss(out.reshape(out.shape[0], -1), y)


def ce_flat(out, y):
    return F.cross_entropy(out.reshape(out.shape[0], -1), y)


MODELS = {
    "conv1d-depthwise-adaptive": Case(
        head(
            lambda: nn.Sequential(
                nn.Conv1d(3, 8, 5, stride=2, padding=2),
                nn.ReLU(),
                nn.Conv1d(8, 8, 3, padding=1, groups=8),
                nn.AdaptiveAvgPool1d(1),
            ),
            8,
        ),
        randn(3, 16),
        classes(5),
        nn.CrossEntropyLoss(),
    ),  # fmt: skip
    "conv2d-dilated-groups": Case(
        head(
            lambda: nn.Sequential(
                nn.Conv2d(4, 8, 3, padding=2, dilation=2, groups=2), nn.ReLU(), nn.Conv2d(8, 6, 3, stride=2)
            ),
            6 * 3 * 3,
        ),
        randn(4, 8, 8),
        classes(5),
        nn.CrossEntropyLoss(),
    ),  # fmt: skip
    "conv3d": Case(
        head(lambda: nn.Sequential(nn.Conv3d(2, 4, 3, padding=1, stride=(1, 2, 2)), nn.GELU()), 4 * 4 * 3 * 3),
        randn(2, 4, 6, 6),
        classes(5),
        nn.CrossEntropyLoss(),
    ),  # fmt: skip
    "conv-transpose2d": Case(
        head(
            lambda: nn.Sequential(
                nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2), nn.ReLU()
            ),
            6 * 10 * 10,
        ),
        randn(4, 5, 5),
        classes(5),
        nn.CrossEntropyLoss(),
    ),  # fmt: skip
    "batchnorm1d-seq": Case(
        head(lambda: nn.Sequential(nn.Conv1d(3, 6, 3, bias=False), nn.BatchNorm1d(6), nn.ReLU()), 6 * 8),
        randn(3, 10),
        classes(5),
        nn.CrossEntropyLoss(),
    ),  # fmt: skip
    "layernorm-groupnorm": Case(
        head(
            lambda: nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.SiLU(), nn.Flatten(), nn.LayerNorm(8 * 25)
            ),
            8 * 25,
        ),
        randn(3, 5, 5),
        classes(5),
        nn.CrossEntropyLoss(),
    ),  # fmt: skip
    "instancenorm": Case(
        head(
            lambda: nn.Sequential(
                nn.Conv2d(3, 4, 3, bias=False), nn.InstanceNorm2d(4, affine=True, track_running_stats=True), nn.ReLU()
            ),
            4 * 4 * 4,
        ),
        randn(3, 6, 6),
        classes(5),
        nn.CrossEntropyLoss(),
    ),  # fmt: skip
    "rmsnorm-causal-sdpa": Case(lambda: CausalSelfAttention(), randn(5, 8), regress(5, 8), nn.MSELoss()),
    "pools-adaptive": Case(
        head(
            lambda: nn.Sequential(
                nn.Conv2d(3, 4, 3, padding=1),
                nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
                nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False),
                nn.AdaptiveAvgPool2d((2, 3)),
            ),
            4 * 6,
        ),
        randn(3, 11, 11),
        classes(5),
        nn.CrossEntropyLoss(),
    ),  # fmt: skip
    "maxpool3d-dilated-overlapping": Case(
        head(
            lambda: nn.Sequential(
                nn.Conv3d(2, 3, 1), nn.MaxPool3d((2, 3, 3), stride=(1, 2, 1), padding=(0, 1, 1), dilation=(1, 2, 1))
            ),
            3 * 3 * 3 * 5,
        ),
        randn(2, 4, 7, 5),
        classes(5),
        nn.CrossEntropyLoss(),
    ),  # fmt: skip
    "maxpool2d-unbatched": Case(lambda: PoolUnbatched(), randn(6, 6), classes(5), nn.CrossEntropyLoss()),
    "maxpool1d": Case(
        head(lambda: nn.Sequential(nn.Conv1d(2, 4, 3), nn.MaxPool1d(2)), 4 * 4),
        randn(2, 10),
        classes(5),
        nn.CrossEntropyLoss(),
    ),  # fmt: skip
    "interpolate-nearest": Case(lambda: Interpolate("nearest"), randn(2, 5, 5), classes(5), nn.CrossEntropyLoss()),
    "interpolate-bilinear": Case(
        lambda: Interpolate("bilinear", align_corners=False), randn(2, 5, 5), classes(5), nn.CrossEntropyLoss()
    ),  # fmt: skip
    "interpolate-bilinear-aligned": Case(
        lambda: Interpolate("bilinear", align_corners=True), randn(2, 5, 5), classes(5), nn.CrossEntropyLoss()
    ),  # fmt: skip
    "residual-cat": Case(lambda: Residual(), randn(3, 6, 6), classes(5), nn.CrossEntropyLoss()),
    "embedding-padding-idx": Case(lambda: Embed(), classes(20, 7), classes(20), nn.CrossEntropyLoss()),
    "embedding-tied-lm": Case(
        lambda: Embed(tied=True), classes(20, 7), classes(20, 7), lambda out, y: F.cross_entropy(out.transpose(1, 2), y)
    ),  # fmt: skip
    "lstm-2layer-bidirectional-batch-first": Case(
        lambda: Recurrent("LSTM", num_layers=2, bidirectional=True, batch_first=True),
        randn(5, 6),
        classes(5),
        nn.CrossEntropyLoss(),
    ),  # fmt: skip
    "gru-2layer": Case(lambda: Recurrent("GRU", num_layers=2), randn(5, 6), classes(5), nn.CrossEntropyLoss()),
    "gru-bidirectional-batch-first": Case(
        lambda: Recurrent("GRU", bidirectional=True, batch_first=True), randn(5, 6), classes(5), nn.CrossEntropyLoss()
    ),  # fmt: skip
    "multihead-attention-padding-mask": Case(
        lambda: Attention(), with_mask(6, 5), classes(5), nn.CrossEntropyLoss()
    ),  # fmt: skip
    "transformer-encoder": Case(lambda: Encoder(), with_mask(0, 6, vocab=30), classes(4), nn.CrossEntropyLoss()),
    "activations": Case(lambda: Activations(), randn(8), classes(5), nn.CrossEntropyLoss()),
    "two-inputs": Case(
        lambda: TwoInputs(),
        lambda b, g: (torch.randn(b, 4, generator=g), torch.randn(b, 3, generator=g)),
        regress(2),
        nn.MSELoss(),
    ),  # fmt: skip
    "frozen": Case(lambda: Frozen(), randn(8), classes(5), nn.CrossEntropyLoss()),
}

LOSSES = {
    "ce-weight-smoothing": Case(
        mlp(),
        randn(8),
        classes(5),
        nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0]), label_smoothing=0.1),
    ),  # fmt: skip
    "ce-probabilities": Case(mlp(), randn(8), probabilities(5), nn.CrossEntropyLoss()),
    "ce-ignore-index": Case(mlp(), randn(8), with_ignored(5), nn.CrossEntropyLoss()),
    "ce-ignore-index-custom-sum": Case(
        mlp(), randn(8), with_ignored(5, ignore=2), nn.CrossEntropyLoss(ignore_index=2, reduction="sum")
    ),  # fmt: skip
    "ce-per-pixel": Case(
        lambda: nn.Conv2d(3, 4, 3, padding=1), randn(3, 5, 5), classes(4, 5, 5), nn.CrossEntropyLoss()
    ),  # fmt: skip
    "nll": Case(lambda: nn.Sequential(nn.Linear(8, 5), nn.LogSoftmax(dim=1)), randn(8), classes(5), nn.NLLLoss()),
    "mse-sum": Case(mlp(3), randn(8), regress(3), nn.MSELoss(reduction="sum")),
    "l1": Case(mlp(3), randn(8), regress(3), nn.L1Loss()),
    "smooth-l1": Case(mlp(3), randn(8), regress(3), nn.SmoothL1Loss(beta=0.5)),
    "huber": Case(mlp(3), randn(8), regress(3), nn.HuberLoss(delta=0.7)),
    "bce": Case(
        lambda: nn.Sequential(nn.Linear(8, 3), nn.Sigmoid()),
        randn(8),
        lambda b, g: (torch.rand(b, 3, generator=g),),
        nn.BCELoss(),
    ),  # fmt: skip
    "bce-with-logits-pos-weight": Case(
        mlp(3),
        randn(8),
        lambda b, g: (torch.randint(0, 2, (b, 3), generator=g).float(),),
        nn.BCEWithLogitsLoss(pos_weight=torch.tensor([1.0, 2.0, 3.0])),
    ),  # fmt: skip
    "kldiv-batchmean": Case(
        lambda: nn.Sequential(nn.Linear(8, 5), nn.LogSoftmax(dim=1)),
        randn(8),
        probabilities(5),
        nn.KLDivLoss(reduction="batchmean"),
    ),  # fmt: skip
    "cosine-embedding": Case(
        lambda: Pair(),
        lambda b, g: (torch.randn(b, 8, generator=g), torch.randn(b, 8, generator=g)),
        lambda b, g: (torch.randint(0, 2, (b,), generator=g) * 2 - 1,),
        lambda out, y: F.cosine_embedding_loss(out[0], out[1], y, margin=0.2),
    ),  # fmt: skip
    "plain-function": Case(
        mlp(3), randn(8), regress(3), lambda out, y: ((out - y) ** 4).mean() + out.abs().sum() * 1e-3
    ),  # fmt: skip
}
