"""Saving never deletes a user's files, always leaves a complete artifact, and loading changes nothing on disk."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import optgraph
from optgraph.artifact import recover_interrupted_save, storage
from optgraph.errors import ArtifactError, OverwriteError

CPU = ["CPUExecutionProvider"]


def _tree(root):
    """Every path under ``root`` with the sha256 of its contents: a snapshot of what is on disk."""
    snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            snapshot[rel] = hashlib.sha256(open(path, "rb").read()).hexdigest() if name in filenames else "dir"
    return snapshot


def _params(session):
    return {k: v.copy() for k, v in session.state_dict().items()}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("saver", ["artifact", "session"])
def test_save_refuses_a_directory_holding_user_files(mlp_artifact, tmp_path, saver):
    target = tmp_path / "results"
    target.mkdir()
    (target / "notes.txt").write_text("my experiment notes")
    (target / "manifest.json").write_text('{"format": "something-else"}')
    before = _tree(tmp_path)
    save = mlp_artifact.save if saver == "artifact" else optgraph.TrainingSession(mlp_artifact, providers=CPU).save
    with pytest.raises(OverwriteError, match=r"results: is not empty and not an optgraph artifact .*notes.txt"):
        save(target)
    assert _tree(tmp_path) == before


def test_save_refuses_an_artifact_that_also_holds_user_files(mlp_artifact, tmp_path):
    target = mlp_artifact.save(tmp_path / "ckpt")
    (target / "plot.png").write_bytes(b"\x89PNG")
    before = _tree(tmp_path)
    with pytest.raises(OverwriteError, match=r"ckpt: is an optgraph artifact but also holds plot.png"):
        mlp_artifact.save(target)
    assert _tree(tmp_path) == before


def test_save_refuses_a_file_or_a_symbolic_link(mlp_artifact, tmp_path):
    (tmp_path / "file").write_text("data")
    with pytest.raises(OverwriteError, match="exists and is not a directory"):
        mlp_artifact.save(tmp_path / "file")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(OverwriteError, match="is a symbolic link"):
        mlp_artifact.save(tmp_path / "link")
    assert (tmp_path / "file").read_text() == "data" and list((tmp_path / "real").iterdir()) == []


def test_save_fills_an_empty_directory_and_replaces_an_artifact(mlp_artifact, mlp_batch, tmp_path):
    (tmp_path / "ckpt").mkdir()
    session = optgraph.TrainingSession(mlp_artifact, providers=CPU)
    session.save(tmp_path / "ckpt")
    session.step(*mlp_batch)
    session.save(tmp_path / "ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert oct((tmp_path / "ckpt").stat().st_mode & 0o777) == oct(0o777 & ~_umask())
    _assert_same(_params(optgraph.TrainingSession(tmp_path / "ckpt", providers=CPU)), _params(session))


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_kill_after_the_exchange_leaves_the_new_artifact_and_the_next_save_cleans_up(
    mlp_artifact, mlp_batch, tmp_path, monkeypatch
):
    session = optgraph.TrainingSession(mlp_artifact, providers=CPU)
    session.save(tmp_path / "ckpt")
    session.step(*mlp_batch)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed before the old contents were removed")

    monkeypatch.setattr(storage.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        session.save(tmp_path / "ckpt")
    monkeypatch.undo()
    assert len(storage.leftovers(tmp_path / "ckpt")) == 1  # the previous contents, swapped out
    _assert_same(_params(optgraph.TrainingSession(tmp_path / "ckpt", providers=CPU)), _params(session))
    session.save(tmp_path / "ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_without_exchange_a_kill_between_renames_is_repaired_explicitly(mlp_artifact, mlp_batch, tmp_path, monkeypatch):
    session = optgraph.TrainingSession(mlp_artifact, providers=CPU)
    session.step(*mlp_batch)
    session.save(tmp_path / "ckpt")
    expected = _params(session)
    session.step(*mlp_batch)
    monkeypatch.setattr(storage, "_exchange", lambda a, b: False)  # a kernel or file system without renameat2
    real_rename, calls = os.rename, []

    def crash_on_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed between the renames")
        real_rename(src, dst)

    monkeypatch.setattr(storage.os, "rename", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        session.save(tmp_path / "ckpt")
    monkeypatch.undo()
    assert not (tmp_path / "ckpt").exists()

    before = _tree(tmp_path)
    with pytest.raises(ArtifactError, match=r"a save into it was killed.*recover_interrupted_save.*optgraph recover"):
        optgraph.TrainingSession(tmp_path / "ckpt", providers=CPU)
    assert _tree(tmp_path) == before  # loading repaired nothing behind the user's back

    result = subprocess.run(
        [sys.executable, "-m", "optgraph", "recover", str(tmp_path / "ckpt")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    _assert_same(_params(optgraph.TrainingSession(tmp_path / "ckpt", providers=CPU)), expected)
    with pytest.raises(ArtifactError, match="no interrupted save to recover"):
        recover_interrupted_save(tmp_path / "ckpt")
    session.save(tmp_path / "ckpt")  # cleans every leftover of the killed save
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_process_killed_while_saving_always_leaves_a_complete_artifact(mlp_artifact, mlp_batch, tmp_path):
    target = tmp_path / "ckpt"
    mlp_artifact.save(target)
    script = textwrap.dedent(
        f"""
        import numpy as np, optgraph
        session = optgraph.TrainingSession({str(target)!r})
        x = np.zeros((4, 8), np.float32); y = np.zeros(4, np.int64)
        print("ready", flush=True)
        while True:
            session.step(x, y)
            session.save({str(target)!r})
        """
    )
    rng = np.random.default_rng(0)
    for _ in range(6):
        child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(float(rng.uniform(0.05, 0.4)))
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert target.is_dir()  # renameat2's exchange: never a moment without the directory
        assert len(storage.leftovers(target)) <= 1  # each save removes what the killed one before it left
        resumed = optgraph.TrainingSession(target, providers=CPU)
        assert np.isfinite(resumed.step(*mlp_batch))
    optgraph.TrainingSession(target, providers=CPU).save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
