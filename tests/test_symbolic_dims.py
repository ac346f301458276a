"""Symbolic dimensions: the manifest's expression grammar, symbol bounds, and check_batch's symbol checks."""

from __future__ import annotations

import numpy as np
import pytest

from optgraph.artifact import Manifest, TensorSpec
from optgraph.artifact.dims import DimSyntaxError, SymbolBounds, parse_dim, solve_for
from optgraph.batch import check_batch
from optgraph.errors import ArtifactError, InputError

EXPRESSIONS = {
    "name": ("batch", {"batch": 3}, 3),
    "product": ("batch*seq", {"batch": 3, "seq": 7}, 21),
    "affine": ("2*half + 1", {"half": 4}, 9),
    "minus": ("seq - 1", {"seq": 5}, 4),
    "floor-div": ("(seq + 1)//2", {"seq": 6}, 3),
    "precedence": ("a + b*c - 4//2", {"a": 1, "b": 2, "c": 3}, 5),
    "left-assoc": ("a - b - c", {"a": 10, "b": 3, "c": 2}, 5),
    "unary": ("-a + 10", {"a": 3}, 7),
    "parens": ("(a + b)*(a - b)", {"a": 5, "b": 2}, 21),
}


@pytest.mark.parametrize("case", list(EXPRESSIONS), ids=list(EXPRESSIONS))
def test_expressions_evaluate(case):
    text, sizes, value = EXPRESSIONS[case]
    expr = parse_dim(text)
    assert expr.evaluate(sizes) == value
    assert set(expr.symbols) == set(sizes)
    assert expr.is_symbol == (case == "name")


