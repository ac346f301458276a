"""Every zoo model and loss: gradients at two batch sizes from one compile, then 10 optimizer steps, as torch."""

from __future__ import annotations

import copy

import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from models import assert_close, assert_state_matches
from zoo import LOSSES, MODELS, Case

import optgraph
from optgraph import optim
from optgraph.api import build_artifact
from optgraph.capture import capture

CASES = {**MODELS, **{f"loss-{k}": v for k, v in LOSSES.items()}}


def _torch_grads(model, case: Case, inputs, targets):
    model = copy.deepcopy(model).train()
    loss = case.loss(model(*inputs), *targets)
    loss.backward()
    grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)) for n, p in model.named_parameters()}
    return loss, grads, dict(model.named_buffers())


@pytest.mark.parametrize("name", list(CASES), ids=list(CASES))
def test_zoo_matches_torch(name):
    case = CASES[name]
    torch.manual_seed(0)
    model = case.make()
    gen = torch.Generator().manual_seed(0)
    captured = capture(model, case.inputs(4, gen), case.targets(4, gen), case.loss)
    proto = ir.to_proto(captured.train)
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    for batch in (3, 6):
        inputs, targets = case.inputs(batch, gen), case.targets(batch, gen)
        feeds = dict(zip(captured.data_names + captured.target_names, (t.numpy() for t in inputs + targets)))
        got = dict(zip(outputs, session.run(None, {**feeds, **captured.state})))
        loss, grads, buffers = _torch_grads(model, case, inputs, targets)
        assert_close(got["loss"], loss, f"loss at batch {batch}")
        for param in captured.trainable:
            assert_close(got[f"grad.{param}"], grads[param], f"grad of {param} at batch {batch}")
        for buffer in captured.updated_buffers:
            assert_close(got[f"{buffer}.next"], buffers[buffer], f"{buffer} at batch {batch}")

    artifact = build_artifact(captured, optim.SGD(lr=0.02, momentum=0.9))
    trainer = optgraph.TrainingSession(artifact, providers=["CPUExecutionProvider"])
    reference = copy.deepcopy(model)
    torch_opt = torch.optim.SGD([p for p in reference.parameters() if p.requires_grad], lr=0.02, momentum=0.9)
    for step in range(10):
        inputs, targets = case.inputs(3 + step % 4, gen), case.targets(3 + step % 4, gen)
        ours = trainer.step(*inputs, *targets)
        torch_opt.zero_grad()
        theirs = case.loss(reference(*inputs), *targets)
        theirs.backward()
        torch_opt.step()
        assert_close(ours, theirs, f"loss at step {step}")
        assert_state_matches(trainer, reference, f"after step {step}")
