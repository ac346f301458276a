#!/usr/bin/env bash
# compile, inspect, train (stopped and resumed) and export, from the shell alone.
#   bash examples/cli/round_trip.sh [WORKDIR]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="${1:-optgraph-cli-example}"
mkdir -p "$work"
python "$here/round_trip.py" --data-only --work "$work"        # writes train.npz and val.npz (numpy only)
optgraph compile "$here/config.toml" -o "$work/artifact"
optgraph inspect "$work/artifact"
optgraph train "$work/artifact" --data "$work/train.npz" --val "$work/val.npz" --epochs 2 --out "$work/run"
optgraph train "$work/artifact" --data "$work/train.npz" --val "$work/val.npz" --epochs 4 --out "$work/run" --resume
optgraph export "$work/run/checkpoint" -o "$work/model.onnx"
