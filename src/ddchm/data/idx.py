"""Read and write IDX files, the container format of the MNIST distribution.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions),
one big-endian uint32 per dimension, then the values in C order, big-endian. MNIST ships its
images as ``(n, 28, 28)`` uint8 and its labels as ``(n,)`` uint8, usually gzip-compressed.

Reading checks the header and the data length exactly, so a truncated download or a file that is
not IDX fails with a message naming the file, instead of producing a garbled array.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = ["IDX_TYPES", "IDXFormatError", "encode_idx", "parse_idx", "read_idx", "write_idx"]

# IDX type code -> numpy dtype (big-endian, as stored on disk).
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODE_FOR_KIND = {(dtype.kind, dtype.itemsize): code for code, dtype in IDX_TYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


class IDXFormatError(ValueError):
    """A file is not a well-formed IDX file (bad magic, bad dimensions, wrong length)."""


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed if it is gzip (detected from its content, not its name)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such IDX file")
    raw = path.read_bytes()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as error:
        raise IDXFormatError(f"{path}: corrupt or truncated gzip data ({error})") from error


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse the (uncompressed) bytes of an IDX file; ``name`` is used in error messages."""
    if len(data) < 4:
        raise IDXFormatError(f"{name}: too short to be an IDX file ({len(data)} bytes)")
    zero0, zero1, code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0:
        raise IDXFormatError(
            f"{name}: bad magic number {data[:4].hex()} (an IDX file starts with two zero "
            "bytes); is this really an IDX file?"
        )
    if code not in IDX_TYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_TYPES)
        raise IDXFormatError(f"{name}: unknown IDX type code 0x{code:02X} (known: {known})")
    if ndim == 0:
        raise IDXFormatError(f"{name}: the header declares 0 dimensions")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise IDXFormatError(
            f"{name}: truncated header: {ndim} dimensions need {header_size} bytes, "
            f"the file has {len(data)}"
        )
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    dtype = IDX_TYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(data) - header_size
    if found < expected:
        raise IDXFormatError(
            f"{name}: truncated data: shape {shape} needs {expected} bytes after the header, "
            f"found {found}"
        )
    if found > expected:
        raise IDXFormatError(
            f"{name}: {found - expected} unexpected trailing bytes after the data of shape "
            f"{shape}; the dimensions in the header are probably wrong"
        )
    array = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize, offset=header_size)
    return array.reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (raw or gzip-compressed) into a native-endian numpy array.

    Raises FileNotFoundError if the file is missing and IDXFormatError (a ValueError) naming the
    file if the header or the length is wrong.
    """
    path = Path(path)
    return parse_idx(_read_bytes(path), name=str(path))


def encode_idx(array: np.ndarray) -> bytes:
    """The uncompressed IDX bytes of ``array`` (uint8, int8, int16, int32, float32, float64)."""
    array = np.asarray(array)
    code = _CODE_FOR_KIND.get((array.dtype.kind, array.dtype.itemsize))
    if code is None or array.ndim == 0 or array.ndim > 255:
        raise TypeError(
            f"IDX cannot store an array of dtype {array.dtype} and shape {array.shape}; "
            "use uint8, int8, int16, int32, float32 or float64 with 1 to 255 dimensions"
        )
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=IDX_TYPES[code]).tobytes()


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write ``array`` as IDX, gzip-compressed if ``path`` ends in ``.gz``; returns the path.

    The file is written to ``<path>.part`` and renamed into place, so a reader never sees a half
    written file. Gzip output carries no timestamp, so the same array gives the same bytes.
    """
    path = Path(path)
    data = encode_idx(array)
    if path.suffix == ".gz":
        data = gzip.compress(data, compresslevel=9, mtime=0)
    part = path.with_name(path.name + ".part")
    part.write_bytes(data)
    os.replace(part, path)
    return path
