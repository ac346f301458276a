"""The training loop of ``optgraph train`` and of the demo. Never imports torch.

Each epoch takes the samples in an order drawn from ``(seed, epoch)`` alone, so a run that
resumes at epoch e, batch b takes exactly the batches an uninterrupted run takes there. The
schedule steps after each epoch (ReduceLROnPlateau with the validation loss, or the epoch's
mean training loss without ``--val``) or, for OneCycleLR or when asked, after each optimizer
update. The loop's position is saved with every checkpoint (see :mod:`optgraph.cli.run_dir`);
Ctrl-C or SIGTERM stops after the running step, saves, and ends.

Under an MPI launcher (``mpiexec -n N``, ``srun``: :func:`optgraph.distributed.launched_ranks`
reads its environment, so a plain run never loads MPI) the same loop trains data-parallel, as
torch DDP with a ``DistributedSampler``: the batch size is each process's, each epoch's order
is dealt out to the processes (:func:`optgraph.distributed.deal`), so that step k of N processes
takes the samples that step k of one process with batch N * B takes. Rank 0 alone prints, plots
and writes ``progress.json``; every rank takes part in each checkpoint (a collective save) and
in each decision to stop (:func:`optgraph.distributed.any_rank`, after every step); validation
is split over the ranks and summed. A run resumes on another number of processes: the rest of
the interrupted epoch, from the first sample the saved position had not reached, is dealt out
to the new ones.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from optgraph import distributed, lr_scheduler
from optgraph.artifact.names import GRAD_ACCUMULATION_STEPS_KEY, LR_SCHEDULER_KEY, GraphName, Role
from optgraph.cli import data as datasets
from optgraph.cli import metrics
from optgraph.cli.errors import UsageError
from optgraph.cli.extras import MATPLOTLIB, installed
from optgraph.cli.run_dir import RunDir, graph_digests, read_manifest
from optgraph.errors import NonFiniteError

EPOCH = "epoch"
UPDATE = "update"
SCHEDULER_EVERY = (EPOCH, UPDATE)
PER_UPDATE_SCHEDULES = (lr_scheduler.OneCycleLR.__name__,)  # torch steps these after every optimizer step


@dataclass
class TrainOptions:
    """What ``optgraph train`` was asked; None means "as the run already in ``out`` has it, else the default"."""

    artifact: Path
    data: Path
    out: Path
    epochs: int | None = None
    batch_size: int | None = None
    val: Path | None = None
    seed: int | None = None
    checkpoint_every: int = 1
    checkpoint_every_steps: int = 0
    resume: bool = False
    drop_last: bool | None = None
    scheduler_every: str | None = None
    val_metrics: list[str] | None = None
    progress: bool | None = None  # None: a progress bar on a terminal only
    plot: bool = True
    restart: bool = False  # forget a run that ``out`` holds (the demo runs afresh each time)
    providers: list | None = None


@dataclass
class TrainResult:
    """How the run went: one record per epoch, the loss of every step, and where things are."""

    epochs: list[dict[str, Any]]
    losses: list[float]
    run: RunDir
    interrupted: bool = False
    position: tuple[int, int] | None = None  # (epoch, batch) where an interrupted run stopped, from 0
    plot: Path | None = None
    rank: int = 0  # this process's, under an MPI launcher: rank 0 alone reports
    world_size: int = 1


class _Stop:
    """SIGINT / SIGTERM: the first asks the loop to save and stop after the running step; a second stops now."""

    def __init__(self, say: bool = True) -> None:
        self.requested = False
        self.say = say
        self.previous: dict[int, Any] = {}

    def __call__(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self.say:
            sys.stderr.write("\nstopping after this step to save a checkpoint (Ctrl-C again to stop without saving)\n")

    def __enter__(self) -> _Stop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _fresh_state() -> dict[str, Any]:
    """Where the loop stands. ``batch`` counts the steps of ``world_size`` processes taken in this epoch from
    sample ``epoch_offset`` of its order (0 unless the epoch was resumed on another number of processes)."""
    return {"epoch": 0, "batch": 0, "steps": 0, "epoch_start": 0, "skipped": 0, "losses": [], "epochs": [],
            "world_size": 1, "epoch_offset": 0}  # fmt: skip


def _schedule_names(config: Any) -> set[str]:
    if isinstance(config, dict):
        found = {config.get("name")} if isinstance(config.get("name"), str) else set()
        for value in config.values():
            found |= _schedule_names(value)
        return found
    if isinstance(config, list):
        return set().union(*(_schedule_names(v) for v in config)) if config else set()
    return set()


def _static_batch(dataset: datasets.Dataset) -> int | None:
    """The batch size an artifact compiled with static shapes takes (dim 0 of its inputs), else None."""
    sizes = {t.shape[0] for t in dataset.specs if t.role == Role.INPUT and t.shape and isinstance(t.shape[0], int)}
    return sizes.pop() if len(sizes) == 1 else None


def _batches(
    samples: int, size: int, drop_last: bool, seed: int, epoch: int, rank: int = 0, world: int = 1, offset: int = 0
) -> list[np.ndarray]:
    """This process's batches of an epoch: its order from ``offset`` on, dealt out to ``world`` processes."""
    order = np.random.default_rng([seed, epoch]).permutation(samples)[offset:]
    if world > 1:  # as DistributedSampler: padded to equal shares (or cut, with drop_last), rank r takes r, r + N, ...
        order = distributed.deal(order, rank, world, drop_last=drop_last)
    stop = len(order) - len(order) % size if drop_last else len(order)
    return [order[i : i + size] for i in range(0, stop, size)]


