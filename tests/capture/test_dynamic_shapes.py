"""compile(dynamic_shapes=...): one symbol per dynamic dimension, relations inferred, names in the manifest.

Each model is compiled once and trained with AdamW at several batch sizes and
sequence lengths against eager torch (loss and every parameter after every step).
"""

from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import sympy
import torch
from models import TinyLM, assert_close, assert_state_matches, flat_cross_entropy
from torch import nn

import optgraph
from optgraph import optim
from optgraph.errors import CaptureError, InputError

CPU = ["CPUExecutionProvider"]


def _io(artifact, graph: str = "train_step") -> dict[str, list]:
    """Shape of each input and target (or eval input/output) as the manifest records it."""
    spec = artifact.manifest.graphs[graph]
    return {t.name: t.shape for t in spec.inputs + spec.outputs if t.role in ("input", "target", "output")}


def _train_against_torch(artifact, model, loss_fn, batches, lr=1e-2):
    """Every batch: one session step and one torch AdamW step; loss and every parameter and buffer agree."""
    session = optgraph.TrainingSession(artifact, providers=CPU)
    reference = copy.deepcopy(model)
    torch_opt = torch.optim.AdamW(reference.parameters(), lr=lr)
    for i, batch in enumerate(batches):
        shapes = [tuple(t.shape) for t in batch]
        ours = session.step(*batch)
        torch_opt.zero_grad()
        *inputs, target = batch
        theirs = loss_fn(reference(*inputs), target)
        theirs.backward()
        torch_opt.step()
        assert_close(ours, theirs, f"loss at step {i} {shapes}")
        assert_state_matches(session, reference, f"after step {i} {shapes}")
    return session


# -- two inputs the model ties: separate symbols, inferred equal ----------------
class TwoInputs(nn.Module):
    """An image through a small CNN, a feature vector through a Linear, added: the batches must agree."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.image_head = nn.Linear(4, 5)
        self.features_head = nn.Linear(6, 5)

    def forward(self, image, features):
        pooled = torch.relu(self.conv(image)).mean(dim=(2, 3))
        return self.image_head(pooled) + self.features_head(features)


def _two_input_batch(batch: int, gen: torch.Generator):
    return (
        torch.randn(batch, 1, 6, 6, generator=gen),
        torch.randn(batch, 6, generator=gen),
        torch.randint(0, 5, (batch,), generator=gen),
    )


def test_two_inputs_get_one_symbol_because_the_model_ties_them():
    torch.manual_seed(0)
    model, gen = TwoInputs(), torch.Generator().manual_seed(0)
    image, features, target = _two_input_batch(4, gen)
    artifact = optgraph.compile(
        model, (image, features), (target,), nn.CrossEntropyLoss(), optimizer=optim.AdamW(lr=1e-2)
    )
    assert _io(artifact) == {"image": ["batch", 1, 6, 6], "features": ["batch", 6], "target": ["batch"]}
    assert _io(artifact, "eval") == {"image": ["batch", 1, 6, 6], "features": ["batch", 6], "output": ["batch", 5]}
    assert artifact.manifest.extra["symbols"] == {"batch": {}}
    session = _train_against_torch(
        artifact, model, nn.CrossEntropyLoss(), [_two_input_batch(b, gen) for b in (3, 5, 2)]
    )
    with pytest.raises(
        InputError, match=r"input 'features' dimension 0 \('batch'\) is 4, but input 'image' dimension 0"
    ):
        session.step(*_two_input_batch(3, gen)[:1], torch.randn(4, 6), torch.randint(0, 5, (3,)))


class SideTable(nn.Module):
    """A second input whose dim 0 the model never ties to the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x, table):
        return self.fc(x) + table.mean(dim=0)


