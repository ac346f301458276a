"""The CUDA execution provider path: runs only where onnxruntime-gpu finds a GPU, skips cleanly elsewhere."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from models import make_batch, make_model
from torch import nn

import optgraph
from optgraph import lr_scheduler, optim
from optgraph.session import CPU, CUDA, default_providers


def test_default_providers_fall_back_to_cpu_when_cuda_is_listed_but_unusable(monkeypatch):
    # onnxruntime-gpu on a machine without a GPU lists CUDA all the same
    default_providers.cache_clear()
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    try:
        if CUDA in ort.capi._pybind_state.get_available_providers():
            pytest.skip("this onnxruntime really has CUDA")
        assert default_providers() == [CPU]
    finally:
        default_providers.cache_clear()


@pytest.fixture(scope="module")
def cuda():
    if default_providers()[0] != CUDA:
        pytest.skip("no GPU with onnxruntime-gpu here")


def test_training_on_cuda_matches_cpu_and_keeps_state_on_the_gpu(cuda, tmp_path):
    x, y = make_batch("cnn", 8, torch.Generator().manual_seed(0))
    artifact = optgraph.compile(
        make_model("cnn"), (x,), (y,), nn.CrossEntropyLoss(),
        optimizer=optim.AdamW(lr=0.01), lr_scheduler=lr_scheduler.OneCycleLR(max_lr=0.05, total_steps=20),
        clip_grad_norm=1.0,
    )  # fmt: skip
    gpu, cpu = optgraph.TrainingSession(artifact), optgraph.TrainingSession(artifact, providers=[CPU])
    assert gpu._store.device == "cuda"
    assert all(value.device_name().lower() == "cuda" for value in gpu._store.values.values())
    g = torch.Generator().manual_seed(1)
    for step in range(10):
        batch = [t.numpy() for t in make_batch("cnn", 4 + step % 3, g)]
        assert gpu.step(*batch) == pytest.approx(cpu.step(*batch), rel=1e-4)
        if step % 3 == 2:
            gpu.scheduler_step()
            cpu.scheduler_step()
    assert gpu.lr == pytest.approx(cpu.lr, rel=1e-12)
    for key, value in cpu.state_dict().items():
        np.testing.assert_allclose(gpu.state_dict()[key], value, rtol=1e-4, atol=1e-5, err_msg=key)
    np.testing.assert_allclose(gpu.eval(batch[0]), cpu.eval(batch[0]), rtol=1e-4, atol=1e-5)
    gpu.save(tmp_path / "ckpt")
    resumed = optgraph.TrainingSession(tmp_path / "ckpt")
    assert resumed.step(*batch) == pytest.approx(gpu.step(*batch), rel=1e-5)  # CUDA kernels may use atomics
