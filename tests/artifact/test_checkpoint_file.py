"""The checkpoint reader agrees with safetensors on every file, hashes what it parses, and owns its arrays."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import SafetensorError
from safetensors.numpy import load, save

from optgraph.artifact.checkpoint_file import DTYPES, read_checkpoint

NUMPY_DTYPES = sorted({np.dtype(t).name for t in DTYPES.values()})


@st.composite
def tensors(draw):
    names = draw(st.lists(st.text("abc.0_", min_size=1, max_size=6), unique=True, max_size=5))
    out = {}
    for name in names:
        dtype = np.dtype(draw(st.sampled_from(NUMPY_DTYPES)))
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
        raw = draw(
            st.binary(min_size=int(np.prod(shape)) * dtype.itemsize, max_size=int(np.prod(shape)) * dtype.itemsize)
        )
        array = np.frombuffer(raw, np.uint8).view(dtype).reshape(shape) if raw else np.zeros(shape, dtype)
        out[name] = np.asarray(array % 2 if dtype == np.bool_ else array)
    return out


def _write(tmp_path, data: bytes):
    path = tmp_path / "checkpoint.safetensors"
    path.write_bytes(data)
    return path


def _safetensors_load(data: bytes):
    try:
        return load(data)
    except (SafetensorError, ValueError, TypeError, OSError):
        return None


@settings(max_examples=150, deadline=None)
@given(tensors())
def test_reads_what_safetensors_writes(tmp_path_factory, state):
    data = save(state, metadata={"format": "optgraph-artifact"})
    got, sha256, reason = read_checkpoint(_write(tmp_path_factory.mktemp("c"), data))
    assert reason is None and sha256 == hashlib.sha256(data).hexdigest()
    assert got.keys() == state.keys()
    for name, array in state.items():
        assert got[name].dtype == array.dtype and got[name].shape == array.shape
        assert got[name].tobytes() == array.tobytes()
        # the arrays are the session's to keep and write: owned, aligned, writable, contiguous
        assert got[name].flags.writeable and got[name].flags.aligned and got[name].flags.c_contiguous
        assert got[name].base is None


@settings(max_examples=300, deadline=None)
@given(tensors(), st.data())
def test_damaged_files_are_rejected_as_safetensors_rejects_them(tmp_path_factory, state, data):
    original = save(state)
    damaged = bytearray(original)
    kind = data.draw(st.sampled_from(["flip", "truncate", "append"]))
    if kind == "flip":
        at = data.draw(st.integers(0, len(damaged) - 1))
        damaged[at] ^= data.draw(st.integers(1, 255))
    elif kind == "truncate":
        damaged = damaged[: data.draw(st.integers(0, len(damaged) - 1))]
    else:
        damaged += data.draw(st.binary(min_size=1, max_size=9))
    got, sha256, reason = read_checkpoint(_write(tmp_path_factory.mktemp("c"), bytes(damaged)))
    assert sha256 == hashlib.sha256(bytes(damaged)).hexdigest()  # over the whole file, parsed or not
    expected = _safetensors_load(bytes(damaged))
    if got is None:
        assert isinstance(reason, str) and reason
        assert expected is None or _has_bool_above_one(expected), f"rejected ({reason}) what safetensors reads"
    else:
        assert expected is not None, "read a file safetensors rejects"
        assert {n: a.tobytes() for n, a in got.items()} == {n: a.tobytes() for n, a in expected.items()}


def _has_bool_above_one(state) -> bool:
    return any(a.dtype == np.bool_ and np.any(a.view(np.uint8) > 1) for a in state.values())


def _header(header: bytes) -> bytes:
    return len(header).to_bytes(8, "little") + header


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"\x05\x00", "file ends 6 bytes early"),
        ((1 << 40).to_bytes(8, "little"), "header of"),
        (b"\x02\x00\x00\x00\x00\x00\x00\x00[]", "header is not a JSON object"),
        (_header(b'{"a":{"dtype":"X","shape":[],"data_offsets":[0,0]}}'), "dtype 'X'"),
        (_header(b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}') + bytes(4), "its shape needs 8"),
        (_header(b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}') + bytes(2), "starts at byte 1"),
        (_header(b'{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}') + bytes(1), "ends inside tensor 'a'"),
    ],
)
def test_reasons_name_what_is_wrong(tmp_path, data, reason):
    got, _, why = read_checkpoint(_write(tmp_path, data))
    assert got is None and reason in why