BAD = {
    "empty": ("", "non-empty"),
    "call": ("__import__('os')", 'unexpected "\'"'),
    "attribute": ("a.b", r"unexpected '\.'"),
    "power": ("a**2", r"expected a name, an int or '\('"),
    "true-div": ("a/2", r"unexpected '/'"),
    "dangling": ("a +", "expected a name, an int or '\\(', found the end"),
    "unclosed": ("(a + 1", r"expected '\)'"),
    "two-names": ("a b", "unexpected 'b'"),
    "deep": ("(" * 40 + "a" + ")" * 40, "nested too deeply"),
    "long": ("a+" * 150 + "a", "longer than"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_anything_else_is_refused(case):
    text, message = BAD[case]
    with pytest.raises(DimSyntaxError, match=message):
        parse_dim(text)


def test_floor_division_by_zero_is_no_value():
    assert parse_dim("a//b").evaluate({"a": 3, "b": 0}) is None


def test_solve_for_affine_unknowns_only():
    assert solve_for(parse_dim("2*half"), "half", 8, {}) == 4
    assert solve_for(parse_dim("2*half"), "half", 7, {}) is None  # no integer fits
    assert solve_for(parse_dim("batch*seq"), "seq", 21, {"batch": 3}) == 7
    assert solve_for(parse_dim("seq*seq"), "seq", 16, {}) is None  # not affine


def _manifest_with(shape, symbols=None) -> str:
    spec = {"name": "x", "role": "input", "dtype": "float32", "shape": shape}
    graphs = {
        g: {"file": f"{g}.onnx", "inputs": [spec] if g != "scheduler_step" else []} for g in ("train_step", "eval")
    }
    graphs["scheduler_step"] = {"file": "scheduler_step.onnx"}
    body = {"format": "optgraph-artifact", "version": 1, "graphs": graphs}
    if symbols is not None:
        body["symbols"] = symbols
    import json

    return json.dumps(body)


def test_manifest_parses_dims_and_symbols_at_load():
    manifest = Manifest.from_json(_manifest_with(["batch*seq", 4], {"batch": {}, "seq": {"max": 64}}))
    assert manifest.symbols == {"batch": SymbolBounds(), "seq": SymbolBounds(None, 64)}
    assert manifest.graphs["train_step"].inputs[0].dims[0].text == "batch*seq"


@pytest.mark.parametrize(
    "shape, symbols, message",
    [
        (["batch**2"], None, r"invalid shape \['batch\*\*2'\]"),
        (["os.system"], None, "invalid shape"),
        (["batch"], {"2x": {}}, "'2x', which is not a symbol name"),
        (["batch"], {"batch": {"max": -1}}, r"symbols.batch.max must be a non-negative int"),
        (["batch"], {"batch": {"min": 5, "max": 4}}, "min 5 > max 4"),
        (["batch"], {"batch": {"step": 2}}, "optional 'min' and 'max'"),
        (["batch"], [], "'symbols' must be an object"),
    ],
    ids=["power", "attribute", "bad-name", "negative", "empty-range", "unknown-key", "not-a-dict"],
)
def test_manifest_refuses_bad_dims_and_symbols(shape, symbols, message):
    with pytest.raises(ArtifactError, match=message):
        Manifest.from_json(_manifest_with(shape, symbols))


def _specs(*shapes, roles=None):
    roles = roles or ["input"] * (len(shapes) - 1) + ["target"]
    names = [f"x{i}" for i in range(len(shapes) - 1)] + ["target"]
    return [TensorSpec(n, r, "float32", list(s)) for n, r, s in zip(names, roles, shapes)]


def _arrays(*shapes):
    return [np.zeros(s, np.float32) for s in shapes]


def test_consistent_batches_pass():
    specs = _specs(["batch", "seq"], ["batch", 4], ["batch*seq"])
    for b, s in ((2, 3), (5, 1), (1, 9)):
        check_batch(specs, _arrays((b, s), (b, 4), (b * s,)), "step()")


REFUSED = {
    "same-symbol": (
        [["batch", 8], ["batch"]],
        [(4, 8), (3,)],
        r"target 'target' dimension 0 \('batch'\) is 3, but input 'x0' dimension 0 \('batch'\) is 4; they must agree",
    ),
    "derived": (
        [["batch", "seq"], ["batch*seq"]],
        [(2, 5), (11,)],
        r"target 'target' dimension 0 is 11, expected batch\*seq = 10 \(batch = 2 from input 'x0' dimension 0, "
        r"seq = 5 from input 'x0' dimension 1\)",
    ),
    "second-dim": (
        [["batch", "seq"], ["batch", "seq"], ["batch"]],
        [(2, 5), (2, 6), (2,)],
        r"input 'x1' dimension 1 \('seq'\) is 6, but input 'x0' dimension 1 \('seq'\) is 5",
    ),
    "solved": (
        [["2*half"], ["half + 1"]],
        [(8,), (6,)],
        r"target 'target' dimension 0 is 6, expected half \+ 1 = 5 \(half = 4 from input 'x0' dimension 0\)",
    ),
    "plain-first": (
        [["2*half"], ["half"]],
        [(8,), (3,)],
        r"input 'x0' dimension 0 is 8, expected 2\*half = 6 \(half = 3 from target 'target' dimension 0\)",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED), ids=list(REFUSED))
def test_inconsistent_batches_name_input_and_dimension(case):
    shapes, sizes, message = REFUSED[case]
    with pytest.raises(InputError, match=message):
        check_batch(_specs(*shapes), _arrays(*sizes), "step()")


def test_bounds_are_checked():
    specs = _specs(["batch", "seq"], ["batch*seq"])
    bounds = {"seq": SymbolBounds(None, 64), "batch": SymbolBounds(2, None)}
    check_batch(specs, _arrays((2, 64), (128,)), "step()", bounds)
    with pytest.raises(InputError, match=r"input 'x0' dimension 1 \('seq'\) is 65; 'seq' must be at most 64"):
        check_batch(specs, _arrays((2, 65), (130,)), "step()", bounds)
    with pytest.raises(InputError, match=r"input 'x0' dimension 0 \('batch'\) is 1; 'batch' must be at least 2"):
        check_batch(specs, _arrays((1, 4), (4,)), "step()", bounds)


def test_a_symbol_bound_only_inside_an_expression_is_left_to_the_graph():
    # 'seq' appears nowhere alone and 'batch*seq' is not affine in two unknowns: nothing to check against
    check_batch(_specs(["batch*seq"]), _arrays((12,)), "eval()")
