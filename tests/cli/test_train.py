"""optgraph train: progress, validation, schedules, checkpoints, exact resume, Ctrl-C, no torch, and data errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import factories
import numpy as np
import pytest
import torch
from cli_helpers import ROOT, assert_falling_curve, child_env, cli, one_line_error
from safetensors.numpy import load_file, save_file

import optgraph
from optgraph.artifact.names import CHECKPOINT_FILE
from optgraph.cli.run_dir import RunDir


def checkpoint_state(run) -> dict[str, np.ndarray]:
    return load_file(str(run / "checkpoint" / CHECKPOINT_FILE))


def assert_same_state(a, b) -> None:
    first, second = checkpoint_state(a), checkpoint_state(b)
    assert sorted(first) == sorted(second)
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)


def progress(run) -> dict:
    return json.loads((run / "progress.json").read_text())["committed"]["state"]


def test_train_reports_progress_validates_steps_the_schedule_and_plots(artifact, data_files, tmp_path):
    train, val = data_files
    out = tmp_path / "run"
    ran = cli("train", artifact, "--data", train, "--val", val, "--epochs", 6, "--batch-size", 16, "--out", out,
              "--progress")  # fmt: skip
    assert ran.rc == 0, ran.err
    epochs = [line for line in ran.out.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 6 and all("val cross_entropy " in e and "accuracy " in e for e in epochs), ran.out
    assert "epoch 1/6" in ran.err and "step" in ran.err  # the progress bar
    assert f"loss curve: {out / 'loss.png'}" in ran.out
    assert_falling_curve(out / "loss.png")
    records = progress(out)["epochs"]
    assert records[-1]["val"]["accuracy"] > 0.8
    assert len(progress(out)["losses"]) == 6 * 16
    # the schedule stepped once per epoch, as torch's SequentialLR with these arguments
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.AdamW([{"params": params[:1]}, {"params": params[1:]}], lr=1e-2)
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=2)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=8)
    schedule = torch.optim.lr_scheduler.SequentialLR(opt, [warm, cosine], milestones=[2])
    for record in records:
        np.testing.assert_allclose(record["lr"], [g["lr"] for g in opt.param_groups], rtol=1e-12)
        opt.step()
        schedule.step()
    # the checkpoint is an artifact that resumes, holding the trained parameters
    session = optgraph.TrainingSession(out / "checkpoint")
    x = factories.classes(64, seed=1)
    assert (session.eval(x["input"]).argmax(1) == x["target"]).mean() == pytest.approx(records[-1]["val"]["accuracy"])


def test_resume_continues_exactly_as_one_run(artifact, data_files, tmp_path):
    train, _ = data_files
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert cli("train", artifact, "--data", train, "--epochs", 4, "--out", whole, "--no-plot").rc == 0
    assert cli("train", artifact, "--data", train, "--epochs", 2, "--out", parts, "--no-plot").rc == 0
    ran = cli("train", artifact, "--data", train, "--epochs", 4, "--out", parts, "--resume", "--no-plot")
    assert ran.rc == 0, ran.err
    assert "resuming" in ran.out and "at epoch 3, batch 1" in ran.out
    assert_same_state(whole, parts)
    assert progress(whole)["losses"] == progress(parts)["losses"]
    again = cli("train", artifact, "--data", train, "--out", parts, "--resume")
    assert again.rc == 0 and "finished its 4 epochs already" in again.out


def test_a_kill_between_the_checkpoint_and_the_progress_file_resumes_from_what_the_checkpoint_holds(artifact, tmp_path):
    run = RunDir(tmp_path / "run")
    session = optgraph.TrainingSession(artifact)
    before = {"epoch": 1}
    committed = run.commit(session, {"seed": 0}, before, None)
    assert run.load() == ({"seed": 0}, committed)
    x = factories.classes(4)
    session.step(x["input"], x["target"])
    # killed after the pending record and before the save: the checkpoint is the committed one
    run._write({"settings": {"seed": 0}, "committed": committed, "pending": {"state": {"epoch": 2}}})
    assert run.load()[1]["state"] == before
    # killed after the save and before the committed record: the checkpoint holds the pending position
    session.save(run.checkpoint)
    assert run.load()[1]["state"] == {"epoch": 2}
    # a checkpoint written by something else is neither
    run._write({"settings": {"seed": 0}, "committed": committed, "pending": None})
    with pytest.raises(Exception, match="is not the checkpoint"):
        run.load()


def test_the_committed_position_stays_the_one_its_checkpoint_holds_as_the_loop_goes_on(artifact, tmp_path):
    run = RunDir(tmp_path / "run")
    session = optgraph.TrainingSession(artifact)
    state = {"epoch": 0, "batch": 1}
    committed = run.commit(session, {"seed": 0}, state, None)
    state["batch"] = 2  # the loop moves on in the same dict
    # killed after the next save's pending record, before the save: the checkpoint holds batch 1
    run._write({"settings": {"seed": 0}, "committed": committed, "pending": {"state": state}})
    assert run.load()[1]["state"] == {"epoch": 0, "batch": 1}


def test_ctrl_c_saves_a_checkpoint_that_resumes_exactly(artifact, tmp_path):
    data = tmp_path / "data.npz"
    np.savez(data, **factories.classes(3000, seed=2))
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    args = ["train", str(artifact), "--data", str(data), "--epochs", "3", "--batch-size", "2", "--no-plot"]
    process = subprocess.Popen(
        [sys.executable, "-m", "optgraph", *args, "--out", str(stopped)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(), cwd=ROOT,
    )  # fmt: skip
    assert process.stdout.readline().startswith("training ")  # the loop is about to start
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, (out, err)
    assert "stopped in epoch" in out and "--resume" in out
    position = progress(stopped)
    assert (position["epoch"], position["batch"]) < (3, 0)
    ran = cli(*args, "--out", stopped, "--resume")
    assert ran.rc == 0, ran.err
    assert cli(*args, "--out", whole).rc == 0
    assert_same_state(whole, stopped)
    assert progress(whole)["losses"] == progress(stopped)["losses"]


def test_train_inspect_and_export_need_no_torch(artifact, data_files, tmp_path):
    script = (
        "import sys\n"
        "sys.modules['torch'] = None  # any import of torch now fails\n"
        "from optgraph.cli import main\n"
        "for argv in sys.argv[1:]:\n"
        "    code = main(argv.split('|'))\n"
        "    assert code == 0, (argv, code)\n"
        "assert sys.modules['torch'] is None\n"
    )
    train, val = data_files
    commands = [
        f"train|{artifact}|--data|{train}|--val|{val}|--epochs|2|--out|{tmp_path / 'run'}",
        f"inspect|{tmp_path / 'run' / 'checkpoint'}",
        f"export|{tmp_path / 'run' / 'checkpoint'}|-o|{tmp_path / 'model.onnx'}",
    ]
    run = subprocess.run([sys.executable, "-c", script, *commands], capture_output=True, text=True, env=child_env(),
                         timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "run" / "loss.png").is_file() and (tmp_path / "model.onnx").is_file()


def test_reduce_on_plateau_steps_on_the_validation_loss_with_static_batches(toml_compiled, data_files, tmp_path):
    artifact = toml_compiled[0]
    train, _ = data_files
    val = tmp_path / "val.npz"
    np.savez(val, **factories.classes(30, seed=3))  # 30 is not a multiple of the static batch of 4
    out = tmp_path / "run"
    ran = cli("train", artifact, "--data", train, "--val", val, "--epochs", 5, "--out", out)
    assert ran.rc == 0, ran.err
    assert "64 steps of 4 per epoch" in ran.out  # the static batch is the default batch size
    records = progress(out)["epochs"]
    # lr per epoch: torch's ReduceLROnPlateau fed the validation cross-entropy
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD([{"params": params[:1], "lr": 0.05}, {"params": params[1:]}], lr=0.2, momentum=0.9)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0, threshold=0.05)
    for record in records:
        np.testing.assert_allclose(record["lr"], [g["lr"] for g in opt.param_groups], rtol=1e-12)
        plateau.step(record["val"]["cross_entropy"])
    # the validation loss is over all 30 samples (the padding of the last batch left out)
    session = optgraph.TrainingSession(out / "checkpoint")
    x = factories.classes(30, seed=3)
    logits = np.concatenate([session.eval(np.repeat(x["input"][i : i + 1], 4, axis=0))[:1] for i in range(30)])
    expected = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(x["target"])).item()
    assert records[-1]["val"]["cross_entropy"] == pytest.approx(expected, rel=1e-5)
    ran = cli("train", artifact, "--data", train, "--epochs", 1, "--batch-size", 8, "--out", tmp_path / "other")
    assert ran.rc == 2 and "compiled for batches of 4" in one_line_error(ran, "train")


def test_one_cycle_steps_after_every_update_and_frozen_layers_stay(frozen_compiled, tmp_path):
    artifact = frozen_compiled[0]
    data = tmp_path / "data.npz"
    np.savez(data, **factories.classes(32))
    out = tmp_path / "run"
    ran = cli("train", artifact, "--data", data, "--epochs", 2, "--batch-size", 4, "--out", out)
    assert ran.rc == 0, ran.err
    assert "schedule stepped every update" in ran.out
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=16)
    lrs = []
    for _ in range(16):
        opt.step()
        schedule.step()
        lrs.append(opt.param_groups[0]["lr"])
    records = progress(out)["epochs"]
    np.testing.assert_allclose([r["lr"] for r in records], [lrs[7], lrs[15]], rtol=1e-12)
    before, after = optgraph.TrainingSession(artifact).state_dict(), checkpoint_state(out)
    np.testing.assert_array_equal(before["0.weight"], after["0.weight"])
    assert not np.array_equal(before["3.weight"], after["3.weight"])


def _variants(folder):
    good = factories.classes(16)
    float_target = {**good, "target": good["target"].astype(np.float32)}
    wide = {**good, "input": np.zeros((16, 5), np.float32)}
    short = {**good, "target": good["target"][:10]}
    out_of_range = {**good, "target": np.full(16, 7, np.int64)}
    (folder / "garbage.npz").write_bytes(b"not a zip file")
    (folder / "garbage.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    (folder / "data.csv").write_text("1,2\n")
    files = {}
    for name, arrays in {"lacks": {"input": good["input"]}, "extra": {**good, "extra": good["target"]},
                         "float": float_target, "wide": wide, "short": short, "range": out_of_range}.items():  # fmt: skip
        files[name] = folder / f"{name}.npz"
        np.savez(files[name], **arrays)
    save_file(float_target, str(folder / "float.safetensors"))
    return files


@pytest.mark.parametrize(
    "which, message",
    [
        ("missing.npz", "missing.npz: no such file"),
        ("data.csv", "expected a .npz or .safetensors file"),
        ("garbage.npz", "not an .npz archive"),
        ("garbage.safetensors", "cannot read it as safetensors"),
        ("lacks", "lacks 'target'; it holds ['input'], and the artifact takes input 'input' (float32[batch, 4]), "
                  "target 'target' (int64[batch])"),
        ("extra", "holds 'extra', which the artifact does not take"),
        ("float", "target 'target' is float32; the artifact takes int64"),
        ("float.safetensors", "target 'target' is float32; the artifact takes int64"),
        ("wide", "input 'input' has shape [16, 5]; the artifact takes float32[batch, 4]"),
        ("short", "every array needs the same number of samples along dim 0; found 'input' 16, 'target' 10"),
        ("range", "target 'target' holds 7 at [0] (16 value(s) out of range)"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("flag", ["--data", "--val"])
def test_data_that_does_not_fit_is_one_line_and_exit_2(artifact, data_files, tmp_path, which, message, flag):
    files = _variants(tmp_path)
    path = files.get(which, tmp_path / which)
    data = ["--data", path] if flag == "--data" else ["--data", data_files[0], "--val", path]
    ran = cli("train", artifact, *data, "--epochs", 1, "--out", tmp_path / "run")
    assert ran.rc == 2, ran.err
    error = one_line_error(ran, "train")
    assert error.startswith(f"optgraph train: {flag} ") and message in error, error
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_runs_are_not_overwritten_nor_resumed_from_nothing(artifact, data_files, tmp_path):
    train, _ = data_files
    out = tmp_path / "run"
    ran = cli("train", artifact, "--data", train, "--out", out)
    assert ran.rc == 2 and "give --epochs N" in one_line_error(ran, "train")
    ran = cli("train", artifact, "--data", train, "--epochs", 1, "--out", out, "--resume")
    assert ran.rc == 2 and "nothing to resume" in one_line_error(ran, "train")
    assert cli("train", artifact, "--data", train, "--epochs", 1, "--out", out, "--no-plot").rc == 0
    ran = cli("train", artifact, "--data", train, "--epochs", 2, "--out", out)
    assert ran.rc == 2 and "holds a training run already: pass --resume" in one_line_error(ran, "train")
    ran = cli("train", artifact, "--data", train, "--epochs", 2, "--out", out, "--resume", "--seed", 5)
    assert ran.rc == 2 and "--seed 5 differs from the run being resumed (0)" in one_line_error(ran, "train")
    ran = cli("train", artifact, "--data", train, "--val", data_files[1], "--epochs", 2, "--out", out, "--resume")
    assert ran.rc == 2 and "the run being resumed had no --val" in one_line_error(ran, "train")
    ran = cli("train", artifact, "--epochs", 1)
    assert ran.rc == 2 and "the following arguments are required: --data" in one_line_error(ran, "train")
