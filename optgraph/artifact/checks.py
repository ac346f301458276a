"""Checks that make a loaded artifact consistent before any runtime sees it.

Every mismatch between the manifest, the graphs and the checkpoint is an
:class:`ArtifactError` naming the file, raised at load rather than as an
onnxruntime error at the first step.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from optgraph.artifact.manifest import GraphSpec, Manifest, TensorSpec, is_plain_file_name
from optgraph.artifact.names import (
    ALIASES_KEY,
    CHECKPOINT_FILE,
    FINITE,
    GLOBAL_PARAM_PREFIX,
    IN_PLACE_KEY,
    LOSS,
    MANIFEST_FILE,
    OPTIM_STATE_PREFIX,
    OPTIMIZER_KEY,
    PACKED_KEY,
    PARAM_KEY,
    PROXIMAL_MU_KEY,
    SCHEDULE_LR,
    SHA256_KEY,
    SLOT_KEY,
    SPLIT_GRAPH_NAMES,
    STATE_HAS_STEP_KEY,
    STEP_COUNTER,
    TRAINABLE_KEY,
    UPDATE_APPLIED,
    GraphName,
    Role,
    global_param_name,
    grad_name,
    optim_pack_slot_name,
    optim_slot_name,
    pack_of_slot_name,
)
from optgraph.errors import ArtifactError

# The roles each graph's non-state inputs and non-state outputs may have.
_BATCH_ROLES = {
    GraphName.TRAIN_STEP: {Role.INPUT, Role.TARGET},
    GraphName.SCHEDULER_STEP: {Role.INPUT},
    GraphName.EVAL: {Role.INPUT},
    GraphName.GRAD_STEP: {Role.INPUT, Role.TARGET},
    GraphName.UPDATE_STEP: {Role.GRAD},
}
_RESULT_ROLES = {
    GraphName.TRAIN_STEP: {Role.LOSS, Role.STATUS, Role.LR},
    GraphName.SCHEDULER_STEP: {Role.LR},
    GraphName.EVAL: {Role.OUTPUT},
    GraphName.GRAD_STEP: {Role.LOSS, Role.STATUS, Role.GRAD},
    GraphName.UPDATE_STEP: {Role.STATUS},
}
_ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.DOUBLE: "float64", onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.BFLOAT16: "bfloat16", onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.INT32: "int32", onnx.TensorProto.INT64: "int64", onnx.TensorProto.BOOL: "bool",
}  # fmt: skip


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_manifest(root: Path, manifest: Manifest) -> None:
    """What the session relies on: file names, roles per graph, the state it reads by name, optimizer metadata."""
    where = root / MANIFEST_FILE
    files = [spec.file for spec in manifest.graphs.values()]
    for file in files:
        if not is_plain_file_name(file):
            raise ArtifactError(f"{where}: file name {file!r} must be a plain name inside the directory")
    if len(set(files)) != len(files) or {MANIFEST_FILE, CHECKPOINT_FILE} & set(files):
        raise ArtifactError(f"{where}: graph files {files} must be distinct and not {MANIFEST_FILE}/{CHECKPOINT_FILE}")
    for name, spec in manifest.graphs.items():
        _check_roles(where, name, spec)
    train = manifest.graphs[GraphName.TRAIN_STEP]
    if [t.role for t in train.outputs].count(Role.LOSS) != 1 or not any(t.name == LOSS for t in train.outputs):
        raise ArtifactError(f"{where}: train_step must have exactly one output {LOSS!r} with role {Role.LOSS.value!r}")
    if len([t for t in manifest.graphs[GraphName.SCHEDULER_STEP].inputs if not t.is_state]) > 1:
        raise ArtifactError(f"{where}: scheduler_step takes at most one non-state input (the metric)")
    if not any(t.role == Role.OUTPUT for t in manifest.graphs[GraphName.EVAL].outputs):
        raise ArtifactError(f"{where}: eval has no output with role {Role.OUTPUT.value!r}")
    state = manifest.state_specs()
    _expect_state(where, state, STEP_COUNTER, Role.COUNTER, "int64", [])
    lr = _expect_state(where, state, SCHEDULE_LR, Role.SCHEDULE_STATE, "float64", None)
    if len(lr.shape) != 1 or not isinstance(lr.shape[0], int) or lr.shape[0] < 1:
        raise ArtifactError(f"{where}: state {SCHEDULE_LR!r} must have shape [groups], got {lr.shape}")
    for spec in state.values():
        _check_state_meta(where, spec, state)
    _check_slots_held_once(where, state)
    _check_extra(where, manifest.extra, state)
    split = [name for name in SPLIT_GRAPH_NAMES if name in manifest.graphs]
    if split and len(split) != len(SPLIT_GRAPH_NAMES):
        missing = [name for name in SPLIT_GRAPH_NAMES if name not in split]
        raise ArtifactError(f"{where}: graphs has {split} but not {missing}: the split train step needs both")
    if split:
        _check_split(where, manifest, state)


def _check_split(where: Path, manifest: Manifest, state: dict[str, TensorSpec]) -> None:
    """grad_step and update_step are train_step cut at the gradients: its batch, state and updates, shared out."""
    train, grad, update = (
        manifest.graphs[n] for n in (GraphName.TRAIN_STEP, GraphName.GRAD_STEP, GraphName.UPDATE_STEP)
    )
    if [(t.name, t.dtype) for t in grad.inputs if not t.is_state] != [
        (t.name, t.dtype) for t in train.inputs if not t.is_state
    ]:
        raise ArtifactError(f"{where}: grad_step must take the batch train_step takes (names and dtypes, in order)")
    results = {t.name: t for t in grad.outputs if t.feeds is None}
    if [t.role for t in results.values()].count(Role.LOSS) != 1 or LOSS not in results:
        raise ArtifactError(f"{where}: grad_step must have exactly one output {LOSS!r} with role {Role.LOSS.value!r}")
    for graph, spec, name in ((GraphName.GRAD_STEP, grad, FINITE), (GraphName.UPDATE_STEP, update, UPDATE_APPLIED)):
        found = next((t for t in spec.outputs if t.name == name), None)
        if found is None or (found.role, found.dtype, found.shape) != (Role.STATUS, "bool", []):
            raise ArtifactError(f"{where}: {graph} must output {name!r}, a {Role.STATUS.value} bool scalar")
    produced = [t for t in grad.outputs if t.role == Role.GRAD]
    for t in produced:
        owner = t.meta.get(PARAM_KEY)
        param = state.get(owner) if isinstance(owner, str) else None
        if (
            param is None
            or param.role != Role.PARAM
            or param.meta.get(TRAINABLE_KEY) is not True
            or t.name != grad_name(param.name)
            or (t.dtype, t.shape) != (param.dtype, param.shape)
        ):
            raise ArtifactError(
                f"{where}: gradient {t.name!r} must be named {grad_name('<param>')} after its {PARAM_KEY!r}, "
                f"a trainable parameter, with that parameter's dtype and shape"
            )
    taken = sorted((t.name, t.dtype, t.shape) for t in update.inputs if t.role == Role.GRAD)
    if sorted((t.name, t.dtype, t.shape) for t in produced) != taken:
        raise ArtifactError(f"{where}: update_step must take in exactly the gradients grad_step outputs")
    if any(t.meta.get(IN_PLACE_KEY) for t in grad.outputs):
        raise ArtifactError(
            f"{where}: grad_step's state outputs may not be {IN_PLACE_KEY}: a runtime keeps them only once the "
            "step is agreed"
        )
    reads = {t.name for spec in (grad, update) for t in spec.inputs if t.is_state}
    writes = [t.feeds for spec in (grad, update) for t in spec.outputs if t.feeds is not None]
    if reads != {t.name for t in train.inputs if t.is_state} or sorted(writes) != sorted(
        t.feeds for t in train.outputs if t.feeds is not None
    ):
        raise ArtifactError(
            f"{where}: grad_step and update_step must together read the state train_step reads and each write "
            "once what it writes"
        )


def _check_roles(where: Path, graph: str, spec: GraphSpec) -> None:
    for t in spec.inputs:
        if not t.is_state and t.role not in _BATCH_ROLES[graph]:
            raise ArtifactError(f"{where}: {graph} input {t.name!r} has role {t.role!r}, not a state or batch role")
    for t in spec.outputs:
        if t.feeds is None and t.role not in _RESULT_ROLES[graph]:
            raise ArtifactError(f"{where}: {graph} output {t.name!r} has role {t.role!r} but feeds no state")


def _expect_state(where: Path, state: dict[str, TensorSpec], name: str, role: str, dtype: str, shape) -> TensorSpec:
    spec = state.get(name)
    if spec is None or spec.role != role or spec.dtype != dtype or (shape is not None and spec.shape != shape):
        found = "nothing" if spec is None else f"{spec.role} {spec.dtype}{spec.shape}"
        raise ArtifactError(f"{where}: state {name!r} must be {role} {dtype}, found {found}")
    return spec


def _check_state_meta(where: Path, spec: TensorSpec, state: dict[str, TensorSpec]) -> None:
    if any(isinstance(d, str) for d in spec.shape):
        raise ArtifactError(f"{where}: state {spec.name!r} has a symbolic shape {spec.shape}; state shapes are fixed")
    if TRAINABLE_KEY in spec.meta and not isinstance(spec.meta[TRAINABLE_KEY], bool):
        raise ArtifactError(f"{where}: state {spec.name!r} has a non-boolean {TRAINABLE_KEY!r}")
    if spec.role == Role.GLOBAL_PARAM:
        owner = spec.meta.get(PARAM_KEY)
        param = state.get(owner) if isinstance(owner, str) else None
        if (
            param is None
            or spec.name != global_param_name(param.name)
            or param.role != Role.PARAM
            or param.meta.get(TRAINABLE_KEY) is not True
            or (param.dtype, param.shape) != (spec.dtype, spec.shape)
        ):
            raise ArtifactError(
                f"{where}: global weights {spec.name!r} must be named {GLOBAL_PARAM_PREFIX}<param> after their "
                f"{PARAM_KEY!r}, a trainable parameter of the same dtype and shape, got {spec.meta.get(PARAM_KEY)!r}"
            )
    if spec.role == Role.OPTIM_STATE and PACKED_KEY in spec.meta:
        _check_pack(where, spec, state)
    elif spec.role == Role.OPTIM_STATE:
        param, slot = spec.meta.get(PARAM_KEY), spec.meta.get(SLOT_KEY)
        if (
            not isinstance(slot, str)
            or not isinstance(param, str)
            or spec.name != optim_slot_name(slot, param)
            or param not in state
            or state[param].role != Role.PARAM
        ):
            raise ArtifactError(
                f"{where}: optimizer state {spec.name!r} must be named {OPTIM_STATE_PREFIX}<slot>.<param> "
                f"after its {SLOT_KEY!r} and {PARAM_KEY!r} (a parameter), got {slot!r} and {param!r}"
            )


def _check_pack(where: Path, spec: TensorSpec, state: dict[str, TensorSpec]) -> None:
    """A pack's slot: named after its slot, over trainable parameters of one dtype, with their total size or scalar."""
    slot, params = spec.meta.get(SLOT_KEY), spec.meta[PACKED_KEY]
    what = f"{where}: optimizer state {spec.name!r}"
    if PARAM_KEY in spec.meta:
        raise ArtifactError(f"{what} has both {PARAM_KEY!r} and {PACKED_KEY!r}: it is one parameter's or a pack's")
    if not isinstance(slot, str) or pack_of_slot_name(spec.name, slot) is None:
        raise ArtifactError(
            f"{what} holds a pack ({PACKED_KEY!r}), so it must be named "
            f"{optim_pack_slot_name('<slot>', '<group>', '<k>')} after its {SLOT_KEY!r}, got {slot!r}"
        )
    if (
        not isinstance(params, list)
        or not params
        or not all(isinstance(p, str) for p in params)
        or len(set(params)) != len(params)
    ):
        raise ArtifactError(f"{what}: {PACKED_KEY!r} must list distinct parameter names, got {params!r}")
    for param in params:
        if param not in state or state[param].role != Role.PARAM or state[param].meta.get(TRAINABLE_KEY) is not True:
            raise ArtifactError(f"{what}: {PACKED_KEY!r} names {param!r}, which is not a trainable parameter")
    dtypes = sorted({state[p].dtype for p in params})
    if len(dtypes) > 1:
        raise ArtifactError(f"{what} packs parameters of several dtypes {dtypes}; a pack has one")
    total = sum(int(np.prod(state[p].shape, dtype=np.int64)) for p in params)
    if spec.shape not in ([total], []):
        raise ArtifactError(
            f"{what} has shape {spec.shape}, but its parameters hold {total} elements: "
            f"expected [{total}] (their slots end to end) or [] (one scalar they share)"
        )


