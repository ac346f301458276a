"""The naming contract: optgraph/artifact/names.py and docs/artifact-format.md say the same, and no other module
of optgraph spells the contract's strings out."""

from __future__ import annotations

import ast
import enum
import json
import re
from pathlib import Path

import pytest

from optgraph import lr_scheduler
from optgraph.artifact import names

ROOT = Path(__file__).resolve().parents[2]
DOC_PATH = ROOT / "docs" / "artifact-format.md"
DOC = DOC_PATH.read_text()
PACKAGE = ROOT / "optgraph"
NAMES_MODULE = PACKAGE / "artifact" / "names.py"

# Keys the format fixes outside names.py (manifest.py reads them): names.py lists the others.
FIXED_TOP_LEVEL_KEYS = {"format", "version", "graphs"}
FIXED_TENSOR_KEYS = {"name", "role", "dtype", "shape", "feeds"}

STATE_NAMES = {names.STEP_COUNTER, names.MICRO_STEP, names.EPOCH, names.SCHEDULE_LR}
PLATEAU_STATE = {lr_scheduler.BEST, lr_scheduler.NUM_BAD_EPOCHS, lr_scheduler.COOLDOWN_COUNTER}
PATTERNS = {  # the name functions of names.py, with the placeholders the document writes
    "grad_name": names.grad_name("<param>"),
    "next_name": names.next_name("<input>"),
    "optim_slot_name": names.optim_slot_name("<slot>", "<param>"),
    "optim_pack_slot_name": names.optim_pack_slot_name("<slot>", "<group>", "<k>"),
    "accumulator_name": names.accumulator_name("<param>"),
    "global_param_name": names.global_param_name("<param>"),
}


# -- reading the document ------------------------------------------------------------------------


def backquoted(text: str) -> list[str]:
    """The inline code spans of ``text`` (fenced blocks apart)."""
    spans = re.findall(r"`([^`]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return [" ".join(span.split()) for span in spans]  # a span may wrap onto the next line


def tables() -> list[list[list[str]]]:
    """Every markdown table of the document: rows of cells, the header row first, the rule row dropped."""
    found, current = [], []
    for line in DOC.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= {"-", " ", ":"} for c in cells):
                current.append(cells)
        elif current:
            found.append(current)
            current = []
    return found


def table(*header: str) -> list[list[str]]:
    """The body of the table whose header starts with ``header``."""
    (match,) = [t for t in tables() if tuple(t[0][: len(header)]) == header]
    return match[1:]


def manifest_example() -> str:
    (block,) = re.findall(r"```json\n(.*?)```", DOC, re.S)
    return block


def top_level_keys(block: str) -> list[str]:
    """The keys of the outermost object of the (not quite JSON) example."""
    keys, depth = [], 0
    for match in re.finditer(r'"(?:[^"\\]|\\.)*"\s*:|[{}\[\]]', block):
        token = match.group()
        if token in "{[":
            depth += 1
        elif token in "}]":
            depth -= 1
        elif depth == 1:
            keys.append(json.loads(token.rstrip(":").strip()))
    return keys


# -- what names.py defines -----------------------------------------------------------------------


def public_strings() -> dict[str, str]:
    """Every public string constant of names.py (the enums' members apart)."""
    return {
        k: v
        for k, v in vars(names).items()
        if k.isupper() and isinstance(v, str) and not isinstance(v, enum.Enum) and not k.startswith("_")
    }


TOP_LEVEL_KEYS = set(names.MANIFEST_KEYS)
TENSOR_KEYS = set(names.TENSOR_KEYS)


def test_every_key_is_grouped():
    keys = {v for k, v in public_strings().items() if k.endswith("_KEY")}
    assert keys == TOP_LEVEL_KEYS | TENSOR_KEYS | {names.STATE_HAS_STEP_KEY}
    assert not TOP_LEVEL_KEYS & TENSOR_KEYS


