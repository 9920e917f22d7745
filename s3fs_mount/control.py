"""``s3fs-mount status MOUNTPOINT`` and ``s3fs-mount sync MOUNTPOINT``.

Both talk to the running mount through the mount itself: its root answers
the extended attribute ``s3.status`` with a JSON description, and ``sync``
fsyncs each pending file, which returns only once that file is in S3, then each new
directory whose objects are not in S3 yet (fs/newdirs.py).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any, TextIO

from s3fs_mount.fs.options import human_size
from s3fs_mount.fs.status import STATUS_XATTR


class ControlError(Exception):
    """The mountpoint is not an s3fs-mount, or it did not answer."""


def read_status(mountpoint: str) -> dict[str, Any]:
    """The running mount's status; ControlError if ``mountpoint`` is not ours."""
    if not os.path.ismount(mountpoint):
        raise ControlError("%s is not a mountpoint" % mountpoint)
    try:
        return json.loads(os.getxattr(mountpoint, STATUS_XATTR))
    except OSError as exc:
        raise ControlError("%s is not an s3fs-mount (%s)" % (mountpoint, exc.strerror)) from None


def format_status(st: dict[str, Any], mountpoint: str) -> str:
    bound = st.get("cache_bound", st["cache_size"])  # a mount older than cache_bound has none
    bounded = ""
    if bound < st["cache_size"]:
        bounded = " (cache_size %s: bounded by the room on the cache's disk)" % human_size(st["cache_size"])
    source = st["bucket"] + (":/" + st["prefix"].rstrip("/") if st["prefix"] else "")
    lines = [
        "%s on %s (%s)%s" % (source, mountpoint, st["endpoint"], ", writeback" if st["writeback"] else ""),
        "cache: %s of %s in %s%s"
        % (human_size(st["cache_bytes"]), human_size(bound), st["cache_dir"], bounded),
        "requests: %s" % st["requests"],
    ]
    recovered = st.get("recovered")  # a mount older than it has none
    if recovered:
        what = ", ".join("%s %d" % (k, n) for k, n in sorted(recovered.items()))
        lines.append("recovered at mount (what a previous run left): %s" % what)
    new_dirs = st.get("new_dirs", [])  # a mount older than it has none
    n = pending_files(st)
    if not n and not new_dirs:
        lines.append("nothing waiting to upload")
    if n:
        lines.append("%d file%s waiting to upload:" % (n, "" if n == 1 else "s"))
        for p in st["pending"]:
            done = 100.0 * p["uploaded"] / p["size"] if p["size"] else 0.0
            line = "  %-10s %5.1f%% of %-10s %s" % (p["state"], done, human_size(p["size"]), p["path"])
            if p["error"]:
                line += "  (last error: %s)" % p["error"]
            lines.append(line)
        if n > len(st["pending"]):
            lines.append("  and %d more" % (n - len(st["pending"])))
        retrying = st.get("retrying", 0)  # a mount older than it has none
        if retrying:
            nxt = st.get("next_try")
            lines.append(
                "%d of them failed to upload and are tried again in the background (%s)"
                % (retrying, "the next try under way" if nxt is None else "the next try in %.0f s" % nxt)
            )
    if new_dirs:
        n = st.get("new_dirs_count", len(new_dirs))
        lines.append("%d new director%s not yet in S3:" % (n, "y" if n == 1 else "ies"))
        for d in new_dirs:
            line = "  %-10s %s" % (d["state"], d["path"])
            if d["error"]:
                line += "  (last error: %s)" % d["error"]
            lines.append(line)
        if n > len(new_dirs):
            lines.append("  and %d more" % (n - len(new_dirs)))
    return "\n".join(lines)


def pending_files(st: dict[str, Any]) -> int:
    """How many files wait to upload: the status lists the first of them only (a mount older
    than ``pending_files`` lists all)."""
    return int(st.get("pending_files", len(st["pending"])))


def status(mountpoint: str, out: TextIO = sys.stdout) -> int:
    print(format_status(read_status(mountpoint), mountpoint), file=out)
    return 0


