"""optgraph inspect and optgraph export; a corrupted artifact is one line and exit 1 for every command."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from cli_helpers import cli, one_line_error

import optgraph
from optgraph.artifact import Artifact
from optgraph.artifact.names import GRAPH_FILES, GRAPH_NAMES, GraphName
from optgraph.cli.ort_versions import RELEASES, describe_requirement, first_release


def test_inspect_shows_every_input_and_output(artifact):
    ran = cli("inspect", artifact)
    assert ran.rc == 0, ran.err
    manifest = Artifact.load(artifact).manifest
    lines = ran.out.splitlines()
    for name in GRAPH_NAMES:
        spec = manifest.graphs[name]
        assert any(line.startswith(f"graph {name} ({spec.file}): ") for line in lines)
        for direction, tensors in (("in", spec.inputs), ("out", spec.outputs)):
            for t in tensors:
                shape = "[" + ", ".join(str(d) for d in t.shape) + "]"
                cells = [direction, t.name, str(t.role), t.dtype, shape] + ([t.feeds] if t.feeds else [])
                assert any(line.split() == " ".join(cells).split() for line in lines), cells
    for expected in [
        "parameters               83 trainable, 0 frozen (6 tensors)",
        "optimizer                AdamW(lr=0.01, betas=(0.9, 0.99), eps=1e-08, weight_decay=0.01,",
        "schedule                 SequentialLR(milestones=[2], schedulers=[LinearLR(",
        "clip_grad_norm           1.0",
        "symbols                  batch (any size)",
        "runtime                  the graphs load on onnxruntime >= 1.",
    ]:
        assert any(line.strip().startswith(expected) for line in lines), expected
    assert "op types" in lines and any(line.split() == ["op", *GRAPH_NAMES] for line in lines)


def test_inspect_json_is_complete_and_its_runtime_is_derived_from_the_graphs(artifact):
    ran = cli("inspect", artifact, "--json")
    assert ran.rc == 0, ran.err
    report = json.loads(ran.out)
    manifest = Artifact.load(artifact).manifest
    opsets, irs = [], []
    for name in GRAPH_NAMES:
        graph = report["graphs"][name]
        assert graph["inputs"] == [t.to_json() for t in manifest.graphs[name].inputs]
        assert graph["outputs"] == [t.to_json() for t in manifest.graphs[name].outputs]
        model = onnx.load(str(artifact / GRAPH_FILES[name]))
        opsets.append(next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")))
        irs.append(model.ir_version)
        assert (graph["opset"], graph["ir_version"]) == (opsets[-1], irs[-1])
        assert sum(graph["op_types"].values()) == graph["nodes"] >= len(model.graph.node)
    assert report["min_onnxruntime"] == first_release(max(opsets), max(irs))
    # the design promises onnxruntime 1.19: the graphs must need no newer one
    assert [r[0] for r in RELEASES].index(report["min_onnxruntime"]) <= [r[0] for r in RELEASES].index("1.19")
    assert report["parameters"] == {"trainable_elements": 83, "frozen_elements": 0, "tensors": 6}
    assert report["state_bytes"]["total"] == sum(a.nbytes for a in Artifact.load(artifact).state.values())


@pytest.mark.parametrize(
    "opset, ir, release",
    [(7, 3, "1.0"), (11, 6, "1.0"), (12, 7, "1.3"), (15, 8, "1.9"), (17, 8, "1.12"), (18, 8, "1.14"),
     (19, 9, "1.16"), (21, 10, "1.18"), (22, 10, None), (21, 11, None)],
)  # fmt: skip
def test_the_first_onnxruntime_release_for_an_opset_and_ir_version(opset, ir, release):
    assert first_release(opset, ir) == release
    if release is None:
        assert describe_requirement(opset, ir).startswith("onnxruntime newer than 1.20")


def test_export_writes_the_inference_model(artifact, tmp_path):
    target = tmp_path / "model.onnx"
    ran = cli("export", artifact, "-o", target)
    assert ran.rc == 0, ran.err
    assert "inputs input float32[batch, 4]; outputs output float32[batch, 3]" in ran.out
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    exported = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_array_equal(exported, optgraph.TrainingSession(artifact).eval(x))
    ran = cli("export", artifact, "-o", tmp_path)
    assert ran.rc == 2 and "is a directory" in one_line_error(ran, "export")


@pytest.fixture
def corrupted(artifact, tmp_path):
    copy = tmp_path / "corrupted"
    shutil.copytree(artifact, copy)
    graph = copy / GRAPH_FILES[GraphName.TRAIN_STEP]
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    return copy


@pytest.mark.parametrize(
    "command, extra",
    [("inspect", []), ("export", ["-o", "model.onnx"]), ("train", ["--data", "DATA", "--epochs", "1"])],
)
def test_a_corrupted_artifact_is_one_line_and_exit_1(corrupted, data_files, tmp_path, command, extra):
    extra = [str(data_files[0]) if e == "DATA" else str(tmp_path / e) if e.endswith(".onnx") else e for e in extra]
    ran = cli(command, corrupted, *extra)
    assert ran.rc == 1
    assert GRAPH_FILES[GraphName.TRAIN_STEP] in one_line_error(ran, command)


def test_a_missing_artifact_directory(tmp_path):
    ran = cli("inspect", tmp_path / "nothing")
    assert ran.rc == 1 and "not an artifact directory" in one_line_error(ran, "inspect")
