"""Pass: turn the joint (loss, gradients) graph into a whole optimizer step.

Consumes the ``grad.<param>`` outputs of the captured graph and appends, per
parameter, the chain of update rules of its parameter group, with the
learning rate computed from the schedule state; adds the optimizer state and
counters as inputs and their next values as outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from optgraph.lr_scheduler import LRScheduler
from optgraph.optim.optimizers import Optimizer, ParamGroup
from optgraph.optim.rules import UpdateContext, chain_slots, emit_chain
from optgraph.rewrite.builder import DOUBLE, INT64, GraphBuilder, ir_dtype
from optgraph.rewrite.state import EPOCH, NEXT, SCHEDULE_LR, STEP_COUNTER, StateTensor, optim_slot_name


class AttachOptimizer(ir.passes.InPlacePass):
    """Append the optimizer update for every trainable parameter.

    After the pass, ``new_state`` lists the state tensors it added and
    ``gradients`` the gradient values it consumed.
    """

    def __init__(self, optimizer: Optimizer, schedule: LRScheduler, groups: Sequence[ParamGroup]) -> None:
        super().__init__()
        self.optimizer = optimizer
        self.schedule = schedule
        self.groups = groups
        self.new_state: list[StateTensor] = []
        self.gradients: list[ir.Value] = []

    def _state_input(self, b: GraphBuilder, name: str, role: str, init: np.ndarray, **meta) -> ir.Value:
        self.new_state.append(StateTensor(name, role, init, meta))
        return b.add_input(name, ir_dtype(init.dtype), init.shape)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        b = GraphBuilder(graph)
        inputs = {v.name: v for v in graph.inputs}
        grads = {v.name[len("grad.") :]: v for v in graph.outputs if v.name.startswith("grad.")}
        for value in grads.values():
            graph.outputs.remove(value)
        self.gradients = list(grads.values())

        with b.scope("counters"):
            step = self._state_input(b, STEP_COUNTER, "counter", np.array(0, np.int64))
            epoch = self._state_input(b, EPOCH, "schedule_state", np.array(0, np.int64))
            next_step = b.op("Add", step, b.const(1, INT64))
            step_number = b.cast(next_step, DOUBLE)
            first = b.op("Equal", step, b.const(0, INT64))
            epoch_number = b.cast(epoch, DOUBLE)
            lr_state = b.add_input(SCHEDULE_LR, DOUBLE, [len(self.groups)]) if self.schedule.lr_from_state else None

        for group in self.groups:
            schedule = self.schedule.for_group(group.index)
            rules = self.optimizer.rules(schedule.adjust_options(group.options))
            with b.scope(f"lr/group{group.index}"):
                if lr_state is not None:  # the schedule keeps the lr itself (ReduceLROnPlateau)
                    lr = b.op("Gather", lr_state, b.const(group.index, INT64), axis=0)
                else:
                    lr = schedule.emit_lr(b, epoch_number, float(group.options["lr"]))
                momentum = schedule.emit_momentum(b, epoch_number)
            for name in group.params:
                param = inputs[name]
                dtype = param.dtype.numpy()
                state = {
                    slot: self._state_input(
                        b,
                        optim_slot_name(slot, name),
                        "optim_state",
                        np.full((), spec.fill, np.float32)
                        if spec.scalar
                        else np.full(param.shape.numpy(), spec.fill, dtype),
                        param=name,
                        slot=slot,
                    )  # fmt: skip
                    for slot, spec in chain_slots(rules).items()
                }
                with b.scope(f"optim/{name}"):
                    ctx = UpdateContext(b, param, step_number, first, lr, momentum)
                    new_param, new_state = emit_chain(rules, ctx, grads[name], state)
                b.add_output(new_param, name + NEXT)
                for slot, value in new_state.items():
                    b.add_output(value, optim_slot_name(slot, name) + NEXT)
        b.add_output(next_step, STEP_COUNTER + NEXT)
        return ir.passes.PassResult(model, modified=True)
