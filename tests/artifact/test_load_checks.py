"""The load checks accept everything optgraph writes, and reject a manifest that disagrees with its graphs."""

from __future__ import annotations

import json

import pytest
import torch
from catalog import OPTIMIZERS, SCHEDULES, construct
from models import make_batch, make_model
from torch import nn

import optgraph
from optgraph import lr_scheduler, optim
from optgraph.api import build_artifact
from optgraph.artifact import Artifact
from optgraph.artifact.names import IN_PLACE_KEY
from optgraph.capture import capture
from optgraph.errors import ArtifactError

# The schedules of lr_scheduler.__all__ whose constructors need arguments; the others are built from defaults.
SCHEDULE_ARGS = {
    "ChainedScheduler": lambda: lr_scheduler.ChainedScheduler([lr_scheduler.LinearLR(), lr_scheduler.StepLR(2)]),
    "CosineAnnealingLR": lambda: lr_scheduler.CosineAnnealingLR(T_max=5),
    "CosineAnnealingWarmRestarts": lambda: lr_scheduler.CosineAnnealingWarmRestarts(T_0=3),
    "ExponentialLR": lambda: lr_scheduler.ExponentialLR(gamma=0.9),
    "MultiStepLR": lambda: lr_scheduler.MultiStepLR(milestones=[1, 3]),
    "OneCycleLR": lambda: lr_scheduler.OneCycleLR(max_lr=0.1, total_steps=10),
    "SequentialLR": lambda: lr_scheduler.SequentialLR(
        [lr_scheduler.LinearLR(), lr_scheduler.ExponentialLR(gamma=0.9)], milestones=[3]
    ),
    "StepLR": lambda: lr_scheduler.StepLR(step_size=2),
}


@pytest.fixture(scope="module")
def captured():
    model = make_model("mlp")
    x, y = make_batch("mlp", 4, torch.Generator().manual_seed(0))
    return capture(model, (x,), (y,), nn.CrossEntropyLoss())


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_artifact_passes_the_load_checks(captured, tmp_path, name):
    optimizer = getattr(optim, name)(param_groups=[{"params": ["*.bias"], "lr": 0.5}])
    artifact = build_artifact(captured, optimizer, clip_grad_norm=1.0, grad_accumulation_steps=2)
    loaded = Artifact.load(artifact.save(tmp_path / name))
    assert loaded.manifest.to_json() != "" and loaded.state.keys() == artifact.state.keys()


@pytest.mark.parametrize("name", SCHEDULES)
def test_every_schedule_artifact_passes_the_load_checks(captured, tmp_path, name):
    schedule = construct(lr_scheduler, name, SCHEDULE_ARGS, "SCHEDULE_ARGS")
    artifact = build_artifact(captured, optim.SGD(lr=0.1, momentum=0.9), schedule)
    optgraph.TrainingSession(artifact.save(tmp_path / name), providers=["CPUExecutionProvider"])


def _edit(directory, edit):
    data = json.loads((directory / "manifest.json").read_text())
    edit(data)
    (directory / "manifest.json").write_text(json.dumps(data))


def _train_output(data, name):
    return next(t for t in data["graphs"]["train_step"]["outputs"] if t["name"] == name)


def _optim_state(data, name="optim.exp_avg.pack0_0"):
    return next(t for t in data["graphs"]["train_step"]["inputs"] if t["name"] == name)