def test_every_public_string_is_documented():
    quoted = backquoted(DOC)
    example = top_level_keys(manifest_example())
    missing = []
    for constant, value in public_strings().items():
        if constant.endswith("_PREFIX"):
            documented = any(q.startswith(value) and len(q) > len(value) for q in quoted)
        elif constant.endswith("_SUFFIX"):
            documented = any(q.endswith(value) and len(q) > len(value) for q in quoted)
        elif value in TOP_LEVEL_KEYS:
            documented = value in example
        else:
            documented = value in quoted
        if not documented:
            missing.append(f"{constant} = {value!r}")
    assert not missing, f"names.py defines names docs/artifact-format.md does not mention: {missing}"


def test_the_role_list_is_the_role_enum():
    rows = {row[0]: row for row in table("key", "meaning")}
    assert backquoted(rows["`role`"][1]) == [role.value for role in names.Role]


def test_the_tensor_keys():
    keys = [k for row in table("key", "meaning") for k in backquoted(row[0])]
    assert set(keys) == FIXED_TENSOR_KEYS | TENSOR_KEYS
    assert len(keys) == len(set(keys))


def test_the_state_name_table():
    rows = table("name", "role", "what")
    documented: dict[str, set[str]] = {}
    for name_cell, role_cell, _ in rows:
        roles = backquoted(role_cell)
        assert roles and set(roles) <= set(names.STATE_ROLES), f"not state roles: {roles}"
        for name in backquoted(name_cell):
            documented.setdefault(name, set()).update(roles)
    slot_patterns = {
        PATTERNS["optim_slot_name"], PATTERNS["optim_pack_slot_name"], PATTERNS["accumulator_name"],
        PATTERNS["global_param_name"],
    }  # fmt: skip
    for name in STATE_NAMES | PLATEAU_STATE | slot_patterns:
        assert name in documented, f"the state table does not show {name}"
    assert {role for rs in documented.values() for role in rs} == set(names.STATE_ROLES)
    expected_roles = {
        names.STEP_COUNTER: names.Role.COUNTER,
        names.MICRO_STEP: names.Role.COUNTER,
        names.EPOCH: names.Role.SCHEDULE_STATE,
        names.SCHEDULE_LR: names.Role.SCHEDULE_STATE,
        PATTERNS["optim_slot_name"]: names.Role.OPTIM_STATE,
        PATTERNS["optim_pack_slot_name"]: names.Role.OPTIM_STATE,
        PATTERNS["accumulator_name"]: names.Role.GRAD_ACCUMULATOR,
        PATTERNS["global_param_name"]: names.Role.GLOBAL_PARAM,
    } | {name: names.Role.SCHEDULE_STATE for name in PLATEAU_STATE}
    for name, role in expected_roles.items():
        assert role in documented[name], f"{name} is documented without its role {role}"
    # conversely, every name the table shows is one of names.py's, or a torch name (params and buffers)
    known = STATE_NAMES | PLATEAU_STATE | set(PATTERNS.values())
    for name, roles in documented.items():
        assert name in known or roles <= {names.Role.PARAM, names.Role.BUFFER}, f"{name} is not in names.py"


def test_name_patterns_and_result_names():
    quoted = set(backquoted(DOC))
    for function, pattern in PATTERNS.items():
        assert pattern in quoted, f"{function}: the document does not show {pattern}"
    for name in [names.LOSS, names.UPDATE_APPLIED, names.FINITE, names.METRIC, names.NO_SCHEDULE_NAME]:
        assert name in quoted
    for name in names.target_names(1) + names.target_names(2) + names.output_names(1) + names.output_names(2):
        assert name in quoted, f"the document does not say how {name} is named"


