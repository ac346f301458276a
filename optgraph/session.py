"""``TrainingSession``: trains an artifact on stock onnxruntime. Never imports torch.

Every state tensor lives on the execution provider's device as an OrtValue.
Each graph writes its next state into spare OrtValues bound through
IOBinding, which are then swapped with the current ones (double buffering),
so a step moves only the batch in and the scalar loss out.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from optgraph.artifact import Artifact, GraphSpec, TensorSpec
from optgraph.batch import check_batch
from optgraph.errors import NonFiniteError
from optgraph.inference import export_inference

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
STEP_COUNTER = "counter.step"
SCHEDULE_LR = "schedule.lr"


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


class _StateStore:
    """The current OrtValue of every state tensor, on one device."""

    def __init__(self, state: dict[str, np.ndarray], device: str) -> None:
        self.device = device
        self.values = {name: self.upload(array) for name, array in state.items()}

    def upload(self, array: np.ndarray) -> ort.OrtValue:
        # A private contiguous copy: on CPU the OrtValue shares this memory.
        return ort.OrtValue.ortvalue_from_numpy(np.array(array, copy=True, order="C"), self.device, 0)

    def empty_like(self, name: str) -> ort.OrtValue:
        current = self.values[name]
        dtype = np.dtype(_ORT_TYPES[current.data_type()])
        return ort.OrtValue.ortvalue_from_shape_and_type(current.shape(), dtype, self.device, 0)

    def read(self, name: str) -> np.ndarray:
        # OrtValue.numpy() on CPU is a view of the state buffer, which the next step overwrites
        # (double buffering) and which dies with the session: hand out a copy.
        return np.array(self.values[name].numpy(), copy=True)


_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}  # fmt: skip


class _GraphRunner:
    """One graph: binds state from the store, runs, and swaps in the next state."""

    def __init__(
        self, model: bytes, spec: GraphSpec, providers: Sequence, name: str, options: ort.SessionOptions | None
    ) -> None:
        if options is None:
            options = ort.SessionOptions()
            options.log_severity_level = 3
        self.name = name
        self.session = ort.InferenceSession(model, options, providers=list(providers))
        self.spec = spec
        self.state_inputs = [t.name for t in spec.inputs if t.is_state]
        self.batch_inputs = [t for t in spec.inputs if not t.is_state]
        self.state_outputs = [(t.name, t.feeds) for t in spec.outputs if t.feeds is not None]
        self.result_outputs = [t for t in spec.outputs if t.feeds is None]
        self.binding = self.session.io_binding()
        self.spares: dict[str, ort.OrtValue] = {}

    def prepare(self, store: _StateStore) -> None:
        self.spares = {out: store.empty_like(fed) for out, fed in self.state_outputs}

    def run(self, store: _StateStore, batch: dict[str, np.ndarray]) -> list[np.ndarray]:
        io = self.binding
        for name in self.state_inputs:
            io.bind_ortvalue_input(name, store.values[name])
        for name, array in batch.items():
            io.bind_cpu_input(name, array)
        for out, _ in self.state_outputs:
            io.bind_ortvalue_output(out, self.spares[out])
        for t in self.result_outputs:
            io.bind_output(t.name, "cpu")
        self.session.run_with_iobinding(io)
        results = io.get_outputs()[len(self.state_outputs) :] if self.result_outputs else []
        arrays = [r.numpy() for r in results]
        for out, fed in self.state_outputs:
            store.values[fed], self.spares[out] = self.spares[out], store.values[fed]
        return arrays


class TrainingSession:
    """Train an artifact with onnxruntime.

    Args:
        artifact: an :class:`~optgraph.artifact.Artifact` or the path of an artifact directory.
        providers: onnxruntime execution providers; None picks CUDA when available, else CPU.
        session_options: onnxruntime session options (threads, profiling) for every graph.
    """

    def __init__(
        self,
        artifact: Artifact | str | os.PathLike,
        providers: Sequence | None = None,
        session_options: ort.SessionOptions | None = None,
    ) -> None:
        if not isinstance(artifact, Artifact):
            artifact = Artifact.load(artifact)
        self._artifact = artifact
        manifest = artifact.manifest
        providers = default_providers() if providers is None else list(providers)
        self._runners = {
            name: _GraphRunner(artifact.graphs[name], manifest.graphs[name], providers, name, session_options)
            for name in ("train_step", "scheduler_step", "eval")
        }
        device = "cuda" if self._runners["train_step"].session.get_providers()[0] == CUDA else "cpu"
        self._store = _StateStore({n: artifact.state[n] for n in manifest.state_specs()}, device)
        for runner in self._runners.values():
            runner.prepare(self._store)
        results = self._runners["train_step"].result_outputs
        self._loss_index = next(i for i, t in enumerate(results) if t.role == "loss")
        self._applied_index = next((i for i, t in enumerate(results) if t.name == "update_applied"), None)

    # -- training -----------------------------------------------------------
    def step(self, *batch) -> float:
        """One optimizer step on ``(*inputs, *targets)``; returns the loss."""
        runner = self._runners["train_step"]
        arrays = check_batch(runner.batch_inputs, batch, "step()")
        results = runner.run(self._store, arrays)
        loss = float(results[self._loss_index])
        if self._applied_index is not None and not bool(results[self._applied_index]):
            raise NonFiniteError(
                f"step skipped: the loss ({loss}) or a gradient is not finite; parameters, buffers, "
                "optimizer state and counters are unchanged and the session can go on"
            )
        return loss

    def scheduler_step(self, metric: float | None = None) -> None:
        """Advance the learning-rate schedule by one epoch (torch's ``scheduler.step()``)."""
        runner = self._runners["scheduler_step"]
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
        runner = self._runners["eval"]
        arrays = check_batch(runner.batch_inputs, inputs, "eval()")
        outputs = runner.run(self._store, arrays)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    # -- state --------------------------------------------------------------
    @property
    def manifest(self):
        return self._artifact.manifest

    def _specs(self, *roles: str) -> list[TensorSpec]:
        return [t for t in self._artifact.manifest.state_specs().values() if t.role in roles]

    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters and buffers by torch name (tied weights under each of their names): loads into the torch model."""
        state = {t.name: self._store.read(t.name) for t in self._specs("param", "buffer")}
        for alias, name in self._artifact.manifest.extra.get("aliases", {}).items():
            state[alias] = state[name]
        return state

    def optimizer_state_dict(self) -> dict[str, dict[str, np.ndarray]]:
        """Optimizer state per parameter with torch's slot names; empty before the first step (as torch)."""
        steps = int(self._store.read(STEP_COUNTER))
        if steps == 0:
            return {}
        has_step = self._artifact.manifest.extra["optimizer"].get("state_has_step", False)
        state: dict[str, dict[str, np.ndarray]] = {}
        for t in self._specs("param"):
            if t.meta.get("trainable") and has_step:
                state[t.name] = {"step": np.array(steps, np.float32)}
        for t in self._specs("optim_state"):
            state.setdefault(t.meta["param"], {})[t.meta["slot"]] = self._store.read(t.name)
        return state

    def _snapshot(self) -> Artifact:
        state = {name: self._store.read(name) for name in self._store.values}
        return Artifact(self._artifact.manifest, self._artifact.graphs, state)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write a complete artifact with the current state, atomically."""
        return self._snapshot().save(directory)

    def export_inference(self, path: str | os.PathLike) -> Path:
        """Write a standalone eval-mode model with the trained weights as initializers."""
        return export_inference(self._artifact.graphs["eval"], self.state_dict(), path)
