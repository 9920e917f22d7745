"""Waiting on another process (a mount, a server) without a fixed sleep: poll until it is so.

Behaviour of the mount's own caches is tested on the fake clock (tests/test_ttl.py,
tests/test_namespace.py); a test through a real mount that must wait for something another
process does (a FUSE release after close, a background upload, a server's listing) polls::

    eventually(lambda: s3_has(boto, bucket, "f"), what="f to reach S3")
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(cond: Callable[[], T], timeout: float = 10.0, what: str = "the condition") -> T:
    """Call ``cond`` until it returns something true, and return that; AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = cond()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(0.05)
