"""The built-in demo: a small CNN on scikit-learn's 8x8 digits, trained on onnxruntime."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from optgraph.artifact.names import DATA_INPUTS_KEY, TARGETS_KEY


def _digits(seed: int):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    return train_test_split(images, labels, test_size=0.2, random_state=seed, stratify=labels)


def _model():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.1),
        nn.Linear(32 * 2 * 2, 10),
    )


def run(out: str | Path = "optgraph-demo", epochs: int = 12, batch_size: int = 32, seed: int = 0) -> float:
    """Compile, train and evaluate; returns the held-out accuracy."""
    import torch
    from torch import nn

    import optgraph
    from optgraph import lr_scheduler, optim

    out = Path(out)
    started = time.perf_counter()
    x_train, x_test, y_train, y_test = _digits(seed)
    print(f"digits: {len(x_train)} training and {len(x_test)} held-out images of 8x8")

    artifact = optgraph.compile(
        _model(),
        (torch.from_numpy(x_train[:batch_size]),),
        (torch.from_numpy(y_train[:batch_size]),),
        nn.CrossEntropyLoss(),
        optimizer=optim.SGD(lr=0.05, momentum=0.9),
        lr_scheduler=lr_scheduler.StepLR(step_size=5, gamma=0.3),
    )
    artifact.save(out / "artifact")
    names = artifact.manifest.extra[DATA_INPUTS_KEY] + artifact.manifest.extra[TARGETS_KEY]
    save_file(dict(zip(names, (x_train, y_train))), str(out / "digits-train.safetensors"))  # for examples/
    compiled = time.perf_counter()
    print(f"compiled in {compiled - started:.1f} s -> {out / 'artifact'}")

    session = optgraph.TrainingSession(out / "artifact")
    rng = np.random.default_rng(seed)
    for epoch in range(epochs):
        order = rng.permutation(len(x_train))
        losses = []
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            losses.append(session.step(x_train[rows], y_train[rows]))
        session.scheduler_step()
        accuracy = float((session.eval(x_test).argmax(axis=1) == y_test).mean())
        print(f"epoch {epoch + 1:2d}  loss {np.mean(losses):.4f}  held-out accuracy {accuracy:.2%}  lr {session.lr:g}")
    trained = time.perf_counter()

    session.save(out / "checkpoint")
    session.export_inference(out / "model.onnx")
    print(f"trained {epochs} epochs in {trained - compiled:.1f} s (total {trained - started:.1f} s)")
    print(f"checkpoint -> {out / 'checkpoint'}, inference model -> {out / 'model.onnx'}")
    print(f"training data for examples/node and examples/web -> {out / 'digits-train.safetensors'}")
    print(f"held-out accuracy: {accuracy:.2%}")
    return accuracy
