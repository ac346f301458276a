"""Data-parallel training over MPI (``mpi4py``): :class:`DataParallelSession` and :func:`shard`. Never imports torch.

Each process of ``mpiexec -n N`` (or ``srun``) opens the same artifact and
trains on its own share of every batch. A step runs ``grad_step`` (forward and
backward, the gradients into flat buffers), averages the gradients over the
ranks with ``Allreduce`` on those buffers (a few large calls, in place), and
runs ``update_step`` (clipping, the optimizer) on the averages. The
semantics are torch ``DistributedDataParallel``'s:

- every rank starts from rank 0's state (broadcast at construction);
- with equal shares (:func:`shard` gives them), N ranks with batch b each
  train as one process with batch N * b;
- clipping sees the averaged gradients;
- with ``grad_accumulation_steps`` k, a rank adds up its own gradients and
  the ranks reduce once, on every k-th call (torch's ``no_sync``);
- a non-finite loss, gradient or buffer on any rank skips the step on every
  rank, so the ranks never drift apart;
- buffers (BatchNorm's running statistics) are computed per rank from its
  own batch, and after each update every rank takes rank 0's, as DDP's
  default ``broadcast_buffers=True`` does before the next forward.

``docs/artifact-format.md`` (Data-parallel training) gives the protocol for
runtimes in other languages. The gradient buffers live where the state lives:
host memory on CPU, device memory on a GPU, with the gradients bound there by
pointer; MPI reads them in place on the host, and on a device either in place
(CUDA-aware MPI, ``gradient_transfer="direct"``) or through a host copy
(``"staged"``, the default there).
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
import onnxruntime as ort

from optgraph.artifact import Artifact, TensorSpec
from optgraph.artifact.names import (
    FINITE,
    GRAD_ACCUMULATION_STEPS_KEY,
    LOSS,
    MICRO_STEP,
    UPDATE_APPLIED,
    GraphName,
    Role,
)
from optgraph.batch import check_batch
from optgraph.devices import CPU_DEVICE
from optgraph.errors import ArtifactError, InputError, NonFiniteError, OptgraphError, RunError
from optgraph.session import ORT_ERRORS, TrainingSession, _GraphRunner, _StateStore, default_providers, state_store

__all__ = [
    "CommStats", "DataParallelSession", "PeerError", "any_rank", "deal", "launched_ranks", "shard", "training_session",
]  # fmt: skip

#: the graphs a data-parallel session runs (train_step is kept only to be saved)
_GRAPHS = (GraphName.GRAD_STEP, GraphName.UPDATE_STEP, GraphName.SCHEDULER_STEP, GraphName.EVAL)
#: torch's randperm changes algorithm from this many elements on (aten randperm_cpu); shard() follows the first
_RANDPERM_SMALL = (2**32 - 1) // 20
#: environment variables by which MPI launchers give the number of processes (MPICH/Intel MPI and PMI under
#: srun, Open MPI, MVAPICH, an srun step)
_LAUNCHER_SIZES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS")
_TRANSFERS = ("auto", "direct", "staged")


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError("optgraph.distributed needs mpi4py and an MPI library: pip install 'optgraph[mpi]'") from e
    return MPI


class PeerError(OptgraphError, RuntimeError):
    """A collective call failed on another rank; this rank stopped with it, and its state is unchanged."""


class CommStats(NamedTuple):
    """What one rank spent in collectives during ``step`` calls since the session was opened.

    Attributes:
        steps: ``step`` calls.
        allreduce_calls: ``Allreduce`` calls: one small one per step (loss and finiteness), and one
            per gradient bucket on updating steps.
        allreduce_bytes: bytes those calls reduced (each rank's contribution).
        allreduce_seconds: wall time inside them (waiting for slower ranks included).
        broadcast_bytes: bytes of buffers taken from rank 0 after updates.
        broadcast_seconds: wall time inside those ``Bcast`` calls.
    """

    steps: int = 0
    allreduce_calls: int = 0
    allreduce_bytes: int = 0
    allreduce_seconds: float = 0.0
    broadcast_bytes: int = 0
    broadcast_seconds: float = 0.0


# -- sharding ---------------------------------------------------------------------------------------------


def shard(
    num_samples: int,
    epoch: int = 0,
    seed: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    *,
    shuffle: bool = True,
    drop_last: bool = False,
) -> np.ndarray:
    """The sample indices of one rank for one epoch, as ``torch.utils.data.DistributedSampler`` gives them.

    The same indices, in the same order, as ``DistributedSampler(dataset, world_size, rank, shuffle, seed,
    drop_last)`` after ``set_epoch(epoch)``: the permutation of torch's ``randperm`` seeded with
    ``seed + epoch`` (reproduced without torch), padded by repeating its first indices so that every rank
    gets ``ceil(num_samples / world_size)`` of them (or, with ``drop_last``, the tail cut so that every
    rank gets ``floor``), and dealt out round-robin: rank r takes positions r, r + world_size, ... The
    shards of one epoch are disjoint except for the padding, and every rank has as many samples.

    Args:
        num_samples: the size of the data set.
        epoch: the epoch: each one has its own permutation.
        seed: the seed, the same on every rank.
        rank, world_size: this process and the number of processes; None takes them from
            ``MPI.COMM_WORLD`` (rank 0 of 1 when mpi4py is absent and no launcher started the process).
        shuffle: False keeps the data set's order.
        drop_last: cut the tail instead of padding.

    Returns:
        An int64 array of indices into the data set.
    """
    for name, value in (("num_samples", num_samples), ("epoch", epoch), ("seed", seed)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise TypeError(f"{name} must be an integer, got {value!r}")
    if num_samples < 0:
        raise ValueError(f"num_samples must be non-negative, got {num_samples}")
    rank, world_size = _rank_and_size(rank, world_size)  # checked before a long shuffle
    order = _randperm(int(num_samples), int(seed) + int(epoch)) if shuffle else list(range(int(num_samples)))
    return deal(order, rank, world_size, drop_last=drop_last)


def deal(
    order: Sequence[int] | np.ndarray,
    rank: int | None = None,
    world_size: int | None = None,
    *,
    drop_last: bool = False,
) -> np.ndarray:
    """One rank's share of an epoch's sample order, padded and dealt out as ``DistributedSampler`` does.

    :func:`shard` is this on torch's permutation; a trainer with an order of its own (its own shuffle,
    its own resume positions) deals that one out instead. The order is padded by repeating its first
    entries to ``ceil(len(order) / world_size)`` entries a rank (with ``drop_last``, cut to ``floor``),
    and rank r takes positions r, r + world_size, ...

    Args:
        order: the epoch's sample indices, the same on every rank.
        rank, world_size: as for :func:`shard`.
        drop_last: cut the tail instead of padding.

    Returns:
        An int64 array: this rank's indices, in the order's order.
    """
    rank, world_size = _rank_and_size(rank, world_size)
    indices = [int(i) for i in order]
    n = len(indices)
    if drop_last and n % world_size != 0:
        per_rank = math.ceil((n - world_size) / world_size)
    else:
        per_rank = math.ceil(n / world_size)
    total = per_rank * world_size
    if not drop_last:
        padding = total - n
        if padding <= n:
            indices += indices[:padding]
        else:
            indices += (indices * math.ceil(padding / n))[:padding]
    else:
        indices = indices[:total]
    return np.asarray(indices[rank:total:world_size], dtype=np.int64).reshape(-1)


def _rank_and_size(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """``rank`` and ``world_size`` checked, each taken from ``MPI.COMM_WORLD`` where None."""
    if rank is None or world_size is None:
        default_rank, default_size = _world()
        rank = default_rank if rank is None else rank
        world_size = default_size if world_size is None else world_size
    if not isinstance(world_size, (int, np.integer)) or isinstance(world_size, bool) or world_size < 1:
        raise ValueError(f"world_size must be a positive integer, got {world_size!r}")
    if not isinstance(rank, (int, np.integer)) or isinstance(rank, bool) or not 0 <= rank < world_size:
        raise ValueError(f"Invalid rank {rank}, rank should be in the interval [0, {world_size - 1}]")
    return int(rank), int(world_size)


def _randperm(n: int, seed: int) -> list[int]:
    """torch's ``randperm(n, generator=torch.Generator().manual_seed(seed))``, for ``n`` below 214,748,364.

    torch draws from a 32-bit Mersenne Twister seeded as numpy's legacy ``RandomState`` seeds its own
    (with the low 32 bits of the seed), and swaps element i with element ``i + draw % (n - i)``.
    """
    if n >= _RANDPERM_SMALL:
        raise ValueError(
            f"shard() shuffles fewer than {_RANDPERM_SMALL:,} samples ({n:,} given): beyond that torch's randperm "
            "uses another algorithm. Shard larger data sets by files or chunks, or pass shuffle=False"
        )
    draws = np.random.RandomState(seed & 0xFFFFFFFF).randint(0, 2**32, size=max(n - 1, 0), dtype=np.uint64)
    offsets = (draws % np.arange(n, 1, -1, dtype=np.uint64)).tolist()
    perm = list(range(n))
    for i, offset in enumerate(offsets):
        j = i + offset
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def launched_ranks() -> int:
    """How many processes the MPI launcher of this process started (``mpiexec -n N``, ``srun``), 1 if none.

    Read from the launcher's environment variables, without initialising MPI.
    """
    for variable in _LAUNCHER_SIZES:
        value = os.environ.get(variable, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def _world() -> tuple[int, int]:
    """(rank, size) of ``MPI.COMM_WORLD``; (0, 1) when mpi4py is absent and no launcher started this process."""
    try:
        from mpi4py import MPI
    except ImportError:
        if launched_ranks() > 1:
            raise
        return 0, 1
    return MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()


def training_session(artifact: Artifact | str | os.PathLike, **options) -> TrainingSession:
    """The session this process should train with: data-parallel under an MPI launcher, else a plain one.

    A :class:`DataParallelSession` on ``MPI.COMM_WORLD`` when it has more than one process, else a
    :class:`~optgraph.TrainingSession` (its fused ``train_step`` is the faster one alone). A command
    line tool that opens its session here and takes its data from :func:`shard` with the session's
    ``rank`` and ``world_size`` (0 and 1 for a plain session) trains data-parallel under
    ``mpiexec -n N`` with no other change.

    Args:
        artifact: an :class:`~optgraph.artifact.Artifact` or an artifact directory.
        **options: ``providers``, ``session_options``, ``provider_options`` (both kinds), and
            ``bucket_cap_mb`` and ``gradient_transfer`` (data-parallel only; ignored otherwise).
    """
    if _world()[1] > 1:
        return DataParallelSession(artifact, **options)
    plain = {k: v for k, v in options.items() if k not in ("bucket_cap_mb", "gradient_transfer")}
    return TrainingSession(artifact, **plain)


def any_rank(flag: bool, session: TrainingSession) -> bool:
    """Whether ``flag`` is true on any rank of ``session``: a decision every rank takes together. Collective.

    For what one rank may learn alone and every rank must act on at the same step, such as a stop that
    a signal asked for (``mpiexec`` passes SIGINT and SIGTERM to every rank, but each may see it at
    another step). A plain :class:`~optgraph.TrainingSession` is a world of one: ``flag`` itself.
    """
    if not isinstance(session, DataParallelSession):
        return bool(flag)
    MPI = _mpi()
    return bool(session._comm.allreduce(bool(flag), op=MPI.LOR))


# -- the graphs' runners ----------------------------------------------------------------------------------


class _Runner(_GraphRunner):
    """A graph runner whose gradients live in caller-owned buffers and whose next state is kept on request."""

    def bind_buffers(self, buffers: dict[str, tuple]) -> None:
        """Bind the non-state inputs and outputs named in ``buffers`` to ``(device_type, id, dtype, shape, ptr)``."""
        self.buffers = buffers
        self.bound_inputs = [t.name for t in self.batch_inputs if t.name in buffers]
        self.batch_inputs = [t for t in self.batch_inputs if t.name not in buffers]
        self.bound_outputs = [t.name for t in self.result_outputs if t.name in buffers]
        self.result_outputs = [t for t in self.result_outputs if t.name not in buffers]

    def run_split(self, store: _StateStore, batch: dict[str, np.ndarray], keep: bool) -> list[np.ndarray]:
        """Run once; the next state goes to the spares, and into the store only with ``keep`` (else :meth:`keep`)."""
        io = self.binding
        for name in self.state_inputs:
            io.bind_ortvalue_input(name, store.values[name])
        for name, array in batch.items():
            io.bind_cpu_input(name, array)
        for name in self.bound_inputs:
            io.bind_input(name, *self.buffers[name])
        for out, fed in self.state_outputs:
            io.bind_ortvalue_output(out, store.values[fed] if out in self.in_place else self.spares[out])
        for t in self.result_outputs:
            io.bind_output(t.name, "cpu")
        for name in self.bound_outputs:
            io.bind_output(name, *self.buffers[name])
        try:
            self.session.run_with_iobinding(io)
        except (*ORT_ERRORS, RuntimeError) as e:
            raise RunError(f"{self.name}: onnxruntime failed ({type(e).__name__}: {e}); {self._unchanged}") from None
        start = len(self.state_outputs)
        results = [r.numpy() for r in io.get_outputs()[start : start + len(self.result_outputs)]]
        if keep:
            self.keep(store)
        return results

    def keep(self, store: _StateStore) -> None:
        """Make the next state of the last run the current state."""
        for out, fed in self.state_outputs:
            if out not in self.in_place:
                store.values[fed], self.spares[out] = self.spares[out], store.values[fed]

    def result_index(self, name: str) -> int:
        return next(i for i, t in enumerate(self.result_outputs) if t.name == name)


# -- gradient buckets -------------------------------------------------------------------------------------


@dataclass
class _Bucket:
    """A flat buffer that holds several gradients of one dtype end to end, on the state's device."""

    dtype: np.dtype
    names: list[str]
    shapes: list[tuple[int, ...]]
    offsets: list[int]  # in elements
    size: int
    value: ort.OrtValue | None = None
    host: np.ndarray | None = None  # the same memory, when the host can read it (CPU)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize


class _Scale:
    """Multiplies a flat device buffer by a constant in place, with a one-node onnxruntime graph on its device."""

    def __init__(self, dtype: np.dtype, providers: Sequence, provider_options: Sequence[dict] | None) -> None:
        elem = onnx.helper.np_dtype_to_tensor_dtype(dtype)
        x, s, y = (
            onnx.helper.make_tensor_value_info(n, elem, shape) for n, shape in (("x", ["n"]), ("s", []), ("y", ["n"]))
        )
        graph = onnx.helper.make_graph([onnx.helper.make_node("Mul", ["x", "s"], ["y"])], "scale", [x, s], [y])
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 14)], ir_version=7)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.dtype = dtype
        self.session = ort.InferenceSession(
            model.SerializeToString(), options, providers=list(providers), provider_options=provider_options
        )
        self.binding = self.session.io_binding()

    def __call__(self, bucket: _Bucket, factor: float, device: tuple[str, int]) -> None:
        ptr = bucket.value.data_ptr()
        self.binding.bind_input("x", *device, self.dtype.type, [bucket.size], ptr)
        self.binding.bind_cpu_input("s", np.asarray(factor, self.dtype))
        self.binding.bind_output("y", *device, self.dtype.type, [bucket.size], ptr)  # element-wise: in place is safe
        self.session.run_with_iobinding(self.binding)