def _check_slots_held_once(where: Path, state: dict[str, TensorSpec]) -> None:
    """No slot of a parameter is in two tensors (two packs, or a pack and its own)."""
    holder: dict[tuple[str, str], str] = {}
    for spec in state.values():
        if spec.role != Role.OPTIM_STATE:
            continue
        slot = spec.meta[SLOT_KEY]
        for param in spec.meta[PACKED_KEY] if PACKED_KEY in spec.meta else [spec.meta[PARAM_KEY]]:
            other = holder.setdefault((slot, param), spec.name)
            if other != spec.name:
                raise ArtifactError(
                    f"{where}: slot {slot!r} of {param!r} is held by both {other!r} and {spec.name!r}; one holds it"
                )


def _check_extra(where: Path, extra: dict[str, Any], state: dict[str, TensorSpec]) -> None:
    aliases = extra.get(ALIASES_KEY, {})
    if not isinstance(aliases, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v in state and state[v].role in (Role.PARAM, Role.BUFFER)
        for k, v in aliases.items()
    ):
        raise ArtifactError(f"{where}: {ALIASES_KEY!r} must map names to parameters or buffers, got {aliases!r}")
    optimizer = extra.get(OPTIMIZER_KEY, {})
    if not isinstance(optimizer, dict) or not isinstance(optimizer.get(STATE_HAS_STEP_KEY, False), bool):
        raise ArtifactError(f"{where}: {OPTIMIZER_KEY!r} must be an object with a boolean {STATE_HAS_STEP_KEY!r}")
    mu = extra.get(PROXIMAL_MU_KEY)
    if mu is not None and (isinstance(mu, bool) or not isinstance(mu, (int, float)) or not 0 < mu < float("inf")):
        raise ArtifactError(f"{where}: {PROXIMAL_MU_KEY!r} must be a positive number or null, got {mu!r}")
    if (mu is not None) != any(t.role == Role.GLOBAL_PARAM for t in state.values()):
        raise ArtifactError(f"{where}: {PROXIMAL_MU_KEY!r} and the {Role.GLOBAL_PARAM.value!r} state come together")
    digests = extra.get(SHA256_KEY, {})
    if not isinstance(digests, dict) or not all(isinstance(v, str) for v in digests.values()):
        raise ArtifactError(f"{where}: {SHA256_KEY!r} must map file names to hex digests")


