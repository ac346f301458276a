"""Fuzz artifact loading: mutate a saved artifact in many ways and load each mutant.

python -m tools.fuzz_artifacts [--cases 2000] [--seed 0] [--artifact DIR] [--workdir DIR]

Every case must end in an ``ArtifactError`` or in a session that loads and
trains; any other exception, a crash of the process, or a read of a file
outside the artifact directory (watched with inotify) is a failure. Mutations:
bytes flipped in and truncation of each graph and of the checkpoint (as
found, and with the manifest's sha256 updated to match, so that the checks
behind the digest are exercised too), manifest fields deleted, retyped and
renamed, path-traversing and absolute file names, huge shapes, symbolic links
pointing outside, and external-data references outside.

A mutant that loads must train: when the mutation leaves the graphs and the
state as they were, two steps must give the reference losses bit for bit;
otherwise (a re-hashed flip that still parses) every call must end in a float
or an optgraph error. Prints one JSON summary line; exit status 1 on failure.
Without ``--artifact`` it compiles a small MLP (needs torch).
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import hashlib
import json
import os
import random
import shutil
import struct
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

import optgraph
from optgraph.artifact.names import CHECKPOINT_FILE, GRAPH_FILES, MANIFEST_FILE, PARAM_KEY, SHA256_KEY, GraphName, Role
from optgraph.errors import ArtifactError, OptgraphError

CPU = ["CPUExecutionProvider"]
GRAPH_FILE_NAMES = tuple(GRAPH_FILES.values())  # train_step, scheduler_step, eval
BINARY_FILES = (*GRAPH_FILE_NAMES, CHECKPOINT_FILE)


class ReadWatch:
    """inotify on files and folders outside the artifact: which of them anything opened or read."""

    IN_ACCESS, IN_OPEN = 0x1, 0x20

    def __init__(self, paths: list[Path]) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self.watches = {}
        for path in paths:
            wd = self.libc.inotify_add_watch(self.fd, os.fsencode(path), self.IN_ACCESS | self.IN_OPEN)
            if wd < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch failed for {path}")
            self.watches[wd] = path

    def events(self) -> list[str]:
        """Paths opened or read since the last call."""
        seen = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return seen
            offset = 0
            while offset < len(data):
                wd, _mask, _cookie, length = struct.unpack_from("iIII", data, offset)
                name = data[offset + 16 : offset + 16 + length].rstrip(b"\0").decode()
                seen.append(str(self.watches[wd] / name) if name else str(self.watches[wd]))
                offset += 16 + length


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _manifest(case: Path) -> dict:
    return json.loads((case / MANIFEST_FILE).read_text())


def _write_manifest(case: Path, data: dict) -> None:
    (case / MANIFEST_FILE).write_text(json.dumps(data))


def _rehash(case: Path, file: str) -> None:
    data = _manifest(case)
    data[SHA256_KEY][file] = _digest((case / file).read_bytes())
    _write_manifest(case, data)


def _paths(node, prefix=()):
    """Every (path, value) inside a JSON value."""
    yield prefix, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*prefix, index))


def _parent(root, path):
    for key in path[:-1]:
        root = root[key]
    return root


WEIRD_VALUES = [None, True, False, 0, -1, 1, 2**63, 2**40, 1.5, float("nan"), float("inf"), "", "x", "../x",
                "batch", [], [1], [-1], ["a", 3], {}, {"a": 1}, "float32", "int64", Role.PARAM.value,
                Role.OPTIM_STATE.value]  # fmt: skip


def mutate(case: Path, outside: Path, rng: random.Random) -> tuple[str, bool]:
    """Apply one random mutation to the artifact directory ``case``.

    Returns its kind and whether it may change the graphs or the state (then
    a successful load is only required to train, not to match the reference).
    """
    kind = rng.choice(
        ["flip", "flip-rehashed", "truncate", "truncate-rehashed", "manifest-delete", "manifest-retype",
         "manifest-rename", "manifest-bytes", "file-name", "huge-shape", "symlink", "external-data"]
    )  # fmt: skip
    if kind in ("flip", "flip-rehashed", "truncate", "truncate-rehashed"):
        file = rng.choice(BINARY_FILES)
        data = bytearray((case / file).read_bytes())
        if kind.startswith("flip"):
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        else:
            del data[rng.randrange(len(data)) :]
        (case / file).write_bytes(bytes(data))
        if kind.endswith("rehashed"):
            _rehash(case, file)
        return f"{kind}:{file}", kind.endswith("rehashed")
    data = _manifest(case)
    if kind == "manifest-bytes":
        raw = bytearray((case / MANIFEST_FILE).read_bytes())
        position = rng.randrange(len(raw))
        raw[position] = rng.randrange(256) if rng.random() < 0.5 else raw[position] ^ 0x20
        (case / MANIFEST_FILE).write_bytes(bytes(raw[: rng.randint(position, len(raw))]))
        return kind, False
    nodes = list(_paths(data))[1:]
    if kind == "manifest-delete":
        path, _ = rng.choice(nodes)
        parent = _parent(data, path)
        del parent[path[-1]]
    elif kind == "manifest-retype":
        path, _ = rng.choice(nodes)
        _parent(data, path)[path[-1]] = rng.choice(WEIRD_VALUES)
    elif kind == "manifest-rename":
        strings = [(p, v) for p, v in nodes if isinstance(v, str) and p[-1] in ("name", "feeds", "file", PARAM_KEY)]
        path, value = rng.choice(strings)
        others = sorted({v for _, v in strings if v != value})
        _parent(data, path)[path[-1]] = rng.choice([value + "x", value.upper(), rng.choice(others)])
    elif kind == "file-name":
        graph = rng.choice(list(data["graphs"].values()))
        target = rng.choice(GRAPH_FILE_NAMES)
        graph["file"] = rng.choice(
            [f"../outside/{target}", str(outside / target), f"./{target}", f"sub/../{target}", "..", ".", "",
             MANIFEST_FILE, CHECKPOINT_FILE, target + "\0", f"..\\outside\\{target}", "/dev/zero"]
        )  # fmt: skip
    elif kind == "huge-shape":
        specs = [t for g in data["graphs"].values() for t in g["inputs"] + g["outputs"]]
        spec = rng.choice(specs)
        spec["shape"] = rng.choice([[2**40], [2**62, 2**62], [-1], [1e9], [0], list(spec["shape"]) + [1], []])
    elif kind == "symlink":
        file = rng.choice([*BINARY_FILES, MANIFEST_FILE])
        (case / file).unlink()
        (case / file).symlink_to(rng.choice([outside / file, outside / "sentinel.bin", Path("/dev/zero")]))
        return kind, False  # the manifest may be the link: do not write through it
    elif kind == "external-data":
        import onnx

        file = rng.choice(GRAPH_FILE_NAMES)
        model = onnx.load_from_string((case / file).read_bytes())
        tensor = onnx.helper.make_tensor("leak", onnx.TensorProto.FLOAT, [4], [0.0] * 4)
        tensor.ClearField("float_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        tensor.external_data.add(
            key="location", value=rng.choice(["../outside/sentinel.bin", str(outside / "sentinel.bin")])
        )
        model.graph.initializer.append(tensor)
        (case / file).write_bytes(model.SerializeToString())
        data[SHA256_KEY][file] = _digest((case / file).read_bytes())
    _write_manifest(case, data)
    return kind, kind == "external-data"


def _batch(session: optgraph.TrainingSession, rng: np.random.Generator) -> list[np.ndarray]:
    arrays = []
    for spec in session.manifest.graphs[GraphName.TRAIN_STEP].inputs:
        if spec.is_state:
            continue
        shape = [3 if isinstance(d, str) else d for d in spec.shape]
        if spec.dtype.startswith("int"):
            arrays.append(rng.integers(0, 2, size=shape).astype(spec.dtype))
        else:
            arrays.append(rng.standard_normal(shape).astype(spec.dtype))
    return arrays


def exercise(directory: Path, batches: list[list[np.ndarray]], scratch: Path) -> list:
    """Load and train; every public call. Returns the losses (or error names) of the two steps."""
    session = optgraph.TrainingSession(directory, providers=CPU)
    results = []
    for batch in batches:
        try:
            results.append(session.step(*batch))
        except OptgraphError as e:
            results.append(type(e).__name__)
    try:
        session.scheduler_step(1.0) if session.manifest.graphs[GraphName.SCHEDULER_STEP].inputs and any(
            not t.is_state for t in session.manifest.graphs[GraphName.SCHEDULER_STEP].inputs
        ) else session.scheduler_step()
    except OptgraphError:
        pass
    results.append(session.lr)
    session.state_dict()
    session.optimizer_state_dict()
    try:
        session.eval(batches[0][0])
    except OptgraphError:
        pass
    shutil.rmtree(scratch, ignore_errors=True)
    session.save(scratch)
    optgraph.TrainingSession(scratch, providers=CPU)
    return results


def run(artifact: Path, cases: int, seed: int, workdir: Path, progress=None) -> dict:
    root = workdir / "fuzz"
    shutil.rmtree(root, ignore_errors=True)
    outside = root / "outside"
    outside.mkdir(parents=True)
    for file in [*BINARY_FILES, MANIFEST_FILE]:
        shutil.copy(artifact / file, outside / file)  # valid files outside: a loader must not follow links to them
    (outside / "sentinel.bin").write_bytes(b"\0" * 64)
    watch = ReadWatch([outside])

    reference_session = optgraph.TrainingSession(artifact, providers=CPU)
    rng = np.random.default_rng(seed)
    batches = [_batch(reference_session, rng) for _ in range(2)]
    reference = exercise(artifact, batches, root / "scratch")
    watch.events()

    outcomes: collections.Counter = collections.Counter()
    kinds: collections.Counter = collections.Counter()
    failures = []
    started = time.perf_counter()
    for index in range(cases):
        case_rng = random.Random(f"{seed}-{index}")
        case = root / "case"
        shutil.rmtree(case, ignore_errors=True)
        shutil.copytree(artifact, case, symlinks=True)
        kind, may_change = mutate(case, outside, case_rng)
        kinds[kind.split(":")[0]] += 1
        if progress is not None:
            progress(f"case {index} {kind}")
        try:
            results = exercise(case, batches, root / "scratch")
        except ArtifactError:
            outcome = "rejected (ArtifactError)"
        except Exception as e:  # noqa: BLE001 - anything else is a finding
            outcome = "FAILED"
            failures.append({"case": index, "kind": kind, "error": "".join(traceback.format_exception_only(e))})
        else:
            if results == reference:
                outcome = "loaded, trains as the original"
            elif may_change:
                outcome = "loaded a changed graph or state, trains"
            else:
                outcome = "FAILED"
                failures.append({"case": index, "kind": kind, "error": f"trains differently: {results} != {reference}"})
        reads = [p for p in watch.events() if p != str(outside)]
        if reads:
            outcome = "FAILED"
            failures.append({"case": index, "kind": kind, "error": f"read outside the directory: {reads}"})
        outcomes[outcome] += 1
    return {
        "cases": cases,
        "seed": seed,
        "seconds": round(time.perf_counter() - started, 1),
        "outcomes": dict(outcomes),
        "mutations": dict(sorted(kinds.items())),
        "failures": failures[:20],
    }


def _compile_small_mlp(directory: Path) -> Path:
    import torch
    from torch import nn

    from optgraph import lr_scheduler, optim

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))
    x, y = torch.randn(4, 8), torch.randint(0, 4, (4,))
    artifact = optgraph.compile(
        model, (x,), (y,), nn.CrossEntropyLoss(),
        optimizer=optim.AdamW(lr=0.01, amsgrad=True), lr_scheduler=lr_scheduler.StepLR(step_size=2),
    )  # fmt: skip
    return artifact.save(directory)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--artifact", type=Path, help="a saved artifact (default: compile a small MLP)")
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--progress", type=Path, help="append the case about to run to this file (crash hunting)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as temporary:
        workdir = args.workdir or Path(temporary)
        artifact = args.artifact or _compile_small_mlp(workdir / "artifact")
        progress = None
        if args.progress is not None:
            log = open(args.progress, "a", buffering=1)  # noqa: SIM115 - open for the whole run
            progress = log.write
        summary = run(artifact, args.cases, args.seed, workdir, progress and (lambda line: progress(line + "\n")))
    print(json.dumps(summary))
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
