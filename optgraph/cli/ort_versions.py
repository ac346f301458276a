"""The first onnxruntime release that loads a graph of a given opset and IR version.

From onnxruntime's compatibility table (docs/reference/compatibility.md in microsoft/onnxruntime):
each release, the newest ai.onnx opset it implements and the newest IR version it reads. A
release runs every older opset from 7 on.
"""

from __future__ import annotations

#: (release, newest ai.onnx opset, newest IR version), oldest first
RELEASES: tuple[tuple[str, int, int], ...] = (
    ("1.0", 11, 6), ("1.1", 11, 6), ("1.2", 11, 6), ("1.3", 12, 7), ("1.4", 12, 7), ("1.5", 12, 7),
    ("1.6", 13, 7), ("1.7", 13, 7), ("1.8", 14, 7), ("1.9", 15, 8), ("1.10", 15, 8), ("1.11", 16, 8),
    ("1.12", 17, 8), ("1.13", 17, 8), ("1.14", 18, 8), ("1.15", 19, 8), ("1.16", 19, 9), ("1.17", 20, 9),
    ("1.18", 21, 10), ("1.19", 21, 10), ("1.20", 21, 10),
)  # fmt: skip


def first_release(opset: int, ir_version: int) -> str | None:
    """The oldest release that runs ``opset`` at ``ir_version``; None if the table is too old to say."""
    for release, newest_opset, newest_ir in RELEASES:
        if opset <= newest_opset and ir_version <= newest_ir:
            return release
    return None


def describe_requirement(opset: int, ir_version: int) -> str:
    """``"onnxruntime >= 1.13"``, or what the table cannot tell."""
    release = first_release(opset, ir_version)
    if release is None:
        return f"onnxruntime newer than {RELEASES[-1][0]} (opset {opset}, IR version {ir_version})"
    return f"onnxruntime >= {release}"