def test_an_untied_input_keeps_a_symbol_of_its_own():
    torch.manual_seed(0)
    model = SideTable()
    x, table, y = torch.randn(4, 8), torch.randn(4, 4), torch.randint(0, 4, (4,))  # equal example sizes: no tie
    artifact = optgraph.compile(model, (x, table), (y,), nn.CrossEntropyLoss(), optimizer=optim.AdamW(lr=1e-2))
    assert _io(artifact) == {"x": ["batch", 8], "table": ["table_dim0", 4], "target": ["batch"]}
    gen = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(b, 8, generator=gen), torch.randn(t, 4, generator=gen), torch.randint(0, 4, (b,), generator=gen))
        for b, t in ((3, 7), (5, 2))
    ]
    _train_against_torch(artifact, model, nn.CrossEntropyLoss(), batches)


# -- a transformer language model: labels flattened to batch * seq -------------
VOCAB = 40


def _lm_batch(batch: int, seq: int, gen: torch.Generator):
    return torch.randint(0, VOCAB, (batch, seq), generator=gen), torch.randint(0, VOCAB, (batch * seq,), generator=gen)


@pytest.fixture(scope="module")
def lm_artifact():
    torch.manual_seed(0)
    model = TinyLM()
    tokens, labels = _lm_batch(4, 4, torch.Generator().manual_seed(0))  # batch == seq in the example: no tie
    artifact = optgraph.compile(
        model, (tokens,), (labels,), flat_cross_entropy, optimizer=optim.AdamW(lr=1e-2),
        dynamic_shapes={"tokens": {0: "batch", 1: "seq"}},
    )  # fmt: skip
    return model, artifact


def test_lm_compiled_once_trains_at_two_batch_sizes_and_two_lengths(lm_artifact):
    model, artifact = lm_artifact
    assert _io(artifact) == {"tokens": ["batch", "seq"], "target": ["batch*seq"]}
    assert _io(artifact, "eval") == {"tokens": ["batch", "seq"], "output": ["batch", "seq", VOCAB]}
    assert artifact.manifest.extra["symbols"] == {"batch": {}, "seq": {}}
    gen = torch.Generator().manual_seed(1)
    batches = [_lm_batch(b, s, gen) for b, s in ((2, 5), (3, 5), (2, 9), (3, 9)) for _ in range(3)]
    session = _train_against_torch(artifact, model, flat_cross_entropy, batches)
    logits = session.eval(_lm_batch(3, 7, gen)[0])
    assert logits.shape == (3, 7, VOCAB)


LM_REFUSED = {
    "labels-not-batch-times-seq": (
        lambda t, y: (t, y[:-1]),
        r"target 'target' dimension 0 is 14, expected batch\*seq = 15 \(batch = 3 from input 'tokens' dimension 0, "
        r"seq = 5 from input 'tokens' dimension 1\)",
    ),
    "rank": (lambda t, y: (t[0], y), r"input 'tokens': expected int64 array of shape \[batch, seq\], got shape \[5\]"),
}


@pytest.mark.parametrize("case", list(LM_REFUSED), ids=list(LM_REFUSED))
def test_lm_refuses_inconsistent_batches_and_keeps_its_state(lm_artifact, case):
    _, artifact = lm_artifact
    session = optgraph.TrainingSession(artifact, providers=CPU)
    before = session.state_dict()
    change, message = LM_REFUSED[case]
    with pytest.raises(InputError, match=message):
        session.step(*change(*_lm_batch(3, 5, torch.Generator().manual_seed(2))))
    for name, value in session.state_dict().items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)


