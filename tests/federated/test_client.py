"""optgraph.federated.FlowerClient: FedAvg exactness, the exchange, bad arrays, optimizer state, no torch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from models import assert_close, clone, make_batch, make_model
from torch import nn

import optgraph
from optgraph import optim
from optgraph.artifact.names import global_param_name

pytest.importorskip("flwr")
from flwr.server.strategy.aggregate import aggregate  # noqa: E402 - after the skip

from optgraph import federated  # noqa: E402

CPU = ["CPUExecutionProvider"]
ROOT = Path(__file__).resolve().parents[2]
LR = 0.1


def _data(kind, clients, size, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [tuple(t.numpy() for t in make_batch(kind, size, gen)) for _ in range(clients)]


@pytest.fixture(scope="module")
def mlp_sgd():
    model = make_model("mlp")
    x, y = make_batch("mlp", 4, torch.Generator().manual_seed(0))
    return model, optgraph.compile(model, (x,), (y,), nn.CrossEntropyLoss(), optim.SGD(lr=LR))


@pytest.fixture(scope="module")
def cnn_momentum():
    model = make_model("cnn")
    x, y = make_batch("cnn", 4, torch.Generator().manual_seed(0))
    artifact = optgraph.compile(model, (x,), (y,), nn.CrossEntropyLoss(), optim.SGD(lr=LR, momentum=0.9))
    return model, artifact


def _client(artifact, data, **options):
    return federated.FlowerClient(optgraph.TrainingSession(artifact, providers=CPU), train=data, **options)


def test_one_fedavg_round_equals_one_centralized_sgd_step_on_the_union(mlp_sgd):
    model, artifact = mlp_sgd
    size, parts = 8, _data("mlp", 3, 8)
    clients = [_client(artifact, part, batch_size=size, shuffle=False) for part in parts]
    weights = clients[0].get_parameters({})
    assert [w.shape for w in weights] == [tuple(p.shape) for p in model.parameters()]
    for _ in range(2):  # two rounds: each one step on the union
        results = [client.fit(weights, {}) for client in clients]
        assert [r[1] for r in results] == [size] * 3
        weights = aggregate([(params, examples) for params, examples, _ in results])
    # the same two steps, centralized, in torch
    reference = clone(model)
    opt = torch.optim.SGD(reference.parameters(), lr=LR)
    x = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    y = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    for _ in range(2):
        opt.zero_grad()
        nn.CrossEntropyLoss()(reference(x), y).backward()
        opt.step()
    for name, got, want in zip(federated.parameter_names(artifact.manifest), weights, reference.parameters()):
        assert_close(got, want, name, rtol=1e-5, atol=1e-7)


def test_fit_reports_examples_and_metrics_and_the_server_config_overrides(mlp_sgd):
    _, artifact = mlp_sgd
    (data,) = _data("mlp", 1, 20)
    client = _client(artifact, data, batch_size=8, local_epochs=1)
    weights = client.get_parameters({})
    params, seen, metrics = client.fit(weights, {})
    assert seen == 20 and metrics["steps"] == 3 and metrics["skipped_steps"] == 0
    assert np.isfinite(metrics["train_loss"])
    _, seen, metrics = client.fit(weights, {"local_epochs": 2, "batch_size": 5})
    assert (seen, metrics["steps"]) == (40, 8)
    _, seen, metrics = client.fit(weights, {"local_steps": 5, "batch_size": 4})
    assert (seen, metrics["steps"]) == (20, 5)
    loss, count, metrics = client.evaluate(params, {})
    assert count == 20 and set(metrics) == {"cross_entropy", "accuracy"} and loss == metrics["cross_entropy"]
    with pytest.raises(ValueError, match="local_epochs"):
        client.fit(weights, {"local_epochs": 0})


def test_buffers_travel_with_params_plus_buffers(cnn_momentum):
    _, artifact = cnn_momentum
    params = federated.parameter_names(artifact.manifest)
    both = federated.parameter_names(artifact.manifest, "params+buffers")
    assert both[: len(params)] == params
    assert both[len(params) :] == ["bn1.running_mean", "bn1.running_var"]  # num_batches_tracked stays local
    (data,) = _data("cnn", 1, 8)
    client = _client(artifact, data, exchange="params+buffers")
    sent = client.get_parameters({})
    sent[len(params)] = np.full_like(sent[len(params)], 3.0)
    client.evaluate(sent, {})
    np.testing.assert_array_equal(client.session.state_dict()["bn1.running_mean"], 3.0)
    with pytest.raises(ValueError, match="exchange"):
        federated.parameter_names(artifact.manifest, "everything")


def _bad(case, weights):
    weights = list(weights)
    if case == "count":
        return weights[:-1]
    if case == "shape":
        weights[1] = weights[1][:-1]
        return weights
    if case == "dtype":
        weights[0] = weights[0].astype(np.float64)
        return weights
    return None


@pytest.mark.parametrize("case", ["count", "shape", "dtype", "none"])
@pytest.mark.parametrize("method", ["fit", "evaluate"])
def test_a_bad_array_from_the_server_is_a_clear_error_and_the_state_is_untouched(cnn_momentum, case, method):
    _, artifact = cnn_momentum
    (data,) = _data("cnn", 1, 8)
    client = _client(artifact, data, exchange="params+buffers")
    client.fit(client.get_parameters({}), {})  # optimizer state to keep
    before = client.session.read_state()
    sent = _bad(case, [w + 1 for w in client.get_parameters({})])
    match = {
        "count": "sent 8 arrays, this client exchanges 9",
        "none": "sent None",
        "shape": r"array 1 .*expected",
        "dtype": "float64",
    }[case]
    with pytest.raises(ValueError, match=match):
        getattr(client, method)(sent, {})
    after = client.session.read_state()
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)


def test_the_optimizer_state_is_kept_between_rounds_or_reset(cnn_momentum):
    _, artifact = cnn_momentum
    (data,) = _data("cnn", 1, 8)
    kept = _client(artifact, data, shuffle=False)
    reset = _client(artifact, data, shuffle=False, reset_optimizer=True)
    weights = kept.get_parameters({})
    first = [kept.fit(weights, {})[0], reset.fit(weights, {})[0]]
    for a, b in zip(*first):
        np.testing.assert_array_equal(a, b)
    again_reset = reset.fit(weights, {})[0]
    again_kept = kept.fit(weights, {})[0]
    for a, b in zip(first[1], again_reset):  # a fresh optimizer: the same round again
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first[0], again_kept))  # momentum carried over
    assert kept.session.optimizer_state_dict()
    again = reset.fit(weights, {"reset_optimizer": False})[0]
    assert any(not np.array_equal(a, b) for a, b in zip(first[0], again))


def test_fedprox_fit_sets_the_global_weights_to_those_received():
    model = make_model("mlp")
    x, y = make_batch("mlp", 8, torch.Generator().manual_seed(0))
    artifact = optgraph.compile(model, (x,), (y,), nn.CrossEntropyLoss(), optim.SGD(lr=LR), proximal_mu=0.5)
    client = _client(artifact, (x.numpy(), y.numpy()), batch_size=8, shuffle=False)
    received = [w + 0.1 for w in client.get_parameters({})]
    params, _, metrics = client.fit(received, {})
    names = federated.parameter_names(artifact.manifest)
    state = client.session.read_state([global_param_name(n) for n in names])
    for name, value in zip(names, received):
        np.testing.assert_array_equal(state[global_param_name(name)], value)
    # one step from w_global itself: the term and its gradient are zero, so plain SGD on the loss
    reference = clone(model)
    with torch.no_grad():
        for p, value in zip(reference.parameters(), received):
            p.copy_(torch.from_numpy(value))
    loss = nn.CrossEntropyLoss()(reference(x), y)
    loss.backward()
    assert metrics["train_loss"] == pytest.approx(loss.item(), rel=1e-5)
    for got, p in zip(params, reference.parameters()):
        assert_close(got, p.detach() - LR * p.grad, "param", rtol=1e-5, atol=1e-7)


def test_a_client_never_imports_torch(mlp_sgd, tmp_path):
    _, artifact = mlp_sgd
    artifact.save(tmp_path / "artifact")
    script = textwrap.dedent(
        f"""
        import sys

        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("a federated client imported " + name)

        sys.meta_path.insert(0, NoTorch())
        import numpy as np
        import optgraph
        from optgraph import federated

        session = optgraph.TrainingSession({str(tmp_path / "artifact")!r}, providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        data = (rng.normal(size=(12, 8)).astype(np.float32), rng.integers(0, 4, 12))
        client = federated.FlowerClient(session, train=data, batch_size=4)
        params, seen, metrics = client.fit(client.get_parameters({{}}), {{"local_epochs": 2}})
        loss, count, _ = client.evaluate(params, {{}})
        app = federated.client_app(lambda context: client)
        assert seen == 24 and count == 12 and np.isfinite(loss)
        assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
        print("ok")
        """
    )
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr
