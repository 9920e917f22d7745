#!/usr/bin/env python3
"""The FUSE requests a command makes a mount serve, counted by opcode (any FUSE file system).

strace follows the mount process's ``read``s of ``/dev/fuse`` while the command runs; each
request read begins with its length and opcode (``struct fuse_in_header``). So the count is
what the kernel sent, including what libfuse answers in C without calling into Python (an
``IOCTL``), and it works as well for rclone or s3fs-fuse as for ours::

    python bench/fuse_ops.py --pid MOUNT_PID --per 1000 -- python -c '...1,000 files...'

Prints each opcode's count (and per ``--per`` files). Under strace the mount is slower: count
with it, time without it. Not for libfuse sessions that read ``/dev/fuse`` with ``splice``
(none here: libfuse 3.14 with mfusepy, rclone and s3fs-fuse all read).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
import time

#: Opcodes of include/uapi/linux/fuse.h, the ones a file system commonly sees.
OPCODES = {
    1: "LOOKUP", 2: "FORGET", 3: "GETATTR", 4: "SETATTR", 5: "READLINK", 6: "SYMLINK", 8: "MKNOD",
    9: "MKDIR", 10: "UNLINK", 11: "RMDIR", 12: "RENAME", 13: "LINK", 14: "OPEN", 15: "READ",
    16: "WRITE", 17: "STATFS", 18: "RELEASE", 20: "FSYNC", 21: "SETXATTR", 22: "GETXATTR",
    23: "LISTXATTR", 24: "REMOVEXATTR", 25: "FLUSH", 26: "INIT", 27: "OPENDIR", 28: "READDIR",
    29: "RELEASEDIR", 30: "FSYNCDIR", 34: "ACCESS", 35: "CREATE", 36: "INTERRUPT", 38: "DESTROY",
    39: "IOCTL", 42: "BATCH_FORGET", 43: "FALLOCATE", 44: "READDIRPLUS", 45: "RENAME2", 46: "LSEEK",
}
#: A read's first 8 bytes as ``strace -x -s 8`` prints them, whole or resumed on its own line.
_READ = re.compile(r'(?:\bread\(\d+, |<\.\.\. read resumed>)"((?:\\x[0-9a-f]{2}){8})"')
_HEADER = 40  # sizeof(struct fuse_in_header): a shorter read is not a request


def count(lines: list[str]) -> collections.Counter[str]:
    """Requests by opcode name in ``strace -f -e trace=read -x -s 8`` output."""
    found: collections.Counter[str] = collections.Counter()
    for line in lines:
        m = _READ.search(line)
        if m is None:
            continue
        raw = bytes(int(h, 16) for h in re.findall(r"\\x([0-9a-f]{2})", m.group(1)))
        length, opcode = struct.unpack("<II", raw)
        if length >= _HEADER and opcode in OPCODES:
            found[OPCODES[opcode]] += 1
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pid", type=int, required=True, help="the mount process")
    ap.add_argument("--per", type=int, default=0, help="also print each count divided by this")
    ap.add_argument("command", nargs="+", help="what to run (after --)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fuse-ops-") as tmp:
        out = os.path.join(tmp, "strace.txt")
        tracer = subprocess.Popen(
            ["strace", "-f", "-e", "trace=read", "-x", "-s", "8", "-o", out, "-p", str(args.pid)],
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # attached to every thread before the command starts
        try:
            rc = subprocess.run(args.command).returncode
        finally:
            tracer.send_signal(signal.SIGINT)
            tracer.wait()
        with open(out, errors="replace") as f:
            found = count(f.read().splitlines())
    for name, n in found.most_common():
        print("%-12s %8d%s" % (name, n, "  %.2f a file" % (n / args.per) if args.per else ""))
    return rc


if __name__ == "__main__":
    sys.exit(main())
