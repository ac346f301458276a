"""Artifacts compiled once per worker, and data files, for the command-line tests (helpers: cli_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import factories
import numpy as np
import pytest
from cli_helpers import ADAMW_FLAGS, FACTORIES, cli


@pytest.fixture(scope="session")
def compiled(tmp_path_factory):
    """The MLP compiled from flags (AdamW, a parameter group, warm-up then cosine, clipping), and its summary."""
    out = tmp_path_factory.mktemp("compiled") / "artifact"
    ran = cli("compile", f"{FACTORIES}:mlp", "-o", out, *ADAMW_FLAGS)
    assert ran.rc == 0, ran.err
    return out, ran


@pytest.fixture(scope="session")
def artifact(compiled) -> Path:
    return compiled[0]


@pytest.fixture(scope="session")
def data_files(tmp_path_factory) -> tuple[Path, Path]:
    """Training (256 samples) and validation (64) data for the MLP, as .npz and .safetensors."""
    from safetensors.numpy import save_file

    folder = tmp_path_factory.mktemp("data")
    train, val = folder / "train.npz", folder / "val.safetensors"
    np.savez(train, **factories.classes(256, seed=0))
    save_file(factories.classes(64, seed=1), str(val))
    return train, val


TOML = """\
target = "{factories}:mlp"
out = "art"
grad_accumulation_steps = 2
dynamic_shapes = "static"

[factory_args]
hidden = 6

[optimizer]
name = "sgd"
lr = 0.1
momentum = 0.9
[[optimizer.param_groups]]
params = ["*.bias"]
lr = 0.05

[lr_scheduler]
name = "ReduceLROnPlateau"
factor = 0.5
patience = 0
threshold = 0.05
"""


@pytest.fixture(scope="session")
def toml_compiled(tmp_path_factory):
    """The MLP from a TOML config: SGD with a group, ReduceLROnPlateau, accumulation over 2, static shapes (batch 4)."""
    folder = tmp_path_factory.mktemp("toml")
    config = folder / "config.toml"
    config.write_text(TOML.format(factories=FACTORIES.as_posix()))
    ran = cli("compile", config, "--lr", "0.2")
    assert ran.rc == 0, ran.err
    return folder / "art", ran


@pytest.fixture(scope="session")
def frozen_compiled(tmp_path_factory):
    """The MLP with its first layer frozen (a factory returning a dict), Adam and OneCycleLR over 16 updates."""
    out = tmp_path_factory.mktemp("frozen") / "artifact"
    schedule = "OneCycleLR(max_lr=0.05, total_steps=16)"
    ran = cli("compile", f"{FACTORIES}:frozen_mlp", "-o", out, "--optimizer", "adam", "--scheduler", schedule)
    assert ran.rc == 0, ran.err
    return out, ran
