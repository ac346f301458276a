"""``TrainingSession``: trains an artifact on stock onnxruntime. Never imports torch.

Every state tensor lives on the device of the first execution provider as an
OrtValue (``optgraph.devices.state_device``). Each graph writes its next state
into spare OrtValues bound through IOBinding, which are then swapped with the
current ones (double buffering), so a step moves only the batch in and the
scalar loss out.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
import onnxruntime as ort

from optgraph.artifact import Artifact, GraphSpec, TensorSpec
from optgraph.artifact.names import (
    ALIASES_KEY,
    GRAPH_NAMES,
    IN_PLACE_KEY,
    OPTIMIZER_KEY,
    PACKED_KEY,
    PARAM_KEY,
    SCHEDULE_LR,
    SLOT_KEY,
    STATE_HAS_STEP_KEY,
    STEP_COUNTER,
    TRAINABLE_KEY,
    UPDATE_APPLIED,
    GraphName,
    Role,
)
from optgraph.batch import check_batch
from optgraph.devices import CPU_DEVICE, can_allocate, state_device
from optgraph.errors import ArtifactError, NonFiniteError, RunError
from optgraph.inference import export_inference

# onnxruntime's own exception types (they differ between releases): a failure of the runtime, not of optgraph.
# UnicodeDecodeError: onnxruntime's message quotes a graph's invalid UTF-8 and the binding cannot decode it.
ORT_ERRORS = (
    *(
        kind
        for kind in vars(ort.capi.onnxruntime_pybind11_state).values()
        if isinstance(kind, type) and issubclass(kind, Exception)
    ),
    UnicodeDecodeError,
)
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


@functools.lru_cache(maxsize=1)
def default_providers() -> list[str]:
    """CUDA then CPU when onnxruntime-gpu is installed and a GPU answers; else CPU."""
    if CUDA in ort.get_available_providers() and _cuda_works():
        return [CUDA, CPU]
    return [CPU]


def _cuda_works() -> bool:
    # onnxruntime-gpu lists CUDA even with no GPU or no CUDA libraries; a one-node session tells.
    x, y = (onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [1]) for name in "xy")
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 14)], ir_version=7)
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=[CUDA, CPU])
    except Exception:  # noqa: BLE001 - any failure means no usable GPU
        return False
    return session.get_providers()[0] == CUDA


class IncompatibleKeys(NamedTuple):
    """What :meth:`TrainingSession.load_state_dict` did not match, as torch's ``load_state_dict`` returns it."""

    missing_keys: list[str]
    unexpected_keys: list[str]


class StateInfo(NamedTuple):
    """One state tensor as it is held, read without copying its data to the host."""

    shape: tuple[int, ...]
    dtype: str  # numpy's name: "float32", "int64", ...
    device: str  # onnxruntime's name of the memory it is in, lower case: "cpu", "cuda", "dml", ...


