"""Time whole training steps: optgraph on onnxruntime, eager torch, torch.compile and onnxruntime-training.

    python -m tools.benchmark [--threads 2] [--steps 200] [--rounds 5] [--models mlp cnn transformer large-mlp]
                              [--optimizers adamw sgd] [--peer] [--json PATH] [--keep DIR]

Workloads (``--models``): ``mlp`` (784-256-256-10, batch 64), ``cnn`` (2 x conv, BatchNorm, ReLU,
maxpool on 3x32x32, batch 32), ``transformer`` (a 2-layer causal LM: vocab 1000, d_model 128, 4 heads,
ff 512, seq 64, batch 8, labels flattened to ``(batch*seq,)``) and ``large-mlp`` (1024-4096-4096-10,
batch 256). Optimizers (``--optimizers``): AdamW lr 1e-3 and SGD lr 1e-2 momentum 0.9, the same on
every side.

Sides, each in its own process (two frameworks in one process fight over spinning thread pools), with
the same model, initial weights, batch and number of intra-op threads; the timed sides take turns for
``--rounds`` rounds:

- ``optgraph``: ``session.step`` (validation, binding, forward, backward, update) on an artifact that
  another process compiled and saved; the training process never imports torch.
- ``eager``: ``zero_grad; loss_fn(model(x), y).backward(); opt.step()``.
- ``torch.compile``: ``torch.compile`` of forward + loss (AOTAutograd compiles the backward) and
  ``torch.compile(opt.step)``, the compiled optimizer; ``backward()`` is called eagerly between the two.
  Its inductor cache is a fresh folder per run of this tool, so its compile time is a cold one.
- ``ort-training`` (``--peer``): onnxruntime-training 1.19.2's on-device API, ``module(x, y);
  optimizer.step(); module.lazy_reset_grad()``, on artifacts made by its ``generate_artifacts`` from
  the same model exported to ONNX (its environment: ``python -m tools.old_runtime_venv --peer``). Its
  SGD has no momentum, so it runs plain SGD, checked against eager plain SGD; its AdamW is Hugging
  Face's variant, which the parameter check flags; LayerNormalization needs outputs the exporter leaves
  out (``generate_peer`` adds them and says so). A side that fails is reported as ``fails: <reason>``.

Per side: the median and interquartile range of the per-step times over all rounds, the ratio of the
median to eager torch's, the compile time (optgraph: ``compile`` + ``save``; ort-training: ONNX export
+ ``generate_artifacts``; torch.compile: its first, compiling step), the time from opening the saved
artifact (or building the model) to the end of the first step, the peak RSS of a process that only
trains (ort-training's less the RSS that ``import torch`` adds in its environment: its Python package
imports torch, an app on its C API would not), and how far the parameters are from eager torch's after 20
steps on fixed batches: the max abs difference, and the L2 norm of the difference over all parameters
relative to theirs, flagged above 1e-4 (see ``compare_params``).
For ``large-mlp`` it also prints the achieved GFLOP/s against float32 matmul peaks of onnxruntime and
torch. The output is markdown, with a table of the optgraph targets (``docs/benchmarks.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parent
PEER_PYTHON = TOOLS.parent / ".venv-ort1.19" / "bin" / "python"
WARM_UP = 10
CHECK_STEPS = 20  # steps on fixed batches before the parameters are compared
CHECK_BATCHES = 4  # distinct batches, cycled over the check steps
TOLERANCE = 1e-4  # |side - eager| / |eager|, L2 norms over all parameters, after the check steps
FLOAT32_DRIFT = 4  # ... or this many times eager float32's distance from eager float64, where that is larger
MATMUL_N = 4096
VOCAB, SEQ = 1000, 64
SIDES = ("optgraph", "eager", "torch.compile", "ort-training")
PEER = "ort-training"

# -- workloads ---------------------------------------------------------------------------------------------


def mlp():
    from torch import nn

    return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


def cnn():
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 8 * 8, 10),
    )  # fmt: skip


def transformer():
    """A 2-layer causal transformer LM: embedding, two encoder layers with a causal mask, a linear head."""
    from torch import nn

    class TinyLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(VOCAB, 128)
            self.layers = nn.ModuleList(
                nn.TransformerEncoderLayer(128, 4, dim_feedforward=512, dropout=0.0, batch_first=True) for _ in range(2)
            )
            self.head = nn.Linear(128, VOCAB)

        def forward(self, tokens):
            mask = nn.Transformer.generate_square_subsequent_mask(tokens.shape[1])
            h = self.embed(tokens)
            for layer in self.layers:
                h = layer(h, src_mask=mask, is_causal=True)
            return self.head(h)

    return TinyLM()


def large_mlp():
    from torch import nn

    return nn.Sequential(nn.Linear(1024, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 10))


MODELS = {"mlp": mlp, "cnn": cnn, "transformer": transformer, "large-mlp": large_mlp}
BATCHES = {"mlp": 64, "cnn": 32, "transformer": 8, "large-mlp": 256}
SAMPLE_SHAPES = {"mlp": (784,), "cnn": (3, 32, 32), "transformer": (SEQ,), "large-mlp": (1024,)}  # one sample's input
OPTIMIZERS = {"adamw": ("AdamW", {"lr": 1e-3}), "sgd": ("SGD", {"lr": 1e-2, "momentum": 0.9})}
OPTIMIZER_SLOTS = {"adamw": 2, "sgd": 1}  # state tensors per parameter: exp_avg and exp_avg_sq; momentum_buffer


def lm_loss(logits, labels):
    import torch.nn.functional as F

    return F.cross_entropy(logits.reshape(-1, VOCAB), labels)


def class_loss(logits, labels):
    import torch.nn.functional as F

    return F.cross_entropy(logits, labels)


def loss_of(name: str):
    return lm_loss if name == "transformer" else class_loss


def _batch(shape, batch: int, seed: int = 0):
    """A float batch of ``shape`` samples with class labels in [0, 10)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, *shape), dtype=np.float32), rng.integers(0, 10, batch)