def test_files_and_graph_names():
    files = [f for row in table("file", "what it is") for f in backquoted(row[0])]
    assert sorted(files) == sorted([*names.GRAPH_FILES.values(), names.MANIFEST_FILE, names.CHECKPOINT_FILE])
    example = manifest_example()
    graphs = re.search(r'"graphs": \{(.*?)\}\}', example, re.S).group(1)
    for graph in names.GraphName:
        assert re.search(rf'"{graph}":\s*\{{"file": "{names.GRAPH_FILES[graph]}"', graphs), graph
    assert list(names.GRAPH_FILES) == list(names.GraphName)
    assert tuple(names.GraphName) == names.GRAPH_NAMES + names.SPLIT_GRAPH_NAMES


def test_the_manifest_example_keys():
    keys = top_level_keys(manifest_example())
    assert len(keys) == len(set(keys))
    assert set(keys) == FIXED_TOP_LEVEL_KEYS | TOP_LEVEL_KEYS
    assert f'"{names.STATE_HAS_STEP_KEY}"' in manifest_example()


def test_the_modules_it_names_exist():
    quoted = backquoted(DOC)
    assert "optgraph/artifact/names.py" in quoted and "optgraph/rewrite/versions.py" in quoted
    for path in {q for q in quoted if q.startswith("optgraph/")}:
        assert (ROOT / path).exists(), f"docs/artifact-format.md names {path}, which does not exist"


# -- no module spells the contract out -----------------------------------------------------------