def check_digest(root: Path, manifest: Manifest, file: str, data: bytes) -> None:
    check_sha256(root, manifest, file, digest(data))


def check_sha256(root: Path, manifest: Manifest, file: str, sha256: str) -> None:
    """``sha256`` (hex) of ``file`` must be the one the manifest records, where it records one."""
    expected = manifest.extra.get(SHA256_KEY, {}).get(file)
    if expected is not None and sha256 != expected.lower():
        raise ArtifactError(f"{root / file}: contents do not match the sha256 in {MANIFEST_FILE} (corrupt or edited)")


def check_graph(path: Path, data: bytes, spec: GraphSpec) -> None:
    """A graph must parse, hold every tensor inline, and have the inputs and outputs the manifest lists."""
    try:
        model = onnx.load_from_string(data)  # from bytes: external data is never loaded
    except Exception as e:  # noqa: BLE001 - protobuf raises several types
        raise ArtifactError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    field = _non_utf8_text(model)
    if field is not None:  # onnxruntime would fail on it with an undecodable message
        raise ArtifactError(f"{path}: the graph's {field} holds text that is not UTF-8")
    for tensor in _all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
            where = next((entry.value for entry in tensor.external_data if entry.key == "location"), "?")
            raise ArtifactError(
                f"{path}: tensor {tensor.name!r} points to external data {where!r}; "
                "an artifact keeps every tensor inside its graph files"
            )
    _match(path, "input", list(model.graph.input), spec.inputs)
    _match(path, "output", list(model.graph.output), spec.outputs)