def _rebase(state: dict[str, Any], world: int, batch_size: int, samples: int) -> str:
    """Count the saved position in this run's processes; says how, when their number changed."""
    was = state["world_size"]
    if was == world:
        return ""
    if state["batch"]:  # step k of N processes took samples [k*B*N, (k+1)*B*N) of the epoch's (rest of the) order
        state["epoch_offset"] = min(state["epoch_offset"] + state["batch"] * batch_size * was, samples)
        state["batch"] = 0
    state["world_size"] = world
    rest = f" from sample {state['epoch_offset']} of its order" if state["epoch_offset"] else ""
    return f" (saved by {was} process{'es' * (was > 1)}: this epoch goes on{rest} on {world})"


def format_lr(lr: float | list[float]) -> str:
    return ",".join(f"{v:.4g}" for v in lr) if isinstance(lr, list) else f"{lr:.4g}"


class _Settings:
    """The run's settings: given now, or as the run being resumed saved them (which a resume may not change)."""

    def __init__(self, saved: dict[str, Any] | None) -> None:
        self.saved = saved or {}
        self.values: dict[str, Any] = {}

    def settle(self, key: str, given: Any, default: Any, flag: str) -> Any:
        if key in self.saved:
            if given is not None and given != self.saved[key]:
                raise UsageError(
                    f"{flag} {given} differs from the run being resumed ({self.saved[key]}); resume with it"
                )
            value = self.saved[key]
        else:
            value = default if given is None else given
        self.values[key] = value
        return value


