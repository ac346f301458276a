"""Capture every model of the test zoo and print capture time and ONNX node counts.

python tools/capture_report.py [NAME ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "capture"))

from zoo import LOSSES, MODELS  # noqa: E402

from optgraph.capture import capture  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="zoo entries (default: every model)")
    args = parser.parse_args()
    cases = {**MODELS, **{f"loss-{k}": v for k, v in LOSSES.items()}}
    names = args.names or list(MODELS)
    print(f"| {'model':40} | capture s | train nodes | eval nodes |")
    print(f"| {'-' * 40} | --------- | ----------- | ---------- |")
    for name in names:
        case = cases[name]
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)
        model = case.make()
        start = time.perf_counter()
        captured = capture(model, case.inputs(4, gen), case.targets(4, gen), case.loss)
        seconds = time.perf_counter() - start
        train_nodes = sum(1 for _ in captured.train.graph.all_nodes())
        eval_nodes = sum(1 for _ in captured.eval.graph.all_nodes())
        print(f"| {name:40} | {seconds:9.1f} | {train_nodes:11d} | {eval_nodes:10d} |", flush=True)


if __name__ == "__main__":
    main()
