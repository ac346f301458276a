"""Facts about an artifact that ``compile`` prints and ``inspect`` shows: counts, sizes, graphs, versions.

Reads an :class:`~optgraph.artifact.Artifact` (in memory or loaded); never imports torch.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from optgraph.artifact import Artifact, Manifest
from optgraph.artifact.names import (
    CLIP_GRAD_NORM_KEY,
    GRAD_ACCUMULATION_STEPS_KEY,
    GRAPH_NAMES,
    LR_SCHEDULER_KEY,
    OPTIMIZER_KEY,
    PARAM_GROUPS_KEY,
    PRODUCER_KEY,
    STATE_HAS_STEP_KEY,
    TRAINABLE_KEY,
    Role,
)
from optgraph.cli.ort_versions import describe_requirement, first_release

_DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass
class GraphFacts:
    """One graph file: its size in nodes (subgraphs included), versions, and op types."""

    name: str
    file: str
    nodes: int
    opset: int
    ir_version: int
    op_types: Counter

    @property
    def min_onnxruntime(self) -> str | None:
        return first_release(self.opset, self.ir_version)


def graph_facts(name: str, file: str, data: bytes) -> GraphFacts:
    model = onnx.load_from_string(data)
    op_types: Counter = Counter()
    _count(model.graph, op_types)
    opset = max((o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS), default=0)
    return GraphFacts(name, file, sum(op_types.values()), opset, model.ir_version, op_types)


def _count(graph: onnx.GraphProto, op_types: Counter) -> None:
    for node in graph.node:
        op_types[node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}.{node.op_type}"] += 1
        for attribute in node.attribute:
            for sub in [attribute.g, *attribute.graphs] if attribute.HasField("g") else attribute.graphs:
                _count(sub, op_types)


@dataclass
class Facts:
    """What an artifact holds, in numbers."""

    trainable: int  # parameter elements that train
    frozen: int  # parameter elements that do not
    param_tensors: int
    state_bytes: dict[str, int]  # by role, every state tensor of the checkpoint
    graphs: dict[str, GraphFacts]

    @property
    def total_state_bytes(self) -> int:
        return sum(self.state_bytes.values())

    @property
    def opset(self) -> int:
        return max(g.opset for g in self.graphs.values())

    @property
    def ir_version(self) -> int:
        return max(g.ir_version for g in self.graphs.values())

    @property
    def runtime(self) -> str:
        """``onnxruntime >= X``: the oldest release that loads every graph."""
        return describe_requirement(self.opset, self.ir_version)


def facts(artifact: Artifact) -> Facts:
    manifest = artifact.manifest
    trainable = frozen = tensors = 0
    state_bytes: Counter = Counter()
    for spec in manifest.state_specs().values():
        array = artifact.state.get(spec.name)
        state_bytes[str(spec.role)] += int(array.nbytes) if array is not None else 0
        if spec.role == Role.PARAM:
            size = int(np.prod(spec.shape, dtype=np.int64))
            tensors += 1
            if spec.meta.get(TRAINABLE_KEY, True):
                trainable += size
            else:
                frozen += size
    graphs = {n: graph_facts(n, manifest.graphs[n].file, artifact.graphs[n]) for n in GRAPH_NAMES}
    return Facts(trainable, frozen, tensors, dict(state_bytes), graphs)


def training_setup(manifest: Manifest) -> dict[str, Any]:
    """The optimizer, schedule, clipping, accumulation and groups as the manifest records them."""
    return {
        OPTIMIZER_KEY: manifest.extra.get(OPTIMIZER_KEY),
        LR_SCHEDULER_KEY: manifest.extra.get(LR_SCHEDULER_KEY),
        PARAM_GROUPS_KEY: manifest.extra.get(PARAM_GROUPS_KEY),
        CLIP_GRAD_NORM_KEY: manifest.extra.get(CLIP_GRAD_NORM_KEY),
        GRAD_ACCUMULATION_STEPS_KEY: manifest.extra.get(GRAD_ACCUMULATION_STEPS_KEY, 1),
        PRODUCER_KEY: manifest.extra.get(PRODUCER_KEY),
    }


# -- words ---------------------------------------------------------------------------------------


def human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


#: an optimizer's manifest entry besides its arguments (the groups are shown on their own)
OPTIMIZER_SKIP = ("param_groups", STATE_HAS_STEP_KEY)
_TUPLE_ARGS = ("betas", "etas", "step_sizes", "eps")  # tuples in torch's signatures, lists in JSON


def call_text(config: dict[str, Any] | None, skip: tuple[str, ...] = ()) -> str:
    """``Name(arg=value, ...)`` for an optimizer's or a schedule's manifest entry; nested schedules inline."""
    if not config:
        return "none"
    args = {k: v for k, v in config.items() if k != "name" and k not in skip}
    defaults = args.pop("defaults", None)
    if isinstance(defaults, dict):
        args = {**defaults, **args}
    parts = []
    for key, value in args.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) and "name" in v for v in value):
            value = "[" + ", ".join(call_text(v) for v in value) + "]"
        elif isinstance(value, list) and key in _TUPLE_ARGS:
            value = repr(tuple(value))
        else:
            value = repr(value)
        parts.append(f"{key}={value}")
    return f"{config.get('name', '?')}({', '.join(parts)})"
