"""Capture the models of the test zoos and print capture time and ONNX node counts.

python -m tools.capture_report [NAME ...] [--hf | --all]     # from the repository root

With no name: every model of the capture zoo (tests/capture/zoo.py); ``--hf``: every model of the
Hugging Face zoo (tests/hf/hf_zoo.py, needs ``transformers`` and ``peft``), named ``hf-<model>``
and captured as the tests compile them (text models with a dynamic sequence length);
``--all``: both.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from optgraph.artifact.names import target_names
from optgraph.capture import capture
from tests.capture.zoo import LOSSES, MODELS


def _zoo_cases() -> dict[str, Callable]:
    """name -> a function that builds the model and returns the capture to time (capture zoo: models, losses)."""

    def run(case):
        return lambda: _capture(case.make(), case.inputs, case.targets, case.loss, None)

    return {**{k: run(v) for k, v in MODELS.items()}, **{f"loss-{k}": run(v) for k, v in LOSSES.items()}}


def _hf_cases() -> dict[str, Callable]:
    """The Hugging Face zoo, and LoRA on its LLaMA, captured as tests/hf compiles them."""
    from tests.hf.hf_zoo import MODELS as HF_MODELS
    from tests.hf.hf_zoo import logits_ce, lora_llama, token_ids

    def run(case):
        inputs = lambda b, g: case.inputs(b, case.seq, g)  # noqa: E731
        targets = lambda b, g: case.targets(b, case.seq, g)  # noqa: E731
        return lambda: _capture(case.make(), inputs, targets, case.loss, case.seq_dims)

    cases = {f"hf-{k}": run(v) for k, v in HF_MODELS.items()}
    seq = {0: "batch", 1: "seq"}
    (target,) = target_names(1)
    cases["hf-llama-lora"] = lambda: _capture(
        lora_llama(), lambda b, g: (token_ids(b, 12, g),), lambda b, g: (token_ids(b, 12, g),), logits_ce,
        {"input_ids": seq, target: seq},
    )  # fmt: skip
    return cases


def _capture(model, inputs, targets, loss, dynamic_shapes) -> Callable:
    gen = torch.Generator().manual_seed(0)
    example = inputs(4, gen), targets(4, gen)
    return lambda: capture(model, *example, loss, dynamic_shapes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="entries (default: every model of the capture zoo)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--hf", action="store_true", help="every model of the Hugging Face zoo")
    group.add_argument("--all", action="store_true", help="both zoos")
    args = parser.parse_args()
    cases = _zoo_cases()
    wants_hf = args.hf or args.all or any(n.startswith("hf-") for n in args.names)
    hf = _hf_cases() if wants_hf else {}
    cases |= hf
    if args.names:
        names = args.names
    else:
        names = ([] if args.hf else list(MODELS)) + (list(hf) if args.hf or args.all else [])
    unknown = [n for n in names if n not in cases]
    if unknown:
        parser.error(f"unknown entries {unknown}; expected some of {sorted(cases)}")
    print(f"| {'model':40} | capture s | train nodes | eval nodes |")
    print(f"| {'-' * 40} | --------- | ----------- | ---------- |")
    for name in names:
        torch.manual_seed(0)
        run = cases[name]()
        start = time.perf_counter()
        captured = run()
        seconds = time.perf_counter() - start
        train_nodes = sum(1 for _ in captured.train.graph.all_nodes())
        eval_nodes = sum(1 for _ in captured.eval.graph.all_nodes())
        print(f"| {name:40} | {seconds:9.1f} | {train_nodes:11d} | {eval_nodes:10d} |", flush=True)


if __name__ == "__main__":
    main()
