#!/usr/bin/env bash
# Work in progress: the deployment run (a SuperLink and two SuperNodes on 127.0.0.1, driven by `flwr run`).
# Flower 1.42 serves every SuperLink API on one HTTP port (--host/--port) and reads SuperLink connections
# from $FLWR_HOME/config.toml. Run from the repository root after `python examples/federated/prepare.py`.
set -u
export PYTHONPATH="$PWD" FLWR_HOME="$(mktemp -d)" FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
printf '[superlink]\ndefault = "deploy"\n\n[superlink.deploy]\naddress = "127.0.0.1:19091"\ninsecure = true\n' \
  > "$FLWR_HOME/config.toml"
pids=()
setsid flower-superlink --insecure --host 127.0.0.1 --port 19091 & pids+=($!)
for i in 0 1; do
  setsid flower-supernode --insecure --superlink 127.0.0.1:19091 --host 127.0.0.1 --port 1909$((5 + i)) \
    --node-config "partition-id=$i num-partitions=2" & pids+=($!)
done
trap 'for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null; done' EXIT
sleep 8
flwr run examples/federated deploy --stream \
  --run-config "num-clients=2 num-server-rounds=3 build='$PWD/examples/federated/build'"
