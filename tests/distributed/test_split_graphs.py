"""The train step split at the gradients, in this process: on one rank it trains exactly as the fused step."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from models import make_batch, make_model
from torch import nn

import optgraph
from optgraph import NonFiniteError, distributed, lr_scheduler, optim
from optgraph.artifact import Artifact
from optgraph.artifact.names import GraphName, Role
from optgraph.errors import ArtifactError

MPI = pytest.importorskip("mpi4py.MPI", reason="mpi4py is not installed: pip install 'optgraph[mpi]'")
CPU = ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def cnn_artifact():
    """BatchNorm, clipping, accumulation over 3 calls, a schedule: every part of the split."""
    model = make_model("cnn")
    x, y = make_batch("cnn", 4, torch.Generator().manual_seed(0))
    return optgraph.compile(
        model, (x,), (y,), nn.CrossEntropyLoss(),
        optimizer=optim.AdamW(lr=0.01), lr_scheduler=lr_scheduler.StepLR(step_size=1, gamma=0.5),
        clip_grad_norm=0.5, grad_accumulation_steps=3,
    )  # fmt: skip


def test_one_rank_trains_bit_for_bit_as_the_fused_train_step(cnn_artifact):
    fused = optgraph.TrainingSession(cnn_artifact, providers=CPU)
    split = distributed.DataParallelSession(cnn_artifact, comm=MPI.COMM_SELF, providers=CPU)
    assert (split.rank, split.world_size) == (0, 1)
    generator = torch.Generator().manual_seed(1)
    for call in range(8):
        x, y = (t.numpy() for t in make_batch("cnn", 4 + call % 2, generator))
        if call == 4:
            x = np.full_like(x, np.nan)
            with pytest.raises(NonFiniteError):
                fused.step(x, y)
            with pytest.raises(NonFiniteError, match="on 1 of 1 ranks"):
                split.step(x, y)
            continue
        assert split.step(x, y) == fused.step(x, y), f"call {call}"
        if call % 3 == 2:
            fused.scheduler_step()
            split.scheduler_step()
    assert split.lr == fused.lr
    for name, value in fused.state_dict().items():
        assert split.state_dict()[name].tobytes() == value.tobytes(), name
    for param, slots in fused.optimizer_state_dict().items():
        for slot, value in slots.items():
            assert split.optimizer_state_dict()[param][slot].tobytes() == value.tobytes(), (param, slot)
    for name, info in fused.state_info().items():
        assert split.state_info()[name] == info


def test_a_data_parallel_checkpoint_is_a_complete_artifact(cnn_artifact, tmp_path):
    split = distributed.DataParallelSession(cnn_artifact, comm=MPI.COMM_SELF, providers=CPU)
    x, y = (t.numpy() for t in make_batch("cnn", 4, torch.Generator().manual_seed(2)))
    split.step(x, y)
    saved = split.save(tmp_path / "ckpt")
    loaded = Artifact.load(saved)
    assert set(loaded.graphs) == {*cnn_artifact.graphs} and len(loaded.graphs) == 5
    resumed = optgraph.TrainingSession(saved, providers=CPU)
    for name, value in split.state_dict().items():
        assert resumed.state_dict()[name].tobytes() == value.tobytes()
    assert split.step(x, y) == resumed.step(x, y)


def test_an_artifact_without_the_split_graphs_trains_alone_and_says_why_not_in_parallel(tmp_path):
    model = make_model("mlp")
    x, y = make_batch("mlp", 4, torch.Generator().manual_seed(0))
    folder = optgraph.compile(model, (x,), (y,), nn.CrossEntropyLoss()).save(tmp_path / "old")
    manifest = json.loads((folder / "manifest.json").read_text())
    for name in (GraphName.GRAD_STEP, GraphName.UPDATE_STEP):  # as optgraph wrote artifacts before
        (folder / manifest["graphs"].pop(name)["file"]).unlink()
        manifest["sha256"].pop(f"{name}.onnx")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    session = optgraph.TrainingSession(folder, providers=CPU)
    session.step(x.numpy(), y.numpy())
    assert len(Artifact.load(session.save(tmp_path / "saved")).graphs) == 3
    with pytest.raises(ArtifactError, match="no grad_step graph .* compile it again, or train it with TrainingSession"):
        distributed.DataParallelSession(folder, comm=MPI.COMM_SELF, providers=CPU)


def test_the_device_scale_multiplies_a_buffer_in_place():
    """The 1/N of CUDA-aware MPI (gradients reduced where they are): a one-node graph, run here on CPU memory."""
    bucket = distributed._Bucket(np.dtype(np.float32), ["g"], [(5,)], [0], 5)
    host = np.arange(5, dtype=np.float32)
    bucket.value = distributed.ort.OrtValue.ortvalue_from_numpy(host, "cpu", 0)
    distributed._Scale(bucket.dtype, CPU, None)(bucket, 0.25, ("cpu", 0))
    assert host.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_a_plain_process_gets_a_plain_session(cnn_artifact, monkeypatch):
    for variable in distributed._LAUNCHER_SIZES:
        monkeypatch.delenv(variable, raising=False)
    assert distributed.launched_ranks() == 1
    session = distributed.training_session(cnn_artifact, providers=CPU, bucket_cap_mb=1)
    assert type(session) is optgraph.TrainingSession
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert distributed.launched_ranks() == 4


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"gradient_transfer": "rdma"}, r"gradient_transfer must be one of \('auto', 'direct', 'staged'\)"),
        ({"bucket_cap_mb": 0}, "bucket_cap_mb must be positive"),
    ],
    ids=["transfer", "bucket"],
)
def test_bad_options_are_refused(cnn_artifact, kwargs, message):
    with pytest.raises(ValueError, match=message):
        distributed.DataParallelSession(cnn_artifact, comm=MPI.COMM_SELF, providers=CPU, **kwargs)


def test_buckets_hold_the_gradients_end_to_end_up_to_the_cap(cnn_artifact):
    session = distributed.DataParallelSession(cnn_artifact, comm=MPI.COMM_SELF, providers=CPU, bucket_cap_mb=1e-3)
    buckets = session._gradients.buckets
    grads = [t for t in cnn_artifact.manifest.graphs[GraphName.GRAD_STEP].outputs if t.role == Role.GRAD]
    assert [n for b in buckets for n in b.names] == [t.name for t in grads]
    assert all(b.nbytes <= 1024 or len(b.names) == 1 for b in buckets) and len(buckets) > 1
    for b in buckets:
        assert b.offsets == list(np.cumsum([0] + [int(np.prod(s)) for s in b.shapes])[:-1])
