"""One command: compile the artifact if needed, then run the federation in Flower's simulation engine.

    python examples/federated/simulate.py [--clients 3] [--rounds 10] [--build DIR]

Each of the clients holds the training digits of its own labels (non-IID); after every round the server
evaluates the averaged model on the held-out digits and writes build/history.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from digits_federated.task import DEFAULT_BUILD  # noqa: E402


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--build", type=Path, default=DEFAULT_BUILD)
    args = parser.parse_args(argv)
    build = args.build.resolve()
    if not (build / "artifact" / "manifest.json").exists():
        from prepare import prepare

        prepare(build)
    # the apps read these through their Context; the simulation has no pyproject run config
    os.environ["OPTGRAPH_FEDERATED_BUILD"] = str(build)
    from digits_federated import server_app
    from flwr.simulation import run_simulation

    def server_fn(context):
        context.run_config.update({"num-server-rounds": args.rounds, "num-clients": args.clients})
        return server_app.server_fn(context)

    from digits_federated.client_app import app as client_app
    from flwr.server import ServerApp

    # Ray's workers inherit this environment: they import the apps from this directory
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)
    backend = {"client_resources": {"num_cpus": 1}}
    run_simulation(ServerApp(server_fn=server_fn), client_app, num_supernodes=args.clients, backend_config=backend)
    history = json.loads((build / "history.json").read_text())
    accuracy = history[-1]["accuracy"]
    print(f"held-out accuracy after {len(history) - 1} rounds: {accuracy:.2%}")
    return accuracy


if __name__ == "__main__":
    main()
