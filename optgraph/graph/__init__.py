"""Emitting ONNX nodes into an onnx-ir graph: the bottom layer, which knows only onnx-ir and numpy.

Update rules, schedules and the rewrite passes all build their nodes with
:class:`optgraph.graph.builder.GraphBuilder`.
"""