def train(o: TrainOptions) -> TrainResult:
    """Train, checkpoint and plot as ``o`` says; raises UsageError for what the user must change."""
    launched = distributed.launched_ranks()
    if launched > 1:
        try:
            distributed.world()  # MPI from the start: a rank that fails now ends every rank (optgraph.cli.main)
        except ImportError as e:
            raise UsageError(
                f"started by an MPI launcher as one of {launched} processes, but mpi4py cannot be imported ({e}): "
                "pip install 'optgraph[mpi]', or start optgraph train without the launcher"
            ) from None

    run = RunDir(o.out)
    source = read_manifest(o.artifact)
    if o.resume:
        saved, committed = run.load()
        state = {**_fresh_state(), **committed["state"]}  # a run saved before a key existed has its default
        if saved.get("artifact_graphs") != graph_digests(source):
            raise UsageError(f"{run.root} holds a run of another artifact than {o.artifact}")
        session = _open(run.checkpoint, o, launched)
    else:
        if run.holds_run() and not o.restart:
            raise UsageError(
                f"{run.root} holds a training run already: pass --resume to continue it, or choose another --out"
            )
        saved, committed, state = None, None, _fresh_state()
        session = _open(o.artifact, o, launched)  # collective: every rank has checked the folder before rank 0 writes
    rank, world = _layout(session)
    main = rank == 0
    if o.restart and main:
        run.clear()
    manifest = session.manifest
    settings = _Settings(saved)
    settings.values["artifact_graphs"] = graph_digests(source)

    data = datasets.load(o.data, manifest, "--data")
    val = datasets.load(o.val, manifest, "--val") if o.val is not None else None
    static = _static_batch(data)
    if static is not None and o.batch_size is not None and o.batch_size != static:
        raise UsageError(
            f"--batch-size {o.batch_size}: the artifact was compiled for batches of {static} (static shapes)"
        )
    batch_size = settings.settle("batch_size", o.batch_size, static or 32, "--batch-size")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be positive, got {batch_size}")
    drop_last = settings.settle("drop_last", True if static else o.drop_last, static is not None, "--drop-last")
    seed = settings.settle("seed", o.seed, 0, "--seed")
    if settings.saved.get("samples", data.samples) != data.samples:
        raise UsageError(
            f"--data {o.data} has {data.samples} samples; the run being resumed had {settings.saved['samples']}"
        )
    settings.values["samples"] = data.samples
    if data.samples < batch_size * world and drop_last:
        raise UsageError(
            f"--data {o.data} has {data.samples} samples, fewer than one batch of {batch_size}"
            + (f" on each of {world} processes" if world > 1 else "")
        )
    epochs = o.epochs if o.epochs is not None else settings.saved.get("epochs")
    if epochs is None:
        raise UsageError("how long? give --epochs N")
    settings.values["epochs"] = epochs

    schedule = manifest.extra.get(LR_SCHEDULER_KEY, {})
    driven_by_metric = bool(datasets.batch_specs(manifest, GraphName.SCHEDULER_STEP))
    auto_every = UPDATE if _schedule_names(schedule) & set(PER_UPDATE_SCHEDULES) else EPOCH
    every = settings.settle("scheduler_every", o.scheduler_every, auto_every, "--scheduler-every")
    if every == UPDATE and driven_by_metric:
        raise UsageError("--scheduler-every update: ReduceLROnPlateau steps with a metric, once per epoch")
    accumulation = int(manifest.extra.get(GRAD_ACCUMULATION_STEPS_KEY, 1))

    first = _batches(data.samples, batch_size, drop_last, seed, 0, rank, world)[0]
    datasets.check_first_batch(data, manifest, first, "--data")
    validated = val is not None  # ReduceLROnPlateau steps on the validation loss, or on the training loss
    if settings.saved.get("validated", validated) != validated:
        raise UsageError(
            "--val: the run being resumed validated on a --val file: give it again"
            if not validated
            else "--val: the run being resumed had no --val: resume without it"
        )
    settings.values["validated"] = validated
    names: list[str] = []
    if val is not None:
        datasets.check_first_batch(val, manifest, np.arange(min(batch_size, val.samples)), "--val")
        names = settings.settle("val_metrics", o.val_metrics, None, "--val-metric")
        names = _choose_metrics(session, val, batch_size, static, names)
        settings.values["val_metrics"] = names

    result = TrainResult(state["epochs"], state["losses"], run, rank=rank, world_size=world)
    rebased = _rebase(state, world, batch_size, data.samples)
    steps_per_epoch = len(_batches(data.samples, batch_size, drop_last, seed, 0, rank, world))
    what = (
        f"resuming {run.root} at epoch {state['epoch'] + 1}, batch {state['batch'] + 1}{rebased}"
        if o.resume
        else f"training {o.artifact}"
    )
    per_step = f"{batch_size} on each of {world} processes ({batch_size * world} a step)" if world > 1 else batch_size
    say = print if main else _silent
    say(
        f"{what}: {data.samples} samples, {steps_per_epoch} steps of {per_step} per epoch, {epochs} epochs, "
        f"schedule stepped every {every} -> {run.root}",
        flush=True,
    )
    if state["epoch"] >= epochs:
        say(f"the run has finished its {state['epoch']} epochs already; give a larger --epochs to train on")
        result.plot = _plot(result, state, names, o)
        return result

    from tqdm import tqdm

    write = tqdm.write if main else _silent
    warned = False
    with _Stop(say=main) as stop:
        for epoch in range(state["epoch"], epochs):
            batches = _batches(data.samples, batch_size, drop_last, seed, epoch, rank, world, state["epoch_offset"])
            started = time.perf_counter()
            lr_used = session.lr
            bar = tqdm(
                total=len(batches),
                initial=state["batch"],
                desc=f"epoch {epoch + 1}/{epochs}",
                unit="step",
                leave=False,
                dynamic_ncols=True,
                disable=(None if o.progress is None else not o.progress) if main else True,
                file=sys.stderr,
            )
            for index in range(state["batch"], len(batches)):
                try:
                    loss = session.step(*data.batch(batches[index]))
                except NonFiniteError as e:
                    state["skipped"] += 1
                    if not warned:
                        write(f"epoch {epoch + 1}, step {index + 1}: {e}", file=sys.stderr)
                        warned = True
                else:
                    state["losses"].append(loss)
                    state["steps"] += 1
                    if every == UPDATE and state["steps"] % accumulation == 0:
                        session.scheduler_step()
                    lr_used = session.lr if every == UPDATE else lr_used
                    bar.set_postfix_str(f"loss {loss:.4f} lr {format_lr(lr_used)}", refresh=False)
                state["batch"] = index + 1
                bar.update(1)
                # a signal one rank saw stops all; the flag is not overwritten, as a signal that lands during
                # the collective call would be lost: it is agreed on after the next step
                stopping = distributed.any_rank(stop.requested, session)
                steps_due = o.checkpoint_every_steps and state["batch"] % o.checkpoint_every_steps == 0
                if stopping or steps_due:
                    committed = run.commit(session, settings.values, state, committed, write=main)
                if stopping:
                    bar.close()
                    return _stopped(result, state, names, o)
            bar.close()

            epoch_losses = state["losses"][state["epoch_start"] :]
            if not epoch_losses:
                raise NonFiniteError(
                    f"every step of epoch {epoch + 1} was skipped as non-finite: the training diverged "
                    f"(the last checkpoint in {run.root} is from before)"
                )
            record = {"epoch": epoch + 1, "train_loss": float(np.mean(epoch_losses)), "steps": state["steps"],
                      "skipped": state["skipped"], "lr": lr_used, "val": {}}  # fmt: skip
            if val is not None:
                record["val"] = evaluate(session, val, batch_size, static, names)
            if every == EPOCH:
                if driven_by_metric:
                    session.scheduler_step(record["val"][names[0]] if names else record["train_loss"])
                else:
                    session.scheduler_step()
            record["seconds"] = round(time.perf_counter() - started, 3)
            state["epochs"].append(record)
            state.update(epoch=epoch + 1, batch=0, epoch_start=len(state["losses"]), skipped=0, epoch_offset=0)
            write(epoch_line(record, epochs))
            stopping = distributed.any_rank(stop.requested, session)
            if (epoch + 1) % o.checkpoint_every == 0 or epoch + 1 == epochs or stopping:
                committed = run.commit(session, settings.values, state, committed, write=main)
            if stopping:
                return _stopped(result, state, names, o)
    result.plot = _plot(result, state, names, o)
    return result