class _CudaBuffer:
    """Device memory as mpi4py takes it from a CUDA-aware MPI: ``__cuda_array_interface__``."""

    def __init__(self, bucket: _Bucket) -> None:
        self.__cuda_array_interface__ = {
            "shape": (bucket.size,),
            "typestr": bucket.dtype.str,
            "data": (bucket.value.data_ptr(), False),
            "version": 3,
            "strides": None,
            "stream": None,  # onnxruntime synchronised its stream when the run returned
        }


class _Gradients:
    """Every gradient in flat per-dtype buckets on the state's device, bound by pointer, reduced in place."""

    def __init__(self, specs: list[TensorSpec], device: tuple[str, int], cap_bytes: int, transfer: str) -> None:
        self.device = device
        self.transfer = transfer
        self.buckets: list[_Bucket] = []
        by_dtype: dict[np.dtype, list[TensorSpec]] = {}
        for spec in specs:
            by_dtype.setdefault(np.dtype(spec.dtype), []).append(spec)
        for dtype, group in by_dtype.items():
            current: list[TensorSpec] = []
            for spec in group:
                if current and (_elements(current) + _elements([spec])) * dtype.itemsize > cap_bytes:
                    self.buckets.append(_bucket(dtype, current))
                    current = []
                current.append(spec)
            self.buckets.append(_bucket(dtype, current))
        self.bindings: dict[str, tuple] = {}
        for bucket in self.buckets:
            if device == CPU_DEVICE and transfer != "staged":
                bucket.host = np.zeros(bucket.size, bucket.dtype)
                bucket.value = ort.OrtValue.ortvalue_from_numpy(bucket.host, *device)  # shares the memory
            else:
                bucket.value = ort.OrtValue.ortvalue_from_shape_and_type([bucket.size], bucket.dtype.type, *device)
            base = bucket.value.data_ptr()
            for name, shape, offset in zip(bucket.names, bucket.shapes, bucket.offsets):
                ptr = base + offset * bucket.dtype.itemsize
                self.bindings[name] = (*device, bucket.dtype.type, list(shape), ptr)

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.buckets)

    def average(self, comm, scale: Callable[[_Bucket, float], None], timed: Callable) -> None:
        """Replace every gradient by its mean over the ranks of ``comm``: one ``Allreduce`` per bucket."""
        MPI = _mpi()
        factor = 1.0 / comm.Get_size()
        for bucket in self.buckets:
            if bucket.host is not None:  # host memory: MPI reduces it where it is
                timed(lambda h=bucket.host: comm.Allreduce(MPI.IN_PLACE, h, op=MPI.SUM), bucket.nbytes)
                if factor != 1.0:
                    np.multiply(bucket.host, bucket.dtype.type(factor), out=bucket.host)
            elif self.transfer == "staged":  # through a host copy, and back
                staged = bucket.value.numpy()
                if staged.ctypes.data == bucket.value.data_ptr():  # a view (memory the host reads): copy anyway
                    staged = staged.copy()
                timed(lambda h=staged: comm.Allreduce(MPI.IN_PLACE, h, op=MPI.SUM), bucket.nbytes)
                if factor != 1.0:
                    np.multiply(staged, bucket.dtype.type(factor), out=staged)
                bucket.value.update_inplace(staged)
            else:  # device memory that a CUDA-aware MPI reads and writes where it is
                timed(lambda b=bucket: comm.Allreduce(MPI.IN_PLACE, _CudaBuffer(b), op=MPI.SUM), bucket.nbytes)
                if factor != 1.0:
                    scale(bucket, factor)


