"""Where a session keeps its state: the device of the execution provider that runs first. Never imports torch.

The answer is a pair ``(device_type, device_id)`` in the words of onnxruntime's
Python binding, ``OrtValue.ortvalue_from_numpy(array, device_type, device_id)``:
``"cuda"`` (every build whose GPU device is CUDA or HIP memory), ``"dml"``,
``"cann"``, ``"webgpu"``, or ``"cpu"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnxruntime as ort

CPU_DEVICE = ("cpu", 0)

# Execution providers with memory of their own, and the binding's name for it. The TensorRT providers
# run in CUDA memory; the binding's ROCm and MIGraphX builds allocate their GPU memory under "cuda" too.
# Every other provider (CPU, OpenVINO, CoreML, QNN, XNNPACK, ...) takes its inputs in host memory.
DEVICE_TYPES = {
    "CUDAExecutionProvider": "cuda",
    "TensorrtExecutionProvider": "cuda",
    "NvTensorRTRTXExecutionProvider": "cuda",
    "ROCMExecutionProvider": "cuda",
    "MIGraphXExecutionProvider": "cuda",
    "DmlExecutionProvider": "dml",
    "CANNExecutionProvider": "cann",
    "WebGpuExecutionProvider": "webgpu",
}


def state_device(
    providers: Sequence[str], provider_options: Mapping[str, Mapping[str, object]] | None = None
) -> tuple[str, int]:
    """The device a session's state belongs on, from the providers the session uses.

    The first provider runs every node it supports, so its memory is where the state saves copies.

    Args:
        providers: provider names, highest priority first, as ``InferenceSession.get_providers()`` gives them.
        provider_options: options by provider name, as ``InferenceSession.get_provider_options()`` gives
            them (values are strings there); the first provider's ``"device_id"`` is read, 0 when absent.

    Returns:
        ``(device_type, device_id)`` for ``OrtValue.ortvalue_from_numpy``; ``("cpu", 0)`` when the first
        provider keeps its tensors in host memory or is not one this module knows.
    """
    if not providers or providers[0] not in DEVICE_TYPES:
        return CPU_DEVICE
    first = providers[0]
    device_id = (provider_options or {}).get(first, {}).get("device_id", 0)
    try:
        device_id = int(device_id)
    except (TypeError, ValueError):
        raise ValueError(f"{first}: device_id must be an integer, got {device_id!r}") from None
    return DEVICE_TYPES[first], device_id


def can_allocate(device: tuple[str, int]) -> bool:
    """Whether this onnxruntime build can place an OrtValue on ``device``."""
    if device == CPU_DEVICE:
        return True
    try:
        ort.OrtValue.ortvalue_from_numpy(np.zeros(1, np.float32), *device)
    except Exception:  # noqa: BLE001 - the binding raises RuntimeError, or a bare Exception for unknown names
        return False
    return True
