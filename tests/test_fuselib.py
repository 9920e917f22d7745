"""The FUSE binding's own parts that need no mount."""

from __future__ import annotations

import ctypes
import gc
import threading
import weakref

import pytest

from s3fs_mount.fs.fuselib import FUSE, ThreadStates, mfusepy


def test_each_thread_is_kept_once_and_no_more_than_the_limit():
    states = ThreadStates(limit=3)
    states.keep()
    states.keep()
    assert states.held == 1
    threads = [threading.Thread(target=states.keep) for _ in range(4)]
    for t in threads:
        t.start()
        t.join()
    assert states.held == 3


def test_a_kept_state_outlives_the_call_from_a_thread_python_did_not_start():
    """As libfuse calls us: a ctypes callback on a native thread. What the thread keeps in a
    threading.local lives as long as its thread state: without keep() it ends with the call."""
    libc = ctypes.CDLL(None)
    libc.pthread_create.argtypes = [ctypes.POINTER(ctypes.c_ulong), ctypes.c_void_p, ctypes.c_void_p,
                                    ctypes.c_void_p]
    libc.pthread_join.argtypes = [ctypes.c_ulong, ctypes.c_void_p]
    local = threading.local()
    ended: list[bool] = []

    class Token:
        pass

    def run_on_a_native_thread(keep: bool) -> None:
        states = ThreadStates(limit=4)

        @ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)
        def start(_arg):
            local.token = Token()
            weakref.finalize(local.token, ended.append, keep)
            if keep:
                states.keep()
            return None

        tid = ctypes.c_ulong()
        assert libc.pthread_create(ctypes.byref(tid), None, ctypes.cast(start, ctypes.c_void_p), None) == 0
        assert libc.pthread_join(tid, None) == 0

    run_on_a_native_thread(keep=False)
    run_on_a_native_thread(keep=True)
    gc.collect()
    assert ended == [False]


def test_a_read_copies_each_span_of_its_blocks_straight_into_libfuses_buffer():
    """A read that straddles two blocks is not joined into new bytes first: each span of the
    blocks that hold it is copied into libfuse's buffer, in order; without read_spans the
    operations' read is used as before."""
    first, second = bytes(range(256)) * 8, b"xyz" * 1000
    asked: list[tuple[str, int, int, int]] = []

    class Spans:
        def read_spans(self, path: str, size: int, offset: int, fh: int) -> list[tuple[bytes, int, int]]:
            asked.append((path, size, offset, fh))
            return [(first, 1024, 2048), (second, 0, 10), (b"", 0, 0)]

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            raise AssertionError("read_spans is there: read is not asked")

    fuse = FUSE.__new__(FUSE)
    fuse.operations, fuse.raw_fi = Spans(), False
    fuse.encoding, fuse.errors = "utf-8", "surrogateescape"
    libfuse_buffer = ctypes.create_string_buffer(b"-" * 2000, 2000)
    fi = mfusepy.fuse_file_info()
    fi.fh = 5
    pointer = ctypes.cast(libfuse_buffer, ctypes.POINTER(ctypes.c_byte))
    assert fuse.read(b"/f", pointer, 2000, 512, ctypes.pointer(fi)) == 1034
    assert asked == [("/f", 2000, 512, 5)]
    assert libfuse_buffer.raw[:1034] == first[1024:2048] + second[:10]
    assert libfuse_buffer.raw[1034:] == b"-" * 966  # nothing past what was read
    with pytest.raises(mfusepy.FuseOSError):  # spans past the size asked: never written past it
        fuse.read(b"/f", pointer, 1000, 0, ctypes.pointer(fi))

    class Plain:
        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            return b"plain"

    fuse.operations = Plain()
    assert fuse.read(b"/f", pointer, 2000, 0, ctypes.pointer(fi)) == 5
    assert libfuse_buffer.raw[:5] == b"plain"


def test_a_write_hands_the_operations_libfuses_own_buffer_and_releases_it_on_return():
    """No copy of what the kernel wrote (mfusepy's string_at copied every byte): the operations
    see libfuse's memory itself, as bytes, and the view is dead once the call returns."""
    seen: list[tuple[memoryview, bytes, int, int]] = []

    class Recorder:
        def write(self, path: str, data: memoryview, offset: int, fh: int) -> int:
            seen.append((data, bytes(data), offset, fh))
            return len(data)

    fuse = FUSE.__new__(FUSE)
    fuse.operations, fuse.raw_fi = Recorder(), False
    fuse.encoding, fuse.errors = "utf-8", "surrogateescape"
    libfuse_buffer = ctypes.create_string_buffer(b"abcdefgh", 8)
    fi = mfusepy.fuse_file_info()
    fi.fh = 7
    pointer = ctypes.cast(libfuse_buffer, ctypes.POINTER(ctypes.c_byte))
    assert fuse.write(b"/f", pointer, 8, 4096, ctypes.pointer(fi)) == 8
    (data, content, offset, fh), = seen
    assert (content, offset, fh) == (b"abcdefgh", 4096, 7)
    assert isinstance(data, memoryview)
    with pytest.raises(ValueError):  # released: a kept reference cannot read freed memory
        bytes(data)
    # It was libfuse's buffer, not a copy: a change there showed through while the call ran.
    seen.clear()

    class Peeker:
        def write(self, path: str, data: memoryview, offset: int, fh: int) -> int:
            libfuse_buffer[0] = b"Z"
            seen.append((data, bytes(data[:1]), offset, fh))
            return len(data)

    fuse.operations = Peeker()
    assert fuse.write(b"/f", pointer, 8, 0, ctypes.pointer(fi)) == 8
    assert seen[0][1] == b"Z"
    assert fuse.write(b"/f", pointer, 0, 0, ctypes.pointer(fi)) == 0  # an empty write: no view over NULL
