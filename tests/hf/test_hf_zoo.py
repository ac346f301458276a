"""The Hugging Face zoo trains as eager torch does.

Each model is compiled once and trained with AdamW against a copy in eager
torch: the loss and every parameter and buffer after every step, at two
batch sizes, and for the text models at two sequence lengths too (their
inputs' dim 1 is named dynamic). Then the eval graph gives the model's
outputs in eval mode.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hf_zoo import MODELS, HFCase
from models import assert_close, assert_state_matches
from torch.utils import _pytree as pytree

import optgraph
from optgraph import optim

WEIGHT_DECAY = 1e-2
# (batch, sequence length) of each step; one compile, at batch 4 and the case's example length
TEXT_STEPS = [(3, 12), (5, 7), (3, 7), (5, 12)]
IMAGE_STEPS = [(3, None), (5, None), (3, None)]


def _compile(case: HFCase, model):
    gen = torch.Generator().manual_seed(1)
    return optgraph.compile(
        model,
        case.inputs(4, case.seq, gen),
        case.targets(4, case.seq, gen),
        case.loss,
        optimizer=optim.AdamW(lr=case.lr, eps=case.eps, weight_decay=WEIGHT_DECAY),
        dynamic_shapes=case.seq_dims,
    )


def _input_shapes(artifact, graph: str = "train_step") -> dict[str, list]:
    spec = artifact.manifest.graphs[graph]
    return {t.name: list(t.shape) for t in spec.inputs if t.role in ("input", "target")}


@pytest.mark.parametrize("name", list(MODELS), ids=list(MODELS))
def test_hf_model_trains_as_torch(name):
    case = MODELS[name]
    torch.manual_seed(0)
    model = case.make().train()
    artifact = _compile(case, model)
    if case.seq_dims:
        shapes = _input_shapes(artifact)
        for input_name, dims in case.seq_dims.items():
            assert [shapes[input_name][d] for d in dims] == list(dims.values()), shapes
    session = optgraph.TrainingSession(artifact, providers=["CPUExecutionProvider"])

    reference = copy.deepcopy(model)
    torch_opt = torch.optim.AdamW(reference.parameters(), lr=case.lr, eps=case.eps, weight_decay=WEIGHT_DECAY)
    gen = torch.Generator().manual_seed(2)
    for step, (batch, seq) in enumerate(TEXT_STEPS if case.seq else IMAGE_STEPS):
        inputs, targets = case.inputs(batch, seq, gen), case.targets(batch, seq, gen)
        when = f"step {step} (batch {batch}" + (f", length {seq})" if seq else ")")
        ours = session.step(*inputs, *targets)
        torch_opt.zero_grad()
        theirs = case.loss(reference(*inputs), *targets)
        theirs.backward()
        torch_opt.step()
        assert_close(ours, theirs, f"loss at {when}")
        assert_state_matches(session, reference, f"after {when}")

    reference.eval()
    with torch.no_grad():
        expected = [t for t in pytree.tree_leaves(reference(*inputs)) if isinstance(t, torch.Tensor)]
    got = session.eval(*inputs)
    got = list(got) if isinstance(got, tuple) else [got]
    assert len(got) == len(expected)
    for i, (ours, theirs) in enumerate(zip(got, expected)):
        assert_close(ours, theirs, f"eval output {i}")
