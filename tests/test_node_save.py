"""``examples/node/train.mjs --save`` writes only inside its target folder, and keeps the manifest's sha256 true.

File names come from the manifest, which may be hostile: each must be a plain
name inside the artifact directory (``checkManifest`` in
``examples/js/optgraph.mjs``, the same rule as optgraph's Python reader), or
train.mjs stops before it reads or writes anything.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess

import pytest
import torch
from models import make_batch, make_model
from runtimes import EXAMPLES, node
from safetensors.numpy import save_file
from torch import nn

import optgraph
from optgraph import optim

BATCH = 4


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("node-save")
    x, y = make_batch("mlp", 2 * BATCH, torch.Generator().manual_seed(0))
    artifact = optgraph.compile(
        make_model("mlp"), (x[:BATCH],), (y[:BATCH],), nn.CrossEntropyLoss(), optimizer=optim.SGD(lr=0.1)
    )
    artifact.save(folder / "artifact")
    save_file({"features": x.numpy(), "target": y.numpy()}, str(folder / "data.safetensors"))
    return folder


def _train_mjs(folder, artifact, save):
    command = [
        node(), str(EXAMPLES / "node/train.mjs"), str(artifact), str(folder / "data.safetensors"),
        "--batch-size", str(BATCH), "--save", str(save),
    ]  # fmt: skip
    return subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=120)


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_save_updates_the_sha256_of_the_checkpoint_and_python_loads_it(source, tmp_path):
    manifest = json.loads((source / "artifact/manifest.json").read_text())
    assert "checkpoint.safetensors" in manifest.get("sha256", {}), "optgraph writes digests; this test checks them"
    run = _train_mjs(source, source / "artifact", tmp_path / "saved")
    assert run.returncode == 0, run.stderr[-3000:]
    saved = json.loads((tmp_path / "saved/manifest.json").read_text())
    assert set(saved["sha256"]) == {p.name for p in (tmp_path / "saved").iterdir()} - {"manifest.json"}
    for file, digest in saved["sha256"].items():
        assert hashlib.sha256((tmp_path / "saved" / file).read_bytes()).hexdigest() == digest, file
    assert saved["sha256"]["checkpoint.safetensors"] != manifest["sha256"]["checkpoint.safetensors"]
    optgraph.TrainingSession(tmp_path / "saved", providers=["CPUExecutionProvider"])  # checks every digest


def test_a_checkpoint_that_does_not_match_its_sha256_is_refused(source, tmp_path):
    shutil.copytree(source / "artifact", tmp_path / "artifact")
    manifest = json.loads((tmp_path / "artifact/manifest.json").read_text())
    manifest["sha256"]["checkpoint.safetensors"] = "0" * 64
    (tmp_path / "artifact/manifest.json").write_text(json.dumps(manifest))
    run = _train_mjs(source, tmp_path / "artifact", tmp_path / "saved")
    assert run.returncode != 0
    assert "checkpoint.safetensors: contents do not match the sha256 in manifest.json" in run.stderr
    assert not (tmp_path / "saved").exists()


BAD_NAMES = ["../escape/eval.onnx", "/abs/eval.onnx", "sub/eval.onnx", "sub\\eval.onnx", "..", "eval\0.onnx"]


@pytest.mark.parametrize("bad", BAD_NAMES, ids=["parent", "absolute", "folder", "backslash", "dotdot", "nul"])
def test_save_never_writes_outside_its_folder_whatever_the_manifest_names(source, tmp_path, bad):
    # src/artifact names its eval graph `bad`; for the traversing name, the file is really there to be read
    (tmp_path / "src").mkdir()
    shutil.copytree(source / "artifact", tmp_path / "src/artifact")
    manifest = json.loads((tmp_path / "src/artifact/manifest.json").read_text())
    manifest["graphs"]["eval"]["file"] = bad
    manifest.pop("sha256")  # so that only the name rule stands in the way
    (tmp_path / "src/artifact/manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "src/escape").mkdir()
    shutil.copy(tmp_path / "src/artifact/eval.onnx", tmp_path / "src/escape/eval.onnx")
    # without the rule, --save dst/saved would write dst/escape/eval.onnx: the folder is there for it
    (tmp_path / "dst/escape").mkdir(parents=True)
    run = _train_mjs(source, tmp_path / "src/artifact", tmp_path / "dst/saved")
    assert run.returncode != 0
    assert (
        f"manifest.json: file name {json.dumps(bad)} must be a plain name inside the artifact directory" in run.stderr
    )
    assert _files(tmp_path / "dst") == ["escape"]


def test_save_does_not_follow_links_or_delete_user_files(source, tmp_path):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"user data")
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved/checkpoint.safetensors").symlink_to(outside)  # a link planted in the target folder
    run = _train_mjs(source, source / "artifact", tmp_path / "saved")
    assert run.returncode != 0 and "which saving would delete" in run.stderr
    (tmp_path / "saved/checkpoint.safetensors").unlink()
    (tmp_path / "saved/notes.txt").write_text("keep me")
    run = _train_mjs(source, source / "artifact", tmp_path / "saved")
    assert run.returncode != 0 and "notes.txt" in run.stderr
    assert outside.read_bytes() == b"user data" and (tmp_path / "saved/notes.txt").read_text() == "keep me"
    (tmp_path / "saved/notes.txt").unlink()
    for _ in range(2):  # an empty folder, then the artifact saved there before: both are replaced
        run = _train_mjs(source, source / "artifact", tmp_path / "saved")
        assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside.bin", "saved"]
    optgraph.TrainingSession(tmp_path / "saved", providers=["CPUExecutionProvider"])


def test_node_refuses_labels_out_of_range_before_the_step(source, tmp_path):
    x, y = make_batch("mlp", BATCH, torch.Generator().manual_seed(2))
    labels = y.numpy().copy()
    labels[1] = 7  # the MLP has 4 classes
    save_file({"features": x.numpy(), "target": labels}, str(tmp_path / "bad.safetensors"))
    command = [
        node(), str(EXAMPLES / "node/train.mjs"), str(source / "artifact"), str(tmp_path / "bad.safetensors"),
        "--batch-size", str(BATCH),
    ]  # fmt: skip
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert "target 'target': value 7 at flat index 1 is out of range; expected 0 <= value < 4" in run.stderr
