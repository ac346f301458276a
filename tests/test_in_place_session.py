"""State written in place (where the compiler proved it safe) trains bit-identically and holds one copy of the state."""

from __future__ import annotations

import dataclasses
import tracemalloc

import numpy as np
import pytest
import torch
from catalog import OPTIMIZERS
from safetensors.numpy import load_file
from torch import nn

import optgraph
from optgraph import lr_scheduler, optim
from optgraph.artifact import Artifact, GraphSpec, Manifest
from optgraph.artifact.names import CHECKPOINT_FILE, IN_PLACE_KEY, MANIFEST_FILE, STEP_COUNTER, GraphName, Role
from optgraph.errors import ArtifactError, NonFiniteError

CPU = ["CPUExecutionProvider"]


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def _compile(**options) -> Artifact:
    x, y = torch.randn(8, 6), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    return optgraph.compile(_model(), (x,), (y,), nn.CrossEntropyLoss(), **options)


def _double_buffered(artifact: Artifact) -> Artifact:
    """The same artifact with every in-place mark removed: each state output gets its own buffer."""
    graphs = {}
    for name, spec in artifact.manifest.graphs.items():
        outputs = [
            dataclasses.replace(t, meta={k: v for k, v in t.meta.items() if k != IN_PLACE_KEY}) for t in spec.outputs
        ]
        graphs[name] = GraphSpec(spec.file, spec.inputs, outputs)
    return Artifact(Manifest(graphs, artifact.manifest.extra), artifact.graphs, artifact.state)


def _in_place(artifact: Artifact, graph: str) -> set[str]:
    return {t.feeds for t in artifact.manifest.graphs[graph].outputs if t.meta.get(IN_PLACE_KEY)}


def _train(artifact: Artifact, folder, steps: int = 12):
    session = optgraph.TrainingSession(artifact, providers=CPU)
    takes_metric = any(not t.is_state for t in session.manifest.graphs[GraphName.SCHEDULER_STEP].inputs)
    rng = np.random.default_rng(1)
    losses = []
    for i in range(steps):
        x, y = rng.standard_normal((8, 6), dtype=np.float32), rng.integers(0, 3, 8)
        if i == 4:
            x[2, 3] = np.nan  # a skipped step: the guard's else branch writes the state onto itself
        try:
            losses.append(session.step(x, y))
        except NonFiniteError:
            losses.append(None)
        if i % 3 == 2:
            session.scheduler_step(*([1.0 / (i + 1)] if takes_metric else []))
    session.save(folder)  # every state tensor, as the checkpoint holds it
    return losses, load_file(str(folder / CHECKPOINT_FILE))


CASES = [(name, {}) for name in OPTIMIZERS] + [
    ("SGD", {"grad_accumulation_steps": 3, "clip_grad_norm": 0.5}),
    ("AdamW", {"lr_scheduler": lr_scheduler.ReduceLROnPlateau(patience=0)}),
    ("Adam", {"lr_scheduler": lr_scheduler.OneCycleLR(max_lr=0.1, total_steps=20)}),
]


@pytest.mark.parametrize("name,options", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_in_place_state_trains_bit_identically(name, options, tmp_path):
    artifact = _compile(optimizer=getattr(optim, name)(), **options)
    marked = _in_place(artifact, GraphName.TRAIN_STEP)
    params = [t.name for t in artifact.manifest.graphs[GraphName.TRAIN_STEP].inputs if t.role == Role.PARAM]
    assert set(params) <= marked, "every parameter update is proved safe in place"
    assert STEP_COUNTER not in marked  # read again after its increment is computed: kept double-buffered
    ours, reference = _train(artifact, tmp_path / "ours"), _train(_double_buffered(artifact), tmp_path / "reference")
    assert ours[0] == reference[0]
    assert set(ours[1]) == set(reference[1])
    for key, value in reference[1].items():
        np.testing.assert_array_equal(ours[1][key], value, err_msg=key)


def test_in_place_outputs_hold_no_second_copy_of_the_state():
    artifact = _compile(optimizer=optim.Adam())
    state_bytes = sum(a.nbytes for n, a in artifact.state.items() if n in _in_place(artifact, "train_step"))

    def opened(a: Artifact) -> int:
        tracemalloc.start()
        try:
            session = optgraph.TrainingSession(a, providers=CPU)
            size = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        del session
        return size

    saved = opened(_double_buffered(artifact)) - opened(artifact)
    assert saved >= state_bytes * 0.9, (saved, state_bytes)


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_a_malformed_in_place_mark_is_refused_at_load(tmp_path, value):
    import json

    _compile(optimizer=optim.SGD()).save(tmp_path / "a")
    manifest = json.loads((tmp_path / "a" / MANIFEST_FILE).read_text())
    outputs = manifest["graphs"]["train_step"]["outputs"]
    if value is None:  # on an output that feeds no state
        next(t for t in outputs if "feeds" not in t)[IN_PLACE_KEY] = True
    else:
        next(t for t in outputs if "feeds" in t)[IN_PLACE_KEY] = value
    (tmp_path / "a" / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=IN_PLACE_KEY):
        Artifact.load(tmp_path / "a")