def _layout(session) -> tuple[int, int]:
    """(this process's rank, the number of processes) of a session: (0, 1) for a plain one."""
    if isinstance(session, distributed.DataParallelSession):
        return session.rank, session.world_size
    return 0, 1


def _silent(*args, **kwargs) -> None:
    """What a rank other than 0 prints."""


def _open(path: Path, o: TrainOptions, launched: int):
    """A :class:`~optgraph.distributed.DataParallelSession` under an MPI launcher of several processes, else
    a :class:`~optgraph.TrainingSession` (without asking MPI, which a launcher's environment would name)."""
    if launched > 1:
        return distributed.training_session(path, providers=o.providers)
    from optgraph.session import TrainingSession

    return TrainingSession(path, providers=o.providers)


def _stopped(result: TrainResult, state: dict, names: list[str], o: TrainOptions) -> TrainResult:
    result.interrupted = True
    result.position = (state["epoch"], state["batch"])
    result.plot = _plot(result, state, names, o)
    return result


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {record['epoch']:>{len(str(epochs))}}/{epochs}", f"loss {record['train_loss']:.4f}"]
    if record["val"]:
        parts.append("val " + "  ".join(metrics.format_metric(n, v) for n, v in record["val"].items()))
    parts.append(f"lr {format_lr(record['lr'])}")
    if record.get("skipped"):
        parts.append(f"{record['skipped']} non-finite step(s) skipped")
    if "seconds" in record:
        parts.append(f"{record['seconds']:.1f} s")
    return "  ".join(parts)


