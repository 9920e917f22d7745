#!/usr/bin/env python3
"""The FUSE requests a command makes a mount serve, counted by opcode (any FUSE file system).

strace follows the mount process's ``read``s of ``/dev/fuse`` while the command runs; each
request read begins with its length and opcode (``struct fuse_in_header``). So the count is
what the kernel sent, including what libfuse answers in C without calling into Python (an
``IOCTL``), and it works as well for rclone or s3fs-fuse as for ours::

    python bench/fuse_ops.py --pid MOUNT_PID --per 1000 -- python -c '...1,000 files...'
    python bench/fuse_ops.py --pid MOUNT_PID --reads -- dd if=MNT/big of=/dev/null bs=1M

Prints each opcode's count (and per ``--per`` files). ``--reads`` also prints the READ requests
by size (``struct fuse_read_in``'s ``size``: what the kernel's readahead and ``max_pages`` make of
the reader's calls) and how many READs were under way at once (a request read, its reply not
yet written: libfuse ``writev``s each reply, headed by the request's ``unique``). Under strace
the mount is slower: count with it, time without it. Not for libfuse sessions that read
``/dev/fuse`` with ``splice`` (none here: libfuse 3.14 with mfusepy, rclone and s3fs-fuse all read).
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
from dataclasses import dataclass, field

#: Opcodes of include/uapi/linux/fuse.h, the ones a file system commonly sees.
OPCODES = {
    1: "LOOKUP", 2: "FORGET", 3: "GETATTR", 4: "SETATTR", 5: "READLINK", 6: "SYMLINK", 8: "MKNOD",
    9: "MKDIR", 10: "UNLINK", 11: "RMDIR", 12: "RENAME", 13: "LINK", 14: "OPEN", 15: "READ",
    16: "WRITE", 17: "STATFS", 18: "RELEASE", 20: "FSYNC", 21: "SETXATTR", 22: "GETXATTR",
    23: "LISTXATTR", 24: "REMOVEXATTR", 25: "FLUSH", 26: "INIT", 27: "OPENDIR", 28: "READDIR",
    29: "RELEASEDIR", 30: "FSYNCDIR", 34: "ACCESS", 35: "CREATE", 36: "INTERRUPT", 38: "DESTROY",
    39: "IOCTL", 42: "BATCH_FORGET", 43: "FALLOCATE", 44: "READDIRPLUS", 45: "RENAME2", 46: "LSEEK",
}
READ = 15
#: A read's first bytes as ``strace -x -s N`` prints them, whole or resumed on its own line.
_READ = re.compile(r'(?:\bread\(\d+, |<\.\.\. read resumed>)"((?:\\x[0-9a-f]{2})+)"')
#: A reply: the first iovec of a ``writev`` (``struct fuse_out_header``: len, error, unique).
_REPLY = re.compile(r'\bwritev\(\d+, \[\{iov_base="((?:\\x[0-9a-f]{2}){16})"')
_HEADER = 40  # sizeof(struct fuse_in_header): a shorter read is not a request
#: Bytes of a request to see: the header, and of a READ its fuse_read_in up to ``size``.
SNAP = 64


def _bytes(escaped: str) -> bytes:
    return bytes(int(h, 16) for h in re.findall(r"\\x([0-9a-f]{2})", escaped))


@dataclass
class Requests:
    """What a trace shows: requests by opcode; READs by size; READs under way at once."""

    ops: collections.Counter[str] = field(default_factory=collections.Counter)
    read_sizes: collections.Counter[int] = field(default_factory=collections.Counter)
    #: READs under way when each READ came (itself included): how deep the kernel's pipeline is.
    in_flight: collections.Counter[int] = field(default_factory=collections.Counter)


def parse(lines: list[str]) -> Requests:
    """Requests in ``strace -f -e trace=read,writev -x -s 64`` output (``writev`` lines optional:
    without them nothing is known of READs under way)."""
    found = Requests()
    pending: set[int] = set()  # uniques of READs read and not yet replied to
    for line in lines:
        m = _READ.search(line)
        if m is not None:
            raw = _bytes(m.group(1))
            if len(raw) < 8:
                continue
            length, opcode = struct.unpack_from("<II", raw)
            if length < _HEADER or opcode not in OPCODES:
                continue
            found.ops[OPCODES[opcode]] += 1
            if opcode == READ and len(raw) >= 60:
                unique = struct.unpack_from("<Q", raw, 8)[0]
                found.read_sizes[struct.unpack_from("<I", raw, 56)[0]] += 1
                pending.add(unique)
                found.in_flight[len(pending)] += 1
            continue
        m = _REPLY.search(line)
        if m is not None:
            pending.discard(struct.unpack_from("<Q", _bytes(m.group(1)), 8)[0])
    return found


def count(lines: list[str]) -> collections.Counter[str]:
    """Requests by opcode name in ``strace -f -e trace=read -x -s 8`` (or wider) output."""
    return parse(lines).ops


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pid", type=int, required=True, help="the mount process")
    ap.add_argument("--per", type=int, default=0, help="also print each count divided by this")
    ap.add_argument("--reads", action="store_true", help="also READs by size, and how many at once")
    ap.add_argument("command", nargs="+", help="what to run (after --)")
    args = ap.parse_args()
    trace, snap = ("read,writev", SNAP) if args.reads else ("read", 8)
    with tempfile.TemporaryDirectory(prefix="fuse-ops-") as tmp:
        out = os.path.join(tmp, "strace.txt")
        hexed = "-xx" if args.reads else "-x"  # -xx: every byte in hex, printable or not
        tracer = subprocess.Popen(
            ["strace", "-f", "-e", "trace=" + trace, hexed, "-s", str(snap), "-o", out, "-p", str(args.pid)],
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # attached to every thread before the command starts
        try:
            rc = subprocess.run(args.command).returncode
        finally:
            tracer.send_signal(signal.SIGINT)
            tracer.wait()
        with open(out, errors="replace") as f:
            found = parse(f.read().splitlines())
    for name, n in found.ops.most_common():
        print("%-12s %8d%s" % (name, n, "  %.2f a file" % (n / args.per) if args.per else ""))
    if args.reads:
        for size, n in sorted(found.read_sizes.items()):
            print("READ of %-9d %8d" % (size, n))
        for depth, n in sorted(found.in_flight.items()):
            print("READs at once %-4d %8d" % (depth, n))
    return rc


if __name__ == "__main__":
    sys.exit(main())
