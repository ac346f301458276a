"""Train an optgraph artifact data-parallel over MPI: every process trains on its shard of each epoch.

    mpiexec -n 2 python examples/data_parallel.py ARTIFACT_DIR DATA.safetensors [--batch-size 32]
            [--epochs 1] [--seed 0] [--save DIR]
    python examples/data_parallel.py ...        # one process: a plain TrainingSession, the fused train step

DATA.safetensors holds one tensor per data input and target of the model, named as in manifest.json
(``data_inputs``, ``targets``), with the samples along dim 0 (``optgraph demo`` writes one:
``optgraph-demo/digits-train.safetensors``). ``--batch-size`` is each process's batch, as with torch DDP:
N processes train as one with batch N * B. Each epoch's samples are shuffled and dealt out as torch's
``DistributedSampler`` deals them (``optgraph.distributed.shard``). The schedule advances after every
epoch (ReduceLROnPlateau gets the epoch's mean loss, averaged over the processes). Rank 0 prints one
JSON line per step; ``--save`` writes a complete artifact (from rank 0, atomically) that any number of
processes, or ``optgraph.TrainingSession``, resumes. No torch is needed here.
"""

from __future__ import annotations

import argparse
import json

from safetensors.numpy import load_file

from optgraph import NonFiniteError, distributed
from optgraph.artifact.names import DATA_INPUTS_KEY, TARGETS_KEY, GraphName


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", help="artifact directory (optgraph.compile(...).save, or a checkpoint)")
    parser.add_argument("data", help="safetensors file: one tensor per data input and target, samples along dim 0")
    parser.add_argument("--batch-size", type=int, default=32, help="samples per step on each process")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="the shuffle's seed, the same on every process")
    parser.add_argument("--save", help="write the trained artifact here at the end")
    args = parser.parse_args(argv)

    # DataParallelSession under mpiexec/srun with more than one process, else TrainingSession
    session = distributed.training_session(args.artifact)
    rank, world = getattr(session, "rank", 0), getattr(session, "world_size", 1)
    manifest = session.manifest
    names = [*manifest.extra[DATA_INPUTS_KEY], *manifest.extra[TARGETS_KEY]]
    data = load_file(args.data)
    missing = [name for name in names if name not in data]
    if missing:
        raise SystemExit(f"{args.data}: no tensor {missing[0]!r} (the model takes {', '.join(names)})")
    samples = len(data[names[0]])
    takes_metric = any(not t.is_state for t in manifest.graphs[GraphName.SCHEDULER_STEP].inputs)
    step = 0
    for epoch in range(args.epochs):
        indices = distributed.shard(samples, epoch, args.seed, rank, world)
        losses = []
        for start in range(0, len(indices), args.batch_size):
            part = indices[start : start + args.batch_size]
            try:
                loss = session.step(*(data[name][part] for name in names))
            except NonFiniteError as e:  # skipped on every process alike; the state is unchanged
                loss = float("nan")
                if rank == 0:
                    print(json.dumps({"epoch": epoch, "step": step, "skipped": str(e)}), flush=True)
            losses.append(loss)
            if rank == 0:
                print(json.dumps({"epoch": epoch, "step": step, "loss": loss, "lr": session.lr}), flush=True)
            step += 1
        finite = [loss for loss in losses if loss == loss]
        session.scheduler_step(sum(finite) / max(len(finite), 1) if takes_metric else None)
    if args.save:
        path = session.save(args.save)  # collective: rank 0 writes, every process returns once it is written
        if rank == 0:
            print(json.dumps({"saved": str(path), "processes": world, "steps": step}), flush=True)


if __name__ == "__main__":
    main()
