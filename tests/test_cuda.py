"""The CUDA execution provider path: runs only where onnxruntime-gpu finds a GPU, skips cleanly elsewhere.

The checks live in ``tools/cuda_check.py``, which also runs them without pytest
or torch on a GPU machine (``python -m tools.cuda_check run DIR``).
"""

from __future__ import annotations

import onnxruntime as ort
import pytest
from runtimes import load_tool

from optgraph.session import CPU, CUDA, default_providers

cuda_check = load_tool("cuda_check")


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
def prepared(tmp_path_factory):
    if default_providers()[0] != CUDA:
        pytest.skip("no GPU with onnxruntime-gpu here")
    return cuda_check.prepare(tmp_path_factory.mktemp("cuda"))


@pytest.mark.parametrize("check", cuda_check.CHECKS)
def test_cuda(prepared, check):
    cuda_check.CHECKS[check](prepared)
