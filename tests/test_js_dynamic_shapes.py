"""One transformer artifact trains in onnxruntime-node at two batch sizes and two sequence lengths.

``examples/js/optgraph.mjs`` checks each batch against the manifest's
symbols as the Python session does (``checkShapes``), so a batch whose
labels are not ``batch * seq`` long is refused with the same message.
"""

from __future__ import annotations

import numpy as np
import torch
from models import TinyLM, flat_cross_entropy
from runtimes import node, node_steps

import optgraph
from optgraph import optim

VOCAB = 40
SHAPES = [(2, 5), (3, 5), (2, 9), (3, 9)]


def test_node_trains_one_lm_artifact_at_two_batch_sizes_and_lengths(tmp_path):
    node()  # skips or fails here when Node is missing
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    tokens, labels = torch.randint(0, VOCAB, (2, 4), generator=gen), torch.randint(0, VOCAB, (8,), generator=gen)
    model = TinyLM(VOCAB)
    artifact = optgraph.compile(
        model, (tokens,), (labels,), flat_cross_entropy, optimizer=optim.AdamW(lr=1e-2),
        dynamic_shapes={"tokens": {0: "batch", 1: "seq"}},
    )  # fmt: skip
    artifact.save(tmp_path / "artifact")
    batches = [
        (
            torch.randint(0, VOCAB, (b, s), generator=gen).numpy(),
            torch.randint(0, VOCAB, (b * s,), generator=gen).numpy(),
        )
        for b, s in SHAPES
    ]
    steps = [{"tokens": x, "target": y} for x, y in batches]
    bad = {"tokens": batches[1][0], "target": batches[0][1]}  # 3x5 tokens, 2*5 labels
    *steps, refused = node_steps(tmp_path, tmp_path / "artifact", [*steps, bad])

    session = optgraph.TrainingSession(tmp_path / "artifact", providers=["CPUExecutionProvider"])
    losses = [session.step(*batch) for batch in batches]
    np.testing.assert_allclose([s["loss"] for s in steps], losses, rtol=1e-5, err_msg="losses in onnxruntime-node")
    torch_opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for (x, y), loss in zip(batches, losses):
        torch_opt.zero_grad()
        theirs = flat_cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
        theirs.backward()
        torch_opt.step()
        np.testing.assert_allclose(loss, theirs.item(), rtol=1e-5, err_msg=f"loss at {x.shape} against torch")
    assert refused["error"] == (
        "target 'target' dimension 0 is 10, expected batch*seq = 15 "
        "(batch = 3 from input 'tokens' dimension 0, seq = 5 from input 'tokens' dimension 1)"
    )