def test_saved_manifest_and_inference_model_keep_the_symbols(lm_artifact, tmp_path):
    _, artifact = lm_artifact
    session = optgraph.TrainingSession(artifact, providers=CPU)
    directory = session.save(tmp_path / "lm")
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["symbols"] == {"batch": {}, "seq": {}} and manifest["dynamic_batch"] is True
    shapes = {t["name"]: t["shape"] for t in manifest["graphs"]["train_step"]["inputs"] if t["role"] != "param"}
    assert shapes["tokens"] == ["batch", "seq"] and shapes["target"] == ["batch*seq"]
    graph = onnx.load(directory / "train_step.onnx").graph
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert dims["tokens"] == ["batch", "seq"] and dims["target"] == ["batch*seq"]

    path = session.export_inference(tmp_path / "lm.onnx")
    model = onnx.load(path)
    [tokens] = model.graph.input
    assert [d.dim_param for d in tokens.type.tensor_type.shape.dim] == ["batch", "seq"]
    inference = ort.InferenceSession(str(path), providers=CPU)
    gen = torch.Generator().manual_seed(3)
    for batch, seq in ((1, 3), (4, 11)):
        x = _lm_batch(batch, seq, gen)[0].numpy()
        [logits] = inference.run(None, {"tokens": x})
        assert_close(logits, session.eval(x), f"inference at {batch}x{seq}", rtol=1e-5, atol=1e-6)


# -- the default: dim 0 of everything, relations inferred ------------------------
def test_default_infers_labels_of_batch_times_a_fixed_length():
    torch.manual_seed(0)
    model = TinyLM()
    gen = torch.Generator().manual_seed(0)
    artifact = optgraph.compile(
        model, _lm_batch(2, 6, gen)[:1], _lm_batch(2, 6, gen)[1:], flat_cross_entropy, optimizer=optim.AdamW(lr=1e-2)
    )
    assert _io(artifact) == {"tokens": ["batch", 6], "target": ["6*batch"]}
    _train_against_torch(artifact, model, flat_cross_entropy, [_lm_batch(b, 6, gen) for b in (3, 1, 4)])


def test_an_example_batch_of_one_still_gives_a_dynamic_batch():
    torch.manual_seed(0)
    model = TinyLM()
    gen = torch.Generator().manual_seed(0)
    tokens, labels = _lm_batch(1, 6, gen)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # nothing stays fixed
        artifact = optgraph.compile(model, (tokens,), (labels,), flat_cross_entropy, optimizer=optim.AdamW(lr=1e-2))
    assert _io(artifact) == {"tokens": ["batch", 6], "target": ["6*batch"]}
    _train_against_torch(artifact, model, flat_cross_entropy, [_lm_batch(b, 6, gen) for b in (3, 1)])


def test_empty_dict_makes_every_dimension_static():
    torch.manual_seed(0)
    model, gen = TwoInputs(), torch.Generator().manual_seed(0)
    image, features, target = _two_input_batch(4, gen)
    artifact = optgraph.compile(model, (image, features), (target,), nn.CrossEntropyLoss(), dynamic_shapes={})
    assert _io(artifact) == {"image": [4, 1, 6, 6], "features": [4, 6], "target": [4]}
    assert _io(artifact, "eval") == {"image": [4, 1, 6, 6], "features": [4, 6], "output": [4, 5]}
    assert artifact.manifest.extra["symbols"] == {} and artifact.manifest.extra["dynamic_batch"] is False
    session = optgraph.TrainingSession(artifact, providers=CPU)
    with pytest.raises(
        InputError, match=r"input 'image': expected float32 array of shape \[4, 1, 6, 6\], got shape \[3"
    ):
        session.step(*_two_input_batch(3, gen))


def test_dynamic_batch_false_is_the_deprecated_spelling_of_an_empty_dict():
    torch.manual_seed(0)
    model = SideTable()
    x, table, y = torch.randn(4, 8), torch.randn(4, 4), torch.randint(0, 4, (4,))
    with pytest.warns(DeprecationWarning, match=r"dynamic_shapes=\{\} \(dynamic_batch=False\)"):
        artifact = optgraph.compile(model, (x, table), (y,), nn.CrossEntropyLoss(), dynamic_batch=False)
    assert _io(artifact) == {"x": [4, 8], "table": [4, 4], "target": [4]}