MISMATCHES = {
    "feeds-another-state": (
        lambda d: _train_output(d, "optim.exp_avg.pack0_0.next").update(feeds="optim.exp_avg_sq.pack0_0"),
        r"output 'optim.exp_avg.pack0_0.next' feeds 'optim.exp_avg_sq.pack0_0'; a state output is named",
    ),
    "state-output-without-feeds": (
        lambda d: [_train_output(d, "fc1.weight.next").pop(key, None) for key in ("feeds", IN_PLACE_KEY)],
        r"train_step output 'fc1.weight.next' has role 'param' but feeds no state",
    ),
    "pack-slot-renamed": (
        lambda d: _optim_state(d).update(slot="momentum_buffer"),
        r"'optim.exp_avg.pack0_0' holds a pack \('packed'\), so it must be named optim.<slot>.pack<group>_<k> after "
        r"its 'slot', got 'momentum_buffer'",
    ),
    "pack-with-a-param": (
        lambda d: _optim_state(d).update(param="fc1.bias"),
        r"'optim.exp_avg.pack0_0' has both 'param' and 'packed': it is one parameter's or a pack's",
    ),
    "pack-of-a-buffer": (
        lambda d: _optim_state(d)["packed"].__setitem__(0, "schedule.epoch"),
        r"'optim.exp_avg.pack0_0': 'packed' names 'schedule.epoch', which is not a trainable parameter",
    ),
    "pack-names-a-parameter-twice": (
        lambda d: _optim_state(d)["packed"].__setitem__(1, "fc1.weight"),
        r"'optim.exp_avg.pack0_0': 'packed' must list distinct parameter names, got \['fc1.weight', 'fc1.weight'",
    ),
    "pack-of-another-size": (
        lambda d: _optim_state(d)["packed"].pop(),
        r"'optim.exp_avg.pack0_0' has shape \[484\], but its parameters hold 480 elements: expected \[480\] \(their "
        r"slots end to end\) or \[\] \(one scalar they share\)",
    ),
    "symbolic-dim-made-static": (
        lambda d: d["graphs"]["train_step"]["inputs"][0].update(shape=[1099511627776, 8]),
        r"train_step.onnx: input 'features' has shape \['batch', 8\] in the graph, manifest.json says \[1099511627776, 8\]",
    ),
    "no-loss": (
        lambda d: _train_output(d, "loss").update(role="output"),
        r"train_step output 'loss' has role 'output' but feeds no state",
    ),
    "input-renamed": (
        lambda d: d["graphs"]["eval"]["inputs"][0].update(name="pixels"),
        r"eval.onnx: the graph's inputs do not match manifest.json \(graph only: \['features'\], manifest only: \['pixels'\]\)",
    ),
    "no-schedule-lr": (
        lambda d: [
            g.update(inputs=[t for t in g["inputs"] if t["name"] != "schedule.lr"]) for g in d["graphs"].values()
        ],
        r"feeds 'schedule.lr', which is not a state input",
    ),
    "file-is-the-checkpoint": (
        lambda d: d["graphs"]["eval"].update(file="checkpoint.safetensors"),
        r"must be distinct and not manifest.json/checkpoint.safetensors",
    ),
    "version-true": (lambda d: d.update(version=True), r"format version True is not supported"),
    "aliases-to-nothing": (lambda d: d.update(aliases={"x": "nothing"}), r"'aliases' must map names to parameters"),
    "digest-not-text": (lambda d: d.update(sha256={"eval.onnx": 5}), r"'sha256' must map file names to hex digests"),
    # the train step split at the gradients (data-parallel training)
    "grad-step-alone": (
        lambda d: d["graphs"].pop("update_step"),
        r"graphs has \['grad_step'\] but not \['update_step'\]: the split train step needs both",
    ),
    "grad-step-takes-another-batch": (
        lambda d: _split_tensor(d, "grad_step", "inputs", "features").update(dtype="float64"),
        r"grad_step must take the batch train_step takes",
    ),
    "gradient-of-another-parameter": (
        lambda d: _split_tensor(d, "grad_step", "outputs", "grad.fc1.weight").update(param="fc2.weight"),
        r"gradient 'grad.fc1.weight' must be named grad.<param> after its 'param', a trainable parameter",
    ),
    "update-takes-other-gradients": (
        lambda d: _split_tensor(d, "update_step", "inputs", "grad.fc1.bias").update(shape=[3]),
        r"update_step must take in exactly the gradients grad_step outputs",
    ),
    "no-finite-report": (
        lambda d: _split_tensor(d, "grad_step", "outputs", "finite").update(dtype="float32"),
        r"grad_step must output 'finite', a status bool scalar",
    ),
    "grad-step-writes-in-place": (
        lambda d: d["graphs"]["grad_step"]["outputs"].append(
            dict(_split_tensor(d, "update_step", "outputs", "fc1.bias.next"))
        ),
        r"grad_step's state outputs may not be in_place: a runtime keeps them only once the step is agreed",
    ),
    "split-writes-a-state-twice": (
        lambda d: d["graphs"]["grad_step"]["outputs"].append(
            {k: v for k, v in _split_tensor(d, "update_step", "outputs", "fc1.bias.next").items() if k != "in_place"}
        ),
        r"grad_step and update_step must together read the state train_step reads and each write once what it writes",
    ),
}


def _split_tensor(data, graph, key, name):
    return next(t for t in data["graphs"][graph][key] if t["name"] == name)


@pytest.mark.parametrize("case", list(MISMATCHES), ids=list(MISMATCHES))
def test_manifest_that_disagrees_is_an_artifact_error(mlp_artifact, tmp_path, case):
    directory = mlp_artifact.save(tmp_path / "art")
    edit, message = MISMATCHES[case]
    _edit(directory, edit)
    with pytest.raises(ArtifactError, match=message):
        optgraph.TrainingSession(directory, providers=["CPUExecutionProvider"])


