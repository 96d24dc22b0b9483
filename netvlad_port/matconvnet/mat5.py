"""A structural check of MAT v5 files before they are parsed.

The MAT v5 readers (scipy's and mat-io's, compiled code) trust the element headers: a single flipped
bit in a tag, a dimension or a byte count can make them read outside their buffer and crash the
process. :func:`check_mat5` walks every element (decompressing ``miCOMPRESSED`` ones) and checks that
each fits inside its parent, that data types are known and that element counts match the dimensions,
so a damaged file is one clear error instead. MAT v7.3 files are HDF5 and are left to h5py.
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib

import numpy as np

from ..errors import NetFormatError

_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 2, 5: 4, 6: 4, 7: 4, 9: 8, 12: 8, 13: 8, 16: 1, 17: 2, 18: 4}  # miINT8 ...
MI_MATRIX, MI_COMPRESSED = 14, 15
MX_CELL, MX_STRUCT, MX_OBJECT, MX_CHAR, MX_SPARSE = 1, 2, 3, 4, 5
MAX_DEPTH = 64


class _Bad(Exception):
    pass


def _tag(buf, pos: int, end: int, e: str):
    if pos + 8 > end:
        raise _Bad(f"truncated element header at byte {pos}")
    mdtype, nbytes = struct.unpack_from(e + "II", buf, pos)
    if mdtype >> 16:  # small data element: 2-byte count, 2-byte type, data in the next 4 bytes
        nbytes, mdtype = mdtype >> 16, mdtype & 0xFFFF
        if nbytes > 4:
            raise _Bad(f"small element of {nbytes} bytes at byte {pos}")
        return mdtype, nbytes, pos + 4, pos + 8
    start, stop = pos + 8, pos + 8 + nbytes
    if stop > end:
        raise _Bad(f"element at byte {pos} claims {nbytes} bytes but only {end - start} remain")
    return mdtype, nbytes, start, stop if mdtype == MI_COMPRESSED else min(stop + (-nbytes % 8), end)


def _data(buf, pos: int, end: int, e: str, count: int | None = None):
    mdtype, nbytes, start, nxt = _tag(buf, pos, end, e)
    size = _TYPE_SIZES.get(mdtype)
    if size is None or nbytes % size:
        raise _Bad(f"data element of type {mdtype} and {nbytes} bytes at byte {pos}")
    if count is not None and nbytes // size != count:
        raise _Bad(f"{nbytes // size} values at byte {pos} where the dimensions say {count}")
    return mdtype, start, nbytes, nxt


def _matrix(buf, pos: int, end: int, e: str, depth: int = 0) -> int:
    if depth > MAX_DEPTH:
        raise _Bad(f"nesting deeper than {MAX_DEPTH} at byte {pos}")
    mdtype, nbytes, start, nxt = _tag(buf, pos, end, e)
    if mdtype != MI_MATRIX:
        raise _Bad(f"expected an array at byte {pos}, found element type {mdtype}")
    if nbytes == 0:
        return nxt
    stop = start + nbytes
    t, s, n, p = _data(buf, start, stop, e)  # array flags
    if t != 6 or n != 8:
        raise _Bad(f"bad array flags at byte {start}")
    flags = struct.unpack_from(e + "I", buf, s)[0]
    cls = flags & 0xFF
    if cls > MX_OBJECT and cls not in range(MX_CHAR, 16):  # opaque objects, function handles: the reader's
        return nxt
    t, s, n, p = _data(buf, p, stop, e)  # dimensions
    if t != 5 or n < 8:
        raise _Bad(f"bad dimensions at byte {s - 8}")
    dims = np.frombuffer(buf, e + "i4", n // 4, s).astype(np.int64)
    if (dims < 0).any():
        raise _Bad(f"negative dimension {dims[:6].tolist()} at byte {s}")
    numel = int(np.prod(dims))
    _, _, _, p = _data(buf, p, stop, e)  # name
    if cls == MX_CELL:
        for _ in range(numel):
            p = _matrix(buf, p, stop, e, depth + 1)
    elif cls in (MX_STRUCT, MX_OBJECT):
        if cls == MX_OBJECT:
            _, _, _, p = _data(buf, p, stop, e)  # class name
        _, s, n, p = _data(buf, p, stop, e)  # field name length
        width = struct.unpack_from(e + "i", buf, s)[0] if n >= 4 else 0
        _, s, n, p = _data(buf, p, stop, e)  # field names
        if width <= 0 or n % width:
            raise _Bad(f"field names of {n} bytes with width {width} at byte {s - 8}")
        for _ in range(numel * (n // width)):
            p = _matrix(buf, p, stop, e, depth + 1)
    elif cls == MX_CHAR:
        t, s, n, p = _data(buf, p, stop, e)
        if t not in (16, 17, 18) and n // _TYPE_SIZES[t] != numel:
            raise _Bad(f"a char array of {numel} characters holds {n} bytes at byte {s - 8}")
    elif cls != MX_SPARSE:  # numeric: real part, and the imaginary part of complex arrays
        for _ in range(2 if flags & 0x800 else 1):
            _, _, _, p = _data(buf, p, stop, e, numel)
    return nxt


def check_mat5(path: str | os.PathLike) -> None:
    """Raise :class:`NetFormatError` naming ``path`` if its MAT v5 element structure is damaged."""
    with open(path, "rb") as f:
        head = f.read(128)
        if len(head) < 128 or head[126:128] not in (b"IM", b"MI"):
            return  # not MAT v5 (v4, or not a MAT file): the reader reports it
        e = "<" if head[126:128] == b"IM" else ">"
        if struct.unpack_from(e + "H", head, 124)[0] == 0x0200:
            return  # v7.3: HDF5
        size = os.fstat(f.fileno()).st_size
        if size == 128:
            return
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            pos = 128
            while pos < size:
                mdtype, nbytes, start, nxt = _tag(buf, pos, size, e)
                if mdtype == MI_COMPRESSED:
                    try:
                        inner = zlib.decompress(buf[start : start + nbytes])
                    except zlib.error as exc:
                        raise _Bad(f"compressed element at byte {pos} does not decompress ({exc})") from None
                    _matrix(inner, 0, len(inner), e)
                else:
                    _matrix(buf, pos, size, e)
                pos = nxt
        except _Bad as exc:
            raise NetFormatError(f"{path}: truncated or corrupt MAT file ({exc})") from None
        finally:
            buf.close()
