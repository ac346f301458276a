"""Turn a torch model and its loss into the joint train graph and the eval graph."""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir
import torch
from torch.func import functional_call
from torch.utils import _pytree as pytree

from optgraph.artifact.dims import SymbolBounds
from optgraph.artifact.index_range import IndexRange
from optgraph.artifact.names import LOSS, grad_name, next_name, output_names, target_names
from optgraph.capture.diagnostics import ModuleTracker
from optgraph.capture.graph_io import drop_unchanged_buffers, name_io, set_shapes
from optgraph.capture.patches import traceable_modules
from optgraph.capture.symbols import BATCH_DIM, name_outputs, name_symbols, requested_dims
from optgraph.capture.trace import trace_to_onnx
from optgraph.errors import CaptureError


@dataclass
class Captured:
    """What compile needs from torch, as graphs and numpy arrays.

    Attributes:
        train: inputs ``[*data, *targets, *params, *buffers]`` named as in
            ``data_names``/``target_names``/torch; outputs ``LOSS``, the
            ``grad_name(param)`` of each trainable param and the ``next_name(buffer)``
            of each buffer the forward updates (:mod:`optgraph.artifact.names`).
        eval: inputs ``[*data, *params, *buffers]``; outputs named by ``output_names``.
        state: initial value of every parameter and buffer, by torch name.
        aliases: second names of shared tensors (tied weights) -> the name used in the graphs.
        shapes: each data input's and target's shape in the train graph: ints, symbol names and
            expressions of them (``"batch*seq"``); the eval graph's inputs have the same.
        symbols: the bounds of every symbol the shapes use, by name.
        train_index_ranges: input or target name -> the values it may hold in the train step,
            for those that index something (class targets, token ids).
        eval_index_ranges: the same for the inputs of the eval forward.
    """

    train: ir.Model
    eval: ir.Model
    data_names: list[str]
    target_names: list[str]
    trainable: list[str]
    frozen: list[str]
    buffers: list[str]
    updated_buffers: list[str]
    output_names: list[str]
    state: dict[str, np.ndarray]
    aliases: dict[str, str]
    shapes: dict[str, list[int | str]] = field(default_factory=dict)
    symbols: dict[str, SymbolBounds] = field(default_factory=dict)
    train_index_ranges: dict[str, IndexRange] = field(default_factory=dict)
    eval_index_ranges: dict[str, IndexRange] = field(default_factory=dict)


def _as_tensor_tuple(values, what: str) -> tuple[torch.Tensor, ...]:
    if isinstance(values, torch.Tensor):
        values = (values,)
    if not isinstance(values, (tuple, list)) or not all(isinstance(v, torch.Tensor) for v in values):
        raise CaptureError(f"{what} must be a tuple of torch tensors, got {type(values).__name__}")
    return tuple(v.detach() for v in values)


def data_input_names(model: torch.nn.Module, count: int) -> list[str]:
    """Names of the first ``count`` positional parameters of ``model.forward``."""
    names = []
    for p in inspect.signature(model.forward).parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            names.append(p.name)
        elif p.kind == p.VAR_POSITIONAL:
            names.extend(f"{p.name}_{i}" for i in range(count - len(names)))
            break
    if len(names) < count:
        raise CaptureError(f"model.forward takes {len(names)} positional argument(s), example_inputs has {count}")
    return names[:count]


def _aliases(model: torch.nn.Module) -> dict[str, str]:
    """Every extra name of a parameter or buffer registered under several names (tied weights)."""
    aliases = {}
    for named in (model.named_parameters, model.named_buffers):
        first: dict[int, str] = {}
        for name, tensor in named(remove_duplicate=False):
            canonical = first.setdefault(id(tensor), name)
            if canonical != name:
                aliases[name] = canonical
    return aliases


def _warn_fixed_by_example(requested, shapes, names, example_sizes) -> None:
    """Warn where a dimension left to the default came out fixed because its example size was 0 or 1."""
    fixed = [
        f"{names[i]!r} dimension {k}"
        for i, dims in enumerate(requested)
        for k in dims
        if isinstance(shapes[i][k], int) and example_sizes[i].shape[k] < 2
    ]
    if fixed:
        warnings.warn(
            f"compile: {', '.join(fixed)} stay fixed at the example's size (torch fixes sizes 0 and 1, and no "
            "larger size fitted the model); give examples of size 2 or more to make them dynamic",
            UserWarning,
            stacklevel=4,  # the line that called capture() (through _trace_train_step)
        )


