"""Graph rewriting: everything optgraph appends to a captured graph.

This package knows ONNX graphs (through onnx-ir) and nothing of torch or
onnxruntime. Update rules and schedules emit their nodes through
:class:`GraphBuilder`.
"""

from __future__ import annotations

from optgraph.rewrite.builder import GraphBuilder

__all__ = ["GraphBuilder"]