def batches(name: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """The fixed batches of a workload: every side trains on these, in this order."""
    out = []
    for seed in range(CHECK_BATCHES):
        if name == "transformer":
            rng = np.random.default_rng(seed)
            tokens = rng.integers(0, VOCAB, (BATCHES[name], SEQ))
            out.append((tokens, rng.integers(0, VOCAB, BATCHES[name] * SEQ)))
        else:
            out.append(_batch(SAMPLE_SHAPES[name], BATCHES[name], seed))
    return out


# -- the sides' children -------------------------------------------------------------------------------------


def _rss_mb() -> float:
    """Peak RSS, MiB. The parent never imports torch or onnxruntime and never holds parameters: Linux carries
    the peak of the process that spawned this one into ``ru_maxrss`` across exec, so a heavy parent would show."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


def _hwm_mb() -> float | None:
    """Peak RSS of this process image alone (Linux ``VmHWM``), to cross-check ``ru_maxrss``."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def _torch_model(name: str):
    import torch

    torch.manual_seed(0)
    return MODELS[name]()


def _torch_optimizer(model, optimizer: str):
    import torch

    cls, kwargs = OPTIMIZERS[optimizer]
    return getattr(torch.optim, cls)(model.parameters(), **kwargs)


def _ort_options(threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return options


def open_optgraph(job: dict):
    import optgraph

    session = optgraph.TrainingSession(
        Path(job["folder"]) / "optgraph",
        providers=["CPUExecutionProvider"],
        session_options=_ort_options(job["threads"]),
    )

    def params():
        names = json.loads((Path(job["folder"]) / "param_names.json").read_text())
        state = session.state_dict()
        return {n: state[n] for n in names}

    return (lambda x, y: session.step(x, y)), params


def open_torch(job: dict, compiled: bool):
    import torch

    torch.set_num_threads(job["threads"])
    model = _torch_model(job["model"])
    float64 = job.get("float64", False)  # the reference that measures float32's own drift
    if float64:
        model.double()
    if job["optimizer"] == "sgd-plain":  # the reference for onnxruntime-training's SGD, which has no momentum
        opt = torch.optim.SGD(model.parameters(), lr=OPTIMIZERS["sgd"][1]["lr"])
    else:
        opt = _torch_optimizer(model, job["optimizer"])
    loss_fn = loss_of(job["model"])

    def forward(x, y):
        return loss_fn(model(x), y)

    update = opt.step
    if compiled:
        forward, update = torch.compile(forward), torch.compile(opt.step)

    def step(x, y):
        opt.zero_grad()
        x = torch.from_numpy(x)
        loss = forward(x.double() if float64 and x.is_floating_point() else x, torch.from_numpy(y))
        loss.backward()
        update()
        return loss

    def params():
        return {n: p.detach().numpy().copy() for n, p in model.named_parameters()}

    return step, params


def open_peer(job: dict):
    from onnxruntime.training.api import CheckpointState, Module, Optimizer

    peer = Path(job["folder"]) / "peer"
    state = CheckpointState.load_checkpoint(str(peer / "checkpoint"))
    module = Module(
        str(peer / "training_model.onnx"), state, None, device="cpu", session_options=_ort_options(job["threads"])
    )
    optimizer = Optimizer(str(peer / "optimizer_model.onnx"), module)
    optimizer.set_learning_rate(OPTIMIZERS["sgd" if job["optimizer"] == "sgd" else "adamw"][1]["lr"])
    module.train()

    def step(x, y):
        loss = module(x, y)
        optimizer.step()
        module.lazy_reset_grad()
        return loss

    def params():
        names = json.loads((peer / "param_names.json").read_text())  # torch name -> ONNX initializer
        return {n: np.array(state.parameters[onnx_name].data) for n, onnx_name in names.items()}

    return step, params


def run_side(job: dict) -> dict:
    """Open one side and train: ``check`` 20 steps on the fixed batches and save the parameters, else time it."""
    side, name = job["side"], job["model"]
    if side == "optgraph":
        import onnxruntime  # noqa: F401 - imports are not part of the first step

        import optgraph  # noqa: F401
    elif side == PEER:
        import onnxruntime.training.api  # noqa: F401
    else:
        import torch  # noqa: F401
    data = batches(name)
    started = time.perf_counter()
    if side == "optgraph":
        step, params = open_optgraph(job)
    elif side == PEER:
        step, params = open_peer(job)
    else:
        step, params = open_torch(job, compiled=side == "torch.compile")
    opened = time.perf_counter()
    step(*data[0])
    result = {"first_step_s": time.perf_counter() - started, "first_call_s": time.perf_counter() - opened}
    if job["check"]:
        for i in range(1, CHECK_STEPS):
            step(*data[i % len(data)])
        np.savez(job["params_out"], **params())
        return result
    x, y = data[0]
    for _ in range(WARM_UP):
        step(x, y)
    times = []
    for _ in range(job["steps"]):
        start = time.perf_counter()
        step(x, y)
        times.append((time.perf_counter() - start) * 1e3)
    result.update(times_ms=times, rss_mb=_rss_mb(), hwm_mb=_hwm_mb())
    return result


# -- artifacts ----------------------------------------------------------------------------------------------


def compile_optgraph(job: dict) -> dict:
    import torch

    import optgraph
    from optgraph import optim

    name, folder = job["model"], Path(job["folder"])
    model = _torch_model(name)
    (folder / "param_names.json").write_text(json.dumps([n for n, _ in model.named_parameters()]))
    x, y = (torch.from_numpy(a) for a in batches(name)[0])
    cls, kwargs = OPTIMIZERS[job["optimizer"]]
    started = time.perf_counter()
    artifact = optgraph.compile(model, (x,), (y,), loss_of(name), optimizer=getattr(optim, cls)(**kwargs))
    artifact.save(folder / "optgraph")
    return {"compile_s": time.perf_counter() - started}


def export_peer(job: dict) -> dict:
    """The forward model as ONNX for onnxruntime-training (TorchScript exporter, training mode)."""
    import warnings

    import torch

    name, folder = job["model"], Path(job["folder"])
    model = _torch_model(name)
    if name == "transformer":  # its loss block takes 2-D logits: flatten them in the graph, as the loss does

        class FlatLogits(torch.nn.Module):
            def __init__(self, lm):
                super().__init__()
                self.lm = lm

            def forward(self, tokens):
                return self.lm(tokens).reshape(-1, VOCAB)

        exported, prefix = FlatLogits(model), "lm."
    else:
        exported, prefix = model, ""
    x = torch.from_numpy(batches(name)[0][0])
    warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and in-place notes
    started = time.perf_counter()
    torch.onnx.export(
        exported, (x,), str(folder / "forward.onnx"), dynamo=False, opset_version=17, do_constant_folding=False,
        input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"}},
        training=torch.onnx.TrainingMode.TRAINING,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    import onnx

    initializers = {t.name for t in onnx.load(str(folder / "forward.onnx")).graph.initializer}
    names = {n: prefix + n for n, _ in model.named_parameters()}
    missing = sorted(n for n, onnx_name in names.items() if onnx_name not in initializers)
    if missing:
        raise RuntimeError(f"the exporter renamed or folded parameters: {', '.join(missing[:4])}")
    (folder / "peer_param_names.json").write_text(json.dumps(names))
    return {"export_s": seconds}


def generate_peer(job: dict) -> dict:
    """onnxruntime-training's artifacts (cross-entropy and AdamW or SGD) for the exported forward model.

    Its gradient builder needs the Mean and InvStdDev outputs of LayerNormalization, which the exporter leaves
    out: where generation fails on a graph with LayerNormalization, it is retried with them added, and the
    result says so."""
    import onnx
    from onnxruntime.training import artifacts, onnxblock

    folder = Path(job["folder"])
    peer = folder / "peer"
    peer.mkdir()
    names = json.loads((folder / "peer_param_names.json").read_text())
    (peer / "param_names.json").write_text(json.dumps(names))
    model = onnx.load(str(folder / "forward.onnx"))

    def generate():
        # torch's AdamW defaults (the block's are eps 1e-6 and no weight decay); its SGD has no momentum
        adamw = onnxblock.optim.AdamW(eps=1e-8, weight_decay=0.01)
        artifacts.generate_artifacts(
            model,
            requires_grad=list(names.values()),
            loss=artifacts.LossType.CrossEntropyLoss,
            optimizer=adamw if job["optimizer"] == "adamw" else artifacts.OptimType.SGD,
            artifact_directory=str(peer),
        )

    started = time.perf_counter()
    result = {}
    try:
        generate()
    except Exception as error:
        norms = [n for n in model.graph.node if n.op_type == "LayerNormalization" and len(n.output) == 1]
        if not norms:
            raise
        result["note"] = (
            f"as exported, generate_artifacts fails ({_short(error)}); it runs once the {len(norms)} "
            "LayerNormalization nodes get their Mean and InvStdDev outputs, which its gradient builder needs"
        )
        for i, node in enumerate(norms):
            node.output.extend([f"layer_norm_{i}_mean", f"layer_norm_{i}_inv_std"])
        started = time.perf_counter()
        generate()
    return {**result, "generate_s": time.perf_counter() - started}


def _short(error: Exception) -> str:
    """An exception in one line, without onnxruntime's source paths and C++ signatures."""
    text = " ".join(str(error).split())
    text = re.sub(r"/\S*/(\w+\.\w+:\d+)", r"\1", text)  # /onnxruntime_src/.../file.h:123 -> file.h:123
    text = re.sub(r" onnxruntime::\S.*?\) const", "", text)
    return f"{type(error).__name__}: {text}"[:240]


def import_torch_rss(job: dict) -> dict:
    """What ``import torch`` adds to the RSS of this environment's interpreter."""
    before = _rss_mb()
    import torch  # noqa: F401

    return {"import_torch_mb": _rss_mb() - before}


def matmul_peak(job: dict) -> dict:
    """Float32 GFLOP/s of one MATMUL_N x MATMUL_N matmul: best of 3 after a warm-up, ``threads`` threads."""
    n, threads = MATMUL_N, job["threads"]
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    if job["framework"] == "onnxruntime":
        import onnxruntime as ort
        from onnx import TensorProto, helper

        graph = helper.make_graph(
            [helper.make_node("MatMul", ["a", "b"], ["c"])],
            "matmul",
            [helper.make_tensor_value_info(v, TensorProto.FLOAT, [n, n]) for v in "ab"],
            [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        session = ort.InferenceSession(
            model.SerializeToString(), _ort_options(threads), providers=["CPUExecutionProvider"]
        )
        run = lambda: session.run(None, {"a": a, "b": b})  # noqa: E731
    else:
        import torch

        torch.set_num_threads(threads)
        ta, tb, tc = torch.from_numpy(a), torch.from_numpy(b), torch.empty(n, n)
        run = lambda: torch.mm(ta, tb, out=tc)  # noqa: E731
    run()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return {"gflops": 2 * n**3 / best / 1e9}


def describe(job: dict) -> dict:
    """Versions, the CPU, and each workload's parameter bytes and matmul parameters."""
    import onnxruntime
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    workloads = {}
    for name, build in MODELS.items():
        model = build()
        workloads[name] = {
            "param_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
            "matmul_params": sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)),
        }
    return {
        "machine": {
            "cpu": cpu,
            "cores": os.cpu_count(),
            "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__,
        },
        "workloads": workloads,
    }


def _rel_l2(got, ref) -> float:
    """|got - ref| / |ref|, L2 norms over all of ``ref``'s parameters, in float64."""
    diff_sq = sum(float(np.sum((got[n].astype(np.float64) - ref[n]) ** 2)) for n in ref.files)
    ref_sq = sum(float(np.sum(ref[n].astype(np.float64) ** 2)) for n in ref.files)
    return float(np.sqrt(diff_sq / max(ref_sq, 1e-300)))


def compare_params(job: dict) -> dict:
    """How far a side's parameters are from eager torch's: the max abs difference, and the L2 norm of the
    difference over all parameters relative to theirs, which decides.

    The tolerance is TOLERANCE or, where float32 itself drifts further in these steps, FLOAT32_DRIFT times eager
    float32's distance from eager float64: a max-pooling window or ReLU whose inputs nearly tie takes the other
    branch after a rounding difference, and the runs part (on the CNN after 20 SGD steps eager float32 is
    4e-3 from float64), while a wrong update rule moves everything at once. The max abs difference can be
    large where the relative norm is not: AdamW moves an entry whose gradient is near zero by about lr
    whatever the gradient's size (the key bias of attention, whose exact gradient is zero, is such noise)."""
    ref, got, exact = np.load(job["reference"]), np.load(job["other"]), np.load(job["float64"])
    missing = sorted(set(ref.files) - set(got.files))
    if missing:
        return {"max_abs_diff": None, "ok": False, "note": f"no parameter {missing[0]}"}
    worst_abs, worst = 0.0, ""
    for name in ref.files:
        diff = float(np.max(np.abs(got[name].astype(np.float64) - ref[name]))) if ref[name].size else 0.0
        if diff >= worst_abs:
            worst_abs, worst = diff, name
    rel, drift = _rel_l2(got, ref), _rel_l2(ref, exact)
    tolerance = max(TOLERANCE, FLOAT32_DRIFT * drift)
    return {
        "max_abs_diff": worst_abs,
        "max_abs_diff_param": worst,
        "rel_l2_diff": rel,
        "float32_drift": drift,
        "tolerance": tolerance,
        "ok": rel <= tolerance,
    }


CHILD_TASKS = {
    "describe": describe,
    "compare_params": compare_params,
    "run": run_side,
    "compile_optgraph": compile_optgraph,
    "export_peer": export_peer,
    "generate_peer": generate_peer,
    "import_torch_rss": import_torch_rss,
    "matmul_peak": matmul_peak,
}


def child(argument: str) -> None:
    job = json.loads(argument)
    try:
        result = CHILD_TASKS[job["task"]](job)
    except Exception as error:  # the parent reports it as "fails: <reason>"
        traceback.print_exc()
        result = {
            "error": f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        }
    print("RESULT " + json.dumps(result))


# -- the parent ---------------------------------------------------------------------------------------------


class SideFailed(Exception):
    pass


def _child(python, job: dict, env: dict | None = None) -> dict:
    run = subprocess.run(
        [str(python), __file__, "--child", json.dumps(job)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        tail = (run.stderr.strip().splitlines() or ["no output"])[-1]
        raise SideFailed(f"{job['task']} exited {run.returncode}: {tail}")
    result = json.loads(lines[-1][len("RESULT ") :])
    if "error" in result:
        raise SideFailed(result["error"][:300])
    return result


def bench_pair(name: str, optimizer: str, args, sides: list[str], work: Path) -> list[dict]:
    """Every side of one workload and optimizer: artifacts, the parameter check, then interleaved rounds."""
    folder = work / f"{name}-{optimizer}"
    folder.mkdir()
    rows = {side: {"model": name, "optimizer": optimizer, "side": side} for side in sides}
    inductor = {"TORCHINDUCTOR_CACHE_DIR": str(work / "inductor")}
    base = {"folder": str(folder), "model": name, "optimizer": optimizer, "threads": args.threads}
    python = {side: PEER_PYTHON if side == PEER else sys.executable for side in sides}

    def fail(side, error):
        rows[side]["error"] = str(error)
        print(f"  {side}: fails: {error}", file=sys.stderr)

    try:
        rows["optgraph"]["compile_s"] = _child(sys.executable, {**base, "task": "compile_optgraph"})["compile_s"]
    except SideFailed as error:
        fail("optgraph", error)
    if PEER in rows:
        try:
            exported = _child(sys.executable, {**base, "task": "export_peer"})
            generated = _child(PEER_PYTHON, {**base, "task": "generate_peer"})
            rows[PEER]["compile_s"] = exported["export_s"] + generated["generate_s"]
            if "note" in generated:
                rows[PEER].setdefault("notes", []).append(generated["note"])
        except SideFailed as error:
            fail(PEER, error)
    # the parameter check: 20 steps on the fixed batches; torch.compile's first run here is its cold compile
    for side in [s for s in sides if "error" not in rows[s]]:
        try:
            job = {**base, "task": "run", "side": side, "check": True, "params_out": str(folder / f"{side}.npz")}
            result = _child(python[side], job, inductor)
            rows[side]["first_step_s"] = result["first_step_s"]
            if side == "torch.compile":
                rows[side]["compile_s"] = result["first_call_s"]
        except SideFailed as error:
            fail(side, error)
    # eager references: float64 for float32's own drift, and plain SGD for onnxruntime-training's (no momentum)
    reference = {side: optimizer for side in sides}
    if PEER in rows and optimizer == "sgd":
        reference[PEER] = "sgd-plain"
    for ref in sorted({reference[s] for s in sides if "error" not in rows[s] and "error" not in rows["eager"]}):
        job = {**base, "optimizer": ref, "task": "run", "side": "eager", "check": True}
        try:
            if ref != optimizer:
                _child(sys.executable, {**job, "params_out": str(folder / f"eager-{ref}.npz")})
            _child(sys.executable, {**job, "float64": True, "params_out": str(folder / f"eager-{ref}-float64.npz")})
        except SideFailed as error:
            for side in [s for s in sides if reference[s] == ref]:
                fail(side, f"its reference, eager {ref} float64: {error}")
    for side in sides:
        if "error" in rows[side] or "error" in rows["eager"]:
            continue
        ref = reference[side]
        job = {
            "task": "compare_params",
            "reference": str(folder / ("eager.npz" if ref == optimizer else f"eager-{ref}.npz")),
            "float64": str(folder / f"eager-{ref}-float64.npz"),
            "other": str(folder / f"{side}.npz"),
        }
        compared = _child(sys.executable, job)
        if "note" in compared:
            rows[side].setdefault("notes", []).append(compared.pop("note"))
        rows[side].update(compared)
    # interleaved timing rounds
    times = {side: [] for side in sides}
    for _ in range(args.rounds):
        for side in [s for s in sides if "error" not in rows[s]]:
            try:
                job = {**base, "task": "run", "side": side, "check": False, "steps": args.steps}
                result = _child(python[side], job, inductor)
            except SideFailed as error:
                fail(side, error)
                continue
            times[side].extend(result["times_ms"])
            rows[side].setdefault("round_means_ms", []).append(statistics.fmean(result["times_ms"]))
            rows[side]["rss_mb"] = max(rows[side].get("rss_mb", 0.0), result["rss_mb"])
            if result.get("hwm_mb") is not None:
                rows[side]["hwm_mb"] = max(rows[side].get("hwm_mb", 0.0), result["hwm_mb"])
    for side in sides:
        if "error" in rows[side] or not times[side]:
            continue
        q1, median, q3 = np.percentile(times[side], [25, 50, 75])
        rows[side].update(median_ms=float(median), iqr_ms=[float(q1), float(q3)])
    if "median_ms" in rows["eager"]:
        for row in rows.values():
            if "median_ms" in row:
                row["vs_eager"] = row["median_ms"] / rows["eager"]["median_ms"]
    param_mb = args.workloads[name]["param_bytes"] / 2**20
    for side, row in rows.items():
        no_momentum = side == PEER and optimizer == "sgd"
        row["state_mb"] = param_mb * (1 + (0 if no_momentum else OPTIMIZER_SLOTS[optimizer]))
    if "rss_mb" in rows.get(PEER, {}):
        rows[PEER]["rss_mb"] -= args.import_torch_mb
        rows[PEER]["hwm_mb"] = rows[PEER].get("hwm_mb", args.import_torch_mb) - args.import_torch_mb
    if optimizer == "adamw" and rows.get(PEER, {}).get("ok") is False:
        rows[PEER].setdefault("notes", []).append(
            "its AdamW is Hugging Face's (adam_mode=1: eps is added to sqrt(v) before the bias correction), "
            "not torch's; on small gradients the update differs"
        )
    if name == "large-mlp":
        flops = step_flops(args.workloads, name)
        for row in rows.values():
            if "median_ms" in row:
                row["gflops"] = flops / (row["median_ms"] / 1e3) / 1e9
    return list(rows.values())


# -- output -------------------------------------------------------------------------------------------------

COLUMNS = [
    "workload",
    "optimizer",
    "side",
    "step ms (median)",
    "IQR ms",
    "x eager",
    "compile s",
    "first step s",
    "peak RSS MB",
    "state MB",
    "params max abs diff",
    "rel L2 diff",
    "check",
]


def _num(value, digits=2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def results_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    for row in rows:
        head = [
            row["model"],
            row["optimizer"] + (" (no momentum)" if row["side"] == PEER and row["optimizer"] == "sgd" else ""),
            row["side"],
        ]
        if "error" in row and "median_ms" not in row:
            cells = [f"fails: {row['error']}"] + [""] * (len(COLUMNS) - 4)
        else:
            iqr = row.get("iqr_ms")
            diff = row.get("max_abs_diff")
            check = "" if "ok" not in row else ("ok" if row["ok"] else "**DISAGREES**")
            if row["side"] == "eager" and "ok" in row:
                check = "reference"
            if row.get("tolerance", TOLERANCE) > TOLERANCE:
                check += f" (tol {row['tolerance']:.0e})"
            cells = [
                _num(row.get("median_ms")),
                f"{iqr[0]:.2f}-{iqr[1]:.2f}" if iqr else "",
                _num(row.get("vs_eager")),
                _num(row.get("compile_s")),
                _num(row.get("first_step_s")),
                _num(row.get("rss_mb"), 0),
                _num(row.get("state_mb"), 1),
                "" if diff is None else f"{diff:.1e}",
                "" if row.get("rel_l2_diff") is None else f"{row['rel_l2_diff']:.1e}",
                check,
            ]
        lines.append("| " + " | ".join(head + cells) + " |")
    notes = [f"- {r['model']} {r['optimizer']} {r['side']}: {note}" for r in rows for note in r.get("notes", [])]
    return "\n".join(lines + ([""] + notes if notes else []))


def step_flops(workloads: dict, name: str) -> int:
    """Flops of one forward + backward: 6 per sample for each parameter of the matmuls."""
    return 6 * BATCHES[name] * workloads[name]["matmul_params"]


def gflops_table(rows: list[dict], peaks: dict, workloads: dict) -> str:
    best = max(peaks.values())
    lines = [
        f"large-mlp, 6 x batch x matmul params = {step_flops(workloads, 'large-mlp') / 1e9:.1f} "
        f"GFLOP a step; float32 {MATMUL_N}x{MATMUL_N} matmul peak: "
        + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peaks.items()),
        "",
        "| optimizer | side | GFLOP/s | % of best matmul peak |",
        "| --- | --- | --- | --- |",
    ]
    for row in rows:
        if row["model"] == "large-mlp" and "gflops" in row:
            lines.append(
                f"| {row['optimizer']} | {row['side']} | {row['gflops']:.1f} | {100 * row['gflops'] / best:.0f}% |"
            )
    return "\n".join(lines)


FIRST_STEP_LIMIT_S = {"mlp": 2.0, "cnn": 2.0, "transformer": 5.0}


def targets(rows: list[dict], peaks: dict) -> list[dict]:
    """The optgraph targets, each with what was measured and met / missed / not measured."""
    by = {(r["model"], r["optimizer"], r["side"]): r for r in rows}
    models = sorted({r["model"] for r in rows}, key=list(MODELS).index)
    optimizers = sorted({r["optimizer"] for r in rows}, key=list(OPTIMIZERS).index)
    out = []

    def add(target, model, pairs):
        """pairs: (optimizer, text, met or None) per optimizer."""
        measured = "; ".join(f"{o}: {text}" for o, text, _ in pairs)
        verdicts = [m for _, _, m in pairs]
        verdict = "not measured" if not verdicts or None in verdicts else ("met" if all(verdicts) else "missed")
        out.append({"target": target, "workload": model, "measured": measured, "verdict": verdict})

    def compare(model, key, other, unit, digits):
        pairs = []
        for o in optimizers:
            mine, theirs = by.get((model, o, "optgraph"), {}), by.get((model, o, other), {})
            if key in mine and key in theirs:
                a, b = mine[key], theirs[key]
                pairs.append((o, f"{a:.{digits}f} vs {b:.{digits}f} {unit}", a < b))
            else:
                why = theirs.get("error") or mine.get("error") or "not run"
                pairs.append((o, f"n/a ({why[:80]})", None))
        return pairs

    for model in models:
        add("peak RSS below onnxruntime-training's", model, compare(model, "rss_mb", PEER, "MB", 0))
    if "large-mlp" in models:
        pairs = []
        for o in optimizers:
            r = by.get(("large-mlp", o, "optgraph"), {})
            if "rss_mb" in r:
                pairs.append(
                    (o, f"{r['rss_mb']:.0f} MB vs {r['state_mb'] + 200:.0f} MB", r["rss_mb"] <= r["state_mb"] + 200)
                )
            else:
                pairs.append((o, "n/a", None))
        add("peak RSS <= state + 200 MB", "large-mlp", pairs)
    for model in models:
        add("faster than onnxruntime-training", model, compare(model, "median_ms", PEER, "ms", 2))
    for model in models:
        add("faster than torch.compile", model, compare(model, "median_ms", "torch.compile", "ms", 2))
    if "mlp" in models:
        pairs = []
        for o in optimizers:
            r = by.get(("mlp", o, "optgraph"), {})
            ok = r["vs_eager"] <= 0.35 if "vs_eager" in r else None
            pairs.append((o, f"{r['vs_eager']:.2f} of eager" if "vs_eager" in r else "n/a", ok))
        add("at most 0.35 of eager torch's step time", "mlp", pairs)
    if "large-mlp" in models and peaks:
        best = max(peaks.values())
        pairs = []
        for o in optimizers:
            r = by.get(("large-mlp", o, "optgraph"), {})
            ok = r["gflops"] >= 0.8 * best if "gflops" in r else None
            pairs.append(
                (
                    o,
                    f"{r['gflops']:.1f} of {best:.1f} GFLOP/s ({100 * r['gflops'] / best:.0f}%)"
                    if ok is not None
                    else "n/a",
                    ok,
                )
            )
        add(">= 80% of the better float32 matmul peak", "large-mlp", pairs)
    for model in [m for m in models if m in FIRST_STEP_LIMIT_S]:
        limit, pairs = FIRST_STEP_LIMIT_S[model], []
        for o in optimizers:
            r = by.get((model, o, "optgraph"), {})
            if "compile_s" in r and "first_step_s" in r:
                total = r["compile_s"] + r["first_step_s"]
                pairs.append((o, f"{r['compile_s']:.2f} + {r['first_step_s']:.2f} = {total:.2f} s", total <= limit))
            else:
                pairs.append((o, f"n/a ({r.get('error', 'not run')[:80]})", None))
        add(f"compile + first step within {limit:g} s", model, pairs)
    return out


def targets_table(rows: list[dict]) -> str:
    lines = ["| target | workload | measured (optgraph vs other) | met? |", "| --- | --- | --- | --- |"]
    lines += [f"| {t['target']} | {t['workload']} | {t['measured']} | {t['verdict']} |" for t in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=list(OPTIMIZERS))
    parser.add_argument("--peer", action="store_true", help="also time onnxruntime-training 1.19.2")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", type=Path, help="keep the artifacts and checked parameters in this new folder")
    args = parser.parse_args()
    if args.peer and not PEER_PYTHON.exists():
        sys.exit(f"no {PEER_PYTHON}: run python -m tools.old_runtime_venv --peer first")
    sides = [s for s in SIDES if s != PEER or args.peer]
    described = _child(sys.executable, {"task": "describe"})  # this process stays light: see _rss_mb
    args.workloads = described["workloads"]
    info = {**described["machine"], "threads": args.threads, "steps": args.steps, "rounds": args.rounds}
    if args.peer:
        info["peer"] = "onnxruntime-training 1.19.2"
        args.import_torch_mb = _child(PEER_PYTHON, {"task": "import_torch_rss"})["import_torch_mb"]
        info["peer_import_torch_mb"] = args.import_torch_mb
    print(
        f"{info['cpu']}, {info['cores']} cores; onnxruntime {info['onnxruntime']}, torch {info['torch']}, "
        f"{args.threads} threads; {args.rounds} rounds of {args.steps} steps (after {WARM_UP} warm-up), "
        "each side in its own process"
    )
    if args.peer:
        print(f"ort-training's peak RSS is less {args.import_torch_mb:.0f} MB, what `import torch` adds in its venv")
    peaks = {}
    if "large-mlp" in args.models:
        for framework in ("onnxruntime", "torch"):
            peaks[framework] = _child(
                sys.executable, {"task": "matmul_peak", "framework": framework, "threads": args.threads}
            )["gflops"]
    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary) if args.keep is None else args.keep
        work.mkdir(exist_ok=True)
        for name in args.models:
            for optimizer in args.optimizers:
                print(f"{name} {optimizer} ...", file=sys.stderr, flush=True)
                rows += bench_pair(name, optimizer, args, sides, work)
    goals = targets(rows, peaks)
    print()
    print(results_table(rows))
    if any("gflops" in r for r in rows):
        print()
        print(gflops_table(rows, peaks, args.workloads))
    print()
    print(targets_table(goals))
    disagree = [f"{r['model']} {r['optimizer']} {r['side']}" for r in rows if r.get("ok") is False]
    if disagree:
        print(f"\nPARAMETERS DISAGREE with eager torch after {CHECK_STEPS} steps: {', '.join(disagree)}")
    if args.json:
        args.json.write_text(
            json.dumps({"machine": info, "matmul_peak_gflops": peaks, "rows": rows, "targets": goals}, indent=1)
        )
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2])
    else:
        sys.exit(main())
