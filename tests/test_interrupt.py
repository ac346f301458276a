"""A Ctrl-C during a step leaves a consistent state: the step is taken whole, or not at all.

Python raises a KeyboardInterrupt that arrived while onnxruntime ran as the call returns, when the run
has written its in-place state; the session must then take the rest of that step's state too (the
double-buffered counter, say) before the interrupt goes on, or a later save would hold parameters of
step k+1 beside counters of step k.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import optgraph
from optgraph import lr_scheduler, optim
from optgraph.artifact.names import GraphName

CPU = ["CPUExecutionProvider"]


def _compiled(**options):
    """A small BatchNorm MLP with AdamW, compiled with ``options``."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    x, y = torch.randn(8, 6), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    return optgraph.compile(model, (x,), (y,), nn.CrossEntropyLoss(), optimizer=optim.AdamW(lr=0.01), **options)


@pytest.fixture(scope="module")
def artifact():
    return _compiled(lr_scheduler=lr_scheduler.StepLR(2))


def _batches(n):
    rng = np.random.default_rng(1)
    return [(rng.standard_normal((8, 6)).astype(np.float32), rng.integers(0, 3, 8)) for _ in range(n)]


def _state(session):
    return {name: session._store.read(name) for name in session.state_info()}


class _InterruptedAsRunReturns:
    """The runner's onnxruntime session, but the next run raises KeyboardInterrupt as it returns."""

    def __init__(self, session):
        self.session, self.armed = session, True

    def run_with_iobinding(self, binding):
        self.session.run_with_iobinding(binding)
        if self.armed:
            self.armed = False
            raise KeyboardInterrupt

    def __getattr__(self, name):
        return getattr(self.session, name)


class _InterruptedOnce(dict):
    """A state store's dict whose next assignment raises KeyboardInterrupt once, before it is made."""

    armed = True

    def __setitem__(self, key, value):
        if self.armed:
            self.armed = False
            raise KeyboardInterrupt
        super().__setitem__(key, value)


@pytest.mark.parametrize("where", ["as-the-run-returns", "during-the-swap"])
def test_interrupted_step_is_taken_whole(artifact, where):
    batches = _batches(6)
    reference = optgraph.TrainingSession(artifact, providers=CPU)
    session = optgraph.TrainingSession(artifact, providers=CPU)
    for batch in batches[:3]:
        reference.step(*batch)
        session.step(*batch)
    runner = session._runners[GraphName.TRAIN_STEP]
    if where == "as-the-run-returns":
        runner.session = _InterruptedAsRunReturns(runner.session)
    else:
        session._store.values = _InterruptedOnce(session._store.values)
    with pytest.raises(KeyboardInterrupt):
        session.step(*batches[3])
    reference.step(*batches[3])
    for name, value in _state(reference).items():
        np.testing.assert_array_equal(_state(session)[name], value, err_msg=name)
    for batch in batches[4:]:  # and the session trains on, bit-identically
        assert session.step(*batch) == reference.step(*batch)
    session.scheduler_step()
    reference.scheduler_step()
    for name, value in _state(reference).items():
        np.testing.assert_array_equal(_state(session)[name], value, err_msg=name)


# -- the data-parallel step: gradients, then the update, each its own run -----------------------------------


@pytest.fixture(scope="module")
def accumulating():
    return _compiled(grad_accumulation_steps=2)


SPLIT_CASES = {
    # id: (accumulate over 2 calls, the run the interrupt comes out of (None: the first swap), the step is taken)
    "as-the-update-returns": (False, GraphName.UPDATE_STEP, True),
    "as-the-gradients-return": (False, GraphName.GRAD_STEP, False),
    "during-the-swap": (False, None, True),
    "accumulating-as-the-update-returns": (True, GraphName.UPDATE_STEP, True),
    "accumulating-during-a-micro-step-swap": (True, None, True),
}


@pytest.mark.parametrize("case", list(SPLIT_CASES), ids=list(SPLIT_CASES))
def test_interrupted_data_parallel_step_is_taken_whole_or_not_at_all(artifact, accumulating, case):
    """The split step (grad_step, the all-reduce, update_step) on one rank: its state is the fused step's after it,
    or, when the interrupt comes out of grad_step (before the ranks agree on the step), as it was before it."""
    MPI = pytest.importorskip("mpi4py.MPI", reason="mpi4py is not installed: pip install 'optgraph[mpi]'")
    from optgraph import distributed

    accumulate, graph, taken = SPLIT_CASES[case]
    compiled = accumulating if accumulate else artifact
    batches = _batches(9)
    reference = optgraph.TrainingSession(compiled, providers=CPU)
    session = distributed.DataParallelSession(compiled, comm=MPI.COMM_SELF, providers=CPU)
    warm_up = 5 if graph == GraphName.UPDATE_STEP and accumulate else 4  # the interrupted call updates, or not
    for batch in batches[:warm_up]:
        reference.step(*batch)
        session.step(*batch)
    before = _state(session)
    if graph is not None:
        runner = session._runners[graph]
        runner.session = _InterruptedAsRunReturns(runner.session)
    else:
        session._store.values = _InterruptedOnce(session._store.values)
    with pytest.raises(KeyboardInterrupt):
        session.step(*batches[warm_up])
    if not taken:
        for name, value in before.items():
            np.testing.assert_array_equal(_state(session)[name], value, err_msg=name)
        session.step(*batches[warm_up])  # taken now
    reference.step(*batches[warm_up])
    for name, value in _state(reference).items():
        np.testing.assert_array_equal(_state(session)[name], value, err_msg=name)
    for batch in batches[warm_up + 1 :]:  # and the session trains on, bit-identically
        assert session.step(*batch) == reference.step(*batch)
    for name, value in _state(reference).items():
        np.testing.assert_array_equal(_state(session)[name], value, err_msg=name)
