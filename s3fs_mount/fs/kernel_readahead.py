"""The kernel's readahead for our mount: what size of reads a sequential reader sends us.

The kernel gives a FUSE mount 128 KiB of readahead, so a sequential reader's
requests are 128 KiB however large libfuse3 allows them (1 MiB), and each
request is one Python call. The knob is the mount's
``/sys/class/bdi/MAJOR:MINOR/read_ahead_kb`` (root only), and it must be set
after the FUSE handshake, which resets it. A file takes the value when it is
opened, after our ``open`` answered: so the first ``open`` sets it, before
any reader can have started.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)

#: The readahead the kernel gives a FUSE mount when it is left alone (``-o kernel_readahead=0``).
KERNEL_DEFAULT_READAHEAD = 128 << 10


class KernelReadahead:
    """Sets the readahead of the mount at ``mountpoint`` once, on first use.

    :param mountpoint: where we are mounted.
    :param size: readahead in bytes (0: leave the kernel's default).
    """

    def __init__(self, mountpoint: str, size: int) -> None:
        self.mountpoint = os.path.realpath(mountpoint)  # immutable after __init__
        self.size = size  # immutable after __init__
        self.done = size <= 0  # GUARDED_BY(_lock) for writes; read unlocked as a first, cheap check
        self._lock = threading.Lock()

    def ensure(self) -> None:
        """Set the knob if not tried yet; never raises (a failure leaves 128 KiB reads)."""
        if self.done:
            return
        with self._lock:
            if self.done:
                return
            self.done = True
            try:
                knob = "/sys/class/bdi/%s/read_ahead_kb" % device_of(self.mountpoint)
                with open(knob, "w") as f:
                    f.write("%d" % max(1, self.size // 1024))
            except (OSError, LookupError) as exc:
                log.info("kernel readahead of %s stays at the default: %s", self.mountpoint, exc)
                return
            log.debug("kernel readahead of %s: %d KiB (%s)", self.mountpoint, self.size // 1024, knob)


def device_of(mountpoint: str) -> str:
    """``'MAJOR:MINOR'`` of the last mount at ``mountpoint``, from /proc/self/mountinfo.

    Read there rather than with stat(2): a stat of our own mount from inside a
    FUSE call would wait for ourselves. Raises LookupError if not mounted.
    """
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if _unescape(fields[4]) == mountpoint:
                found = fields[2]
    if found is None:
        raise LookupError("%s is not in /proc/self/mountinfo" % mountpoint)
    return found


def _unescape(path: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (``\\040``)."""
    for code in ("\\040", "\\011", "\\012", "\\134"):
        path = path.replace(code, chr(int(code[1:], 8)))
    return path
