"""Read ``checkpoint.safetensors`` straight into the arrays that training will own, hashing as it reads.

``safetensors.numpy.load`` needs the file's bytes in memory and returns copies of them, and the session
then copied each tensor once more: three times the state at the peak of opening an artifact. Here each
tensor's bytes are read from the file into a fresh, aligned, writable array, and the same bytes feed the
sha256, so the file is read once, through one descriptor (no window in which another file could be
hashed than the one parsed), and the peak is the state's own size. Writing stays with safetensors.

The layout (safetensors' own): an 8-byte little-endian header length, a JSON header mapping each tensor
name to its dtype, shape and ``data_offsets`` into the data that follows (plus optional
``__metadata__``), then the data. The tensors must cover the data exactly, as safetensors requires.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import BinaryIO

import numpy as np

# safetensors' dtype names, as safetensors.numpy maps them
DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}  # fmt: skip
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit
_CHUNK = 1 << 20


class UnreadableCheckpoint(ValueError):
    """The file is not a safetensors file this reader accepts; the message says where it breaks."""


def read_checkpoint(path: Path) -> tuple[dict[str, np.ndarray] | None, str, str | None]:
    """Read every tensor of ``path``; returns ``(tensors, sha256 of the file, None)``.

    When the file cannot be parsed, returns ``(None, sha256, reason)`` instead, the sha256 still over the
    whole file, so that the caller can report a digest mismatch (the likelier cause) before the parse error.
    Raises ``OSError`` when the file cannot be read.
    """
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        try:
            tensors = _read_tensors(f, hasher)
        except UnreadableCheckpoint as e:
            _drain(f, hasher)
            return None, hasher.hexdigest(), str(e)
    return tensors, hasher.hexdigest(), None


def _read_exact(f: BinaryIO, size: int, hasher) -> bytes:
    data = f.read(size)
    hasher.update(data)
    if len(data) != size:
        raise UnreadableCheckpoint(f"file ends {size - len(data)} bytes early")
    return data


def _drain(f: BinaryIO, hasher) -> None:
    while chunk := f.read(_CHUNK):
        hasher.update(chunk)


def _read_tensors(f: BinaryIO, hasher) -> dict[str, np.ndarray]:
    header_size = int.from_bytes(_read_exact(f, 8, hasher), "little")
    if header_size > _MAX_HEADER:
        raise UnreadableCheckpoint(f"header of {header_size} bytes (at most {_MAX_HEADER})")
    try:
        header = json.loads(_read_exact(f, header_size, hasher).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UnreadableCheckpoint(f"header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise UnreadableCheckpoint("header is not a JSON object")
    header.pop("__metadata__", None)
    entries = sorted((_entry(name, entry) for name, entry in header.items()), key=lambda e: e[3])
    tensors = {}
    position = 0
    for name, dtype, shape, begin, end in entries:
        if begin != position:
            raise UnreadableCheckpoint(f"tensor {name!r} starts at byte {begin} of the data, expected {position}")
        array = np.empty(shape, dtype)
        if array.nbytes != end - begin:
            raise UnreadableCheckpoint(f"tensor {name!r} holds {end - begin} bytes, its shape needs {array.nbytes}")
        _read_into(f, array, name, hasher)
        tensors[name] = array
        position = end
    extra = f.read(1)
    hasher.update(extra)
    if extra:
        raise UnreadableCheckpoint("bytes after the last tensor")
    return tensors


def _entry(name: str, entry) -> tuple[str, type, tuple[int, ...], int, int]:
    if not isinstance(entry, dict):
        raise UnreadableCheckpoint(f"tensor {name!r}: header entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPES:
        raise UnreadableCheckpoint(f"tensor {name!r}: dtype {dtype!r} is not one of {sorted(DTYPES)}")
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise UnreadableCheckpoint(f"tensor {name!r}: shape {shape!r} is not a list of sizes")
    if math.prod(shape) * np.dtype(DTYPES[dtype]).itemsize > 1 << 48:
        raise UnreadableCheckpoint(f"tensor {name!r}: shape {shape} is implausibly large")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(type(o) is int for o in offsets)
        and 0 <= offsets[0] <= offsets[1]
    ):
        raise UnreadableCheckpoint(f"tensor {name!r}: data_offsets {offsets!r} are not [begin, end]")
    return name, DTYPES[dtype], tuple(shape), offsets[0], offsets[1]


def _read_into(f: BinaryIO, array: np.ndarray, name: str, hasher) -> None:
    view = memoryview(array.reshape(-1).view(np.uint8))
    filled = 0
    while filled < len(view):
        count = f.readinto(view[filled : filled + _CHUNK])
        if not count:
            raise UnreadableCheckpoint(f"file ends inside tensor {name!r}")
        hasher.update(view[filled : filled + count])
        filled += count
    if array.dtype == np.bool_ and array.size and np.any(array.view(np.uint8) > 1):
        raise UnreadableCheckpoint(f"tensor {name!r}: bool values other than 0 and 1")
