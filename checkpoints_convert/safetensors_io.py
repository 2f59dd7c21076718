"""Read safetensors files as numpy memory maps, with clear errors on corrupt files.

The format is an 8-byte little-endian header length, a JSON header mapping names
to dtype/shape/byte offsets, then raw little-endian data. Reading it ourselves
keeps bfloat16 as `ml_dtypes.bfloat16` without torch and lets every way a file
can be broken be reported in one line.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Iterator

import ml_dtypes
import numpy as np

_DTYPES = {
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "F64": np.float64,
    "I64": np.int64,
    "I32": np.int32,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


class CorruptCheckpointError(ValueError):
    """A checkpoint file exists but cannot be what it claims to be."""


def read_header(path: str) -> tuple[dict, int]:
    """Return (tensor table, byte offset where data starts)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CorruptCheckpointError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len <= 0 or 8 + header_len > size:
            raise CorruptCheckpointError(f"{path}: corrupt safetensors header (length {header_len}, file {size} bytes)")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CorruptCheckpointError(f"{path}: corrupt safetensors header ({e})") from None
    header.pop("__metadata__", None)
    data_start = 8 + header_len
    for name, info in header.items():
        begin, end = info["data_offsets"]
        if data_start + end > size:
            raise CorruptCheckpointError(
                f"{path}: truncated: tensor {name!r} ends at byte {data_start + end}, file has {size}"
            )
        if info["dtype"] not in _DTYPES:
            raise CorruptCheckpointError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        itemsize = np.dtype(_DTYPES[info["dtype"]]).itemsize
        if (end - begin) != itemsize * int(np.prod(info["shape"], dtype=np.int64)):
            raise CorruptCheckpointError(f"{path}: tensor {name!r} byte size does not match its shape")
    return header, data_start


def iter_tensors(path: str) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (name, read-only memory-mapped array) for every tensor in one file."""
    header, data_start = read_header(path)
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    for name, info in header.items():
        begin, end = info["data_offsets"]
        arr = mm[data_start + begin : data_start + end].view(_DTYPES[info["dtype"]])
        yield name, arr.reshape(info["shape"])


def checkpoint_files(directory: str) -> list[str]:
    files = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
    if not files:
        raise FileNotFoundError(f"{directory}: no *.safetensors files (expected a Hugging Face checkpoint directory)")
    return [os.path.join(directory, f) for f in files]
