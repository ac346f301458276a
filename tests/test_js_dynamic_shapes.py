"""One transformer artifact trains in onnxruntime-node at two batch sizes and two sequence lengths.

``examples/js/optgraph.mjs`` checks each batch against the manifest's
symbols as the Python session does (``checkShapes``), so a batch whose
labels are not ``batch * seq`` long is refused with the same message.
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import torch
from models import TinyLM, flat_cross_entropy
from runtimes import EXAMPLES, node
from safetensors.numpy import save_file

import optgraph
from optgraph import optim

VOCAB = 40
SHAPES = [(2, 5), (3, 5), (2, 9), (3, 9)]

SCRIPT = """
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { join } from "node:path";
const [packageJson, library, dir, dataFile] = process.argv.slice(2);
const ort = createRequire(packageJson)("onnxruntime-node");
const { TrainingSession, readSafetensors } = await import(library);
const manifest = JSON.parse(readFileSync(join(dir, "manifest.json"), "utf8"));
const graphs = Object.fromEntries(Object.entries(manifest.graphs).map(([n, s]) => [n, readFileSync(join(dir, s.file))]));
const checkpoint = readFileSync(join(dir, "checkpoint.safetensors"));
const session = await TrainingSession.create(ort, { manifest, graphs, checkpoint }, { intraOpNumThreads: 1 });
const data = readSafetensors(readFileSync(dataFile));
const tensor = (t) => new ort.Tensor(t.type, t.data, t.dims);
for (let k = 0; `tokens.${k}` in data; k++) {
  const loss = await session.step({ tokens: tensor(data[`tokens.${k}`]), target: tensor(data[`target.${k}`]) });
  console.log(JSON.stringify({ loss }));
}
try {
  await session.step({ tokens: tensor(data["tokens.1"]), target: tensor(data["target.0"]) });
} catch (error) {
  console.log(JSON.stringify({ error: error.message }));
}
"""


def test_node_trains_one_lm_artifact_at_two_batch_sizes_and_lengths(tmp_path):
    binary = node()
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
    data = {f"{name}.{k}": array for k, batch in enumerate(batches) for name, array in zip(("tokens", "target"), batch)}
    save_file(data, str(tmp_path / "data.safetensors"))
    (tmp_path / "run.mjs").write_text(SCRIPT)
    command = [
        binary, "run.mjs", str(EXAMPLES / "node/package.json"), (EXAMPLES / "js/optgraph.mjs").as_uri(),
        "artifact", "data.safetensors",
    ]  # fmt: skip
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    *steps, refused = [json.loads(line) for line in run.stdout.splitlines()]

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