def sync(mountpoint: str, out: TextIO = sys.stdout, timeout: float | None = None) -> int:
    """Upload every pending file once (an fsync each), then put the new directories (an fsync
    of each topmost one); a progress bar on a terminal, lines otherwise.

    A file still open for writing is fsync'd (what was written so far goes to
    S3) and then reported as not final, never waited on: its writer may go on
    for ever. Returns 0 when everything written so far is in S3, else 1.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    tty = out.isatty()
    failed: set[str] = set()
    tried: set[str] = set()
    st = read_status(mountpoint)
    total = pending_files(st)
    meter = _Progress(out, tty, int(st.get("pending_bytes", sum(p["size"] for p in st["pending"]))))
    n = 0
    while True:  # the status lists the first files waiting only: ask again after each batch
        batch = [p for p in st["pending"] if p["path"] not in tried]
        if not batch:
            break
        for p in batch:
            if deadline is not None and time.monotonic() > deadline:
                print("\nsync: timed out with %d files pending" % max(total - n, 1), file=out)
                return 1
            if not tty:
                print(
                    "uploading %s (%s to upload)" % (p["path"], human_size(p["size"] - p["uploaded"])),
                    file=out,
                )
            tried.add(p["path"])
            meter.file_started(p["uploaded"])
            error = _fsync_watched(mountpoint, p, meter, n, max(total, n + 1))
            if error:
                print("\nsync: %s: %s" % (p["path"], error), file=out)
                failed.add(p["path"])
            meter.file_done(p["size"])
            n += 1
        st = read_status(mountpoint)
    meter.finish(n)
    failed_dirs = _sync_new_dirs(mountpoint, st.get("new_dirs", []), out)
    st = read_status(mountpoint)
    left = [p for p in st["pending"] if p["path"] not in failed]
    for p in left:
        if p.get("writers"):
            print(
                "sync: %s is still open for writing: %s of %s in S3 so far, the rest when it is closed"
                % (p["path"], human_size(p["uploaded"]), human_size(p["size"])),
                file=out,
            )
        else:
            print(
                "sync: %s changed again meanwhile: %s not yet in S3" % (p["path"], human_size(p["size"])),
                file=out,
            )
    for w in st.get("open_for_writing", []):
        if not w["dirty"]:
            print(
                "sync: %s is still open for writing; the %s written so far are in S3"
                % (w["path"], human_size(w["size"])),
                file=out,
            )
    # Of the files the status did not list, those sync tried (and failed) are said above.
    listed = {p["path"] for p in st["pending"]}
    unlisted = pending_files(st) - len(listed) - len(failed - listed)
    if unlisted > 0:
        print("sync: %d more files wait to upload behind those" % unlisted, file=out)
    late_dirs = [d["path"] for d in st.get("new_dirs", []) if d["path"] not in failed_dirs]
    for path in late_dirs:
        print("sync: directory %s was made meanwhile: not yet in S3" % path, file=out)
    unlisted_dirs = st.get("new_dirs_count", 0) - len(st.get("new_dirs", []))
    if unlisted_dirs > 0:
        print("sync: %d more new directories wait behind those" % unlisted_dirs, file=out)
    if failed:
        print("sync: %d files could not be uploaded; they stay staged" % len(failed), file=out)
    if failed or left or unlisted > 0 or failed_dirs or late_dirs or unlisted_dirs > 0:
        return 1
    print("all files are in S3", file=out)
    return 0


class _Progress:
    """Bytes uploaded of bytes to upload: a bar with rate and ETA on a terminal, a line every 5 s else."""

    def __init__(self, out: TextIO, tty: bool, total_bytes: int) -> None:
        self.out, self.tty, self.total = out, tty, max(total_bytes, 1)
        self.already = 0  #: of the files reached so far, bytes in S3 before sync began: not in its rate
        self.finished_bytes = 0  #: of files already synced
        self.started = time.monotonic()
        self.last_line = 0.0

    def show(self, n: int, files: int, path: str, uploaded: int, size: int) -> None:
        now = time.monotonic()
        done = min(self.finished_bytes + uploaded, self.total)
        rate = max(done - self.already, 0) / max(now - self.started, 1e-3)
        eta = (self.total - done) / rate if rate > 0 else 0.0
        if self.tty:
            width = 30
            fill = int(width * done / self.total)
            self.out.write(
                "\r[%s%s] %s of %s  %s/s  ETA %ds  file %d/%d %s (%s of %s)   "
                % (
                    "#" * fill,
                    "." * (width - fill),
                    human_size(done),
                    human_size(self.total),
                    human_size(rate),
                    eta,
                    n + 1,
                    files,
                    path[-30:],
                    human_size(uploaded),
                    human_size(size),
                )
            )
            self.out.flush()
        elif now - self.last_line >= 5.0:
            self.last_line = now
            print(
                "sync: %s of %s uploaded (%s/s), %s: %s of %s"
                % (
                    human_size(done),
                    human_size(self.total),
                    human_size(rate),
                    path,
                    human_size(uploaded),
                    human_size(size),
                ),
                file=self.out,
            )

    def file_started(self, uploaded: int) -> None:
        self.already += uploaded

    def file_done(self, size: int) -> None:
        self.finished_bytes += size

    def finish(self, files: int) -> None:
        if self.tty:
            self.out.write(
                "\r[%s] %s in %d files%s\n" % ("#" * 30, human_size(self.finished_bytes), files, " " * 60)
            )


def _sync_new_dirs(mountpoint: str, new_dirs: list[dict[str, Any]], out: TextIO) -> set[str]:
    """Put the new directories whose objects are not in S3 yet (fs/newdirs.py): an fsync of
    each topmost one, which returns once it and what is under it are there (and its removals
    sent). Returns those that failed, each said in a line; one removed meanwhile is no failure."""
    paths = {d["path"] for d in new_dirs}
    failed: set[str] = set()
    for path in sorted(paths):
        if any(path.startswith(up.rstrip("/") + "/") for up in paths if up != path):
            continue  # put with the one above it
        if not out.isatty():
            print("putting directory %s" % path, file=out)
        try:
            fd = os.open(os.path.join(mountpoint, path.lstrip("/")), os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            continue
        except OSError as exc:
            failed.add(path)
            print("sync: directory %s: %s" % (path, exc.strerror or exc), file=out)
            continue
        try:
            os.fsync(fd)
        except OSError as exc:
            failed |= {p for p in paths if p == path or p.startswith(path.rstrip("/") + "/")}
            print("sync: directory %s: %s; it stays recorded, put again later" % (path, exc.strerror or exc),
                  file=out)
        finally:
            os.close(fd)
    return failed


def _fsync_watched(mountpoint: str, p: dict[str, Any], meter: _Progress, n: int, files: int) -> str | None:
    """fsync one pending file on a thread, showing its upload's progress; returns an error or None."""
    result: list[str | None] = []

    def run() -> None:
        try:
            fd = os.open(os.path.join(mountpoint, p["path"].lstrip("/")), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            result.append(None)
        except OSError as exc:
            result.append(exc.strerror or str(exc))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    uploaded, size = p["uploaded"], p["size"]
    while True:
        meter.show(n, files, p["path"], uploaded, size)
        worker.join(0.5)
        if not worker.is_alive():
            break
        try:
            now = {q["path"]: q for q in read_status(mountpoint)["pending"]}.get(p["path"])
        except ControlError:
            now = None
        if now is not None:
            uploaded, size = now["uploaded"], now["size"]
    meter.show(n, files, p["path"], size if not result[0] else uploaded, size)
    return result[0]


def main(argv: list[str]) -> int:
    """``status MOUNTPOINT`` or ``sync MOUNTPOINT [--timeout S]``."""
    if len(argv) < 2 or argv[0] not in ("status", "sync"):
        print("usage: s3fs-mount status MOUNTPOINT | s3fs-mount sync MOUNTPOINT", file=sys.stderr)
        return 2
    try:
        if argv[0] == "status":
            return status(argv[1])
        timeout = float(argv[3]) if len(argv) > 3 and argv[2] == "--timeout" else None
        return sync(argv[1], timeout=timeout)
    except ControlError as exc:
        print("s3fs-mount: %s" % exc, file=sys.stderr)
        return 1