@dataclass
class _Example:
    """The checked example batch, its names and the dimensions ``compile`` asked to keep dynamic."""

    inputs: tuple[torch.Tensor, ...]
    targets: tuple[torch.Tensor, ...]
    data_names: list[str]
    target_names: list[str]
    requested: list
    user_bounds: dict

    @property
    def names(self) -> list[str]:
        """The data inputs' names, then the targets'."""
        return [*self.data_names, *self.target_names]


@dataclass
class _ModelState:
    """The model's parameters and buffers, in the order the graphs take them."""

    trainable: list[str]
    frozen: list[str]
    buffers: list[str]
    param_values: list[torch.Tensor]
    buffer_values: list[torch.Tensor]
    aliases: dict[str, str]

    @classmethod
    def of(cls, model: torch.nn.Module) -> _ModelState:
        named_params = dict(model.named_parameters())
        trainable = [n for n, p in named_params.items() if p.requires_grad]
        frozen = [n for n, p in named_params.items() if not p.requires_grad]
        return cls(
            trainable=trainable,
            frozen=frozen,
            buffers=[n for n, _ in model.named_buffers()],
            param_values=[named_params[n].detach() for n in trainable + frozen],
            buffer_values=[b.detach() for _, b in model.named_buffers()],
            aliases=_aliases(model),
        )

    @property
    def names(self) -> list[str]:
        return self.trainable + self.frozen + self.buffers

    @property
    def values(self) -> list[torch.Tensor]:
        return [*self.param_values, *self.buffer_values]

    def arrays(self) -> dict[str, np.ndarray]:
        return {n: t.cpu().numpy().copy() for n, t in zip(self.names, self.values)}


@dataclass
class _TrainStep:
    model: ir.Model
    shapes: dict[str, list[int | str]]
    symbols: dict[str, SymbolBounds]
    updated_buffers: list[str]
    index_ranges: dict[str, IndexRange]


@dataclass
class _EvalForward:
    model: ir.Model
    output_names: list[str]
    index_ranges: dict[str, IndexRange]


def _check_inputs(model, example_inputs, example_targets, loss_fn, dynamic_shapes, dynamic_batch) -> _Example:
    if not isinstance(model, torch.nn.Module):
        raise CaptureError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise CaptureError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    inputs = _as_tensor_tuple(example_inputs, "example_inputs")
    targets = _as_tensor_tuple(example_targets, "example_targets")
    data_names = data_input_names(model, len(inputs))
    tnames = target_names(len(targets))
    requested, user_bounds = requested_dims(dynamic_shapes, dynamic_batch, data_names + tnames, inputs + targets)
    return _Example(inputs, targets, data_names, tnames, requested, user_bounds)


@contextlib.contextmanager
def _tracing(model: torch.nn.Module) -> Iterator[ModuleTracker]:
    """Traceable module forwards and a :class:`ModuleTracker` over ``model`` while active.

    On exit every submodule gets back its own ``training`` flag (``model.train(mode)`` would set them all alike).
    """
    modes = [(module, module.training) for module in model.modules()]
    try:
        with traceable_modules(model), ModuleTracker(model) as tracker:
            yield tracker
    finally:
        for module, training in modes:
            module.training = training


def _train_step_function(model: torch.nn.Module, loss_fn: Callable, example: _Example, state: _ModelState):
    """``(*data, *targets, *params, *buffers) -> (loss, *gradients, *next buffers)`` over ``model``."""
    n_inputs = len(example.inputs)
    n_data = n_inputs + len(example.targets)
    params_end = n_data + len(state.param_values)

    def train_step(*flat):
        data, tgt = flat[:n_inputs], flat[n_inputs:n_data]
        params = dict(zip(state.trainable + state.frozen, flat[n_data:params_end]))
        for name in state.trainable:
            params[name] = params[name].detach().requires_grad_(True)
        buffers = {n: b.clone() for n, b in zip(state.buffers, flat[params_end:])}
        with torch.enable_grad():
            outputs = functional_call(model, {**params, **buffers}, tuple(data))
            loss = loss_fn(outputs, *tgt)
            if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
                shape = (
                    tuple(d if isinstance(d, int) else BATCH_DIM for d in loss.shape)
                    if isinstance(loss, torch.Tensor)
                    else type(loss).__name__
                )
                raise CaptureError(f"loss_fn must return a scalar tensor, got {shape}")
            grads = torch.autograd.grad(loss, [params[n] for n in state.trainable], allow_unused=True)
        grads = [torch.zeros_like(params[n]) if g is None else g for n, g in zip(state.trainable, grads)]
        return (loss.detach(), *grads, *buffers.values())

    return train_step


