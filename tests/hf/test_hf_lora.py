"""LoRA through ``peft`` on the zoo's LLaMA: only the adapters train, and the frozen base costs no more than itself.

One compile (dynamic batch and sequence length), then:
- the artifact: the adapters are its only trainable parameters; no optimizer
  state, no ``.next`` output (so no second buffer in a session) and no
  gradient computation for a frozen weight;
- training: 4 AdamW steps at two batch sizes and two lengths against the
  same peft model in eager torch: the loss and the adapters match after
  every step, and every frozen weight is bit for bit what it was.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import torch
from hf_zoo import logits_ce, lora_llama, token_ids
from models import assert_close

import optgraph
from optgraph import optim

LR, WEIGHT_DECAY, EPS = 1e-3, 1e-2, 1e-6
STEPS = [(3, 12), (5, 7), (3, 7), (5, 12)]  # (batch, sequence length)
SEQ = {0: "batch", 1: "seq"}


def _data_dependent_shapes(model: onnx.ModelProto, data_inputs: set[str]) -> list[tuple[str, str, tuple]]:
    """(node, op, static shape) of every value computed from the batch, with shape inference's shapes."""
    graph = onnx.shape_inference.infer_shapes(model).graph
    shapes = {}
    for info in [*graph.value_info, *graph.output]:
        dims = info.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[info.name] = tuple(d.dim_value for d in dims)
    tainted, found = set(data_inputs), []
    for node in graph.node:  # topological order
        if any(name in tainted for name in node.input):
            tainted.update(node.output)
            found.extend((node.name, node.op_type, shapes[out]) for out in node.output if out in shapes)
    return found


def test_lora_trains_only_the_adapters_and_keeps_the_base_once():
    torch.manual_seed(0)
    model = lora_llama().train()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    gen = torch.Generator().manual_seed(1)
    artifact = optgraph.compile(
        model,
        (token_ids(4, 10, gen),),
        (token_ids(4, 10, gen),),
        logits_ce,
        optimizer=optim.AdamW(lr=LR, eps=EPS, weight_decay=WEIGHT_DECAY),
        dynamic_shapes={"input_ids": SEQ, "target": SEQ},
    )

    # The artifact: adapters train; the base is an input of the graph and nothing more.
    spec = artifact.manifest.graphs["train_step"]
    params = {t.name: t for t in spec.inputs if t.role == "param"}
    assert sorted(n for n, t in params.items() if t.meta["trainable"]) == sorted(trainable)
    assert sorted(n for n, t in params.items() if not t.meta["trainable"]) == sorted(frozen)
    fed = {t.feeds for t in spec.outputs if t.feeds is not None}
    assert fed.isdisjoint(frozen), "a frozen weight is written by the step (a session would double-buffer it)"
    # optimizer state of every adapter (the small ones share packs) and of nothing else
    slots = [t for t in spec.inputs if t.role == "optim_state"]
    assert {p for t in slots for p in t.meta.get("packed", [t.meta.get("param")])} == set(trainable)
    graph = onnx.load_from_string(artifact.graphs["train_step"])
    computed = _data_dependent_shapes(graph, {"input_ids", "target"})
    for name, weight in frozen.items():
        if weight.dim() >= 2:  # a gradient of the weight would be a value of its shape computed from the batch
            shapes = {tuple(weight.shape), tuple(reversed(weight.shape))}
            assert not [c for c in computed if c[2] in shapes], f"the step computes a gradient of {name}"

    # Training: as peft in eager torch, at two batch sizes and two lengths.
    session = optgraph.TrainingSession(artifact, providers=["CPUExecutionProvider"])
    reference = copy.deepcopy(model)
    torch_opt = torch.optim.AdamW(
        [p for p in reference.parameters() if p.requires_grad], lr=LR, eps=EPS, weight_decay=WEIGHT_DECAY
    )
    named = dict(reference.named_parameters())
    gen = torch.Generator().manual_seed(2)
    for step, (batch, seq) in enumerate(STEPS):
        ids, labels = token_ids(batch, seq, gen), token_ids(batch, seq, gen)
        when = f"step {step} (batch {batch}, length {seq})"
        ours = session.step(ids, labels)
        torch_opt.zero_grad()
        theirs = logits_ce(reference(ids), labels)
        theirs.backward()
        torch_opt.step()
        assert_close(ours, theirs, f"loss at {when}")
        state = session.state_dict()
        for name in trainable:
            assert_close(state[name], named[name], f"{name} after {when}")
    for name, before in frozen.items():
        np.testing.assert_array_equal(state[name], before.numpy(), err_msg=f"frozen {name} changed")
    assert sorted(session.optimizer_state_dict()) == sorted(trainable)
