"""``optgraph inspect``: what an artifact holds, as a readable table or as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from optgraph.artifact import FORMAT_NAME, Artifact
from optgraph.artifact.manifest import TensorSpec
from optgraph.artifact.names import (
    CLIP_GRAD_NORM_KEY,
    GRAD_ACCUMULATION_STEPS_KEY,
    LR_SCHEDULER_KEY,
    OPTIMIZER_KEY,
    PARAM_GROUPS_KEY,
    PRODUCER_KEY,
    SYMBOLS_KEY,
)
from optgraph.cli import describe
from optgraph.cli.ort_versions import describe_requirement, first_release

HELP = "show an artifact's inputs and outputs, parameters, optimizer, schedule, ops and the onnxruntime it needs"


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser("inspect", parents=[common], help=HELP, description=HELP)
    p.add_argument("artifact", metavar="DIR", help="an artifact or checkpoint directory")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    artifact = Artifact.load(Path(args.artifact))
    report = collect(artifact, str(args.artifact))
    print(json.dumps(report, indent=1) if args.json else render(report))
    return 0


def collect(artifact: Artifact, path: str) -> dict[str, Any]:
    """Everything ``inspect`` shows, JSON-able."""
    manifest, facts = artifact.manifest, describe.facts(artifact)
    setup = describe.training_setup(manifest)
    return {
        "path": path,
        "format": FORMAT_NAME,
        "version": manifest.version,
        **setup,
        "parameters": {"trainable_elements": facts.trainable, "frozen_elements": facts.frozen,
                       "tensors": facts.param_tensors},
        "state_bytes": {**facts.state_bytes, "total": facts.total_state_bytes},
        SYMBOLS_KEY: {name: bounds.to_json() for name, bounds in manifest.symbols.items()},
        "opset": facts.opset,
        "ir_version": facts.ir_version,
        "min_onnxruntime": first_release(facts.opset, facts.ir_version),
        "graphs": {
            name: {
                "file": g.file,
                "nodes": g.nodes,
                "opset": g.opset,
                "ir_version": g.ir_version,
                "min_onnxruntime": g.min_onnxruntime,
                "inputs": [_tensor(t) for t in manifest.graphs[name].inputs],
                "outputs": [_tensor(t) for t in manifest.graphs[name].outputs],
                "op_types": dict(sorted(g.op_types.items(), key=lambda kv: (-kv[1], kv[0]))),
            }
            for name, g in facts.graphs.items()
        },
    }  # fmt: skip


def _tensor(t: TensorSpec) -> dict[str, Any]:
    return t.to_json()


# -- tables --------------------------------------------------------------------------------------


def render(report: dict[str, Any]) -> str:
    lines: list[str] = []
    producer = report[PRODUCER_KEY] or {}
    made = ", ".join(f"{k} {v}" for k, v in producer.items() if k != "name")
    lines.append(f"{report['path']}: {report['format']} version {report['version']}" + (f" ({made})" if made else ""))
    params = report["parameters"]
    state = report["state_bytes"]
    lines.append("")
    summary = [
        ("parameters", f"{params['trainable_elements']:,} trainable, {params['frozen_elements']:,} frozen "
                       f"({params['tensors']} tensors)"),
        ("state", f"{describe.human_bytes(state['total'])} ("
                  + ", ".join(f"{k} {describe.human_bytes(v)}" for k, v in state.items() if k != "total") + ")"),
        ("optimizer", describe.call_text(report[OPTIMIZER_KEY], describe.OPTIMIZER_SKIP)),
        ("schedule", describe.call_text(report[LR_SCHEDULER_KEY])),
        (CLIP_GRAD_NORM_KEY, str(report[CLIP_GRAD_NORM_KEY])),
        (GRAD_ACCUMULATION_STEPS_KEY, str(report[GRAD_ACCUMULATION_STEPS_KEY])),
        (SYMBOLS_KEY, ", ".join(f"{n} {_bounds(b)}" for n, b in report[SYMBOLS_KEY].items()) or "none"),
        ("runtime", _runtime(report)),
    ]  # fmt: skip
    lines += _table(["", ""], summary, gap="  ")
    groups = report[PARAM_GROUPS_KEY] or []
    if len(groups) > 1 or (groups and _group_options(report, groups[0])):
        lines.append("")
        lines.append("parameter groups")
        rows = [(str(g["index"]), f"{g['lr']:g}", _group_options(report, g), _names(g["params"])) for g in groups]
        lines += _table(["group", "lr", "options", "parameters"], rows)
    for name, graph in report["graphs"].items():
        lines.append("")
        lines.append(
            f"graph {name} ({graph['file']}): {graph['nodes']} nodes, opset {graph['opset']}, IR {graph['ir_version']}"
        )
        rows = [("in", *_row(t)) for t in graph["inputs"]] + [("out", *_row(t)) for t in graph["outputs"]]
        lines += _table(["", "name", "role", "dtype", "shape", "feeds"], rows)
    lines.append("")
    lines.append("op types")
    names = list(report["graphs"])
    counts: dict[str, list[int]] = {}
    for i, graph in enumerate(report["graphs"].values()):
        for op, count in graph["op_types"].items():
            counts.setdefault(op, [0] * len(names))[i] = count
    rows = [(op, *(str(c) if c else "" for c in row)) for op, row in sorted(counts.items(), key=lambda kv: -sum(kv[1]))]
    lines += _table(["op", *names], rows)
    return "\n".join(lines)


def _runtime(report: dict[str, Any]) -> str:
    text = describe_requirement(report["opset"], report["ir_version"])
    return f"the graphs load on {text} (opset {report['opset']}, IR version {report['ir_version']})"


def _bounds(bounds: dict[str, int]) -> str:
    if not bounds:
        return "(any size)"
    low, high = bounds.get("min"), bounds.get("max")
    if low is not None and high is not None:
        return f"({low} to {high})"
    return f"(>= {low})" if low is not None else f"(<= {high})"


def _group_options(report: dict[str, Any], group: dict[str, Any]) -> str:
    """The options a group sets besides the optimizer's own (from the optimizer's param_groups)."""
    optimizer = report[OPTIMIZER_KEY] or {}
    declared = optimizer.get("param_groups") or []
    index = group["index"]
    if index < len(declared):
        return ", ".join(f"{k}={v!r}" for k, v in declared[index].items() if k != "params")
    return "defaults"


def _names(params: list[str], limit: int = 6) -> str:
    shown = ", ".join(params[:limit])
    return shown + (f", ... ({len(params)} in all)" if len(params) > limit else "")


def _row(t: dict[str, Any]) -> tuple[str, ...]:
    shape = "[" + ", ".join(str(d) for d in t["shape"]) + "]"
    return (t["name"], t["role"], t["dtype"], shape, t.get("feeds", ""))


def _table(header: list[str], rows: list[tuple[str, ...]], gap: str = "  ") -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    out = []
    if any(header):
        out.append(gap.join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    for row in rows:
        out.append(gap.join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    return ["  " + line for line in out]
