"""The built-in demo: a small CNN on scikit-learn's 8x8 digits, trained on onnxruntime."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from optgraph.artifact.names import DATA_INPUTS_KEY, TARGETS_KEY

TARGET_ACCURACY = 0.95  # what the README promises on the held-out images


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


def run(
    out: str | Path = "optgraph-demo",
    epochs: int = 12,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool | None = None,
) -> float:
    """Compile, train and evaluate; returns the held-out accuracy.

    Writes ``out/artifact`` (compiled), ``out/digits-train.safetensors`` and ``out/digits-test.safetensors``
    (the data, as ``optgraph train`` and examples/node take it), then trains with ``optgraph train``'s loop:
    ``out/checkpoint``, ``out/progress.json``, ``out/loss.png``; and ``out/model.onnx``, the inference model.
    """
    import torch
    from torch import nn

    import optgraph
    from optgraph import lr_scheduler, optim
    from optgraph.cli.trainer import TrainOptions, train

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
    save_file(dict(zip(names, (x_test, y_test))), str(out / "digits-test.safetensors"))
    compiled = time.perf_counter()
    print(f"compiled in {compiled - started:.1f} s -> {out / 'artifact'}")

    result = train(
        TrainOptions(
            artifact=out / "artifact",
            data=out / "digits-train.safetensors",
            val=out / "digits-test.safetensors",
            val_metrics=["cross_entropy", "accuracy"],
            out=out,
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
            checkpoint_every=epochs,
            progress=progress,
            restart=True,
        )
    )
    if result.interrupted:
        raise KeyboardInterrupt  # the checkpoint is saved; the command line reports the stop
    trained = time.perf_counter()
    session = optgraph.TrainingSession(result.run.checkpoint)
    session.export_inference(out / "model.onnx")
    accuracy = result.epochs[-1]["val"]["accuracy"]
    print(f"trained {epochs} epochs in {trained - compiled:.1f} s (total {trained - started:.1f} s)")
    print(f"inference model -> {out / 'model.onnx'}")
    print(f"training data for optgraph train, examples/node and examples/web -> {out / 'digits-train.safetensors'}")
    print(f"held-out accuracy: {accuracy:.2%}")
    return accuracy