class _StateStore:
    """The current OrtValue of every state tensor, on one device."""

    def __init__(self, state: dict[str, np.ndarray], device: tuple[str, int], owned: bool = False) -> None:
        """``owned``: the arrays are this store's to keep and to write (the session read them itself), and
        ``state`` is emptied as they are taken, so that each host array is freed once it is on the device."""
        self.device = device
        self.values = {}
        for name in list(state):
            self.values[name] = self.upload(state.pop(name) if owned else state[name], owned)

    def upload(self, array: np.ndarray, owned: bool = False) -> ort.OrtValue:
        # On CPU the OrtValue shares the array's memory and the graphs write into it: a private contiguous
        # copy, unless the array is already the store's own.
        owned = owned and array.flags.c_contiguous and array.flags.writeable and array.flags.aligned
        return ort.OrtValue.ortvalue_from_numpy(array if owned else np.array(array, copy=True, order="C"), *self.device)

    def empty_like(self, name: str) -> ort.OrtValue:
        # from_numpy, not from_shape_and_type: older bindings allocate only CPU and CUDA memory with the latter.
        # A fresh array needs no private copy (on CPU the OrtValue keeps it alive).
        current = self.values[name]
        fresh = np.empty(current.shape(), _ORT_TYPES[current.data_type()])
        return ort.OrtValue.ortvalue_from_numpy(fresh, *self.device)

    def info(self, name: str) -> StateInfo:
        value = self.values[name]
        return StateInfo(tuple(value.shape()), _ORT_TYPES[value.data_type()], value.device_name().lower())

    def read(self, name: str) -> np.ndarray:
        # OrtValue.numpy() on CPU is a view of the state buffer, which the next step overwrites
        # (double buffering) and which dies with the session: hand out a copy.
        return np.array(self.values[name].numpy(), copy=True)

    def checked(self, name: str, value, key: str | None = None) -> np.ndarray:
        """``value`` as a C-contiguous array of ``name``'s dtype and shape, or a ValueError saying what differs.

        ``key``: the name the caller gave the value under, for the message (default ``name``).
        """
        info, key = self.info(name), name if key is None else key
        try:
            array = np.asarray(value)
        except Exception as e:  # noqa: BLE001 - whatever the object, the message says what it was
            raise ValueError(f"cannot read {key} ({type(value).__name__}) as an array: {e}") from None
        if tuple(array.shape) != info.shape:
            raise ValueError(
                f"size mismatch for {key}: copying a value with shape {tuple(array.shape)}, "
                f"the shape in the session is {info.shape}."
            )
        if array.dtype != np.dtype(info.dtype):
            raise ValueError(
                f"dtype mismatch for {key}: copying a value of {array.dtype}, the session holds {info.dtype} "
                "(optgraph does not cast state)."
            )
        return np.ascontiguousarray(array)

    def write(self, arrays: dict[str, np.ndarray]) -> None:
        """Copy checked arrays into the current OrtValues, on their device, all of them.

        Writing into the current buffer suits both kinds of state: an in-place output is written into it
        by the next run, and a double-buffered one is read from it. A Ctrl-C in the middle is held until
        every array is written, so that the state is never half loaded.
        """
        pending = list(arrays.items())
        interrupted = None
        while True:
            try:
                while pending:
                    name, array = pending[0]
                    self.values[name].update_inplace(array)
                    pending.pop(0)  # a write repeated after an interrupt between these two lines is harmless
                break
            except KeyboardInterrupt as e:
                interrupted = e
        if interrupted is not None:
            raise interrupted


_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
    "tensor(int16)": "int16", "tensor(uint16)": "uint16", "tensor(uint32)": "uint32", "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}  # fmt: skip


# session config entry: "1" keeps onnxruntime's memory pattern for the train step, and for the data-parallel
# step's grad_step and update_step (see _inference_session)
TRAIN_STEP_MEM_PATTERN = "optgraph.train_step_mem_pattern"
# the graphs of a training step, which run without the memory pattern unless the entry is "1"
_NO_MEM_PATTERN = (GraphName.TRAIN_STEP, GraphName.GRAD_STEP, GraphName.UPDATE_STEP)


def _config_entry(options: ort.SessionOptions, key: str) -> str | None:
    try:
        return options.get_session_config_entry(key)
    except RuntimeError:  # onnxruntime raises for a key that was never set
        return None


def _inference_session(
    model: bytes,
    options: ort.SessionOptions,
    providers: Sequence,
    provider_options: Sequence[dict] | None,
    name: str,
    spec: GraphSpec,
) -> ort.InferenceSession:
    prefix, mem_pattern = options.profile_file_prefix, options.enable_mem_pattern
    if options.enable_profiling:  # one profile per graph, named after it (the options are shared)
        options.profile_file_prefix = f"{prefix}_{name}"
    if name in _NO_MEM_PATTERN and _config_entry(options, TRAIN_STEP_MEM_PATTERN) != "1":
        # A memory pattern plans one block for every intermediate of the step and keeps it; without it the
        # arena reuses freed buffers. Measured (docs/benchmarks.md): peak RSS with AdamW, large MLP 1,056 ->
        # 751 MiB, CNN 148 -> 125, MLP 90 -> 86; step times within the noise of a busy machine (medians up
        # to 5% slower). The data-parallel step's two graphs, each in its own session with its own pattern:
        # 1,174 -> 809 MiB for that MLP on one rank (1,081 with grad_step's pattern alone off). The config
        # entry puts the pattern back for a user who wants those 5%.
        options.enable_mem_pattern = False
    try:
        return ort.InferenceSession(model, options, providers=list(providers), provider_options=provider_options)
    except ORT_ERRORS as e:
        raise ArtifactError(f"{spec.file}: onnxruntime cannot load this graph ({type(e).__name__}: {e})") from None
    finally:
        options.profile_file_prefix, options.enable_mem_pattern = prefix, mem_pattern


