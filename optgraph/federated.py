"""Federated training with Flower: a client that trains a :class:`~optgraph.TrainingSession` on local data.

The client exchanges the model as a list of numpy arrays in the manifest's
order (:func:`parameter_names`): every trainable parameter, then, with
``exchange="params+buffers"``, every floating-point buffer (BatchNorm's running
statistics; integer counters such as ``num_batches_tracked`` stay local, since
averaging would turn them into floats). The server's strategy (Flower's
FedAvg, FedProx, FedAdam, ...) averages them; nothing here is server side.

Each round, :meth:`FlowerClient.fit` loads the arrays the server sent into the
running session (checked, all or nothing), trains for the configured epochs
or steps and returns the new arrays, the examples it trained on and its
metrics. The optimizer state stays in the session, on its device, from round
to round, unless ``reset_optimizer`` asks for a fresh one each round. An
artifact compiled with ``proximal_mu`` (FedProx) minimizes
``loss + mu/2 * ||w - w_global||^2``: ``fit`` sets ``w_global`` to the
arrays received. Needs ``pip install optgraph[federated]``; never imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from flwr.client import ClientApp, NumPyClient

from optgraph.artifact.names import (
    DATA_INPUTS_KEY,
    DYNAMIC_BATCH_KEY,
    OPTIM_STATE_PREFIX,
    PROXIMAL_MU_KEY,
    STEP_COUNTER,
    TARGETS_KEY,
    TRAINABLE_KEY,
    Role,
    global_param_name,
)
from optgraph.cli.metrics import METRICS, Accumulator, auto
from optgraph.errors import NonFiniteError
from optgraph.session import TrainingSession

if TYPE_CHECKING:
    from optgraph.artifact import Manifest

EXCHANGES = ("params", "params+buffers")
# keys of the server's config that a round may set (Flower's config values are scalars)
LOCAL_EPOCHS, LOCAL_STEPS, BATCH_SIZE, RESET_OPTIMIZER = "local_epochs", "local_steps", "batch_size", "reset_optimizer"


def parameter_names(manifest: Manifest, exchange: str = "params") -> list[str]:
    """The names of the arrays a client exchanges, in their order: the manifest's order of its state.

    ``"params"``: the trainable parameters; ``"params+buffers"``: those, then the floating-point buffers.
    A runtime in another language takes part in the same federation by sending and receiving its
    arrays in this order (see examples/federated/README.md).
    """
    if exchange not in EXCHANGES:
        raise ValueError(f"exchange must be one of {', '.join(map(repr, EXCHANGES))}, got {exchange!r}")
    specs = manifest.state_specs().values()
    names = [t.name for t in specs if t.role == Role.PARAM and t.meta.get(TRAINABLE_KEY, True)]
    if exchange == "params+buffers":
        names += [t.name for t in specs if t.role == Role.BUFFER and np.dtype(t.dtype).kind == "f"]
    return names


def _arrays(data, what: str) -> tuple[np.ndarray, ...]:
    if data is None:
        return ()
    if not isinstance(data, (tuple, list)) or not data:
        raise TypeError(f"{what} must be a tuple of arrays (inputs, then targets), got {type(data).__name__}")
    arrays = tuple(np.asarray(a) for a in data)
    sizes = {len(a) for a in arrays}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(f"{what}: the arrays must have one non-zero length (dim 0), got {[len(a) for a in arrays]}")
    return arrays


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


class FlowerClient(NumPyClient):
    """A Flower ``NumPyClient`` that trains ``session`` on local data.

    Args:
        session: a :class:`~optgraph.TrainingSession` (its artifact decides the model, loss and optimizer).
        train: ``(*inputs, *targets)`` arrays of the client's training data, equal in length.
        val: the same for :meth:`evaluate`, or None to evaluate on ``train``.
        local_epochs: passes over ``train`` per round (a round's ``config["local_epochs"]`` overrides it).
        batch_size: examples per step (``config["batch_size"]`` overrides it). An artifact with a static
            batch dimension drops the last partial batch.
        shuffle: a new order of ``train`` each epoch, from ``seed``.
        seed: the seed of the shuffling.
        exchange: ``"params"`` (trainable parameters) or ``"params+buffers"`` (and floating-point buffers).
        local_steps: train this many steps per round instead of whole epochs (``config["local_steps"]``
            overrides it; a round's ``config["local_epochs"]`` alone goes back to epochs).
        reset_optimizer: start each round with the optimizer state (and step count) the session had when
            the client was made, instead of keeping it (``config["reset_optimizer"]`` overrides it).
        metrics: the names of the :meth:`evaluate` metrics (``optgraph.cli.metrics``: ``cross_entropy``,
            ``accuracy``, ``mse``, ...); None picks them from the data as ``optgraph train`` does. The
            first is the loss Flower receives.
    """

    def __init__(
        self,
        session: TrainingSession,
        train: Sequence[np.ndarray],
        val: Sequence[np.ndarray] | None = None,
        local_epochs: int = 1,
        batch_size: int = 32,
        shuffle: bool = True,
        seed: int = 0,
        exchange: str = "params",
        *,
        local_steps: int | None = None,
        reset_optimizer: bool = False,
        metrics: Sequence[str] | None = None,
    ) -> None:
        if not isinstance(session, TrainingSession):
            raise TypeError(f"session must be an optgraph.TrainingSession, got {type(session).__name__}")
        self.session = session
        manifest = session.manifest
        self.names = parameter_names(manifest, exchange)
        self.exchange = exchange
        self.train = _arrays(train, "train")
        self.val = _arrays(val, "val") or self.train
        self._input_count = len(manifest.extra[DATA_INPUTS_KEY])
        count = self._input_count + len(manifest.extra[TARGETS_KEY])
        if len(self.train) != count or len(self.val) != count:
            raise ValueError(
                f"train and val must hold {count} arrays each (the artifact's inputs, then targets), "
                f"got {len(self.train)} and {len(self.val)}"
            )
        self.local_epochs = _positive_int(local_epochs, "local_epochs")
        self.local_steps = None if local_steps is None else _positive_int(local_steps, "local_steps")
        self.batch_size = _positive_int(batch_size, "batch_size")
        self.shuffle = bool(shuffle)
        self.reset_optimizer = bool(reset_optimizer)
        self.metrics = None if metrics is None else list(metrics)
        unknown = [m for m in self.metrics or [] if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; choose from {', '.join(METRICS)}")
        self._rng = np.random.default_rng(seed)
        self._dynamic = bool(manifest.extra.get(DYNAMIC_BATCH_KEY, True))
        self._proximal = manifest.extra.get(PROXIMAL_MU_KEY) is not None
        optimizer = [n for n in session.state_info() if n.startswith(OPTIM_STATE_PREFIX) or n == STEP_COUNTER]
        self._fresh_optimizer = session.read_state(optimizer)

    # -- the arrays ---------------------------------------------------------------------------------------
    def get_parameters(self, config: dict) -> list[np.ndarray]:
        """The session's arrays in :func:`parameter_names` order (copies)."""
        state = self.session.read_state(self.names)
        return [state[name] for name in self.names]

    def _checked(self, parameters: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """The arrays by name, each of the session's dtype and shape, or a ValueError naming the first bad one."""
        if parameters is None or len(parameters) != len(self.names):
            got = "None" if parameters is None else len(parameters)
            raise ValueError(
                f"the server sent {got} arrays, this client exchanges {len(self.names)} "
                f"(exchange={self.exchange!r}: {', '.join(self.names)}); is the server's model another one?"
            )
        info = self.session.state_info()
        arrays = {}
        for index, (name, value) in enumerate(zip(self.names, parameters)):
            array = np.asarray(value)
            expected = info[name]
            if tuple(array.shape) != expected.shape or array.dtype != np.dtype(expected.dtype):
                raise ValueError(
                    f"array {index} from the server ({name}) is {array.dtype}{list(array.shape)}, "
                    f"expected {expected.dtype}{list(expected.shape)}; the session's state is unchanged"
                )
            arrays[name] = array
        return arrays

    def _load(self, parameters: Sequence[np.ndarray], anchor: bool) -> None:
        arrays = self._checked(parameters)
        if anchor and self._proximal:  # FedProx: w_global is what the server sent, set in the same write
            arrays |= {global_param_name(n): a for n, a in arrays.items() if global_param_name(n) in self._globals}
        self.session.load_state(arrays)

    @property
    def _globals(self) -> set[str]:
        return {t.name for t in self.session.manifest.state_specs().values() if t.role == Role.GLOBAL_PARAM}

    # -- training -----------------------------------------------------------------------------------------
    def _batches(self, arrays: tuple[np.ndarray, ...], batch_size: int, shuffle: bool):
        n = len(arrays[0])
        order = self._rng.permutation(n) if shuffle else np.arange(n)
        stop = n if self._dynamic else n - n % batch_size
        for start in range(0, stop, batch_size):
            index = order[start : start + batch_size]
            yield tuple(a[index] for a in arrays)

    def fit(self, parameters: Sequence[np.ndarray], config: dict) -> tuple[list[np.ndarray], int, dict]:
        """Load the server's arrays, train locally, return ``(arrays, examples trained on, metrics)``.

        ``config`` may set ``local_epochs``, ``local_steps``, ``batch_size`` and ``reset_optimizer`` for this
        round. Metrics: ``train_loss`` (the mean step loss; with FedProx it includes the proximal term),
        ``steps``, ``skipped_steps`` (non-finite ones, whose update the session skipped).
        """
        config = config or {}
        batch_size = _positive_int(config.get(BATCH_SIZE, self.batch_size), BATCH_SIZE)
        epochs = _positive_int(config.get(LOCAL_EPOCHS, self.local_epochs), LOCAL_EPOCHS)
        steps = config.get(LOCAL_STEPS, None if LOCAL_EPOCHS in config else self.local_steps)
        steps = None if steps is None else _positive_int(steps, LOCAL_STEPS)
        reset = bool(config.get(RESET_OPTIMIZER, self.reset_optimizer))
        self._load(parameters, anchor=True)
        if reset:
            self.session.load_state(self._fresh_optimizer)
        losses, skipped, seen = [], 0, 0
        done = False
        while not done:
            for batch in self._batches(self.train, batch_size, self.shuffle):
                try:
                    losses.append(self.session.step(*batch))
                except NonFiniteError:
                    skipped += 1
                seen += len(batch[0])
                if steps is not None and len(losses) + skipped >= steps:
                    done = True
                    break
            epochs -= 1
            done = done or (steps is None and epochs == 0)
            if seen == 0:
                raise ValueError(f"no batch of {batch_size} in {len(self.train[0])} examples (static batch size)")
        metrics = {"train_loss": float(np.mean(losses)) if losses else float("nan"), "steps": len(losses) + skipped}
        metrics["skipped_steps"] = skipped
        return self.get_parameters({}), seen, metrics

    def evaluate(self, parameters: Sequence[np.ndarray], config: dict) -> tuple[float, int, dict]:
        """Load the server's arrays and evaluate on the local ``val`` data: ``(loss, examples, metrics)``."""
        config = config or {}
        self._load(parameters, anchor=False)
        batch_size = _positive_int(config.get(BATCH_SIZE, self.batch_size), BATCH_SIZE)
        inputs, seen = self._input_count, 0
        accumulator = None
        for batch in self._batches(self.val, batch_size, shuffle=False):
            seen += len(batch[0])
            outputs = self.session.eval(*batch[:inputs])
            output = outputs[0] if isinstance(outputs, tuple) else outputs
            if accumulator is None:
                accumulator = Accumulator(self.metrics or auto(output, batch[inputs]))
            accumulator.add(output, batch[inputs])
        if accumulator is None:
            raise ValueError(f"no batch of {batch_size} in {len(self.val[0])} examples (static batch size)")
        result = accumulator.result()
        return float(result[accumulator.names[0]]), seen, result


def client_app(make_client: Callable) -> ClientApp:
    """A Flower ``ClientApp`` from ``make_client(context)``, a function of the Flower ``Context``.

    ``make_client`` returns a :class:`FlowerClient` (any ``NumPyClient``); it typically opens the
    artifact and reads this node's data partition from ``context.node_config`` (``partition-id``,
    ``num-partitions``). The same app runs in Flower's simulation engine and on SuperNodes.
    """
    if not callable(make_client):
        raise TypeError(f"make_client must be a function of the Flower Context, got {type(make_client).__name__}")

    def client_fn(context):
        client = make_client(context)
        if not isinstance(client, NumPyClient):
            raise TypeError(f"make_client returned {type(client).__name__}, not a FlowerClient (a NumPyClient)")
        return client.to_client()

    return ClientApp(client_fn=client_fn)
