"""The ServerApp: Flower's own strategy; the global model is evaluated on the held-out digits after each round."""

from __future__ import annotations

import json

import numpy as np
from flwr.common import ndarrays_to_parameters
from flwr.server import ServerApp, ServerAppComponents, ServerConfig
from flwr.server.strategy import FedAdam, FedAvg, FedProx

import optgraph
from digits_federated.task import build_dir, digits
from optgraph import federated
from optgraph.artifact.names import PROXIMAL_MU_KEY


def server_fn(context) -> ServerAppComponents:
    run = context.run_config
    build = build_dir(run)
    clients = int(run.get("num-clients", 3))
    # a session on the held-out images: the same client class evaluates the global model
    _, x_test, _, y_test = digits()
    session = optgraph.TrainingSession(build / "artifact", providers=["CPUExecutionProvider"])
    judge = federated.FlowerClient(session, train=(x_test, y_test), batch_size=256)
    initial = judge.get_parameters({})
    history = []

    def evaluate(server_round, parameters, config):
        loss, _, metrics = judge.evaluate(parameters, {})
        history.append({"round": server_round, **metrics})
        print(f"round {server_round}: held-out accuracy {metrics['accuracy']:.2%}, cross-entropy {loss:.4f}")
        (build / "history.json").write_text(json.dumps(history, indent=1))
        return loss, metrics

    options = dict(
        fraction_fit=1.0,
        fraction_evaluate=0.0,  # the server evaluates on held-out data; clients hold only their own digits
        min_fit_clients=clients,
        min_available_clients=clients,
        initial_parameters=ndarrays_to_parameters(initial),
        evaluate_fn=evaluate,
        on_fit_config_fn=lambda server_round: {"local_epochs": int(run.get("local-epochs", 1))},
        fit_metrics_aggregation_fn=lambda results: {
            "train_loss": float(np.average([m["train_loss"] for _, m in results], weights=[n for n, _ in results]))
        },
    )
    name = str(run.get("strategy", "fedavg"))
    if name == "fedprox":
        strategy = FedProx(proximal_mu=float(session.manifest.extra.get(PROXIMAL_MU_KEY) or 0.0), **options)
    elif name == "fedadam":
        strategy = FedAdam(eta=0.01, **options)
    else:
        strategy = FedAvg(**options)
    return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=int(run.get("num-server-rounds", 10))))


app = ServerApp(server_fn=server_fn)
