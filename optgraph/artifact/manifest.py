"""``manifest.json``: what every graph input and output is, and how state flows.

Schema (documented in docs/artifact-format.md)::

    {"format": "optgraph-artifact", "version": 1,
     "graphs": {"train_step": {"file": ..., "inputs": [TensorSpec...], "outputs": [...]}, ...},
     "optimizer": {...}, "lr_scheduler": {...}, "producer": {...}, ...}
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any

from optgraph.artifact.dims import DimExpr, DimSyntaxError, SymbolBounds, parse_dim, parse_symbols
from optgraph.artifact.index_range import IndexRange
from optgraph.artifact.names import (
    GRAPH_NAMES,
    IN_PLACE_KEY,
    INDEX_RANGE_KEY,
    MANIFEST_FILE,
    NEXT_SUFFIX,
    ROLES,
    SPLIT_GRAPH_NAMES,
    STATE_ROLES,
    SYMBOLS_KEY,
    next_name,
)
from optgraph.errors import ArtifactError

FORMAT_NAME = "optgraph-artifact"
FORMAT_VERSION = 1
DTYPES = frozenset({"float16", "bfloat16", "float32", "float64", "int8", "uint8", "int32", "int64", "bool"})


@dataclass
class TensorSpec:
    """One graph input or output.

    Attributes:
        name: the graph's name for it; for state, also its checkpoint name.
        role: one of :class:`~optgraph.artifact.names.Role`.
        dtype: numpy-style dtype name.
        shape: ints, or strings for symbolic dimensions: a symbol (``"batch"``) or an expression
            of symbols (``"batch*seq"``), see :mod:`optgraph.artifact.dims`.
        feeds: for a state output, the state input it becomes on the next call.
        meta: extra keys (``TRAINABLE_KEY``, ``PARAM_KEY``, ``SLOT_KEY``, ``PACKED_KEY``, ``INDEX_RANGE_KEY``).
    """

    name: str
    role: str
    dtype: str
    shape: list[int | str]
    feeds: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = {"name": self.name, "role": self.role, "dtype": self.dtype, "shape": list(self.shape)}
        if self.feeds is not None:
            out["feeds"] = self.feeds
        out.update(self.meta)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> TensorSpec:
        if not isinstance(data, dict):
            raise ArtifactError(f"{MANIFEST_FILE}: {where} must be an object, got {type(data).__name__}")
        try:
            name, role, dtype, shape = data["name"], data["role"], data["dtype"], data["shape"]
        except KeyError as e:
            raise ArtifactError(f"{MANIFEST_FILE}: {where} lacks {e}; expected name, role, dtype and shape") from None
        if not isinstance(name, str) or not name:
            raise ArtifactError(f"{MANIFEST_FILE}: {where} has an invalid name {name!r}; expected a non-empty string")
        if not isinstance(role, str) or role not in ROLES:
            raise ArtifactError(f"{MANIFEST_FILE}: {where} ({name!r}) has unknown role {role!r}")
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise ArtifactError(f"{MANIFEST_FILE}: {where} ({name!r}) has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(_is_dim(d) for d in shape):
            raise ArtifactError(
                f"{MANIFEST_FILE}: {where} ({name!r}) has an invalid shape {shape!r}; "
                "expected a list of non-negative ints and symbol names"
            )
        for d in shape:
            if isinstance(d, str):
                try:
                    parse_dim(d)
                except DimSyntaxError as e:
                    raise ArtifactError(
                        f"{MANIFEST_FILE}: {where} ({name!r}) has an invalid shape {shape!r}: {e}"
                    ) from None
        feeds = data.get("feeds")
        if feeds is not None and not isinstance(feeds, str):
            raise ArtifactError(f"{MANIFEST_FILE}: {where} ({name!r}) has an invalid 'feeds' {feeds!r}")
        meta = {k: v for k, v in data.items() if k not in ("name", "role", "dtype", "shape", "feeds")}
        spec = cls(name, role, dtype, list(shape), feeds, meta)
        if spec.index_range is not None and (spec.is_state or not dtype.startswith(("int", "uint"))):
            raise ArtifactError(
                f"{MANIFEST_FILE}: {where} ({name!r}) has an {INDEX_RANGE_KEY} but is not an integer input"
            )
        return spec

    @functools.cached_property
    def index_range(self) -> IndexRange | None:
        """The values this integer input may hold (parsed once; None when unchecked)."""
        data = self.meta.get(INDEX_RANGE_KEY)
        return None if data is None else IndexRange.from_json(data, f"input {self.name!r}")

    @functools.cached_property
    def dims(self) -> tuple[int | DimExpr, ...]:
        """The shape with each symbolic dimension parsed (once)."""
        return tuple(d if isinstance(d, int) else parse_dim(d) for d in self.shape)

    @property
    def is_state(self) -> bool:
        return self.role in STATE_ROLES


def is_plain_file_name(file: Any) -> bool:
    """A name of a file directly inside the artifact directory: no folders, no parent, nothing absolute."""
    return (
        isinstance(file, str)
        and file not in ("", ".", "..")
        and "/" not in file
        and "\\" not in file
        and "\0" not in file
    )


def _is_dim(d: Any) -> bool:
    if isinstance(d, str):
        return bool(d)
    return isinstance(d, int) and not isinstance(d, bool) and d >= 0


@dataclass
class GraphSpec:
    """One graph file with its inputs and outputs."""

    file: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], graph: str) -> GraphSpec:
        if not isinstance(data, dict) or not isinstance(data.get("file"), str):
            raise ArtifactError(f"{MANIFEST_FILE}: graphs.{graph} must be an object with a 'file' string")
        lists = {}
        for key in ("inputs", "outputs"):
            entries = data.get(key, [])
            if not isinstance(entries, list):
                raise ArtifactError(f"{MANIFEST_FILE}: graphs.{graph}.{key} must be a list")
            lists[key] = [TensorSpec.from_json(t, f"graphs.{graph}.{key}[{i}]") for i, t in enumerate(entries)]
        spec = cls(data["file"], lists["inputs"], lists["outputs"])
        for key, specs in lists.items():
            names = [t.name for t in specs]
            duplicate = next((n for n in names if names.count(n) > 1), None)
            if duplicate is not None:
                raise ArtifactError(f"{MANIFEST_FILE}: graphs.{graph}.{key} names {duplicate!r} twice")
        inputs = {t.name: t for t in spec.inputs}
        for out in spec.outputs:
            in_place = out.meta.get(IN_PLACE_KEY, False)
            if in_place is not False and (in_place is not True or out.feeds is None):
                raise ArtifactError(
                    f"{MANIFEST_FILE}: graphs.{graph} output {out.name!r} has {IN_PLACE_KEY}={in_place!r}; "
                    "expected true or false, and only on a state output"
                )
            if out.feeds is None:
                continue
            fed = inputs.get(out.feeds)
            if fed is None or not fed.is_state:
                raise ArtifactError(
                    f"{MANIFEST_FILE}: graphs.{graph} output {out.name!r} feeds {out.feeds!r}, which is not a state input"
                )
            if out.name != next_name(out.feeds):
                raise ArtifactError(
                    f"{MANIFEST_FILE}: graphs.{graph} output {out.name!r} feeds {out.feeds!r}; "
                    f"a state output is named after its input plus {NEXT_SUFFIX!r}"
                )
            if (out.dtype, out.shape) != (fed.dtype, fed.shape):
                raise ArtifactError(
                    f"{MANIFEST_FILE}: graphs.{graph} output {out.name!r} is {out.dtype}{out.shape} "
                    f"but feeds {fed.name!r}, which is {fed.dtype}{fed.shape}"
                )
        return spec

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)


@dataclass
class Manifest:
    """The parsed manifest; ``extra`` keeps every other top-level key."""

    graphs: dict[str, GraphSpec]
    extra: dict[str, Any]
    version: int = FORMAT_VERSION

    def to_json(self) -> str:
        body = {"format": FORMAT_NAME, "version": self.version}
        body["graphs"] = {name: spec.to_json() for name, spec in self.graphs.items()}
        body.update(self.extra)
        return json.dumps(body, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as e:  # JSONDecodeError, over-long ints, absurd nesting
            raise ArtifactError(f"{MANIFEST_FILE} is not valid JSON: {e}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ArtifactError(f"{MANIFEST_FILE}: format is {found!r}, expected {FORMAT_NAME!r}")
        if type(data.get("version")) is not int or data["version"] != FORMAT_VERSION:
            raise ArtifactError(
                f"{MANIFEST_FILE}: format version {data.get('version')!r} is not supported; "
                f"this optgraph reads version {FORMAT_VERSION}"
            )
        graphs = data.get("graphs")
        if not isinstance(graphs, dict) or set(GRAPH_NAMES) - set(graphs):
            raise ArtifactError(f"{MANIFEST_FILE}: 'graphs' must describe {list(GRAPH_NAMES)}")
        # the split train step is optional (older artifacts lack it); other graphs are not ours to read
        names = [*GRAPH_NAMES, *(name for name in SPLIT_GRAPH_NAMES if name in graphs)]
        parsed = {name: GraphSpec.from_json(graphs[name], name) for name in names}
        extra = {k: v for k, v in data.items() if k not in ("format", "version", "graphs")}
        manifest = cls(parsed, extra)
        manifest.symbols  # noqa: B018 - checked at load, not on the first step
        return manifest

    @functools.cached_property
    def symbols(self) -> dict[str, SymbolBounds]:
        """The bounds of each symbolic dimension's symbol, by name (absent: unbounded)."""
        return parse_symbols(self.extra.get(SYMBOLS_KEY))

    def state_specs(self) -> dict[str, TensorSpec]:
        """Every state tensor of every graph, by name (they must agree across graphs)."""
        specs: dict[str, TensorSpec] = {}
        for graph, gspec in self.graphs.items():
            for t in gspec.inputs:
                if not t.is_state:
                    continue
                known = specs.setdefault(t.name, t)
                if (known.dtype, known.shape) != (t.dtype, t.shape):
                    raise ArtifactError(
                        f"{MANIFEST_FILE}: state {t.name!r} is {t.dtype}{t.shape} in {graph} "
                        f"but {known.dtype}{known.shape} elsewhere"
                    )
        return specs
