"""Where a session keeps its state: one table of providers and their options, and the session's public view of it."""

from __future__ import annotations

import pytest
import torch
from models import make_batch, make_model
from torch import nn

import optgraph
from optgraph import optim, session
from optgraph.devices import CPU_DEVICE, can_allocate, state_device

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TRT = "TensorrtExecutionProvider"

# (providers as get_providers() lists them, options as get_provider_options() gives them, expected device)
CASES = {
    "cpu-only": ([CPU], {CPU: {}}, ("cpu", 0)),
    "nothing": ([], {}, ("cpu", 0)),
    "cuda-default": ([CUDA, CPU], {CUDA: {"device_id": "0"}, CPU: {}}, ("cuda", 0)),
    "cuda-device-1": ([CUDA, CPU], {CUDA: {"device_id": "1"}, CPU: {}}, ("cuda", 1)),
    "cuda-no-options": ([CUDA, CPU], None, ("cuda", 0)),
    "cuda-int-option": ([CUDA], {CUDA: {"device_id": 3}}, ("cuda", 3)),
    "tensorrt-before-cuda": ([TRT, CUDA, CPU], {TRT: {"device_id": "2"}, CUDA: {"device_id": "2"}}, ("cuda", 2)),
    "cpu-before-cuda": ([CPU, CUDA], {CPU: {}, CUDA: {"device_id": "1"}}, ("cpu", 0)),
    "rocm": (["ROCMExecutionProvider", CPU], {"ROCMExecutionProvider": {"device_id": "1"}}, ("cuda", 1)),
    "migraphx": (["MIGraphXExecutionProvider", CPU], {}, ("cuda", 0)),
    "dml-device-1": (["DmlExecutionProvider", CPU], {"DmlExecutionProvider": {"device_id": "1"}}, ("dml", 1)),
    "cann": (["CANNExecutionProvider", CPU], {"CANNExecutionProvider": {"device_id": "4"}}, ("cann", 4)),
    "webgpu": (["WebGpuExecutionProvider", CPU], {}, ("webgpu", 0)),
    "openvino-host-memory": (["OpenVINOExecutionProvider", CPU], {"OpenVINOExecutionProvider": {}}, ("cpu", 0)),
    "unknown": (["SomeFutureExecutionProvider", CUDA], {CUDA: {"device_id": "1"}}, ("cpu", 0)),
}


@pytest.mark.parametrize("case", CASES)
def test_state_device(case):
    providers, options, expected = CASES[case]
    assert state_device(providers, options) == expected


def test_state_device_rejects_a_device_id_that_is_no_integer():
    with pytest.raises(ValueError, match="CUDAExecutionProvider: device_id must be an integer, got 'first'"):
        state_device([CUDA], {CUDA: {"device_id": "first"}})


def test_cpu_is_always_allocatable():
    assert can_allocate(CPU_DEVICE)
    assert not can_allocate(("no-such-device", 0))


@pytest.fixture(scope="module")
def mlp_artifact():
    x, y = make_batch("mlp", 4, torch.Generator().manual_seed(0))
    return optgraph.compile(make_model("mlp"), (x,), (y,), nn.CrossEntropyLoss(), optimizer=optim.Adam(lr=0.01))


def test_cpu_session_holds_every_state_tensor_on_the_cpu(mlp_artifact):
    s = optgraph.TrainingSession(mlp_artifact, providers=[CPU])
    assert s.device == ("cpu", 0)
    info = s.state_info()
    assert set(info) == set(mlp_artifact.manifest.state_specs())
    for name, spec in mlp_artifact.manifest.state_specs().items():
        assert info[name] == (tuple(spec.shape), spec.dtype, "cpu"), name


def test_provider_options_are_passed_on(mlp_artifact):
    s = optgraph.TrainingSession(mlp_artifact, providers=[CPU], provider_options=[{}])
    assert s.device == ("cpu", 0)
    with pytest.raises(ValueError, match="provider_options needs providers"):
        optgraph.TrainingSession(mlp_artifact, provider_options=[{}])


def test_session_asks_state_device_about_the_providers_it_uses(mlp_artifact, monkeypatch):
    asked = []

    def device_of(providers, options):
        asked.append((providers, options))
        return ("cpu", 0)

    monkeypatch.setattr(session, "state_device", device_of)
    optgraph.TrainingSession(mlp_artifact, providers=[(CPU, {})])
    assert asked == [([CPU], {CPU: {}})]


def test_state_stays_on_the_host_with_a_warning_where_the_build_cannot_allocate(mlp_artifact, monkeypatch):
    monkeypatch.setattr(session, "state_device", lambda providers, options: ("no-such-device", 1))
    with pytest.warns(RuntimeWarning, match=r"cannot place OrtValues on \('no-such-device', 1\)"):
        s = optgraph.TrainingSession(mlp_artifact, providers=[CPU])
    assert s.device == ("cpu", 0)
    x, y = make_batch("mlp", 4, torch.Generator().manual_seed(1))
    assert s.step(x.numpy(), y.numpy()) > 0
