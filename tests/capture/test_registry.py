"""The exporter's registry of ONNX translations that capture uses: the same as ``ONNXRegistry.from_torchlib()``."""

from __future__ import annotations

import torch
from torch.onnx._internal.exporter import _registration

from optgraph.capture import translations


def _contents(registry) -> dict:
    return {
        name: [(d.onnx_function, d.fx_target, d.is_complex, d.is_custom, d.opset_introduced) for d in decompositions]
        for name, decompositions in registry.functions.items()
    }


def test_the_quick_registry_holds_what_from_torchlib_holds():
    quick, reference = translations.torchlib_registry(), _registration.ONNXRegistry.from_torchlib()
    assert quick.opset_version == reference.opset_version
    assert len(reference.functions) > 400
    assert _contents(quick) == _contents(reference)


def test_a_registry_falls_back_to_from_torchlib_and_keeps_our_translations(monkeypatch):
    def moved():
        raise AttributeError("the exporter's internals moved")

    monkeypatch.setattr(translations, "torchlib_registry", moved)
    registry = translations.onnx_registry.__wrapped__()  # not the cached one
    assert registry.is_registered(torch.ops.aten.addmm.default)
    for target, function in translations.custom_translations().items():
        assert registry.get_decomps(target)[0].onnx_function is function, target
