"""The package's layers form one chain: each module imports only from the layers below it.

artifact (names, manifest, checks, storage) -> graph (the builder) -> optim and lr_scheduler (rules and
schedules) -> rewrite (the passes) -> api; capture sits beside them and alone imports torch; the session
and batch checks use the artifact layer only; distributed (data-parallel training) builds on the session
and alone imports mpi4py; federated (a Flower client around the session, with the validation
metrics of the command line) alone imports flwr. Imports under ``if TYPE_CHECKING:`` are for annotations
and do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "optgraph"

# layer of a module path (relative to optgraph/, without .py) -> the optgraph layers it may import
ALLOWED = {
    "errors": set(),
    "artifact": {"artifact", "errors"},
    "graph": {"graph"},
    "optim": {"optim", "graph", "artifact"},
    "lr_scheduler": {"graph", "artifact"},
    "rewrite": {"rewrite", "graph", "optim", "lr_scheduler", "artifact", "errors"},
    "capture": {"capture", "artifact", "errors"},
    "batch": {"artifact", "errors"},
    "devices": {"errors"},
    "inference": {"artifact", "errors"},
    "session": {"artifact", "batch", "devices", "errors", "inference"},
    "distributed": {"artifact", "batch", "devices", "errors", "session"},
    "federated": {"artifact", "cli", "errors", "session"},
}
THIRD_PARTY_ONLY_IN = {
    "torch": {"capture", "api", "demo", "cli"},
    "onnxruntime": {"session", "devices", "inference", "distributed"},
    "mpi4py": {"distributed"},
    "flwr": {"federated"},
}


def _layer(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def _imports(tree: ast.Module) -> list[str]:
    """Module names imported at run time (not under ``if TYPE_CHECKING:``)."""
    skipped = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for inner in ast.walk(node)
    }
    names = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if _layer(p) in ALLOWED)


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(PACKAGE)) for p in MODULES])
def test_a_module_imports_only_the_layers_below_it(path):
    layer = _layer(path)
    for name in _imports(ast.parse(path.read_text())):
        parts = name.split(".")
        if parts[0] == "optgraph" and len(parts) > 1:
            assert parts[1] in ALLOWED[layer], f"{path.relative_to(PACKAGE)} ({layer}) imports {name}"
        for package, layers in THIRD_PARTY_ONLY_IN.items():
            if parts[0] == package:
                assert layer in layers, f"{path.relative_to(PACKAGE)} ({layer}) imports {package}"


def test_every_module_has_a_layer():
    top = {_layer(p) for p in PACKAGE.rglob("*.py")} - {"__init__", "__main__"}
    assert top <= set(ALLOWED) | {"api", "demo", "cli"}, top - set(ALLOWED)
