"""One rank of a data-parallel run, started by the tests under ``mpiexec -n N``: no torch, no pytest.

    mpiexec -n 2 python tests/distributed/worker.py CONFIG.json

The config names the artifact, a ``.npz`` data set (one array per input and target, samples along dim 0),
the per-rank batch size, the steps, and what to record or break. Each rank takes its samples from
``shard``, trains, and writes ``<out>/rank<r>.npz``: the loss of every step (NaN where it raised
``NonFiniteError``, -1 for an ``InputError`` here, -2 for a ``PeerError``), the state after every step
(``record_every_step``) and at the end, the optimizer state, the learning rate after each epoch, and
``comm_stats``.
"""

from __future__ import annotations

import json
import os
import signal
import sys

import numpy as np
from mpi4py import MPI

from optgraph import InputError, NonFiniteError, distributed

# what step() raised, in the losses
REFUSED_HERE, REFUSED_ELSEWHERE = -1.0, -2.0


def main(config_path: str) -> None:
    config = json.loads(open(config_path).read())
    rank = MPI.COMM_WORLD.Get_rank()
    artifact = config["artifacts"][rank] if "artifacts" in config else config["artifact"]  # one start per rank
    session = distributed.DataParallelSession(
        artifact, providers=["CPUExecutionProvider"], gradient_transfer=config.get("transfer", "auto")
    )
    rank, world = session.rank, session.world_size
    data = np.load(config["data"])
    names = [*session.manifest.extra["data_inputs"], *session.manifest.extra["targets"]]
    arrays = [data[name] for name in names]
    batch_size, steps, step = config["batch_size"], config["steps"], 0
    losses, states, lrs, agreed = [], [], [], []
    kill = config.get("kill")  # {"rank": r, "at_save": k}: that rank kills itself as it enters its k-th save
    saves = 0
    epoch = config.get("first_epoch", 0)
    while step < steps:
        indices = distributed.shard(len(arrays[0]), epoch, config.get("seed", 0))
        for start in range(0, len(indices), batch_size):
            part = indices[start : start + batch_size]
            batch = [
                a[part].reshape(-1) if name in config.get("flatten", ()) else a[part] for name, a in zip(names, arrays)
            ]
            if config.get("nan_at") == step and rank == config.get("nan_rank", 0):
                batch[0] = np.full_like(batch[0], np.nan)
            if config.get("bad_batch_at") == step and rank == config.get("bad_rank", 0):
                batch = batch[:-1]  # a target short
            try:
                losses.append(session.step(*batch))
            except NonFiniteError:
                losses.append(float("nan"))
            except InputError:
                losses.append(REFUSED_HERE)
            except distributed.PeerError:
                losses.append(REFUSED_ELSEWHERE)
            flag = config.get("flag_at")  # {"rank": r, "step": s}: a stop that one rank alone saw
            if flag and distributed.any_rank(rank == flag["rank"] and step == flag["step"], session):
                agreed.append(step)
            step += 1
            if config.get("record_every_step"):
                states.append(session.state_dict())
            if config.get("save_every") and step % config["save_every"] == 0:
                saves += 1
                if kill and kill["rank"] == rank and kill["at_save"] == saves:
                    os.kill(os.getpid(), signal.SIGKILL)
                session.save(config["save_dir"])
                if config.get("keep_saves"):
                    session.save(f"{config['save_dir']}-{saves}")
            if step == steps:
                break
        epoch += 1
        if config.get("scheduler_step", True):
            session.scheduler_step()
        lrs.append(session.lr)
    out = {"losses": np.array(losses), "lrs": np.array(lrs, dtype=np.float64), "agreed": np.array(agreed, np.int64)}
    final = session.state_dict()
    out |= {f"state/{k}": v for k, v in final.items()}
    for i, state in enumerate(states):
        out |= {f"step{i}/{k}": v for k, v in state.items()}
    for param, slots in session.optimizer_state_dict().items():
        out |= {f"optim/{param}/{slot}": v for slot, v in slots.items()}
    stats = session.comm_stats
    out |= {f"stats/{k}": np.array(v) for k, v in stats._asdict().items()}
    np.savez(os.path.join(config["out"], f"rank{rank}.npz"), **out)
    print(f"rank {rank} of {world}: {step} steps, last loss {losses[-1]:.6f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
