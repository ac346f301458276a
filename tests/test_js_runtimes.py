"""The artifact trains in JavaScript: onnxruntime-node and onnxruntime-web (WASM, in headless Chromium).

``examples/node/train.mjs`` and the page in ``examples/web`` read
manifest.json and checkpoint.safetensors themselves (``examples/js/optgraph.mjs``)
and must reproduce the Python session's losses and learning rates step for
step. The model has BatchNorm, the optimizer is AdamW with clipping and the
schedule is a cosine OneCycleLR, so float64 schedule math runs in every runtime.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import threading

import numpy as np
import pytest
import torch
from models import make_batch, make_model
from runtimes import EXAMPLES, chromium, load_example, node
from safetensors.numpy import load_file, save_file
from torch import nn

import optgraph
from optgraph import lr_scheduler, optim

BATCH, EPOCHS, STEPS, SAMPLES = 8, 3, 8, 24
CPU = ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def artifact_and_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("js")
    x, y = make_batch("cnn", SAMPLES, torch.Generator().manual_seed(5))
    artifact = optgraph.compile(
        make_model("cnn"), (x[:BATCH],), (y[:BATCH],), nn.CrossEntropyLoss(),
        optimizer=optim.AdamW(lr=0.01), lr_scheduler=lr_scheduler.OneCycleLR(max_lr=0.05, total_steps=EPOCHS + 1),
        clip_grad_norm=1.0,
    )  # fmt: skip
    artifact.save(folder / "artifact")
    save_file({"image": x.numpy(), "target": y.numpy()}, str(folder / "data.safetensors"))
    return folder


def python_run(artifact_dir, data, steps=STEPS):
    """What the JavaScript examples do, with optgraph.TrainingSession: batches in order, a schedule step per epoch."""
    session = optgraph.TrainingSession(artifact_dir, providers=CPU)
    losses, lrs = [], []
    for _ in range(EPOCHS):
        for start in range(0, SAMPLES, BATCH):
            if len(losses) == steps:
                return session, losses, lrs
            losses.append(session.step(data["image"][start : start + BATCH], data["target"][start : start + BATCH]))
            lrs.append([session.lr])
        session.scheduler_step()
    return session, losses, lrs


def test_node_trains_like_python_and_python_resumes_its_checkpoint(artifact_and_data):
    folder = artifact_and_data
    command = [
        node(), str(EXAMPLES / "node/train.mjs"), "artifact", "data.safetensors",
        "--batch-size", str(BATCH), "--epochs", str(EPOCHS), "--steps", str(STEPS), "--save", "trained-in-node",
    ]  # fmt: skip
    run = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    steps = [json.loads(line) for line in run.stdout.splitlines()]
    data = load_file(str(folder / "data.safetensors"))
    session, losses, lrs = python_run(folder / "artifact", data)
    np.testing.assert_allclose([s["loss"] for s in steps], losses, rtol=1e-6, err_msg="losses in onnxruntime-node")
    np.testing.assert_allclose([s["lr"] for s in steps], lrs, rtol=1e-12, err_msg="lrs in onnxruntime-node")

    # the checkpoint Node wrote is a complete artifact: Python resumes it where Node stopped
    resumed = optgraph.TrainingSession(folder / "trained-in-node", providers=CPU)
    for key, value in session.state_dict().items():
        np.testing.assert_allclose(resumed.state_dict()[key], value, rtol=1e-5, atol=1e-7, err_msg=key)
    batch = data["image"][:BATCH], data["target"][:BATCH]
    assert resumed.step(*batch) == pytest.approx(session.step(*batch), rel=1e-5)
    assert resumed.lr == pytest.approx(session.lr, rel=1e-12)


def test_browser_trains_like_python(artifact_and_data):
    folder = artifact_and_data
    browser = chromium()
    serve = load_example("web/serve.py")

    received = threading.Event()
    report = {}
    server = serve.ExampleServer(
        folder / "artifact", folder / "data.safetensors", on_report=lambda r: (report.update(r), received.set())
    )
    server.start()
    query = f"artifact=/artifact/&data=/data.safetensors&batch={BATCH}&epochs={EPOCHS}&steps={STEPS}&autorun=1&report=/report"
    with tempfile.TemporaryDirectory() as profile:
        flags = [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
            f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
        ]  # fmt: skip
        process = subprocess.Popen(
            [browser, *flags, f"{server.url}/web/index.html?{query}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            arrived = received.wait(180)
        finally:
            process.kill()
            console = process.communicate()[1]
            server.shutdown()
    assert arrived, f"the page sent no report; browser log:\n{console[-3000:]}"
    assert "error" not in report, report["error"]
    _, losses, lrs = python_run(folder / "artifact", load_file(str(folder / "data.safetensors")))
    # WASM kernels round differently from native ones: float32-rounding tolerance, not bit equality
    np.testing.assert_allclose(report["losses"], losses, rtol=2e-5, err_msg="losses in onnxruntime-web")
    np.testing.assert_allclose(report["lrs"], lrs, rtol=1e-12, err_msg="lrs in onnxruntime-web")