def _plot(result: TrainResult, state: dict, names: list[str], o: TrainOptions) -> Path | None:
    if not o.plot or not state["epochs"] or result.rank != 0:
        return None
    if not installed(MATPLOTLIB[0]):
        print(f"loss curve skipped: matplotlib is not installed ({MATPLOTLIB[2]})", file=sys.stderr)
        return None
    from optgraph.cli.plot import plot_losses

    loss_like = next((n for n in names if n not in metrics.PERCENT), None)
    return plot_losses(result.run.plot, state["losses"], state["epochs"], f"optgraph train {o.artifact}", loss_like)


def _val_batches(val: datasets.Dataset, batch_size: int, static: int | None):
    """Rows of each validation batch, and how many of them count (a static artifact's last batch is padded)."""
    for start in range(0, val.samples, batch_size):
        rows = np.arange(start, min(start + batch_size, val.samples))
        kept = len(rows)
        if static is not None and kept < static:
            rows = np.concatenate([rows, np.repeat(rows[-1:], static - kept)])
        yield rows, kept


def _outputs_and_target(session, val: datasets.Dataset, rows: np.ndarray, kept: int):
    arrays = dict(zip((t.name for t in val.specs), val.batch(rows)))
    inputs = [arrays[t.name] for t in datasets.batch_specs(session.manifest, GraphName.EVAL)]
    target = arrays[next(t.name for t in val.specs if t.role == Role.TARGET)]
    outputs = session.eval(*inputs)
    outputs = outputs[0] if isinstance(outputs, tuple) else outputs
    if kept < len(rows):  # drop the padding rows (eval mode treats rows independently)
        outputs = outputs[:kept]
        target = target[: kept * (len(target) // len(rows))]
    return outputs, target


def _choose_metrics(session, val: datasets.Dataset, batch_size: int, static: int | None, names: list[str] | None):
    rows, kept = next(_val_batches(val, batch_size, static))
    if not any(t.role == Role.TARGET for t in val.specs):
        raise UsageError("--val: the artifact takes no target, so there is nothing to validate against")
    outputs, target = _outputs_and_target(session, val, rows, kept)
    chosen = list(names) if names else metrics.auto(outputs, target)
    for name in chosen:
        try:
            metrics.METRICS[name](outputs, target)
        except metrics.MetricError as e:
            raise UsageError(f"--val-metric {name}: {e}") from None
    return chosen


def evaluate(session, val: datasets.Dataset, batch_size: int, static: int | None, names: list[str]) -> dict:
    """Each metric over the whole validation set, from the eval graph (eval mode; the state is not touched).

    Data-parallel, rank r evaluates batches r, r + N, ... and the ranks sum their sums and counts, so that
    every rank has the same metrics (ReduceLROnPlateau must step alike everywhere). Collective then.
    """
    rank, world = _layout(session)
    total = metrics.Accumulator(names)
    for index, (rows, kept) in enumerate(_val_batches(val, batch_size, static)):
        if index % world == rank:
            total.add(*_outputs_and_target(session, val, rows, kept))
    if world > 1:
        sums = distributed.all_sum([*total.sums.values(), *total.counts.values()], session)
        total.sums = dict(zip(names, sums[: len(names)].tolist()))
        total.counts = dict(zip(names, sums[len(names) :].tolist()))
    return total.result()