def test_a_name_on_one_input_leaves_the_others_at_the_default():
    torch.manual_seed(0)
    model = SideTable()
    x, table, y = torch.randn(4, 8), torch.randn(5, 4), torch.randint(0, 4, (4,))
    artifact = optgraph.compile(
        model, (x, table), (y,), nn.CrossEntropyLoss(), dynamic_shapes={"x": {0: "rows"}, "table": None}
    )
    assert _io(artifact) == {"x": ["rows", 8], "table": [5, 4], "target": ["rows"]}
    assert artifact.manifest.extra["symbols"] == {"rows": {}}


def test_torch_export_dims_give_their_names_and_bounds():
    torch.manual_seed(0)
    model = TinyLM(VOCAB)
    gen = torch.Generator().manual_seed(0)
    tokens, labels = _lm_batch(2, 4, gen)
    seq = torch.export.Dim("seq", max=12)
    artifact = optgraph.compile(
        model, (tokens,), (labels,), flat_cross_entropy, optimizer=optim.AdamW(lr=1e-2),
        dynamic_shapes={"tokens": {0: torch.export.Dim.AUTO, 1: seq}},
    )  # fmt: skip
    assert _io(artifact) == {"tokens": ["batch", "seq"], "target": ["batch*seq"]}
    assert artifact.manifest.extra["symbols"] == {"batch": {}, "seq": {"max": 12}}
    session = _train_against_torch(artifact, model, flat_cross_entropy, [_lm_batch(3, 12, gen), _lm_batch(2, 7, gen)])
    with pytest.raises(InputError, match=r"input 'tokens' dimension 1 \('seq'\) is 13; 'seq' must be at most 12"):
        session.step(*_lm_batch(2, 13, gen))


