"""How much of a file the kernel's page cache holds now (mincore(2) over a read-only mapping)."""

from __future__ import annotations

import ctypes
import mmap
import os

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
_MAP_FAILED = ctypes.c_void_p(-1).value


def resident_bytes(path: str, start: int, end: int) -> int:
    """Bytes of ``[start, end)`` of ``path`` (page-aligned ``start``) in the page cache now."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return resident_bytes_of(fd, start, end)
    finally:
        os.close(fd)


def resident_bytes_of(fd: int, start: int, end: int) -> int:
    """As :func:`resident_bytes`, of the file open as ``fd``: on a FUSE mount an open of its own
    may drop the kernel's pages (no ``keep_cache``), this looks without one."""
    page = mmap.PAGESIZE
    length = end - start
    addr = _libc.mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, start)
    if addr in (None, _MAP_FAILED):
        raise OSError(ctypes.get_errno(), "mmap")
    try:
        vec = ctypes.create_string_buffer((length + page - 1) // page)
        if _libc.mincore(addr, length, vec) != 0:
            raise OSError(ctypes.get_errno(), "mincore")
        return sum(b & 1 for b in vec.raw) * page
    finally:
        _libc.munmap(addr, length)
