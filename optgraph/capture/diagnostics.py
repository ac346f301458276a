"""Turn tracer and exporter failures into a CaptureError that names the op and the module.

While the train step is traced, forward hooks keep the stack of modules
running (a forward failure happens inside the innermost one) and remember
which module created each autograd node (a backward failure names the node
or its op, and the node leads back to the module).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import torch
from torch import nn

from optgraph.errors import CaptureError

_OP_PATTERNS = (
    re.compile(r"\b([A-Za-z_]\w*::[A-Za-z_]\w*)"),  # namespace::op (custom ops, aten::op)
    re.compile(r"\b(aten\.[A-Za-z_]\w*)"),  # aten.op
    re.compile(r"derivative for '([A-Za-z_]\w*)"),  # autograd: the derivative for 'igamma: input' ...
    re.compile(r"\b([A-Z]\w*Backward\d*)\b"),  # an autograd node (custom autograd.Function)
)


def _normalise(name: str) -> str:
    """``aten.max_pool2d_with_indices_backward`` and ``MaxPool2DWithIndicesBackward0`` -> one key."""
    name = name.split("::")[-1].split(".")[-1]
    name = re.sub(r"backward\d*$", "", name.replace("_", "").lower())
    return name


class ModuleTracker:
    """Forward hooks on every submodule of ``model`` while active (a context manager)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.paths = {id(m): name for name, m in model.named_modules()}
        self.types = {id(m): type(m).__name__ for m in model.modules()}
        self.stack: list[int] = []
        self.node_owner: dict[str, int] = {}
        self._seen: set[int] = set()
        self._handles = []

    def __enter__(self) -> ModuleTracker:
        pre = nn.modules.module.register_module_forward_pre_hook(self._enter)
        post = nn.modules.module.register_module_forward_hook(self._exit)
        self._handles = [pre, post]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()

    def _enter(self, module, args):
        if id(module) in self.paths:
            self.stack.append(id(module))

    def _exit(self, module, args, output):
        if id(module) not in self.paths:
            return
        if self.stack and self.stack[-1] == id(module):
            self.stack.pop()
        for node in _grad_nodes(output, self._seen):
            self.node_owner.setdefault(_normalise(type(node).__name__), id(module))

    def describe(self, module_id: int | None) -> str:
        if module_id is None:
            return f"the model ({type(self.model).__name__})"
        path = self.paths[module_id]
        return f"module '{path}' ({self.types[module_id]})" if path else f"the model ({self.types[module_id]})"

    def error(self, what: str, exc: BaseException) -> CaptureError:
        """A CaptureError for a failure while tracing or exporting ``what``."""
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        op = next((m.group(1) for p in _OP_PATTERNS if (m := p.search(str(exc)))), None)
        function = _failing_autograd_function(exc)
        if function is not None:  # a custom autograd.Function's backward raised
            op = f"{function}.backward (a custom autograd.Function)"
            owner = self.node_owner.get(_normalise(function + "Backward"))
            where = self.describe(owner) if owner is not None else "the model"
        elif self.stack:  # failed in a forward
            where = self.describe(self.stack[-1])
        elif op is not None and _normalise(op) in self.node_owner:
            where = self.describe(self.node_owner[_normalise(op)])
        else:
            where = "the model or the loss"
        subject = f"op {op} in {where}" if op else where
        if len(message) > 600:
            message = message[:600] + " ..."
        hint = ""
        if _is_data_dependent(exc):
            line = _user_line(exc)
            hint = (
                f"{' at ' + line if line else ''}. The model decides something from a tensor's values (a Python "
                "`if`/`while` on a tensor, `.item()`, `.tolist()`, `nonzero()` or boolean-mask indexing); a "
                "compiled step is one fixed graph, so compute both branches and pick with `torch.where`, keep "
                "shapes independent of values, or make the decision a constant of the model"
            )
        return CaptureError(f"cannot capture the {what}: {subject}: {type(exc).__name__}: {message}{hint}")


def _is_data_dependent(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}"
    return "DataDependent" in text or "data-dependent" in text or "data dependent" in text


def _user_line(exc: BaseException) -> str | None:
    """``file:line`` of the innermost frame of the traceback outside torch and optgraph: the user's code."""
    import os

    skipped = (os.path.dirname(torch.__file__), os.path.dirname(os.path.dirname(__file__)))
    found = None
    traceback = exc.__traceback__
    while traceback is not None:
        code = traceback.tb_frame.f_code
        if not code.co_filename.startswith(skipped) and "site-packages" not in code.co_filename:
            found = f"{code.co_filename}:{traceback.tb_lineno} ({code.co_name})"
        traceback = traceback.tb_next
    return found


def _failing_autograd_function(exc: BaseException) -> str | None:
    """The class name of the autograd.Function whose ``backward`` raised ``exc``, if one did."""
    traceback = exc.__traceback__
    found = None
    while traceback is not None:
        frame = traceback.tb_frame
        ctx = frame.f_locals.get("ctx")
        if frame.f_code.co_name == "backward" and isinstance(ctx, torch.autograd.function.BackwardCFunction):
            found = frame.f_code.co_qualname.rsplit(".", 1)[0]
        traceback = traceback.tb_next
    return found


def _grad_nodes(output, seen: set[int]) -> Iterator:
    """The autograd nodes created since the last call, reachable from ``output``."""
    tensors = [t for t in torch.utils._pytree.tree_leaves(output) if isinstance(t, torch.Tensor)]
    frontier = [t.grad_fn for t in tensors if t.grad_fn is not None]
    while frontier:
        node = frontier.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        frontier.extend(next_node for next_node, _ in node.next_functions)