# Distinctive strings: a literal anywhere outside names.py is an offender.
DISTINCTIVE = {
    names.GRAD_PREFIX,
    names.NEXT_SUFFIX,
    names.STEP_COUNTER,
    names.MICRO_STEP,
    names.SCHEDULE_PREFIX,
    names.EPOCH,
    names.SCHEDULE_LR,
    names.OPTIM_STATE_PREFIX,
    names.accumulator_name(""),
    "accum.",
    names.UPDATE_APPLIED,
    names.NO_SCHEDULE_NAME,
    names.MANIFEST_FILE,
    names.CHECKPOINT_FILE,
    *names.GRAPH_FILES.values(),
    names.GraphName.TRAIN_STEP.value,
    names.GraphName.SCHEDULER_STEP.value,
    names.GraphName.GRAD_STEP.value,
    names.GraphName.UPDATE_STEP.value,
    names.Role.OPTIM_STATE.value,
    names.Role.SCHEDULE_STATE.value,
    names.Role.GRAD_ACCUMULATOR.value,
    names.DATA_INPUTS_KEY,
    names.DYNAMIC_BATCH_KEY,
    names.STATE_HAS_STEP_KEY,
    names.INDEX_RANGE_KEY,
    names.GRAD_ACCUMULATION_STEPS_KEY,
}
ROLE_WORDS = {role.value for role in names.Role}  # ordinary words: offenders only where a role is meant
TENSOR_WORDS = {names.LOSS, names.METRIC, names.FINITE, *names.target_names(1), *names.output_names(1)}
KEY_WORDS = (TOP_LEVEL_KEYS | TENSOR_KEYS) - DISTINCTIVE
NAME_FUNCTIONS = {
    "add_input", "add_output", "next_name", "grad_name", "optim_slot_name", "optim_pack_slot_name", "accumulator_name",
}  # fmt: skip
MAPPING_METHODS = {"get", "pop", "setdefault"}


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _strings(node: ast.AST | None) -> list[ast.Constant]:
    """String constants of ``node`` itself or of a tuple/list/set literal it is."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [c for e in node.elts for c in _strings(e)]
    return []


def _is(node: ast.AST, word: str) -> bool:
    """``node`` is the name ``word`` or an attribute ``.word``."""
    return (isinstance(node, ast.Name) and node.id == word) or (isinstance(node, ast.Attribute) and node.attr == word)


def _mentions_manifest(node: ast.AST) -> bool:
    text = ast.unparse(node).lower()
    return "manifest" in text or "extra" in text


def offenders_in(source: str, where: str = "<source>") -> list[str]:
    """``file:line: 'literal'`` for each contract string that ``source`` spells out where it means the contract."""
    tree = ast.parse(source)
    docstrings = _docstrings(tree)
    found: list[tuple[int, str]] = []

    def flag(constants, words):
        found.extend((c.lineno, c.value) for c in constants if c.value in words and id(c) not in docstrings)

    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            flag([node], DISTINCTIVE)
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(_is(s, "role") for s in sides):
                flag([c for s in sides for c in _strings(s)], ROLE_WORDS)
            if any(_is(s, "name") for s in sides):
                flag([c for s in sides for c in _strings(s)], TENSOR_WORDS)
            if any(_mentions_manifest(s) for s in node.comparators):
                flag(_strings(node.left), KEY_WORDS)
        elif isinstance(node, ast.keyword) and node.arg == "role":
            flag(_strings(node.value), ROLE_WORDS)
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute | ast.Name) and (_is(func, "Role")):
                flag([c for a in node.args for c in _strings(a)], ROLE_WORDS)
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called in NAME_FUNCTIONS:
                flag([c for a in node.args for c in _strings(a)], TENSOR_WORDS | KEY_WORDS)
            if called in MAPPING_METHODS and isinstance(func, ast.Attribute) and _mentions_manifest(func.value):
                flag([c for a in node.args[:1] for c in _strings(a)], KEY_WORDS)
        elif isinstance(node, ast.Subscript):
            flag(_strings(node.slice), {names.LOSS, names.METRIC})
            if any(word in ast.unparse(node.value).lower() for word in ("graph", "runner")):
                flag(_strings(node.slice), set(names.GRAPH_NAMES))
            if _mentions_manifest(node.value):
                flag(_strings(node.slice), KEY_WORDS)
        elif isinstance(node, ast.Dict):
            keys = [k for k in node.keys if k is not None]
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == "role":
                    flag(_strings(value), ROLE_WORDS)
            flag([c for k in keys for c in _strings(k)], TENSOR_KEYS)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Dict):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(_mentions_manifest(t) for t in targets):
                flag([c for k in node.value.keys if k is not None for c in _strings(k)], KEY_WORDS)
    return sorted({f"{where}:{line}: {value!r}" for line, value in found})


@pytest.mark.parametrize(
    "source, flagged",
    [
        ('x = name + ".next"', [".next"]),
        ('ok = name.startswith("grad.")', ["grad."]),
        ('key = f"{slot}.next"', [".next"]),
        ('open(root / "manifest.json")', ["manifest.json"]),
        ('if t.role == "param": pass', ["param"]),
        ('if spec.role in ("param", "buffer"): pass', ["buffer", "param"]),
        ('TensorSpec(n, role="loss")', ["loss"]),
        ('if value.name == "loss": pass', ["loss"]),
        ('b.add_output(v, "loss")', ["loss"]),
        ('x = results["loss"]', ["loss"]),
        ('targets = manifest.extra["targets"]', ["targets"]),
        ('aliases = extra.get("aliases", {})', ["aliases"]),
        ('extra = {"symbols": {}, "producer": {}}', ["producer", "symbols"]),
        ('meta = {"trainable": True}', ["trainable"]),
        ('r = Role("counter")', ["counter"]),
        ('spec = manifest.graphs["eval"]', ["eval"]),
        ("model.eval()", []),
        ('raise ValueError("the loss is not finite")', []),
        ('lr = options["lr"]', []),
        ('with b.scope("clip_grad_norm"): pass', []),
        ('parser.add_argument("--output", help="the output directory")', []),
        ('spec = {"file": f, "inputs": [], "outputs": []}', []),
        ('def f():\n    """Writes counter.step and grad.<param>; reads "update_applied"."""', []),
    ],
)
def test_the_literal_scan_finds_what_it_must_and_only_that(source, flagged):
    assert [line.split(": ", 1)[1].strip("'") for line in offenders_in(source)] == flagged


def test_no_module_spells_the_contract_out():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path != NAMES_MODULE:
            offenders += offenders_in(path.read_text(), str(path.relative_to(ROOT)))
    assert not offenders, "use optgraph.artifact.names instead of these literals:\n" + "\n".join(offenders)