def _match(path: Path, kind: str, values: list[onnx.ValueInfoProto], specs: list[TensorSpec]) -> None:
    graph_names = sorted(v.name for v in values)
    if graph_names != sorted(t.name for t in specs):
        missing = sorted({t.name for t in specs} - set(graph_names))
        unknown = sorted(set(graph_names) - {t.name for t in specs})
        raise ArtifactError(
            f"{path}: the graph's {kind}s do not match {MANIFEST_FILE} (graph only: {unknown[:5]}, "
            f"manifest only: {missing[:5]})"
        )
    by_name = {t.name: t for t in specs}
    for value in values:
        spec = by_name[value.name]
        dtype, shape = _value_type(value)
        if shape is None:  # the graph leaves the rank open; onnxruntime infers it
            shape = [None] * len(spec.shape)
        if (dtype is not None and dtype != spec.dtype) or len(shape) != len(spec.shape):
            raise ArtifactError(
                f"{path}: {kind} {value.name!r} is {dtype}{shape} in the graph, "
                f"{MANIFEST_FILE} says {spec.dtype}{spec.shape}"
            )
        for ours, theirs in zip(shape, spec.shape):
            if ours is not None and ours != theirs:  # a declared dim, static or symbolic, must be the manifest's
                raise ArtifactError(
                    f"{path}: {kind} {value.name!r} has shape {shape} in the graph, {MANIFEST_FILE} says {spec.shape}"
                )