# -- GPT-2 from transformers: one compile, two sequence lengths, the position table's bound ---------
class GPT2Logits(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        from transformers import GPT2LMHeadModel

        self.gpt = GPT2LMHeadModel(config)

    def forward(self, input_ids):
        return self.gpt(input_ids=input_ids).logits


def test_gpt2_trains_at_two_sequence_lengths_up_to_its_position_table():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=2, n_positions=64, vocab_size=100, use_cache=False,
        attn_pdrop=0.0, embd_pdrop=0.0, resid_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = GPT2Logits(config)
    gen = torch.Generator().manual_seed(0)

    def batch(b, s):
        return torch.randint(0, 100, (b, s), generator=gen), torch.randint(0, 100, (b * s,), generator=gen)

    artifact = optgraph.compile(
        model, batch(2, 16)[:1], batch(2, 16)[1:], flat_cross_entropy, optimizer=optim.AdamW(lr=1e-3),
        dynamic_shapes={"input_ids": {0: "batch", 1: "seq"}},
    )  # fmt: skip
    assert _io(artifact) == {"input_ids": ["batch", "seq"], "target": ["batch*seq"]}
    assert artifact.manifest.extra["symbols"] == {"batch": {}, "seq": {"max": 64}}  # wpe has 64 rows
    session = _train_against_torch(
        artifact, model, flat_cross_entropy, [batch(b, s) for b, s in ((2, 16), (3, 16), (2, 32), (3, 32))], lr=1e-3
    )
    with pytest.raises(InputError, match=r"input 'input_ids' dimension 1 \('seq'\) is 65; 'seq' must be at most 64"):
        session.step(*batch(1, 65))


# -- what dynamic_shapes refuses --------------------------------------------------
class FixedBatch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(x).reshape(4, 4)


REFUSED = {
    "unknown-name": (SideTable, {"features": {0: "batch"}}, r"names 'features', which is not an input or target; expected one of 'x', 'table', 'target'"),
    "dim-out-of-range": (SideTable, {"x": {2: "batch"}}, r"dynamic_shapes\['x'\] has dimension 2, but 'x' has 2 dimension\(s\)"),
    "not-an-identifier": (SideTable, {"x": {0: "2n"}}, r"dynamic_shapes\['x'\]\[0\] is '2n'; a symbol must be a name such as 'batch' or 'seq' \(an identifier\)"),
    "dims-not-a-dict": (SideTable, {"x": [0]}, r"dynamic_shapes\['x'\] must be a dict \{dim: symbol name\} or None, got list"),
    "dim-dynamic": (SideTable, {"x": {0: torch.export.Dim.DYNAMIC}}, r"is DimHint\(DYNAMIC\); a symbol must be a name .* a torch.export.Dim or torch.export.Dim.AUTO"),
    "a-bool": (SideTable, True, r"dynamic_shapes must be None, \{\} or a dict .* got bool \(dynamic_batch=True/False is now"),
    "fixed-by-the-model": (FixedBatch, {"x": {0: "batch"}}, r"marks 'x' dimension 0 dynamic as 'batch', but the model fixes it to 4 \(in the model \(FixedBatch\)\)"),
    "fixed-by-a-layer": (SideTable, {"x": {1: "features"}}, r"marks 'x' dimension 1 dynamic as 'features', but the model fixes it to 8 \(in module 'fc' \(Linear\)\)"),
    "two-names-for-one": (TwoInputs, {"image": {0: "a"}, "features": {0: "b"}}, r"names 'features' dimension 0 'b' and 'image' dimension 0 'a', but the model makes them equal; give them one name"),
}  # fmt: skip


def _example(kind):
    if kind is TwoInputs:
        return _two_input_batch(4, torch.Generator().manual_seed(0))
    if kind is FixedBatch:
        return torch.randn(4, 8), torch.randint(0, 4, (4,))
    return torch.randn(4, 8), torch.randn(5, 4), torch.randint(0, 4, (4,))


@pytest.mark.parametrize("case", list(REFUSED), ids=list(REFUSED))
def test_dynamic_shapes_refusals_name_the_input_and_dimension(case):
    kind, spec, message = REFUSED[case]
    *inputs, target = _example(kind)
    with pytest.raises(CaptureError, match=message):
        optgraph.compile(kind(), tuple(inputs), (target,), nn.CrossEntropyLoss(), dynamic_shapes=spec)


def test_dynamic_batch_that_contradicts_dynamic_shapes_is_refused():
    *inputs, target = _example(SideTable)
    with pytest.raises(CaptureError, match=r"dynamic_batch=False contradicts dynamic_shapes=\{'x': \{0: 'n'\}\}"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            optgraph.compile(
                SideTable(),
                tuple(inputs),
                (target,),
                nn.CrossEntropyLoss(),
                dynamic_shapes={"x": {0: "n"}},
                dynamic_batch=False,
            )


# -- naming export's symbols --------------------------------------------------------
def _naming_case():
    from torch.utils._sympy.functions import FloorDiv

    s0, s1, s2 = sympy.symbols("s0 s1 s2", integer=True, positive=True)
    return {
        "batch-and-product": ([(s0, s1), (s0 * s1,)], [["batch", "tokens_dim1"], ["batch*tokens_dim1"]]),
        "affine": ([(s0, 4), (2 * s0 - 1,)], [["batch", 4], ["2*batch - 1"]]),
        "floor-div": (
            [(s0, s1), (FloorDiv(s0 * s1 + 1, 2),)],
            [["batch", "tokens_dim1"], ["(batch*tokens_dim1 + 1)//2"]],
        ),
        "square": ([(s0, s1), (s1**2,)], [["batch", "tokens_dim1"], ["tokens_dim1*tokens_dim1"]]),
        "two-dim0-symbols": ([(s0, 3), (s2,)], [["tokens_dim0", 3], ["target_dim0"]]),
        "fixed": ([(s0, 3), (5,)], [["batch", 3], [5]]),
    }


@pytest.mark.parametrize("case", list(_naming_case()), ids=list(_naming_case()))
def test_export_symbols_get_readable_names(case):
    from optgraph.capture.symbols import name_symbols

    shapes, expected = _naming_case()[case]
    named = name_symbols(shapes, ["tokens", "target"], [{0: None}, {0: None}], {})
    assert named.shapes == expected
