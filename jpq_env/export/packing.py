"""Bit packing and the byte container of jpq-env exports (torch and numpy only, no pickle).

``pack_levels`` stores integer levels at their width, kernel after kernel with no padding between
kernels (a 3-bit kernel of 9 weights takes 27 bits); ``unpack_levels`` reverses it exactly. A
``b``-bit level in ``[-(2**(b-1) - 1), 2**(b-1) - 1]`` is stored as ``level + 2**(b-1) - 1``
(unsigned, ``b`` bits); a 1-bit (binary) level in ``{-1, 1}`` as one bit.

The container (``write_container`` / ``read_container``) is a magic string, a JSON header and one
byte blob holding every tensor (raw, little-endian): no per-tensor archive entries, and reading it
runs no code from the file. The header is zlib-compressed (magic ``MAGIC_ZLIB``; its names and
shapes repeat, so it shrinks about fivefold, a few KB on ResNet-20); files with a plain header
(``MAGIC``, written before) are read as well. ``split_container``/``join_container`` take a
file's bytes apart and put them together again.

A file is untrusted input. ``Fields`` is the one way a loader reads what it decoded: every field
is checked for its type, range and finiteness (JSON's ``1e999`` and ``NaN`` are refused while
parsing, and so is nesting deeper than a header needs), and every failure is an
``ExportFormatError`` that names the file and the field. Sizes are checked against the file's
own bytes before anything is allocated.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import struct
import sys
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from jpq_env import validation as check
from jpq_env.atomic import atomic_file
from jpq_env.errors import ArgumentError, ExportFormatError

__all__ = [
    "MAGIC",
    "MAGIC_ZLIB",
    "ExportFormatError",
    "Fields",
    "pack_levels",
    "read_container",
    "unpack_levels",
    "join_container",
    "split_container",
    "write_container",
]

MAGIC = b"JPQEXPORT\n"
MAGIC_ZLIB = b"JPQEXPORZ\n"  # the same length: the header that follows is zlib-compressed
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


MAX_HEADER_BYTES = 64 * 2**20
"""The largest JSON header a file may declare (a ResNet-50's takes about 40 kB)."""
MAX_DEPTH = 8
"""The deepest nesting of lists and tables a header may hold (an export's needs 4)."""
MAX_DIMS = 8
"""The most dimensions a stored tensor may have (a convolution's weight has 4)."""


class Fields:
    """Checks of the fields decoded from one export file, each failure naming the file.

    Every loader reads decoded values through one of these, so a wrong type (``7.9`` for a width),
    range (``act_bits`` 1000), non-finite number or inconsistent size fails with an
    ``ExportFormatError`` ``"'<file>' is damaged: <field> must be ..., got ..."``, never deep in
    torch or numpy and never as a silently rounded value.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = path

    def error(self, what: str) -> ExportFormatError:
        """The error for a damaged field: ``"'<file>' is damaged: <what>"``."""
        return ExportFormatError(f"'{self.path}' is damaged: {what}")

    def integer(self, name: str, value: Any, low: int | None = 0, high: int | None = None) -> int:
        """An integer (not a bool, not a float such as 7.9) in ``[low, high]``."""
        return check.integer(
            f"'{self.path}' is damaged: {name}", value, low=low, high=high, error=ExportFormatError
        )

    def number(self, name: str, value: Any) -> float:
        """A finite number."""
        return check.number(f"'{self.path}' is damaged: {name}", value, error=ExportFormatError)

    def flag(self, name: str, value: Any) -> bool:
        """``true`` or ``false``."""
        return check.flag(f"'{self.path}' is damaged: {name}", value, error=ExportFormatError)

    def string(self, name: str, value: Any) -> str:
        """A string."""
        if not isinstance(value, str):
            raise self.error(f"{name} must be a string, got {_short(value)}")
        return value

    def table(self, name: str, value: Any) -> dict[str, Any]:
        """A JSON object (a dict)."""
        if not isinstance(value, dict):
            raise self.error(f"{name} must be a table, got {_short(value)}")
        return value

    def items(self, name: str, value: Any, length: int | None = None) -> list[Any]:
        """A JSON array (a list), of ``length`` items if given."""
        if not isinstance(value, list):
            raise self.error(f"{name} must be a list, got {_short(value)}")
        if length is not None and len(value) != length:
            raise self.error(f"{name} must hold {length} items, got {len(value)}")
        return value

    def shape(self, name: str, value: Any, limit: int) -> tuple[list[int], int]:
        """A tensor shape (non-negative integers) and its element count, at most ``limit``.

        The count is an exact integer product (no int64 overflow), checked against ``limit``
        (what the file's bytes can hold) before anything of that size is allocated.
        """
        items = self.items(name, value)
        if len(items) > MAX_DIMS:
            raise self.error(f"{name} has {len(items)} dimensions, more than {MAX_DIMS}")
        dims = [self.integer(f"{name} dimension", d, 0, max(limit, 1)) for d in items]
        numel = math.prod(dims)
        if numel > limit:
            raise self.error(f"{name} {dims} holds {numel} values, more than the file's {limit}")
        return dims, numel

    def tensor(
        self,
        name: str,
        value: Any,
        shape: Sequence[int] | None = None,
        integral: bool | None = None,
    ) -> torch.Tensor:
        """A tensor of the given shape, integer or floating as asked, with finite values."""
        if not isinstance(value, torch.Tensor):
            raise self.error(f"{name} must be a tensor, got {_short(value)}")
        if shape is not None and tuple(value.shape) != tuple(shape):
            raise self.error(f"{name} has shape {list(value.shape)}, expected {list(shape)}")
        floating = value.is_floating_point()
        if integral is not None and floating == integral:
            kind = "an integer" if integral else "a floating-point"
            raise self.error(f"{name} must be {kind} tensor, got {value.dtype}")
        if floating and value.numel() and not bool(torch.isfinite(value).all()):
            raise self.error(f"{name} holds non-finite values")
        return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:20]} is not finite")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number an export holds")


def _depth(value: Any, limit: int) -> int:
    """The nesting depth of ``value`` (lists and tables), stopping past ``limit``."""
    if limit < 0:
        return 1
    if isinstance(value, dict):
        return 1 + max((_depth(v, limit - 1) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v, limit - 1) for v in value), default=0)
    return 0


def parse_header(path: str | os.PathLike[str], raw: bytes) -> dict[str, Any]:
    """A JSON header as a table: finite numbers only, nested at most ``MAX_DEPTH`` deep.

    Raises:
        ExportFormatError: For anything else (naming the file), never ``RecursionError``.
    """
    try:
        header = json.loads(raw, parse_float=_finite_float, parse_constant=_no_constant)
    except RecursionError:
        raise ExportFormatError(f"'{path}' has a damaged header: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError and non-finite numbers
        raise ExportFormatError(f"'{path}' has a damaged header: {exc}") from exc
    if not isinstance(header, dict):
        raise ExportFormatError(f"'{path}' has a damaged header: not a table")
    if _depth(header, MAX_DEPTH) > MAX_DEPTH:
        raise ExportFormatError(
            f"'{path}' has a damaged header: nested deeper than {MAX_DEPTH} levels"
        )
    return header


def _check_spans(fields: Fields, index: dict[str, Any], size: int) -> None:
    """Refuse tensor entries that overlap or together claim more than the blob's ``size`` bytes.

    Each tensor is copied out of the blob, so entries that all point at the same bytes would
    multiply the memory a small file takes; a file ``write_container`` wrote has none.
    """
    spans = []
    for name, entry in index.items():
        if isinstance(entry, dict):
            lo, n = entry.get("offset"), entry.get("nbytes")
            if type(lo) is int and type(n) is int and n > 0:
                spans.append((lo, lo + n, name))
    for lo, hi, name in spans:
        if lo < 0 or hi > size:
            raise fields.error(f"tensor '{name}' ({lo}..{hi}) does not fit the {size} data bytes")
    spans.sort()
    for (_, end, first), (lo, _, second) in itertools.pairwise(spans):
        if lo < end:
            raise fields.error(f"tensors '{first}' and '{second}' overlap in the file")


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
        if width > 1 and codes.size and int(codes.max()) > 2 * _offset(width):
            raise ArgumentError(
                f"a {width}-bit level code is {int(codes.max())}, outside the width"
            )
        levels = codes * 2 - 1 if width == 1 else codes - _offset(width)
        out.append(levels.astype(np.int32))
    return out


def join_container(header: Mapping[str, Any], blob: bytes, compress: bool = True) -> bytes:
    """A file's bytes: the magic, the header's length, the JSON ``header`` and ``blob``."""
    text = json.dumps(header, separators=(",", ":")).encode()
    if compress:
        text = zlib.compress(text, 9)
    return (MAGIC_ZLIB if compress else MAGIC) + struct.pack("<Q", len(text)) + text + blob


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
    data = join_container({**header, "tensors": index}, b"".join(blobs))
    with atomic_file(path, "wb") as f:
        f.write(data)
    return len(data)


def split_container(path: str | os.PathLike[str], data: bytes) -> tuple[dict[str, Any], bytes]:
    """The header (parsed, ``tensors`` index included) and the blob of a file's bytes ``data``.

    Raises:
        ExportFormatError: If ``data`` does not start with ``MAGIC`` or ``MAGIC_ZLIB``, or its
            header is truncated, too large, does not decompress or is not JSON.
    """
    compressed = data.startswith(MAGIC_ZLIB)
    if not compressed and not data.startswith(MAGIC):
        raise ExportFormatError(f"'{path}' is not a jpq-env export: it lacks the export header")
    start = len(MAGIC) + 8
    if len(data) < start:
        raise ExportFormatError(f"'{path}' is truncated: its header is incomplete")
    (size,) = struct.unpack("<Q", data[len(MAGIC) : start])
    if start + size > len(data):
        raise ExportFormatError(f"'{path}' is truncated: its header says {size} bytes")
    if size > MAX_HEADER_BYTES:
        raise ExportFormatError(
            f"'{path}' is damaged: its header says {size} bytes, more than {MAX_HEADER_BYTES}"
        )
    text = data[start : start + size]
    if compressed:
        inflate = zlib.decompressobj()
        try:
            text = inflate.decompress(text, MAX_HEADER_BYTES)
        except zlib.error as exc:
            raise ExportFormatError(f"'{path}' has a damaged header: {exc}") from exc
        if inflate.unconsumed_tail or not inflate.eof:
            raise ExportFormatError(
                f"'{path}' has a damaged header: it does not decompress to at most "
                f"{MAX_HEADER_BYTES} bytes"
            )
    return parse_header(path, text), data[start + size :]


def read_container(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a container written by ``write_container``: its header and its tensors.

    Raises:
        ExportFormatError: If the file does not start with ``MAGIC`` or ``MAGIC_ZLIB`` or is
            damaged (truncated, header not JSON, a tensor outside the blob or of a size its shape
            does not give).
    """
    with open(path, "rb") as f:
        data = f.read()
    if sys.byteorder != "little":  # the blob is little-endian; so is every supported platform
        raise ExportFormatError(f"cannot read '{path}' on a big-endian machine")
    header, rest = split_container(path, data)
    fields = Fields(path)
    index = fields.table("'tensors'", header.pop("tensors", None))
    blob = memoryview(rest)
    tensors = {}
    _check_spans(fields, index, len(blob))
    spans: list[tuple[int, int, str]] = []
    for name, entry in index.items():
        where = f"tensor '{name}'"
        entry = fields.table(where, entry)
        kind = fields.string(f"{where} dtype", entry.get("dtype"))
        if kind not in _DTYPES:
            raise fields.error(f"{where} has dtype {kind!r}, which exports do not store")
        dtype = _DTYPES[kind]
        itemsize = torch.empty(0, dtype=dtype).element_size()
        shape, numel = fields.shape(f"{where} shape", entry.get("shape"), len(blob) // itemsize)
        lo = fields.integer(f"{where} offset", entry.get("offset"), 0, len(blob))
        n = fields.integer(f"{where} nbytes", entry.get("nbytes"), 0, len(blob) - lo)
        if n != numel * itemsize:
            raise fields.error(
                f"{where} ({kind} {shape}) needs {numel * itemsize} bytes, its entry says {n}"
            )
        spans.append((lo, lo + n, name))
        raw = torch.frombuffer(bytearray(blob[lo : lo + n]), dtype=torch.uint8) if n else None
        t = raw.view(dtype) if raw is not None else torch.empty(0, dtype=dtype)
        tensors[name] = fields.tensor(where, t.reshape(shape))
    return header, tensors
