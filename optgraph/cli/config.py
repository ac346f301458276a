"""What ``optgraph compile`` compiles: a TARGET, or a TOML file that names it and sets the options.

A config file (every key optional except ``target``; paths are relative to the file)::

    target = "model.py:make"          # or "package.module:make"
    out = "artifact"                  # -o wins
    clip_grad_norm = 1.0
    grad_accumulation_steps = 4

    [factory_args]                    # keyword arguments of the factory
    hidden = 32

    [optimizer]
    name = "AdamW"
    lr = 1e-3
    betas = [0.9, 0.99]

    [[optimizer.param_groups]]
    params = ["*.bias", "*norm*"]
    weight_decay = 0.0

    [lr_scheduler]
    name = "SequentialLR"
    milestones = [5]
    [[lr_scheduler.schedulers]]
    name = "LinearLR"
    start_factor = 0.1
    total_iters = 5
    [[lr_scheduler.schedulers]]
    name = "CosineAnnealingLR"
    T_max = 95

    [dynamic_shapes]                  # or dynamic_shapes = "static"
    input_ids = {0 = "batch", 1 = "seq<=64"}

Flags given on the command line win over the file (see ``optgraph compile --help``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optgraph.artifact.names import CLIP_GRAD_NORM_KEY, GRAD_ACCUMULATION_STEPS_KEY, LR_SCHEDULER_KEY, OPTIMIZER_KEY
from optgraph.cli.errors import UsageError
from optgraph.cli.options import Dynamic, call_from_table, dynamic_from_config
from optgraph.cli.values import Call

# compile's own option names, which the manifest records under the same keys
KEYS = (
    "target", "out", "factory_args", OPTIMIZER_KEY, LR_SCHEDULER_KEY, CLIP_GRAD_NORM_KEY, GRAD_ACCUMULATION_STEPS_KEY,
    "dynamic_shapes",
)  # fmt: skip


@dataclass
class CompileConfig:
    """Everything one compile needs, as read (nothing built, nothing imported yet)."""

    target: str
    base: Path  # where a file target and ``out`` are relative to
    factory_args: dict[str, Any] = field(default_factory=dict)
    out: Path | None = None
    optimizer: Call | None = None
    lr_scheduler: Call | None = None
    clip_grad_norm: float | None = None
    grad_accumulation_steps: int = 1
    dynamic_shapes: Dynamic = None


def is_config_file(target: str) -> bool:
    return target.lower().endswith(".toml")


def read_config(path: Path) -> CompileConfig:
    """Read and check a TOML config file; a :class:`UsageError` names the file and the key that is wrong."""
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    data = _parse_toml(path)
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise UsageError(f"{path}: unknown key(s) {', '.join(unknown)}; expected some of {', '.join(KEYS)}")
    target = data.get("target")
    if not isinstance(target, str) or not target:
        raise UsageError(f'{path}: \'target\' must name the factory: "path/to/file.py:factory" or "module:factory"')
    config = CompileConfig(target, path.resolve().parent)
    factory_args = data.get("factory_args", {})
    if not isinstance(factory_args, dict):
        raise UsageError(f"{path}: 'factory_args' must be a table of keyword arguments, got {factory_args!r}")
    config.factory_args = factory_args
    if "out" in data:
        if not isinstance(data["out"], str):
            raise UsageError(f"{path}: 'out' must be a directory path, got {data['out']!r}")
        config.out = config.base / data["out"]
    if OPTIMIZER_KEY in data:
        config.optimizer = call_from_table(data[OPTIMIZER_KEY], f"{path}: {OPTIMIZER_KEY}")
    if LR_SCHEDULER_KEY in data:
        config.lr_scheduler = call_from_table(data[LR_SCHEDULER_KEY], f"{path}: {LR_SCHEDULER_KEY}")
    if CLIP_GRAD_NORM_KEY in data:
        config.clip_grad_norm = data[CLIP_GRAD_NORM_KEY]
    if GRAD_ACCUMULATION_STEPS_KEY in data:
        config.grad_accumulation_steps = data[GRAD_ACCUMULATION_STEPS_KEY]
    if "dynamic_shapes" in data:
        config.dynamic_shapes = dynamic_from_config(data["dynamic_shapes"], f"{path}: dynamic_shapes")
    return config


def _parse_toml(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise UsageError(
                "reading a .toml config on Python 3.10 needs tomli: pip install 'optgraph[compile]'"
            ) from None
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"{path}: not valid TOML: {e}") from None