def _non_utf8_text(message) -> str | None:
    """The first string field of a protobuf message tree that is not valid UTF-8 (protobuf hands it out as bytes)."""
    for field, value in message.ListFields():
        repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
        values = value if repeated else [value]
        if field.type == field.TYPE_STRING:
            if not all(isinstance(v, str) for v in values):
                return f"{type(message).__name__}.{field.name}"
        elif field.type == field.TYPE_MESSAGE:
            for item in values:
                found = _non_utf8_text(item)
                if found is not None:
                    return found
    return None


def _value_type(value: onnx.ValueInfoProto) -> tuple[str | None, list[int | str | None] | None]:
    """The dtype and shape a graph declares (None where it leaves them open)."""
    if value.type.WhichOneof("value") != "tensor_type":
        return "non-tensor", []
    tensor = value.type.tensor_type
    dtype = None if tensor.elem_type == onnx.TensorProto.UNDEFINED else _ONNX_DTYPES.get(tensor.elem_type, "unknown")
    if not tensor.HasField("shape"):
        return dtype, None
    dims: list[int | str | None] = []
    for dim in tensor.shape.dim:
        kind = dim.WhichOneof("value")
        dims.append(dim.dim_value if kind == "dim_value" else dim.dim_param if kind == "dim_param" else None)
    return dtype, dims


def _all_tensors(model: onnx.ModelProto):
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        yield from _node_tensors(function.node)


def _graph_tensors(graph: onnx.GraphProto):
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    yield from _node_tensors(graph.node)


def _node_tensors(nodes):
    for node in nodes:
        for attribute in node.attribute:
            yield from _attribute_tensors(attribute)


def _attribute_tensors(attribute: onnx.AttributeProto):
    yield attribute.t
    yield from attribute.tensors
    yield attribute.sparse_tensor.values
    yield attribute.sparse_tensor.indices
    for sparse in attribute.sparse_tensors:
        yield sparse.values
        yield sparse.indices
    if attribute.HasField("g"):
        yield from _graph_tensors(attribute.g)
    for subgraph in attribute.graphs:
        yield from _graph_tensors(subgraph)


def check_state(path: Path, manifest: Manifest, state: dict[str, np.ndarray]) -> None:
    """The checkpoint holds exactly the manifest's state tensors, with their dtypes and shapes."""
    specs = manifest.state_specs()
    for name, spec in specs.items():
        if name not in state:
            raise ArtifactError(f"{path}: missing state tensor {name!r} that {MANIFEST_FILE} declares")
        array = state[name]
        if str(array.dtype) != spec.dtype or list(array.shape) != spec.shape:
            raise ArtifactError(
                f"{path}: tensor {name!r} is {array.dtype}{list(array.shape)}, "
                f"{MANIFEST_FILE} expects {spec.dtype}{spec.shape}"
            )
    unknown = sorted(set(state) - set(specs))
    if unknown:
        raise ArtifactError(f"{path}: holds tensors {MANIFEST_FILE} does not declare: {unknown[:5]}")
