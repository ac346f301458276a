"""The ClientApp: an optgraph FlowerClient on this node's partition. Needs onnxruntime and flwr, not torch."""

from __future__ import annotations

import optgraph
from digits_federated.task import build_dir, partition
from optgraph import federated


def make_client(context) -> federated.FlowerClient:
    node, run = context.node_config, context.run_config
    x, y = partition(int(node["partition-id"]), int(node["num-partitions"]))
    session = optgraph.TrainingSession(build_dir(run) / "artifact", providers=["CPUExecutionProvider"])
    return federated.FlowerClient(
        session,
        train=(x, y),
        local_epochs=int(run.get("local-epochs", 1)),
        batch_size=int(run.get("batch-size", 32)),
        seed=int(node["partition-id"]),
    )


app = federated.client_app(make_client)
