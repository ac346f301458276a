"""Graph rewriting: everything optgraph appends to a captured graph.

This package knows ONNX graphs (through onnx-ir) and nothing of torch or
onnxruntime. Update rules and schedules emit their nodes through
:class:`optgraph.graph.builder.GraphBuilder`; each pass lives in its own module.
"""
