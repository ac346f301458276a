"""The reference for data-parallel BatchNorm: torch ``DistributedDataParallel`` (gloo, CPU), started by the tests.

    python tests/distributed/ddp_reference.py CONFIG.json

Starts ``world`` processes with ``torch.multiprocessing``; each builds :func:`bn_model` (rank 0 with the
seed the optgraph artifact was compiled from, the others from another, so that DDP's broadcast at
construction matters), wraps it in DDP with its defaults (``broadcast_buffers=True``), and trains on its
``DistributedSampler`` shard: ``(loss / k).backward()`` under ``no_sync`` on the calls that do not update,
then ``clip_grad_norm_``, ``AdamW.step`` and ``zero_grad`` on every k-th. Rank 0 writes, for each
accumulation setting, the mean of the ranks' losses and its module's ``state_dict`` after every call.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler


def bn_model(seed: int = 0) -> nn.Module:
    """No bias before the BatchNorm: its gradient is zero but for rounding, which Adam would make full-size steps of."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12, bias=False), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 3))


def _train(rank: int, config: dict, steps_per_update: int) -> dict[str, np.ndarray]:
    world = config["world"]
    model = DistributedDataParallel(bn_model(0 if rank == 0 else 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"])
    data = np.load(config["data"])
    x, y = torch.from_numpy(data["input"]), torch.from_numpy(data["target"])
    sampler = DistributedSampler(range(len(x)), world, rank, shuffle=True, seed=config["seed"])
    out, call, epoch = {}, 0, 0
    losses = []
    while call < config["steps"]:
        sampler.set_epoch(epoch)
        indices = list(sampler)
        for start in range(0, len(indices), config["batch_size"]):
            part = indices[start : start + config["batch_size"]]
            loss = nn.functional.cross_entropy(model(x[part]), y[part])
            updating = (call + 1) % steps_per_update == 0
            if updating:
                (loss / steps_per_update).backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), config["clip"])
                optimizer.step()
                optimizer.zero_grad()
            else:
                with model.no_sync():
                    (loss / steps_per_update).backward()
            total = loss.detach().clone()
            dist.all_reduce(total)
            losses.append(float(total) / world)
            for name, value in model.module.state_dict().items():
                out[f"step{call}/{name}"] = value.detach().numpy().copy()
            call += 1
            if call == config["steps"]:
                break
        epoch += 1
    out["losses"] = np.array(losses)
    return out


def _rank(rank: int, config: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{config['store']}", rank=rank, world_size=config["world"])
    try:
        for k in config["accumulation"]:
            result = _train(rank, config, k)
            if rank == 0:
                np.savez(f"{config['out']}/ddp_k{k}.npz", **result)
    finally:
        dist.destroy_process_group()


def main(config_path: str) -> None:
    config = json.loads(open(config_path).read())
    mp.start_processes(_rank, args=(config,), nprocs=config["world"], start_method="fork")


if __name__ == "__main__":
    main(sys.argv[1])
