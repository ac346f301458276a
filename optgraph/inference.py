"""Standalone inference model: the eval graph with weights folded in as initializers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

_PROTOBUF_LIMIT = 2**31 - 1


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
    large = sum(a.nbytes for a in weights.values()) > _PROTOBUF_LIMIT // 2
    onnx.save_model(model, path, save_as_external_data=large, location=f"{path.name}.data" if large else None)
    return path
