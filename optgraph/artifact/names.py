"""The artifact's naming contract: every graph, file, tensor, role and key name optgraph writes or reads.

``docs/artifact-format.md`` documents the same names (``tests/artifact/test_names.py``
checks that the two agree). Every layer may import this module, and no other
module spells these names out: a pass that looks for gradients asks
:func:`param_of_grad`, not ``startswith("grad.")``.
"""

from __future__ import annotations

import enum
import re


class _Name(str, enum.Enum):
    """A name that compares, hashes, formats and serialises as its string."""

    __str__ = str.__str__
    __format__ = str.__format__


class GraphName(_Name):
    """The graphs of an artifact (the keys of the manifest's ``graphs``)."""

    TRAIN_STEP = "train_step"
    SCHEDULER_STEP = "scheduler_step"
    EVAL = "eval"
    # the train step split at the gradients, for data-parallel training: forward and backward with the
    # gradients out, then the update with the (averaged) gradients in
    GRAD_STEP = "grad_step"
    UPDATE_STEP = "update_step"


#: the graphs every artifact has
GRAPH_NAMES = (GraphName.TRAIN_STEP.value, GraphName.SCHEDULER_STEP.value, GraphName.EVAL.value)
#: the split train step: both or neither (artifacts made before data-parallel training have neither)
SPLIT_GRAPH_NAMES = (GraphName.GRAD_STEP.value, GraphName.UPDATE_STEP.value)
GRAPH_FILES = {name: f"{name}.onnx" for name in GraphName}
MANIFEST_FILE = "manifest.json"
CHECKPOINT_FILE = "checkpoint.safetensors"


class Role(_Name):
    """What a graph input or output is (a ``TensorSpec``'s ``role``)."""

    INPUT = "input"
    TARGET = "target"
    PARAM = "param"
    BUFFER = "buffer"
    OPTIM_STATE = "optim_state"
    SCHEDULE_STATE = "schedule_state"
    COUNTER = "counter"
    GRAD_ACCUMULATOR = "grad_accumulator"
    LOSS = "loss"
    LR = "lr"
    OUTPUT = "output"
    STATUS = "status"
    GRAD = "grad"  # a gradient: an output of grad_step, an input of update_step
    GLOBAL_PARAM = "global_param"  # FedProx: the global weights w_global a trainable parameter is pulled toward


ROLES = frozenset(Role)
STATE_ROLES = frozenset(
    {
        Role.PARAM, Role.BUFFER, Role.OPTIM_STATE, Role.SCHEDULE_STATE, Role.COUNTER, Role.GRAD_ACCUMULATOR,
        Role.GLOBAL_PARAM,
    }
)  # fmt: skip

# Results of train_step besides the state.
LOSS = "loss"
UPDATE_APPLIED = "update_applied"  # bool: false when the non-finite guard kept the state
FINITE = "finite"  # grad_step's bool: the loss, every gradient and every new buffer value are finite

# Counters and schedule state.
STEP_COUNTER = "counter.step"
MICRO_STEP = "counter.micro_step"
SCHEDULE_PREFIX = "schedule."
EPOCH = SCHEDULE_PREFIX + "epoch"
SCHEDULE_LR = SCHEDULE_PREFIX + "lr"
METRIC = "metric"  # the scheduler_step input of a schedule driven by a metric (ReduceLROnPlateau)
NO_SCHEDULE_NAME = "ConstantSchedule"  # the manifest's lr_scheduler name when compile had none


def schedule_state_name(field: str) -> str:
    """A schedule's own state tensor, e.g. ``schedule.best``."""
    return SCHEDULE_PREFIX + field


# State flow: each state output is named after the state input it becomes on the next call.
NEXT_SUFFIX = ".next"


def next_name(state: str) -> str:
    """The output that carries ``state``'s next value: ``fc1.weight`` -> ``fc1.weight.next``."""
    return state + NEXT_SUFFIX


def state_of_next(name: str) -> str | None:
    """The state an output named by :func:`next_name` feeds, or None for any other output."""
    return name[: -len(NEXT_SUFFIX)] if name.endswith(NEXT_SUFFIX) else None


# Gradients: the captured train graph outputs one per trainable parameter; the rewriter consumes them.
# grad_step outputs them under the same names, and update_step takes them in.
GRAD_PREFIX = "grad."


def grad_name(param: str) -> str:
    """The gradient output of ``param`` in a captured graph: ``grad.fc1.weight``."""
    return GRAD_PREFIX + param


def param_of_grad(name: str) -> str | None:
    """The parameter whose gradient ``name`` is, or None if it names no gradient."""
    return name[len(GRAD_PREFIX) :] if name.startswith(GRAD_PREFIX) else None


OPTIM_STATE_PREFIX = "optim."