def _trace_train_step(
    model: torch.nn.Module, loss_fn: Callable, example: _Example, state: _ModelState, tracker: ModuleTracker
) -> _TrainStep:
    """The joint forward, loss and backward as the named train graph, with the symbols of its dynamic inputs.

    Every submodule runs in the mode it is in, as torch would train it (a BatchNorm put in eval() keeps its
    running statistics frozen).
    """
    names = example.names
    traced = trace_to_onnx(
        _train_step_function(model, loss_fn, example, state),
        [*example.inputs, *example.targets, *state.values], example.requested, "train step", tracker,
    )  # fmt: skip
    named = name_symbols(traced.shapes, names, example.requested, traced.ranges, traced.why_fixed, example.user_bounds)
    _warn_fixed_by_example(example.requested, named.shapes, names, example_sizes=[*example.inputs, *example.targets])
    train = traced.model
    name_io(
        train, [*names, *state.names],
        [LOSS, *map(grad_name, state.trainable), *map(next_name, state.buffers)], "train step",
    )  # fmt: skip
    updated = drop_unchanged_buffers(train, state.buffers)
    set_shapes(train.graph.inputs, named.shapes)  # its outputs (loss, gradients, buffers) have fixed shapes
    return _TrainStep(
        model=train,
        shapes=dict(zip(names, named.shapes)),
        symbols=named.symbols,
        updated_buffers=list(updated),
        index_ranges={names[i]: r for i, r in traced.index_ranges.items()},
    )


def _trace_eval_forward(
    model: torch.nn.Module, example: _Example, state: _ModelState, shapes: dict, tracker: ModuleTracker
) -> _EvalForward:
    """The forward alone, in eval mode, as the named eval graph; its inputs get the train step's ``shapes``."""
    data_names = example.data_names
    n_inputs = len(example.inputs)
    n_outputs: list[int] = []

    def eval_forward(*flat):
        data = flat[:n_inputs]
        values = dict(zip(state.names, flat[n_inputs:]))
        leaves = pytree.tree_leaves(functional_call(model, values, tuple(data)))
        n_outputs[:] = [len(leaves)]
        return tuple(leaves)

    model.eval()
    # the eval forward's inputs get the train step's symbols (its relations are the forward's, a subset)
    eval_dynamic = [{k: None for k, d in enumerate(shapes[n]) if isinstance(d, str)} for n in data_names]
    traced = trace_to_onnx(eval_forward, [*example.inputs, *state.values], eval_dynamic, "eval forward", tracker)
    evaluation = traced.model
    outputs = output_names(n_outputs[0])
    name_io(evaluation, [*data_names, *state.names], outputs, "eval forward")
    eval_shapes = [
        [d if isinstance(d, int) else shapes[name][k] for k, d in enumerate(shape)]
        for name, shape in zip(data_names, traced.shapes)
    ]
    set_shapes(evaluation.graph.inputs, eval_shapes)
    set_shapes(evaluation.graph.outputs, name_outputs(traced.shapes, eval_shapes, traced.output_shapes, outputs))
    return _EvalForward(
        model=evaluation,
        output_names=outputs,
        index_ranges={data_names[i]: r for i, r in traced.index_ranges.items()},
    )


def capture(
    model: torch.nn.Module,
    example_inputs,
    example_targets,
    loss_fn: Callable,
    dynamic_shapes: dict | None = None,
    *,
    dynamic_batch: bool | None = None,
) -> Captured:
    """Capture ``loss_fn(model(*inputs), *targets)``, its gradients and buffer updates, and the eval forward.

    ``dynamic_shapes`` and the deprecated ``dynamic_batch`` are ``compile``'s (see
    :func:`optgraph.capture.symbols.requested_dims`).
    """
    example = _check_inputs(model, example_inputs, example_targets, loss_fn, dynamic_shapes, dynamic_batch)
    state = _ModelState.of(model)
    with _tracing(model) as tracker:
        train = _trace_train_step(model, loss_fn, example, state, tracker)
        evaluation = _trace_eval_forward(model, example, state, train.shapes, tracker)
    return Captured(
        train=train.model, eval=evaluation.model, data_names=example.data_names, target_names=example.target_names,
        trainable=state.trainable, frozen=state.frozen, buffers=state.buffers, updated_buffers=train.updated_buffers,
        output_names=evaluation.output_names, state=state.arrays(), aliases=state.aliases, shapes=train.shapes,
        symbols=train.symbols, train_index_ranges=train.index_ranges, eval_index_ranges=evaluation.index_ranges,
    )  # fmt: skip
