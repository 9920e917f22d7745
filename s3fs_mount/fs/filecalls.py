"""The Linux file calls Python's ``os`` module lacks: ``fallocate(2)`` with its mode flags and
``sync_file_range(2)``. The staging cache punches holes and writes ranges behind a writer with
them; the journal keeps room allocated past its end."""

from __future__ import annotations

import ctypes
import os

#: fallocate(2) modes.
KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE = 1, 2, 0x10
#: sync_file_range(2): wait for writeback under way, start it, wait for it.
SYNC_RANGE_WRITE_AND_WAIT = 1 | 2 | 4

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
_libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """``fallocate(fd, mode, offset, length)``.

    :raises OSError: with the call's errno (EOPNOTSUPP where the file system cannot, ENOSPC).
    """
    if _libc.fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "fallocate: %s" % os.strerror(err))


def sync_file_range(fd: int, offset: int, length: int, flags: int) -> None:
    """``sync_file_range(fd, offset, length, flags)``.

    :raises OSError: with the call's errno (EIO when the bytes could not be written).
    """
    if _libc.sync_file_range(fd, offset, length, flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "sync_file_range: %s" % os.strerror(err))
