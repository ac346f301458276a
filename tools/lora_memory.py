"""Training memory of a LoRA artifact against the base model's inference memory (peak RSS, CPU).

    python -m tools.lora_memory [--hidden 512] [--layers 4] [--vocab 8192] [--batch 4] [--seq 128] [--steps 5]

A LLaMA (grouped-query attention) with random weights is compiled twice in a first process: with
LoRA adapters (rank 8 on the attention projections, through peft) and fully trainable; the
fully trainable session's ``export_inference`` gives the base model's inference ONNX. Then each
side runs in its own fresh process, which reports its peak resident memory (``ru_maxrss``) and
its memory once loaded, above a baseline taken after importing numpy, onnxruntime and optgraph:

- ``inference``: an onnxruntime ``InferenceSession`` of the base model, forward passes on a batch;
- ``lora-train``: a ``TrainingSession`` of the LoRA artifact, ``--steps`` AdamW steps;
- ``full-train``: the same for the fully trainable artifact (every weight with gradients,
  AdamW's two moments and a spare buffer), for scale;
- ``torch-lora``: the LoRA model trained in eager torch (baseline after importing torch,
  transformers and peft), for reference.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

PHASES = ("inference", "lora-train", "full-train", "torch-lora")


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no /proc/self/status: this tool reads Linux's process status")


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def llama(args):
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=args.hidden, intermediate_size=3 * args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=8, num_key_value_heads=2, vocab_size=args.vocab,
        max_position_embeddings=max(256, args.seq), use_cache=False,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config).train()


def with_lora(model):
    import peft

    config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                             task_type="CAUSAL_LM")  # fmt: skip
    return peft.get_peft_model(model, config)


def loss(outputs, labels):
    import torch

    return torch.nn.functional.cross_entropy(outputs.logits.flatten(0, 1), labels.flatten())


def build(args, out: Path) -> dict:
    """Compile both artifacts and export the base model's inference ONNX; returns sizes in MiB."""
    import torch

    import optgraph
    from optgraph import optim
    from optgraph.artifact.names import target_names

    ids = torch.randint(0, args.vocab, (2, 16))
    seq = {0: "batch", 1: "seq"}
    (target,) = target_names(1)
    shapes = {"input_ids": seq, target: seq}
    lora = with_lora(llama(args))
    adapters = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    optgraph.compile(lora, (ids,), (ids,), loss, optimizer=optim.AdamW(), dynamic_shapes=shapes).save(out / "lora")
    base = llama(args)
    weights = sum(p.numel() for p in base.parameters())
    optgraph.compile(base, (ids,), (ids,), loss, optimizer=optim.AdamW(), dynamic_shapes=shapes).save(out / "full")
    session = optgraph.TrainingSession(out / "full", providers=["CPUExecutionProvider"])
    session.export_inference(out / "inference.onnx")
    return {"base weights MiB": weights * 4 / 2**20, "adapter weights MiB": adapters * 4 / 2**20}


def torch_lora(args) -> dict:
    import numpy as np
    import peft  # noqa: F401 - imported before the baseline
    import torch

    baseline = rss_mib()
    model = with_lora(llama(args))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    loaded = rss_mib()
    rng = np.random.default_rng(0)
    for _ in range(args.steps):
        ids, labels = (torch.from_numpy(rng.integers(0, args.vocab, (args.batch, args.seq))) for _ in range(2))
        optimizer.zero_grad()
        loss(model(ids), labels).backward()
        optimizer.step()
    return {"loaded MiB": loaded - baseline, "peak MiB": peak_mib() - baseline, "baseline MiB": baseline}


def run_phase(phase: str, args, out: Path) -> dict:
    """One side, in this process: memory once loaded and at peak, above the baseline after imports."""
    if phase == "torch-lora":
        return torch_lora(args)
    import numpy as np
    import onnxruntime as ort

    import optgraph  # both sides pay for the same imports before the baseline

    baseline = rss_mib()
    rng = np.random.default_rng(0)
    ids = rng.integers(0, args.vocab, (args.batch, args.seq))
    if phase == "inference":
        session = ort.InferenceSession(str(out / "inference.onnx"), providers=["CPUExecutionProvider"])
        loaded = rss_mib()
        for _ in range(args.steps):
            session.run(None, {"input_ids": ids})
    else:
        session = optgraph.TrainingSession(out / phase.split("-")[0], providers=["CPUExecutionProvider"])
        loaded = rss_mib()
        for _ in range(args.steps):
            session.step(ids, rng.integers(0, args.vocab, (args.batch, args.seq)))
    return {"loaded MiB": loaded - baseline, "peak MiB": peak_mib() - baseline, "baseline MiB": baseline}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--phase", choices=("build", *PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        result = build(args, Path(args.dir)) if args.phase == "build" else run_phase(args.phase, args, Path(args.dir))
        print(json.dumps(result))
        return 0

    flags = [f"--{k}={getattr(args, k)}" for k in ("hidden", "layers", "vocab", "batch", "seq", "steps")]
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for phase in ("build", *PHASES):  # each in a fresh process
            done = subprocess.run(
                [sys.executable, __file__, *flags, f"--phase={phase}", f"--dir={tmp}"],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            results[phase] = json.loads(done.stdout.strip().splitlines()[-1])
    sizes = results.pop("build")
    print(f"LLaMA hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}; batch {args.batch} x {args.seq}")
    print(", ".join(f"{k} {v:.1f}" for k, v in sizes.items()))
    print(f"| {'process':12} | loaded MiB | peak MiB | (above a baseline of) |")
    print(f"| {'-' * 12} | ---------- | -------- | --------------------- |")
    for phase, r in results.items():
        print(f"| {phase:12} | {r['loaded MiB']:10.1f} | {r['peak MiB']:8.1f} | {r['baseline MiB']:17.1f} MiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
