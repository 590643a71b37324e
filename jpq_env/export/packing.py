"""Bit packing and the byte container of jpq-env exports (torch and numpy only, no pickle).

``pack_levels`` stores integer levels at their width, kernel after kernel with no padding between
kernels (a 3-bit kernel of 9 weights takes 27 bits); ``unpack_levels`` reverses it exactly. A
``b``-bit level in ``[-(2**(b-1) - 1), 2**(b-1) - 1]`` is stored as ``level + 2**(b-1) - 1``
(unsigned, ``b`` bits); a 1-bit (binary) level in ``{-1, 1}`` as one bit.

The container (``write_container`` / ``read_container``) is a magic string, a JSON header and one
byte blob holding every tensor (raw, little-endian), so a file is a few hundred bytes of header plus
the packed payload: no per-tensor archive entries, and reading it runs no code from the file.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from jpq_env.atomic import atomic_file
from jpq_env.errors import ArgumentError, ExportFormatError

__all__ = [
    "MAGIC",
    "ExportFormatError",
    "pack_levels",
    "read_container",
    "unpack_levels",
    "write_container",
]

MAGIC = b"JPQEXPORT\n"
_DTYPES: dict[str, torch.dtype] = {
    str(d).removeprefix("torch."): d
    for d in (
        torch.float32,
        torch.float64,
        torch.float16,
        torch.bfloat16,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
    )
}


def _offset(width: int) -> int:
    return 0 if width == 1 else 2 ** (width - 1) - 1


def pack_levels(levels: Sequence[np.ndarray], widths: Sequence[int]) -> np.ndarray:
    """Pack each kernel's integer levels at its width into one uint8 array.

    Args:
        levels: Per kernel, its integer levels (any integer dtype, flattened in order).
        widths: Per kernel, its width in bits (1-16); a 1-bit kernel holds only -1 and 1.

    Raises:
        ValueError: If a level does not fit its kernel's width.
    """
    chunks = []
    for values, width in zip(levels, widths, strict=True):
        v = np.asarray(values, dtype=np.int64).ravel()
        if width == 1:
            codes, fits = (v + 1) // 2, bool(np.isin(v, (-1, 1)).all())
        else:
            q = _offset(width)
            codes, fits = v + q, v.size == 0 or (int(v.min()) >= -q and int(v.max()) <= q)
        if not fits:
            raise ArgumentError(f"levels {int(v.min())}..{int(v.max())} do not fit {width} bits")
        chunks.append(((codes[:, None] >> np.arange(width)) & 1).astype(np.uint8).ravel())
    bits = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.uint8)
    return np.packbits(bits, bitorder="little")


def unpack_levels(
    payload: np.ndarray, counts: Sequence[int], widths: Sequence[int]
) -> list[np.ndarray]:
    """The integer levels (int32) of each kernel from ``pack_levels``'s output.

    Raises:
        ValueError: If the payload does not hold exactly ``sum(counts * widths)`` bits (rounded up
            to whole bytes).
    """
    total = sum(int(n) * int(w) for n, w in zip(counts, widths, strict=True))
    if payload.size != (total + 7) // 8:
        raise ArgumentError(f"payload has {payload.size} bytes, {(total + 7) // 8} expected")
    bits = np.unpackbits(payload, bitorder="little", count=total).astype(np.int64)
    out, start = [], 0
    for n, width in zip(counts, widths, strict=True):
        chunk = bits[start : start + n * width].reshape(n, width)
        start += n * width
        codes = chunk @ (1 << np.arange(width, dtype=np.int64))
        levels = codes * 2 - 1 if width == 1 else codes - _offset(width)
        out.append(levels.astype(np.int32))
    return out


def write_container(
    path: str | os.PathLike[str], header: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
) -> int:
    """Write ``header`` (JSON-able) and ``tensors`` to ``path`` atomically; return the file size."""
    index, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        raw = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype not in _DTYPES:
            raise TypeError(f"tensor '{name}' has dtype {t.dtype}, which exports do not store")
        index[name] = {"dtype": dtype, "shape": list(t.shape), "offset": offset, "nbytes": len(raw)}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps({**header, "tensors": index}, separators=(",", ":")).encode()
    data = MAGIC + struct.pack("<Q", len(text)) + text + b"".join(blobs)
    with atomic_file(path, "wb") as f:
        f.write(data)
    return len(data)


def read_container(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a container written by ``write_container``: its header and its tensors.

    Raises:
        ExportFormatError: If the file does not start with ``MAGIC`` or is damaged (truncated,
            header not JSON, a tensor outside the blob or of a size its shape does not give).
    """
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(MAGIC):
        raise ExportFormatError(f"'{path}' is not a jpq-env export: it lacks the export header")
    if sys.byteorder != "little":  # the blob is little-endian; so is every supported platform
        raise ExportFormatError(f"cannot read '{path}' on a big-endian machine")
    start = len(MAGIC) + 8
    if len(data) < start:
        raise ExportFormatError(f"'{path}' is truncated: its header is incomplete")
    (size,) = struct.unpack("<Q", data[len(MAGIC) : start])
    if start + size > len(data):
        raise ExportFormatError(f"'{path}' is truncated: its header says {size} bytes")
    try:
        header = json.loads(data[start : start + size])
        index = header.pop("tensors")
        if not isinstance(index, dict):
            raise TypeError("'tensors' is not a table")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ExportFormatError(f"'{path}' has a damaged header: {exc}") from exc
    blob = memoryview(data)[start + size :]
    tensors = {}
    for name, entry in index.items():
        try:
            dtype = _DTYPES[entry["dtype"]]
            shape = [int(s) for s in entry["shape"]]
            lo, n = int(entry["offset"]), int(entry["nbytes"])
            numel = int(np.prod(shape, dtype=np.int64))
            itemsize = torch.empty(0, dtype=dtype).element_size()
        except (KeyError, TypeError, ValueError) as exc:
            raise ExportFormatError(
                f"'{path}': tensor '{name}' has a damaged entry: {exc}"
            ) from exc
        if lo < 0 or n != numel * itemsize or lo + n > len(blob) or min(shape, default=0) < 0:
            raise ExportFormatError(
                f"'{path}' is damaged: tensor '{name}' ({entry['dtype']} {shape}) does not fit "
                f"the file's {len(blob)} data bytes at offset {lo}"
            )
        raw = torch.frombuffer(bytearray(blob[lo : lo + n]), dtype=torch.uint8) if n else None
        t = raw.view(dtype) if raw is not None else torch.empty(0, dtype=dtype)
        tensors[name] = t.reshape(shape)
    return header, tensors