# each parameter with its own update: optimizer state named optim.<slot>.<param>
PER_PARAMETER = {
    "feeds-another-state": (
        lambda d: _train_output(d, "optim.exp_avg.fc1.weight.next").update(feeds="optim.exp_avg_sq.fc1.weight"),
        r"output 'optim.exp_avg.fc1.weight.next' feeds 'optim.exp_avg_sq.fc1.weight'; a state output is named",
    ),
    "slot-renamed": (
        lambda d: _optim_state(d, "optim.exp_avg.fc1.weight").update(slot="momentum_buffer"),
        r"must be named optim.<slot>.<param> after its 'slot' and 'param'",
    ),
}


@pytest.fixture(scope="module")
def unpacked_artifact():
    """The MLP artifact with one update per parameter (small parameters are packed by default)."""
    from optgraph.rewrite import attach_optimizer

    model = make_model("mlp")
    x, y = make_batch("mlp", 4, torch.Generator().manual_seed(0))
    attach_optimizer.PACKING = False
    try:
        return optgraph.compile(model, (x,), (y,), nn.CrossEntropyLoss(), optimizer=optim.Adam(lr=0.01, amsgrad=True))
    finally:
        attach_optimizer.PACKING = True


@pytest.mark.parametrize("case", list(PER_PARAMETER), ids=list(PER_PARAMETER))
def test_per_parameter_state_that_disagrees_is_an_artifact_error(unpacked_artifact, tmp_path, case):
    directory = unpacked_artifact.save(tmp_path / "art")
    edit, message = PER_PARAMETER[case]
    _edit(directory, edit)
    with pytest.raises(ArtifactError, match=message):
        optgraph.TrainingSession(directory, providers=["CPUExecutionProvider"])


def test_a_slot_held_twice_is_an_artifact_error(mlp_artifact, tmp_path):
    pack = _optim_state(json.loads(mlp_artifact.manifest.to_json()))
    assert pack["packed"][:2] == ["fc1.weight", "fc1.bias"]
    own = {"name": "optim.exp_avg.fc1.bias", "role": "optim_state", "dtype": "float32", "shape": [16]}
    own |= {"param": "fc1.bias", "slot": "exp_avg"}
    directory = mlp_artifact.save(tmp_path / "art")
    _edit(directory, lambda d: d["graphs"]["train_step"]["inputs"].append(own))
    with pytest.raises(
        ArtifactError,
        match=r"slot 'exp_avg' of 'fc1.bias' is held by both 'optim.exp_avg.pack0_0' and 'optim.exp_avg.fc1.bias'",
    ):
        Artifact.load(directory)


@pytest.mark.parametrize("file", ["train_step.onnx", "eval.onnx", "checkpoint.safetensors"])
def test_any_changed_byte_fails_the_digest(mlp_artifact, tmp_path, file):
    directory = mlp_artifact.save(tmp_path / "art")
    data = bytearray((directory / file).read_bytes())
    data[len(data) // 2] ^= 0x01
    (directory / file).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=rf"{file}: contents do not match the sha256 in manifest.json"):
        Artifact.load(directory)


def test_sparse_initializers_and_functions_may_not_point_outside(mlp_artifact, tmp_path):
    import onnx

    def external(name):
        tensor = onnx.helper.make_tensor(name, onnx.TensorProto.FLOAT, [2], [0.0, 0.0])
        tensor.ClearField("float_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        tensor.external_data.add(key="location", value="../secret.bin")
        return tensor

    def add_sparse(model):
        indices = onnx.helper.make_tensor("idx", onnx.TensorProto.INT64, [1], [0])
        model.graph.sparse_initializer.append(onnx.helper.make_sparse_tensor(external("sparse"), indices, [4]))

    def add_function(model):
        node = onnx.helper.make_node("Constant", [], ["c"], value=external("in_function"))
        function = onnx.helper.make_function("local", "leak", [], ["c"], [node], [onnx.helper.make_opsetid("", 18)])
        model.functions.append(function)

    for edit in (add_sparse, add_function):
        directory = mlp_artifact.save(tmp_path / edit.__name__)
        _edit(directory, lambda d: d.pop("sha256"))
        model = onnx.load(directory / "eval.onnx")
        edit(model)
        onnx.save(model, directory / "eval.onnx")
        with pytest.raises(ArtifactError, match=r"eval.onnx: tensor .* points to external data '../secret.bin'"):
            Artifact.load(directory)