def optim_slot_name(slot: str, param: str) -> str:
    """Checkpoint name of one optimizer slot of one parameter, e.g. ``optim.exp_avg.fc1.weight``."""
    return f"{OPTIM_STATE_PREFIX}{slot}.{param}"


def optim_pack_slot_name(slot: str, group: int | str, index: int | str) -> str:
    """Checkpoint name of one slot of a pack, e.g. ``optim.exp_avg.pack0_1``.

    A pack is a set of small parameters of parameter group ``group`` that the train step updates
    together as one flat tensor (``index`` counts the group's packs from 0): the slot holds their
    slots end to end, in the order of its ``PACKED_KEY`` list, or one scalar for all of them.
    """
    return f"{OPTIM_STATE_PREFIX}{slot}.pack{group}_{index}"


def pack_of_slot_name(name: str, slot: str) -> tuple[int, int] | None:
    """``(group, index)`` when ``name`` is :func:`optim_pack_slot_name` of ``slot``, else None."""
    match = re.fullmatch(r"pack(\d+)_(\d+)", name.removeprefix(optim_slot_name(slot, "")))
    if match is None:
        return None
    group, index = int(match.group(1)), int(match.group(2))
    return (group, index) if optim_pack_slot_name(slot, group, index) == name else None


def accumulator_name(param: str) -> str:
    """The running gradient sum of ``param`` under gradient accumulation: ``accum.grad.fc1.weight``."""
    return "accum." + grad_name(param)


GLOBAL_PARAM_PREFIX = "global."


def global_param_name(param: str) -> str:
    """FedProx's global value of ``param`` (``compile(proximal_mu=...)``): ``global.fc1.weight``."""
    return GLOBAL_PARAM_PREFIX + param


# Batch and result names the capture gives (keyword names of model.forward are kept as they are).
def target_names(count: int) -> list[str]:
    """``target`` for one target, else ``target_0``, ``target_1``, ..."""
    return [Role.TARGET.value] if count == 1 else [f"{Role.TARGET.value}_{i}" for i in range(count)]


def output_names(count: int) -> list[str]:
    """``output`` for one model output, else ``output_0``, ``output_1``, ..."""
    return [Role.OUTPUT.value] if count == 1 else [f"{Role.OUTPUT.value}_{i}" for i in range(count)]


# Keys of a TensorSpec besides name, role, dtype, shape and feeds.
TRAINABLE_KEY = "trainable"  # on params: false for frozen ones
PARAM_KEY = "param"  # on optimizer state, accumulators and gradients: the parameter
SLOT_KEY = "slot"  # on optimizer state: torch's slot name
PACKED_KEY = "packed"  # on a pack's optimizer state (instead of PARAM_KEY): the parameters it holds, in order
INDEX_RANGE_KEY = "index_range"  # on integer inputs and targets: the values they may hold
IN_PLACE_KEY = "in_place"  # on state outputs: a runtime may write the output into its state input's buffer

# Top-level manifest keys besides format, version and graphs.
DATA_INPUTS_KEY = "data_inputs"
TARGETS_KEY = "targets"
OUTPUTS_KEY = "outputs"
ALIASES_KEY = "aliases"
SYMBOLS_KEY = "symbols"
DYNAMIC_BATCH_KEY = "dynamic_batch"
OPTIMIZER_KEY = "optimizer"
STATE_HAS_STEP_KEY = "state_has_step"  # in the optimizer's entry: torch keeps a per-parameter step
LR_SCHEDULER_KEY = "lr_scheduler"
PARAM_GROUPS_KEY = "param_groups"
CLIP_GRAD_NORM_KEY = "clip_grad_norm"
GRAD_ACCUMULATION_STEPS_KEY = "grad_accumulation_steps"
PROXIMAL_MU_KEY = "proximal_mu"  # FedProx's mu, or null: the train step adds mu/2 * ||w - w_global||^2 to the loss
PRODUCER_KEY = "producer"
SHA256_KEY = "sha256"  # {file name: hex digest} of the graphs and the checkpoint

# The keys by where they go: on a tensor entry of a graph's inputs or outputs, or at the manifest's top level.
TENSOR_KEYS = frozenset({TRAINABLE_KEY, PARAM_KEY, SLOT_KEY, PACKED_KEY, INDEX_RANGE_KEY, IN_PLACE_KEY})
MANIFEST_KEYS = frozenset(
    {
        DATA_INPUTS_KEY, TARGETS_KEY, OUTPUTS_KEY, ALIASES_KEY, SYMBOLS_KEY, DYNAMIC_BATCH_KEY, OPTIMIZER_KEY,
        LR_SCHEDULER_KEY, PARAM_GROUPS_KEY, CLIP_GRAD_NORM_KEY, GRAD_ACCUMULATION_STEPS_KEY, PROXIMAL_MU_KEY, PRODUCER_KEY,
        SHA256_KEY,
    }
)  # fmt: skip
