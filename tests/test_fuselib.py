"""The FUSE binding's own parts that need no mount."""

from __future__ import annotations

import ctypes
import gc
import threading
import weakref

from s3fs_mount.fs.fuselib import ThreadStates


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
