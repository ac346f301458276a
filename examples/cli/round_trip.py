"""compile, inspect, train, resume and export, driven only through the command line.

Each step is the `optgraph` command that examples/cli/round_trip.sh runs (here as
`python -m optgraph`); the script only writes the data, runs the commands, and checks
the exported model with onnxruntime at the end.

    python examples/cli/round_trip.py [--quick] [--work DIR]
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def points(samples: int, seed: int) -> dict:
    """Three classes of 2-D points around three centres; arrays named as the artifact's inputs and targets."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 3, samples)
    centres = np.array([[0.0, 1.0], [-0.9, -0.5], [0.9, -0.5]])
    x = centres[label] + rng.normal(0, 0.35, (samples, 2))
    return {"input": x.astype(np.float32), "target": label.astype(np.int64)}


def optgraph(*args, show: int | None = None) -> str:
    """Run ``optgraph ARGS`` and print its output (its first ``show`` lines); exit if it fails."""
    command = [sys.executable, "-m", "optgraph", *map(str, args)]
    run = subprocess.run(command, capture_output=True, text=True)
    if show != 0:
        print("$ optgraph " + " ".join(map(str, args)))
        print("\n".join(run.stdout.splitlines()[:show]), flush=True)
    if run.returncode != 0:
        sys.exit(f"optgraph {args[0]} failed ({run.returncode}): {run.stderr.strip()}")
    return run.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer epochs (what the tests run)")
    parser.add_argument("--work", help="folder for the files (default: a temporary one)")
    parser.add_argument("--data-only", action="store_true", help="only write train.npz and val.npz")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="optgraph-cli-"))
    work.mkdir(parents=True, exist_ok=True)
    np.savez(work / "train.npz", **points(1200, seed=0))
    np.savez(work / "val.npz", **points(300, seed=1))
    if args.data_only:
        return
    epochs = 4 if args.quick else 12

    optgraph("compile", HERE / "config.toml", "-o", work / "artifact")
    optgraph("inspect", work / "artifact", show=12)
    report = json.loads(optgraph("inspect", work / "artifact", "--json", show=0))
    print(f"(inspect --json: {report['parameters']['trainable_elements']} trainable parameters, "
          f"onnxruntime >= {report['min_onnxruntime']})")  # fmt: skip
    data = ["--data", work / "train.npz", "--val", work / "val.npz", "--out", work / "run"]
    optgraph("train", work / "artifact", *data, "--epochs", epochs // 2)
    optgraph("train", work / "artifact", *data, "--epochs", epochs, "--resume")
    optgraph("export", work / "run" / "checkpoint", "-o", work / "model.onnx")

    import onnxruntime as ort

    val = points(300, seed=1)
    model = ort.InferenceSession(str(work / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = model.run(None, {"input": val["input"]})[0]
    print(f"exported model, held-out accuracy: {(logits.argmax(axis=1) == val['target']).mean():.2%} ({work})")


if __name__ == "__main__":
    main()
