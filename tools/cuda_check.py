"""Check training on CUDA: state on the GPU, device_id honoured, parity with CPU, save and resume.

    python -m tools.cuda_check prepare DIR   # anywhere with torch: a small artifact and its batches into DIR
    python -m tools.cuda_check run DIR       # on a GPU machine with onnxruntime-gpu: every check; no torch needed

``run`` prints one JSON line per check (``{"check": ..., "ok": ..., ...}``) and
exits 1 when one fails, 2 when onnxruntime finds no usable GPU. The checks:

- ``default-providers``: ``providers=None`` picks CUDA, then CPU;
- ``state-on-device``: a default session holds every state tensor in CUDA memory (``session.device``,
  ``session.state_info()``);
- ``device-id``: ``("CUDAExecutionProvider", {"device_id": k})`` and ``provider_options=[{"device_id": k}, {}]``
  both give ``session.device == ("cuda", k)``, for every GPU there is (0 and 1 when there are two);
- ``parity``: 10 steps and 3 schedule steps on CUDA and on CPU give the same losses, learning rates,
  parameters, buffers, optimizer state and eval outputs (float32 rounding);
- ``save-resume``: a CUDA session's save resumes on CUDA (the next step's loss matches) and on CPU
  (the same state, exactly).

``tests/test_cuda.py`` runs the same checks under pytest where a GPU is found, and skips elsewhere.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

import optgraph
from optgraph.devices import can_allocate
from optgraph.session import CPU, CUDA, default_providers

STEPS, SCHEDULE_EVERY, SIZES = 10, 3, (4, 5, 6)


def prepare(folder: Path) -> Path:
    """Compile a small CNN (BatchNorm, AdamW, OneCycleLR, clipping) into ``folder/artifact``, batches beside it."""
    import torch
    from torch import nn

    from optgraph import lr_scheduler, optim

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 10),
    )  # fmt: skip
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
    artifact = optgraph.compile(
        model, (x,), (y,), nn.CrossEntropyLoss(),
        optimizer=optim.AdamW(lr=0.01), lr_scheduler=lr_scheduler.OneCycleLR(max_lr=0.05, total_steps=20),
        clip_grad_norm=1.0,
    )  # fmt: skip
    artifact.save(folder / "artifact")
    batches = {}
    for step in range(STEPS):
        size = SIZES[step % len(SIZES)]
        batches[f"{step}/x"] = torch.randn(size, 3, 8, 8, generator=g).numpy()
        batches[f"{step}/y"] = torch.randint(0, 10, (size,), generator=g).numpy()
    save_file(batches, str(folder / "batches.safetensors"))
    return folder


def _batches(folder: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    data = load_file(str(folder / "batches.safetensors"))
    return [(data[f"{step}/x"], data[f"{step}/y"]) for step in range(STEPS)]


def _close(actual, expected, what: str, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


def check_default_providers(folder: Path) -> dict:
    assert default_providers() == [CUDA, CPU], f"providers=None picks {default_providers()}"
    return {}


def check_state_on_device(folder: Path) -> dict:
    session = optgraph.TrainingSession(folder / "artifact")
    assert session.device == ("cuda", 0), session.device
    elsewhere = {name: info.device for name, info in session.state_info().items() if info.device != "cuda"}
    assert not elsewhere, f"state outside CUDA memory: {elsewhere}"
    return {"state_tensors": len(session.state_info())}


def check_device_ids(folder: Path) -> dict:
    ids = [k for k in range(8) if can_allocate(("cuda", k))]
    assert ids and ids == list(range(len(ids))), f"CUDA devices found: {ids}"
    x, y = _batches(folder)[0]
    losses = []
    for k in ids[:2]:
        as_pair = optgraph.TrainingSession(folder / "artifact", providers=[(CUDA, {"device_id": k}), CPU])
        as_options = optgraph.TrainingSession(
            folder / "artifact", providers=[CUDA, CPU], provider_options=[{"device_id": str(k)}, {}]
        )
        for session in (as_pair, as_options):
            assert session.device == ("cuda", k), f"asked for device {k}, state is on {session.device}"
            assert {info.device for info in session.state_info().values()} == {"cuda"}
            losses.append(session.step(x, y))
    _close(losses, [losses[0]] * len(losses), "the first step's loss on each device")
    return {"devices": len(ids), "checked": ids[:2]}


def _train(session: optgraph.TrainingSession, batches) -> list[float]:
    losses = []
    for step, batch in enumerate(batches):
        losses.append(session.step(*batch))
        if step % SCHEDULE_EVERY == SCHEDULE_EVERY - 1:
            session.scheduler_step()
    return losses


def check_parity(folder: Path) -> dict:
    gpu = optgraph.TrainingSession(folder / "artifact", providers=[CUDA, CPU])
    cpu = optgraph.TrainingSession(folder / "artifact", providers=[CPU])
    batches = _batches(folder)
    _close(_train(gpu, batches), _train(cpu, batches), "losses, CUDA vs CPU")
    _close(gpu.lr, cpu.lr, "lr", rtol=1e-12, atol=0)
    expected = cpu.state_dict()
    for name, value in gpu.state_dict().items():
        _close(value, expected[name], name)
    expected = cpu.optimizer_state_dict()
    for param, slots in gpu.optimizer_state_dict().items():
        for slot, value in slots.items():
            _close(value, expected[param][slot], f"{slot} of {param}")
    _close(gpu.eval(batches[0][0]), cpu.eval(batches[0][0]), "eval outputs")
    return {"steps": len(batches)}


def check_save_resume(folder: Path) -> dict:
    batches = _batches(folder)
    gpu = optgraph.TrainingSession(folder / "artifact", providers=[CUDA, CPU])
    _train(gpu, batches[:5])
    with tempfile.TemporaryDirectory() as tmp:
        gpu.save(Path(tmp) / "ckpt")
        on_gpu = optgraph.TrainingSession(Path(tmp) / "ckpt", providers=[CUDA, CPU])
        on_cpu = optgraph.TrainingSession(Path(tmp) / "ckpt", providers=[CPU])
        assert on_gpu.device == ("cuda", 0) and on_cpu.device == ("cpu", 0)
        for name, value in gpu.state_dict().items():
            np.testing.assert_array_equal(on_cpu.state_dict()[name], value, err_msg=f"{name} resumed on CPU")
        assert on_cpu.lr == gpu.lr
        for batch in batches[5:]:  # CUDA kernels may sum in another order: rounding, not bit equality
            _close(on_gpu.step(*batch), gpu.step(*batch), "loss after resuming on CUDA", rtol=1e-5, atol=0)
    return {}


CHECKS: dict[str, Callable[[Path], dict]] = {
    "default-providers": check_default_providers,
    "state-on-device": check_state_on_device,
    "device-id": check_device_ids,
    "parity": check_parity,
    "save-resume": check_save_resume,
}


def run(folder: Path) -> int:
    """Every check on the artifact in ``folder``; prints a JSON line each and returns the exit status."""
    if CUDA not in default_providers():
        print(json.dumps({"check": "gpu", "ok": False, "error": "onnxruntime finds no usable CUDA GPU"}))
        return 2
    failed = 0
    for name, check in CHECKS.items():
        try:
            print(json.dumps({"check": name, "ok": True, **check(folder)}), flush=True)
        except Exception as e:  # noqa: BLE001 - report every check, then fail
            failed += 1
            lines = traceback.format_exception(e)
            print(json.dumps({"check": name, "ok": False, "error": "".join(lines)[-2000:]}), flush=True)
    return 1 if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["prepare", "run"])
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()
    if args.command == "prepare":
        args.folder.mkdir(parents=True, exist_ok=True)
        print(prepare(args.folder))
    else:
        sys.exit(run(args.folder))


if __name__ == "__main__":
    main()
