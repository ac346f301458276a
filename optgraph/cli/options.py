"""Optimizers, schedules, parameter groups and dynamic dimensions, from flags and config tables.

Every class in ``optgraph.optim.__all__`` and ``optgraph.lr_scheduler.__all__`` is reachable by
its name, in any case, with torch's argument names: the arguments go to the class as they are,
so a wrong one gets the class's own (torch's) message. Never imports torch.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any

from optgraph import lr_scheduler, optim
from optgraph.cli.errors import UsageError
from optgraph.cli.values import Call, parse_call, parse_pair, parse_value, split_pair

NONE = "none"  # --scheduler none: no schedule, even where the config file names one
STATIC = "static"  # --dynamic static: every dimension static; --dynamic NAME=static: that input static


def public_classes(module, base: type) -> dict[str, type]:
    """The subclasses of ``base`` that ``module.__all__`` names (``base`` itself left out), by name."""
    found = {}
    for name in module.__all__:
        cls = getattr(module, name)
        if isinstance(cls, type) and issubclass(cls, base) and cls is not base:
            found[name] = cls
    return found


OPTIMIZERS = public_classes(optim, optim.Optimizer)
SCHEDULES = public_classes(lr_scheduler, lr_scheduler.LRScheduler)


def find_class(name: str, table: dict[str, type], what: str, where: str) -> type:
    """The class of ``table`` called ``name``, in any case; a :class:`UsageError` listing the choices otherwise."""
    by_lower = {key.lower(): cls for key, cls in table.items()}
    cls = by_lower.get(name.lower())
    if cls is not None:
        return cls
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1)
    hint = f" (did you mean {by_lower[close[0]].__name__}?)" if close else ""
    raise UsageError(f"{where}: unknown {what} {name!r}{hint}; choose one of {', '.join(table)}")


def build(call: Call, table: dict[str, type], what: str, where: str) -> Any:
    """Construct ``call`` from ``table``'s classes; nested calls (a schedule's schedulers) are built first."""
    cls = find_class(call.name, table, what, where)
    args = [_nested(v, table, what, where) for v in call.args]
    kwargs = {k: _nested(v, table, what, where) for k, v in call.kwargs.items()}
    try:
        return cls(*args, **kwargs)
    except TypeError as e:  # a wrong or missing argument: the class's own (torch's) wording
        raise UsageError(f"{where}: {e}") from None
    except (ValueError, KeyError) as e:  # an invalid value: torch's validation message
        raise UsageError(f"{where}: {e.args[0] if e.args else type(e).__name__}") from None


def _nested(value: Any, table: dict[str, type], what: str, where: str) -> Any:
    if isinstance(value, Call):
        if table is not SCHEDULES:
            raise UsageError(f"{where}: {value.name}(...) inside an {what}: only schedules nest")
        return build(value, table, what, where)
    if isinstance(value, list):
        return [_nested(v, table, what, where) for v in value]
    if isinstance(value, tuple):
        return tuple(_nested(v, table, what, where) for v in value)
    return value


def call_from_table(table: Any, where: str) -> Call:
    """A config table ``{name = "StepLR", step_size = 10}`` as a :class:`Call`; tables with a name nest."""
    if not isinstance(table, dict) or not isinstance(table.get("name"), str):
        raise UsageError(f"{where} must be a table with a 'name' (a class name) and its arguments, got {table!r}")
    return Call(table["name"], [], {k: _from_config(v, f"{where}.{k}") for k, v in table.items() if k != "name"})


def _from_config(value: Any, where: str) -> Any:
    if isinstance(value, dict) and "name" in value:
        return call_from_table(value, where)
    if isinstance(value, list):
        return [_from_config(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


# -- the flags -----------------------------------------------------------------------------------


def optimizer_call(
    base: Call | None, name: str | None, lr: float | None, args: list[str], groups: list[str]
) -> Call | None:
    """The optimizer the flags ask for: ``--optimizer`` replaces ``base`` (the config's); the others change it."""
    call = parse_call(name, "--optimizer") if name is not None else base
    if call is None and (lr is not None or args or groups):
        call = Call(optim.Adam.__name__)  # compile's default optimizer
    if call is None:
        return None
    call = Call(call.name, list(call.args), dict(call.kwargs))
    if lr is not None:
        call.kwargs["lr"] = lr
    call.kwargs.update(parse_pair(a, "--optimizer-arg") for a in args)
    if groups:
        call.kwargs["param_groups"] = [parse_param_group(g) for g in groups]
    return call


def scheduler_call(base: Call | None, name: str | None, args: list[str]) -> Call | None:
    """The schedule the flags ask for: ``--scheduler`` replaces ``base`` (``none``: no schedule); args change it."""
    if name is not None and name.strip().lower() == NONE:
        call = None
    else:
        call = parse_call(name, "--scheduler") if name is not None else base
    if call is None:
        if args:
            raise UsageError("--scheduler-arg needs a schedule: --scheduler NAME or an [lr_scheduler] table")
        return None
    call = Call(call.name, list(call.args), dict(call.kwargs))
    call.kwargs.update(parse_pair(a, "--scheduler-arg") for a in args)
    return call


def parse_param_group(text: str) -> dict[str, Any]:
    """``"params=*.bias,*norm*;weight_decay=0"`` as ``{"params": ["*.bias", "*norm*"], "weight_decay": 0}``."""
    group: dict[str, Any] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        key, value = split_pair(part, "--param-group")
        group[key] = [p.strip() for p in value.split(",") if p.strip()] if key == "params" else parse_value(value)
    if not group.get("params"):
        raise UsageError(f"--param-group needs params=PATTERN[,PATTERN...] (names or fnmatch patterns), got {text!r}")
    return group


# -- dynamic dimensions --------------------------------------------------------------------------


@dataclass(frozen=True)
class DimSymbol:
    """A dynamic dimension's symbol as written: a name with optional bounds, or ``auto`` (a name to infer)."""

    name: str | None
    min: int | None = None
    max: int | None = None

    @property
    def auto(self) -> bool:
        return self.name is None


_SYMBOL = re.compile(r"^(?:(\d+)\s*<=\s*)?([A-Za-z_]\w*)(?:\s*<=\s*(\d+))?$")

#: what compile's ``dynamic_shapes`` gets, before the symbols become torch's: None (the default), ``{}``
#: (all static) or ``{input or target: {dim: DimSymbol} or None}``
Dynamic = dict[str, "dict[int, DimSymbol] | None"] | None


def parse_symbol(text: str, where: str) -> DimSymbol:
    """``"seq"``, ``"seq<=64"``, ``"2<=seq<=64"`` or ``"auto"``."""
    text = str(text).strip()
    if text.lower() == "auto":
        return DimSymbol(None)
    match = _SYMBOL.match(text)
    if match is None:
        raise UsageError(f"{where}: {text!r} is not a symbol; expected NAME, NAME<=MAX, MIN<=NAME<=MAX or auto")
    low, name, high = match.groups()
    return DimSymbol(name, int(low) if low else None, int(high) if high else None)


def parse_dynamic(entries: list[str], base: Dynamic = None) -> Dynamic:
    """``--dynamic`` flags over the config's ``dynamic_shapes``.

    ``static`` makes every dimension static; ``NAME=static`` one input or target;
    ``NAME=DIM:SYMBOL[,DIM:SYMBOL...]`` names its dynamic dimensions (``input_ids=0:batch,1:seq<=64``).
    """
    result = None if base is None else dict(base)
    for entry in entries:
        if entry.strip().lower() == STATIC:
            result = {}
            continue
        name, value = split_pair(entry, "--dynamic")
        result = dict(result or {})
        result[name] = _dims(value, f"--dynamic {entry}")
    return result


def dynamic_from_config(value: Any, where: str) -> Dynamic:
    """The config's ``dynamic_shapes``: ``"static"``, or a table ``{input_ids = {0 = "batch", 1 = "seq"}}``."""
    if isinstance(value, str) and value.strip().lower() == STATIC:
        return {}
    if not isinstance(value, dict):
        raise UsageError(f'{where} must be "static" or a table of inputs, got {value!r}')
    return {name: _dims(dims, f"{where}.{name}") for name, dims in value.items()}


def _dims(value: Any, where: str) -> dict[int, DimSymbol] | None:
    if isinstance(value, str) and value.strip().lower() == STATIC:
        return None
    if isinstance(value, str):
        pairs = [p.split(":", 1) for p in value.split(",") if p.strip()]
        if not pairs or any(len(p) != 2 for p in pairs):
            raise UsageError(f"{where}: expected DIM:SYMBOL[,DIM:SYMBOL...] or static, got {value!r}")
    elif isinstance(value, dict):
        pairs = list(value.items())
    else:
        raise UsageError(f'{where}: expected a table {{dim = symbol}} or "static", got {value!r}')
    dims = {}
    for dim, symbol in pairs:
        try:
            index = int(str(dim).strip())
        except ValueError:
            raise UsageError(f"{where}: dimension {dim!r} is not an integer") from None
        dims[index] = parse_symbol(symbol, where)
    return dims