class _GraphRunner:
    """One graph: binds state from the store, runs, and swaps in the next state."""

    def __init__(
        self,
        model: bytes,
        spec: GraphSpec,
        name: str,
        providers: Sequence,
        provider_options: Sequence[dict] | None,
        options: ort.SessionOptions | None,
    ) -> None:
        if options is None:
            options = ort.SessionOptions()
            options.log_severity_level = 3
        self.name = name
        self.session = _inference_session(model, options, providers, provider_options, name, spec)
        self.spec = spec
        self.state_inputs = [t.name for t in spec.inputs if t.is_state]
        self.batch_inputs = [t for t in spec.inputs if not t.is_state]
        self.state_outputs = [(t.name, t.feeds) for t in spec.outputs if t.feeds is not None]
        # outputs the compiler proved may overwrite their input (rewrite/in_place.py): no second buffer
        self.in_place = {t.name for t in spec.outputs if t.feeds is not None and t.meta.get(IN_PLACE_KEY) is True}
        self.result_outputs = [t for t in spec.outputs if t.feeds is None]
        self.binding = self.session.io_binding()
        self.spares: dict[str, ort.OrtValue] = {}

    @property
    def _unchanged(self) -> str:
        if not self.in_place:
            return "the state is unchanged"
        return (
            "the state is unchanged unless the failure hit the update itself, which writes the state in place "
            "(only an out-of-memory error can): if in doubt, reopen the last saved artifact"
        )

    def prepare(self, store: _StateStore) -> None:
        self.spares = {out: store.empty_like(fed) for out, fed in self.state_outputs if out not in self.in_place}

    def bind(self, store: _StateStore, batch: dict[str, np.ndarray]) -> None:
        io = self.binding
        for name in self.state_inputs:
            io.bind_ortvalue_input(name, store.values[name])
        for name, array in batch.items():
            io.bind_cpu_input(name, array)
        for out, fed in self.state_outputs:
            io.bind_ortvalue_output(out, store.values[fed] if out in self.in_place else self.spares[out])
        for t in self.result_outputs:
            io.bind_output(t.name, "cpu")

    def next_state(self, store: _StateStore) -> list[Swap]:
        """The swaps that take the bound run's next state: each double-buffered state takes its spare as current,
        and its current as the next spare."""
        swaps: list[Swap] = []
        for out, fed in self.state_outputs:
            if out not in self.in_place:
                swaps += [(store.values, fed, self.spares[out]), (self.spares, out, store.values[fed])]
        return swaps

    def launch(self) -> Callable[[], object]:
        """The bound graph's run, for :func:`take`: a callable that runs no Python code of its own, so that a
        Ctrl-C cannot be raised inside it before onnxruntime has run (Python raises one on entering a Python
        function), only as it returns."""
        return functools.partial(self.session.run_with_iobinding, self.binding)

    @contextlib.contextmanager
    def failures(self) -> Iterator[None]:
        """onnxruntime's failures of a run as :class:`RunError`."""
        try:
            yield
        except (*ORT_ERRORS, RuntimeError) as e:  # the binding raises a plain RuntimeError for a failed run
            # nothing was swapped yet, and in-place outputs are written by the update alone (in the train
            # step, the non-finite guard's If, after every forward and backward node)
            raise RunError(f"{self.name}: onnxruntime failed ({type(e).__name__}: {e}); {self._unchanged}") from None

    def results(self) -> list[np.ndarray]:
        """The last run's outputs that are not state, as host arrays."""
        if not self.result_outputs:
            return []
        start = len(self.state_outputs)
        return [r.numpy() for r in self.binding.get_outputs()[start : start + len(self.result_outputs)]]

    def run(self, store: _StateStore, batch: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.bind(store, batch)
        with self.failures():
            take(self.next_state(store), self.launch())
        return self.results()


#: ``(table, key, value)``: the assignment ``table[key] = value``, a part of taking a run's next state
Swap = tuple[dict, str, object]


def take(swaps: Sequence[Swap] | Callable[[], Sequence[Swap]], run: Callable[[], object] | None = None) -> None:
    """Call ``run`` (an onnxruntime run), then make every assignment that ``swaps`` lists, all of them.

    Python raises a Ctrl-C that came during a run as the call returns: the run is complete and its in-place
    outputs are written, so the rest of its state must be taken too before the interrupt goes on. A
    KeyboardInterrupt from ``run``, or one that lands among the assignments, is held until every one is made
    (each is a fixed value, so making one twice is harmless), then raised. ``swaps`` may be a function, called
    after the run to choose by its results (again if an interrupt lands in it). The run and the assignments
    share this one frame: an interrupt raised as it is entered comes before anything is done.
    """
    interrupted = None
    try:
        if run is not None:
            run()
    except KeyboardInterrupt as e:
        interrupted = e
    while True:
        try:
            for table, key, value in swaps() if callable(swaps) else swaps:
                table[key] = value
            break
        except KeyboardInterrupt as e:
            interrupted = e
    if interrupted is not None:
        raise interrupted


def state_store(session: ort.InferenceSession, artifact: Artifact, owned: bool, stacklevel: int) -> _StateStore:
    """Every state tensor of ``artifact`` on the device of ``session``'s first execution provider (in host memory,
    with a warning, where this onnxruntime build cannot place it there). ``owned``: the artifact was read by the
    caller, so its arrays become the state without a copy (and leave ``artifact.state``). ``stacklevel``: the
    warning's, counted from the caller."""
    device = state_device(session.get_providers(), session.get_provider_options())
    if not can_allocate(device):
        warnings.warn(
            f"this onnxruntime build cannot place OrtValues on {device} for {session.get_providers()[0]}: "
            "the state stays in host memory",
            RuntimeWarning,
            stacklevel=stacklevel + 1,  # the code that opened the session
        )
        device = CPU_DEVICE
    state = artifact.state if owned else {n: artifact.state[n] for n in artifact.manifest.state_specs()}
    return _StateStore(state, device, owned)


class TrainingSession:
    """Train an artifact with onnxruntime.

    The state lives on the device of the first execution provider the graphs run on (see
    :attr:`device`), e.g. ``("cuda", 1)`` for ``providers=[("CUDAExecutionProvider", {"device_id": 1})]``;
    where this onnxruntime build cannot place it there, it stays in host memory, with a warning.

    Args:
        artifact: an :class:`~optgraph.artifact.Artifact` or the path of an artifact directory.
        providers: onnxruntime execution providers, names or ``(name, options)`` pairs as
            ``onnxruntime.InferenceSession`` takes them; None picks CUDA when available, else CPU.
        session_options: onnxruntime session options (threads, profiling) for every graph. The train step
            runs without onnxruntime's memory pattern (less memory; see docs/benchmarks.md) unless the
            options carry ``add_session_config_entry("optgraph.train_step_mem_pattern", "1")``.
        provider_options: one options dict per provider, as ``onnxruntime.InferenceSession`` takes them.
    """

    def __init__(
        self,
        artifact: Artifact | str | os.PathLike,
        providers: Sequence | None = None,
        session_options: ort.SessionOptions | None = None,
        provider_options: Sequence[dict] | None = None,
    ) -> None:
        if providers is None and provider_options is not None:
            raise ValueError("provider_options needs providers: one options dict per provider, in the same order")
        owned = not isinstance(artifact, Artifact)  # read here: its arrays become the state, no copy
        if owned:
            artifact = Artifact.load(artifact)
        self._artifact = artifact
        manifest = artifact.manifest
        providers = default_providers() if providers is None else list(providers)
        self._runners = {
            name: _GraphRunner(
                artifact.graphs[name], manifest.graphs[name], name, providers, provider_options, session_options
            )
            for name in GRAPH_NAMES
        }
        # The store holds every state tensor: keep only the graphs and the manifest, so that no array is held
        # twice (an Artifact the caller passed is left as it is; the store copies its arrays).
        self._store = state_store(self._runners[GraphName.TRAIN_STEP].session, artifact, owned, stacklevel=2)
        self._artifact = Artifact(manifest, artifact.graphs, {})
        del artifact
        for runner in self._runners.values():
            runner.prepare(self._store)
        results = self._runners[GraphName.TRAIN_STEP].result_outputs
        self._loss_index = next(i for i, t in enumerate(results) if t.role == Role.LOSS)
        self._applied_index = next((i for i, t in enumerate(results) if t.name == UPDATE_APPLIED), None)

    # -- training -----------------------------------------------------------
    def step(self, *batch) -> float:
        """One optimizer step on ``(*inputs, *targets)``; returns the loss."""
        runner = self._runners[GraphName.TRAIN_STEP]
        arrays = check_batch(runner.batch_inputs, batch, "step()", self.manifest.symbols)
        results = runner.run(self._store, arrays)
        loss = float(results[self._loss_index])
        if self._applied_index is not None and not bool(results[self._applied_index]):
            raise NonFiniteError(
                f"step skipped: the loss ({loss}), a gradient or a new buffer value (BatchNorm statistics of a "
                "single value per channel, for one) is not finite; parameters, buffers, optimizer state and "
                "counters are unchanged and the session can go on"
            )
        return loss

    def scheduler_step(self, metric: float | None = None) -> None:
        """Advance the learning-rate schedule by one epoch (torch's ``scheduler.step()``)."""
        runner = self._runners[GraphName.SCHEDULER_STEP]
        if runner.batch_inputs:
            if metric is None:
                raise TypeError("scheduler_step() needs the metric for this schedule: scheduler_step(metric)")
            arrays = check_batch(runner.batch_inputs, [np.asarray(metric, runner.batch_inputs[0].dtype)], "metric")
        else:
            if metric is not None:
                raise TypeError("scheduler_step() takes no metric for this schedule")
            arrays = {}
        runner.run(self._store, arrays)

    @property
    def lr(self) -> float | list[float]:
        """The current learning rate: a float with one parameter group, else one per group."""
        lrs = [float(x) for x in self._store.read(SCHEDULE_LR)]
        return lrs[0] if len(lrs) == 1 else lrs

    def eval(self, *inputs):
        """The model's forward pass in eval mode; one array, or a tuple for several outputs."""
        runner = self._runners[GraphName.EVAL]
        arrays = check_batch(runner.batch_inputs, inputs, "eval()", self.manifest.symbols)
        outputs = runner.run(self._store, arrays)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    # -- state --------------------------------------------------------------
    @property
    def manifest(self):
        return self._artifact.manifest

    @property
    def device(self) -> tuple[str, int]:
        """Where the state lives: ``(device_type, device_id)`` as ``OrtValue.ortvalue_from_numpy`` takes them."""
        return self._store.device

    def state_info(self) -> dict[str, StateInfo]:
        """Shape, dtype and device of every state tensor by its checkpoint name; copies no data.

        Parameters, buffers, optimizer and schedule state and counters, as ``checkpoint.safetensors`` names them.
        """
        return {name: self._store.info(name) for name in self._store.values}

    def _specs(self, *roles: str) -> list[TensorSpec]:
        return [t for t in self._artifact.manifest.state_specs().values() if t.role in roles]

    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters and buffers by torch name (tied weights under each of their names): loads into the torch model."""
        state = {t.name: self._store.read(t.name) for t in self._specs(Role.PARAM, Role.BUFFER)}
        for alias, name in self._artifact.manifest.extra.get(ALIASES_KEY, {}).items():
            state[alias] = state[name]
        return state

    def load_state_dict(self, state_dict, strict: bool = True) -> IncompatibleKeys:
        """Load parameters and buffers by torch name into the running session, as torch's ``load_state_dict``.

        ``state_dict`` maps names to arrays (numpy arrays, CPU torch tensors, anything ``numpy.asarray``
        reads), e.g. :meth:`state_dict`'s or a torch model's ``state_dict()``. The keys expected are those of
        :meth:`state_dict`: every parameter (frozen ones too) and buffer, and each second name of a tied
        weight (``aliases``); a tied weight given under both names takes the value of its graph name. Each
        array must have the dtype and shape the session holds (no casting). Every check runs before any
        write: on an error the state is untouched. Optimizer state, schedule and counters are left as they
        are.

        Args:
            state_dict: arrays by torch name.
            strict: as torch: a missing or unexpected key is an error; with False, the keys given are loaded
                and the others reported.

        Returns:
            ``IncompatibleKeys(missing_keys, unexpected_keys)``, as torch returns them.

        Raises:
            RuntimeError: as torch words it, ``Error(s) in loading state_dict``, listing the missing and
                unexpected keys (strict only) and every size or dtype mismatch (always).
        """
        if not hasattr(state_dict, "keys") or not hasattr(state_dict, "__getitem__"):
            raise TypeError(f"Expected state_dict to be dict-like, got {type(state_dict).__name__}.")
        aliases = self._artifact.manifest.extra.get(ALIASES_KEY, {})
        names = [t.name for t in self._specs(Role.PARAM, Role.BUFFER)]
        expected = set(names) | set(aliases)
        missing = [n for n in [*names, *aliases] if n not in state_dict]
        unexpected = [str(k) for k in state_dict.keys() if k not in expected]
        errors, arrays = [], {}
        sources = {n: n for n in names} | dict(aliases)
        for key in [*names, *aliases]:
            if key not in state_dict or sources[key] in arrays:
                continue
            try:
                arrays[sources[key]] = self._store.checked(sources[key], state_dict[key], key)
            except ValueError as e:
                errors.append(str(e))
        # torch's order: missing, unexpected, then the mismatches
        if strict and unexpected:
            errors.insert(0, "Unexpected key(s) in state_dict: " + ", ".join(f'"{k}"' for k in unexpected) + ". ")
        if strict and missing:
            errors.insert(0, "Missing key(s) in state_dict: " + ", ".join(f'"{k}"' for k in missing) + ". ")
        if errors:
            raise RuntimeError("Error(s) in loading state_dict for TrainingSession:\n\t" + "\n\t".join(errors))
        self._store.write(arrays)
        return IncompatibleKeys(missing, unexpected)

    def read_state(self, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Copies of state tensors by checkpoint name (those of :meth:`state_info`; None: all of them)."""
        names = list(self._store.values) if names is None else list(names)
        unknown = [n for n in names if n not in self._store.values]
        if unknown:
            raise KeyError(f"no state tensor named {', '.join(map(repr, unknown))} in this session")
        return {name: self._store.read(name) for name in names}

    def load_state(self, arrays: dict) -> None:
        """Set state tensors by checkpoint name (those of :meth:`state_info`): any subset, all or nothing.

        The low-level counterpart of :meth:`load_state_dict` for any state (optimizer slots, counters,
        FedProx's global weights): each array must have the tensor's dtype and shape, and every check runs
        before any write, so that an error leaves the state untouched.
        """
        unknown = [str(n) for n in arrays if n not in self._store.values]
        if unknown:
            raise KeyError(f"no state tensor named {', '.join(map(repr, unknown))} in this session")
        checked = {name: self._store.checked(name, value) for name, value in arrays.items()}
        self._store.write(checked)

    def optimizer_state_dict(self) -> dict[str, dict[str, np.ndarray]]:
        """Optimizer state per parameter with torch's slot names; empty before the first step (as torch)."""
        steps = int(self._store.read(STEP_COUNTER))
        if steps == 0:
            return {}
        has_step = self._artifact.manifest.extra.get(OPTIMIZER_KEY, {}).get(STATE_HAS_STEP_KEY, False)
        state: dict[str, dict[str, np.ndarray]] = {}
        for t in self._specs(Role.PARAM):
            if t.meta.get(TRAINABLE_KEY) and has_step:
                state[t.name] = {"step": np.array(steps, np.float32)}
        params = {t.name: t for t in self._specs(Role.PARAM)}
        for t in self._specs(Role.OPTIM_STATE):
            value, slot = self._store.read(t.name), t.meta[SLOT_KEY]
            if PACKED_KEY not in t.meta:
                state.setdefault(t.meta[PARAM_KEY], {})[slot] = value
                continue
            # a pack's slot: its parameters' slots end to end, or one scalar they share (the load checks the sizes)
            start = 0
            for name in t.meta[PACKED_KEY]:
                shape = params[name].shape
                if value.ndim == 0:
                    part = value.copy()
                else:
                    size = int(np.prod(shape, dtype=np.int64))
                    part, start = value[start : start + size].reshape(shape), start + size
                state.setdefault(name, {})[slot] = part
        return state

    def _snapshot(self) -> Artifact:
        state = {name: self._store.read(name) for name in self._store.values}
        return Artifact(self._artifact.manifest, self._artifact.graphs, state)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write a complete artifact with the current state, atomically."""
        return self._snapshot().save(directory)

    def export_inference(self, path: str | os.PathLike) -> Path:
        """Write a standalone eval-mode model with the trained weights as initializers."""
        return export_inference(self._artifact.graphs[GraphName.EVAL], self.state_dict(), path)

    # -- profiling ----------------------------------------------------------
    def end_profiling(self) -> dict[str, Path]:
        """Stop onnxruntime's profiler; returns the profile each graph wrote, by graph name.

        Profiling is on when ``session_options.enable_profiling`` was set. Each graph then writes
        ``<session_options.profile_file_prefix>_<graph>_<time>.json`` (chrome-trace events; a relative
        prefix lands in the working directory). Returns ``{}`` when profiling is off or already ended;
        the session trains on either way.
        """
        paths = {name: runner.session.end_profiling() for name, runner in self._runners.items()}
        return {name: Path(path) for name, path in paths.items() if path}