def _elements(specs: list[TensorSpec]) -> int:
    return sum(math.prod(t.shape) for t in specs)


def _bucket(dtype: np.dtype, specs: list[TensorSpec]) -> _Bucket:
    offsets, offset = [], 0
    for spec in specs:
        offsets.append(offset)
        offset += math.prod(spec.shape)
    return _Bucket(dtype, [t.name for t in specs], [tuple(t.shape) for t in specs], offsets, offset)


# -- the session ------------------------------------------------------------------------------------------


class DataParallelSession(TrainingSession):
    """Train an artifact data-parallel: one session per rank of ``mpiexec -n N`` (or ``srun``).

    Everything a :class:`~optgraph.TrainingSession` offers works the same (``lr``, ``eval``,
    ``state_dict``, ``optimizer_state_dict``, ``export_inference``, ...), and the state it reads is the same
    on every rank (but for the buffers between the calls of an accumulation cycle, which are each rank's own
    until the update, as in torch DDP). Every rank must make the same calls in the same order (``step``,
    ``scheduler_step`` and ``save`` are collective), as with torch.distributed.

    Args:
        artifact: an :class:`~optgraph.artifact.Artifact` or an artifact directory, compiled by an optgraph
            that emits ``grad_step`` and ``update_step``. Rank 0's state is every rank's start.
        comm: an mpi4py communicator; None is ``MPI.COMM_WORLD``.
        providers, session_options, provider_options: as for :class:`~optgraph.TrainingSession`. Without
            session options, each rank runs onnxruntime on its share of the cores of its machine.
        bucket_cap_mb: the largest gradient bucket, MiB (torch DDP's default is 25): gradients of one dtype
            share a bucket, one ``Allreduce`` each.
        gradient_transfer: how MPI reaches gradients in device memory: ``"direct"`` hands it the device
            buffers (a CUDA-aware MPI), ``"staged"`` copies each bucket to the host and back; ``"auto"`` is
            direct on the host and staged on a device.
    """

    def __init__(
        self,
        artifact: Artifact | str | os.PathLike,
        comm=None,
        providers: Sequence | None = None,
        session_options: ort.SessionOptions | None = None,
        provider_options: Sequence[dict] | None = None,
        *,
        bucket_cap_mb: float = 25,
        gradient_transfer: str = "auto",
    ) -> None:
        MPI = _mpi()
        self._comm = MPI.COMM_WORLD if comm is None else comm
        if gradient_transfer not in _TRANSFERS:
            raise ValueError(f"gradient_transfer must be one of {_TRANSFERS}, got {gradient_transfer!r}")
        if not bucket_cap_mb > 0:
            raise ValueError(f"bucket_cap_mb must be positive, got {bucket_cap_mb!r}")
        if providers is None and provider_options is not None:
            raise ValueError("provider_options needs providers: one options dict per provider, in the same order")
        if session_options is None:
            session_options = self._default_options()
        self._stats = CommStats()
        self._cap_bytes = int(bucket_cap_mb * 2**20)
        self._agree(lambda: self._open(artifact, providers, session_options, provider_options), "open the artifact")
        self._check_same_graphs()
        self._broadcast(list(self._store.values))  # rank 0's state is everyone's
        self._micro = int(self._store.read(MICRO_STEP)) if MICRO_STEP in self._store.values else 0
        transfer = gradient_transfer
        if transfer == "auto":
            transfer = "direct" if self._store.device == CPU_DEVICE else "staged"
        grad = self._runners[GraphName.GRAD_STEP]
        self._gradients = _Gradients(
            [t for t in grad.spec.outputs if t.role == Role.GRAD],
            self._store.device,
            self._cap_bytes,
            transfer,
        )
        for name in (GraphName.GRAD_STEP, GraphName.UPDATE_STEP):
            self._runners[name].bind_buffers(self._gradients.bindings)
        self._loss_index, self._finite_index = grad.result_index(LOSS), grad.result_index(FINITE)
        self._applied_index = self._runners[GraphName.UPDATE_STEP].result_index(UPDATE_APPLIED)
        self._shared_buffers = [t.feeds for t in grad.spec.outputs if t.feeds is not None and t.role == Role.BUFFER]
        self._accumulators = [t.name for t in grad.spec.inputs if t.role == Role.GRAD_ACCUMULATOR]
        self._scalers: dict[np.dtype, _Scale] = {}
        self._provider_options = provider_options

    def _default_options(self) -> ort.SessionOptions:
        """Quiet logs, and onnxruntime threads for this rank's share of its machine's cores."""
        MPI = _mpi()
        local = self._comm.Split_type(MPI.COMM_TYPE_SHARED)
        ranks_here = local.Get_size()
        local.Free()
        available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        pinned = available < (os.cpu_count() or available)  # the launcher bound this rank to its own cores
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = available if pinned else max(1, available // ranks_here)
        return options

    def _open(self, artifact, providers, session_options, provider_options) -> None:
        owned = not isinstance(artifact, Artifact)  # read here: its arrays become the state, no copy
        if owned:
            artifact = Artifact.load(artifact)
        manifest = artifact.manifest
        missing = [name for name in _GRAPHS if name not in manifest.graphs]
        if missing:
            raise ArtifactError(
                f"this artifact has no {missing[0]} graph (it was compiled before optgraph could train "
                "data-parallel): compile it again, or train it with TrainingSession"
            )
        steps = manifest.extra.get(GRAD_ACCUMULATION_STEPS_KEY, 1)
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ArtifactError(f"{GRAD_ACCUMULATION_STEPS_KEY} must be a positive integer, got {steps!r}")
        if (steps > 1) != (MICRO_STEP in manifest.state_specs()):
            raise ArtifactError(
                f"{GRAD_ACCUMULATION_STEPS_KEY} is {steps}, but {MICRO_STEP} is {'not ' * (steps > 1)}state"
            )
        self._steps_per_update = steps
        providers = default_providers() if providers is None else list(providers)
        self._runners = {
            name: _Runner(
                artifact.graphs[name], manifest.graphs[name], name, providers, provider_options, session_options
            )
            for name in _GRAPHS
        }
        self._providers = providers
        self._store = state_store(self._runners[GraphName.GRAD_STEP].session, artifact, owned, stacklevel=3)
        self._artifact = Artifact(manifest, artifact.graphs, {})  # every graph, to save a complete artifact
        for runner in self._runners.values():
            runner.prepare(self._store)

    # -- collectives --------------------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        """This process's rank in the communicator."""
        return self._comm.Get_rank()

    @property
    def world_size(self) -> int:
        """The number of processes training together."""
        return self._comm.Get_size()

    @property
    def comm_stats(self) -> CommStats:
        """Bytes and time this rank spent in ``Allreduce`` and ``Bcast`` during ``step`` calls so far."""
        return self._stats

    def _agree(self, action: Callable[[], object], what: str):
        """Run ``action`` on every rank; if it fails on any, every rank raises (the failing ones their own error)."""
        error = None
        try:
            result = action()
        except Exception as e:  # noqa: BLE001 - reported to every rank, then re-raised here
            error, result = e, None
        failures = self._comm.allgather(None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        failed = [(rank, message) for rank, message in enumerate(failures) if message is not None]
        if failed:
            told = "; ".join(f"rank {rank}: {message}" for rank, message in failed)
            raise PeerError(f"could not {what} on every rank ({told})")
        return result

    def _check_same_graphs(self) -> None:
        digest = hashlib.sha256()
        for name in _GRAPHS:
            digest.update(hashlib.sha256(self._artifact.graphs[name]).digest())
        digests = self._comm.allgather(digest.hexdigest())
        if len(set(digests)) > 1:
            others = [rank for rank, d in enumerate(digests) if d != digests[0]]
            raise ArtifactError(
                f"ranks {others} opened other graphs than rank 0: every rank must open the same artifact"
            )

    def _timed_allreduce(self, call: Callable[[], None], nbytes: int) -> None:
        start = time.perf_counter()
        call()
        s = self._stats
        self._stats = s._replace(
            allreduce_calls=s.allreduce_calls + 1,
            allreduce_bytes=s.allreduce_bytes + nbytes,
            allreduce_seconds=s.allreduce_seconds + time.perf_counter() - start,
        )

    def _broadcast(self, names: list[str]) -> int:
        """Every rank takes rank 0's values of the state tensors ``names``: a few ``Bcast`` calls of packed bytes."""
        root = self.rank == 0
        cap = self._cap_bytes
        infos = {name: self._store.info(name) for name in names}
        sizes = {n: math.prod(i.shape) * np.dtype(i.dtype).itemsize for n, i in infos.items()}
        chunks: list[list[str]] = [[]]
        for name in names:
            if chunks[-1] and sum(_aligned(sizes[n]) for n in chunks[-1]) + sizes[name] > cap:
                chunks.append([])
            chunks[-1].append(name)
        sent = 0
        for chunk in (c for c in chunks if c):
            offsets, total = [], 0
            for name in chunk:
                offsets.append(total)
                total += _aligned(sizes[name])
            packed = np.zeros(total, np.uint8)
            if root:
                for name, offset in zip(chunk, offsets):
                    packed[offset : offset + sizes[name]] = self._store.read(name).reshape(-1).view(np.uint8)
            self._comm.Bcast(packed, root=0)
            sent += total
            if not root:
                for name, offset in zip(chunk, offsets):
                    info = infos[name]
                    array = packed[offset : offset + sizes[name]].view(np.dtype(info.dtype)).reshape(info.shape)
                    self._store.values[name].update_inplace(np.ascontiguousarray(array))
        return sent

    def _scale(self, bucket: _Bucket, factor: float) -> None:
        scaler = self._scalers.get(bucket.dtype)
        if scaler is None:
            scaler = self._scalers[bucket.dtype] = _Scale(bucket.dtype, self._providers, self._provider_options)
        scaler(bucket, factor, self._store.device)

    # -- training -----------------------------------------------------------------------------------------
    def step(self, *batch) -> float:
        """One step on this rank's share of the batch, with every rank; returns the mean of the ranks' losses.

        Collective: every rank calls it once per step. A batch refused on any rank (:class:`InputError`
        there, :class:`PeerError` elsewhere) or a non-finite loss, gradient or buffer on any rank
        (:class:`NonFiniteError` everywhere) leaves every rank's state unchanged.
        """
        MPI = _mpi()
        grad = self._runners[GraphName.GRAD_STEP]
        error, loss, finite = None, 0.0, True
        try:
            arrays = check_batch(grad.batch_inputs, batch, "step()", self.manifest.symbols)
            results = grad.run_split(self._store, arrays, keep=False)
            loss, finite = float(results[self._loss_index]), bool(results[self._finite_index])
        except (InputError, RunError) as e:
            error = e
        agreed = np.array([loss, 0.0 if finite else 1.0, 0.0 if error is None else 1.0])
        self._timed_allreduce(lambda: self._comm.Allreduce(MPI.IN_PLACE, agreed, op=MPI.SUM), agreed.nbytes)
        self._stats = self._stats._replace(steps=self._stats.steps + 1)
        if agreed[2]:
            self._raise_failed(error)
        if agreed[1]:
            raise NonFiniteError(
                f"step skipped on every rank: on {int(agreed[1])} of {self.world_size} ranks the loss, a gradient or "
                "a new buffer value is not finite; the state is unchanged and the session can go on"
            )
        updating = (self._micro + 1) % self._steps_per_update == 0
        if updating:
            self._gradients.average(self._comm, self._scale, self._timed_allreduce)
            results = self._runners[GraphName.UPDATE_STEP].run_split(self._store, {}, keep=True)
            if not bool(results[self._applied_index]):
                raise NonFiniteError(
                    "step skipped on every rank: the gradients averaged over the ranks are not finite (their sum "
                    "overflowed); the state is unchanged and the session can go on"
                )
        grad.keep(self._store)
        self._micro += 1
        if updating and self._shared_buffers and self.world_size > 1:
            start = time.perf_counter()
            sent = self._broadcast(self._shared_buffers)
            s = self._stats
            self._stats = s._replace(
                broadcast_bytes=s.broadcast_bytes + sent,
                broadcast_seconds=s.broadcast_seconds + time.perf_counter() - start,
            )
        return float(agreed[0]) / self.world_size

    def _raise_failed(self, error: Exception | None) -> None:
        messages = self._comm.allgather(None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        told = "; ".join(f"rank {rank}: {m}" for rank, m in enumerate(messages) if m is not None)
        raise PeerError(f"step refused on every rank, the state is unchanged ({told})")

    def scheduler_step(self, metric: float | None = None) -> None:
        """Advance the schedule by one epoch on every rank; a metric is first averaged over the ranks."""
        if metric is not None:
            MPI = _mpi()
            value = np.array([float(metric)])
            self._comm.Allreduce(MPI.IN_PLACE, value, op=MPI.SUM)
            metric = float(value[0]) / self.world_size
        super().scheduler_step(metric)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write a complete artifact from rank 0, atomically; every rank returns once it is written.

        Collective. Between the updates of an accumulation cycle, the checkpoint holds the mean of the
        ranks' gradient sums (and rank 0's buffers), from which any number of ranks resumes.
        """
        averaged = self._mean_accumulators()
        error, path = None, None
        if self.rank == 0:
            try:
                snapshot = self._snapshot()
                snapshot.state.update(averaged)
                path = snapshot.save(directory)
            except Exception as e:  # noqa: BLE001 - told to every rank, then re-raised here
                error = e
        failure = self._comm.bcast(None if error is None else f"{type(error).__name__}: {error}", root=0)
        if error is not None:
            raise error
        if failure is not None:
            raise PeerError(f"rank 0 could not save {os.fspath(directory)!r}: {failure}")
        return path if path is not None else Path(directory)

    def _mean_accumulators(self) -> dict[str, np.ndarray]:
        """The accumulators averaged over the ranks, on rank 0 ({} elsewhere, and where they are all zero)."""
        if not self._accumulators or self._micro % self._steps_per_update == 0 or self.world_size == 1:
            return {}
        MPI = _mpi()
        averaged = {}
        for name in self._accumulators:
            local = self._store.read(name)
            total = np.empty_like(local) if self.rank == 0 else None
            self._comm.Reduce(local, total, op=MPI.SUM, root=0)
            if self.rank == 0:
                averaged[name] = (total / self.world_size).astype(local.dtype)
        return averaged


def _aligned(nbytes: int) -> int:
    return (nbytes + 7) // 8 * 8
