"""Standalone inference model: the eval graph with weights folded in as initializers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import external_data_helper, numpy_helper

_PROTOBUF_LIMIT = 2**31 - 1
_INLINE_BYTES = 1024  # with external data, tensors this small stay in the .onnx file


def export_inference(eval_model: bytes, weights: dict[str, np.ndarray], path: str | os.PathLike) -> Path:
    """Turn the weight inputs of ``eval_model`` into initializers and save it to ``path``."""
    model = onnx.load_from_string(eval_model)
    graph = model.graph
    kept = [i for i in graph.input if i.name not in weights]
    graph.initializer.extend(
        numpy_helper.from_array(np.asarray(weights[i.name]), i.name) for i in graph.input if i.name in weights
    )
    del graph.input[:]
    graph.input.extend(kept)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if sum(a.nbytes for a in weights.values()) > _PROTOBUF_LIMIT // 2:
        # Only the weights move out: the graph's own small constants (shapes, axes) must stay inline.
        for tensor in graph.initializer:
            if tensor.name in weights and len(tensor.raw_data) >= _INLINE_BYTES:
                external_data_helper.set_external_data(tensor, location=f"{path.name}.data")
    data_file = path.with_name(f"{path.name}.data")
    data_file.unlink(missing_ok=True)  # onnx appends to it
    onnx.save_model(model, path)
    return path
