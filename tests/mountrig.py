"""Running the real ``bin/s3fs-mount`` for tests, and stopping it by PID."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "bin", "s3fs-mount")


def require_fuse() -> None:
    """Skip without FUSE, or fail when S3FS_REQUIRE_FUSE=1 (as in CI): a skipped mount test is no pass."""
    missing = [what for what, ok in (("/dev/fuse", os.path.exists("/dev/fuse")),
                                     ("fusermount", shutil.which("fusermount") is not None),
                                     ("setfattr", shutil.which("setfattr") is not None)) if not ok]
    if missing:
        message = "FUSE is not usable here: missing %s" % ", ".join(missing)
        if os.environ.get("S3FS_REQUIRE_FUSE") == "1":
            pytest.fail(message)
        pytest.skip(message)


def sync_dir(path: str) -> None:
    """fsync of directory ``path``: what was removed in it is deleted in S3 when this returns
    (a mount sends deletes in batches, a moment after the unlink)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def journal_records(cache: str, name: str) -> int:
    """How many records journal ``name`` (a JOURNAL_NAME of fs/) holds in cache directory
    ``cache`` (0 when there is none: nothing owed, or the mount made none yet)."""
    from s3fs_mount.fs.journal import StagingJournal

    found = [os.path.join(d, name) for d, _, names in os.walk(cache) if name in names]
    return len(StagingJournal.read(found[0])) if found else 0


def proxied(mount_factory, tmp_path, s3config, proxy, **kw):
    """A Mount (not started) of the test's bucket whose requests go through ``proxy`` (a
    faultproxy.FaultProxy)."""
    import s3rig

    config = s3rig.write_s3yaml(tmp_path / "proxied.yaml", dict(s3config, endpoint=proxy.endpoint))
    return mount_factory(config=str(config), **kw)


class Mount:
    """One ``s3fs-mount -f`` process serving ``bucket`` at ``path``."""

    def __init__(self, config: str, bucket: str, path: str, cache_dir: str, log_path: str,
                 options: str = "", env: dict[str, str] | None = None) -> None:
        self.config = config
        self.bucket = bucket
        self.path = path
        self.cache_dir = cache_dir
        self.log_path = log_path
        self.options = options
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        opts = "cache_dir=%s" % self.cache_dir
        if self.options:
            opts += "," + self.options
        return [sys.executable, BIN, "-f", "-c", self.config, "-o", opts, self.bucket, self.path]

    def start(self, timeout: float = 30.0) -> Mount:
        os.makedirs(self.path, exist_ok=True)
        env = dict(os.environ, PYTHONPATH=ROOT, **(self.env or {}))
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        deadline = time.monotonic() + timeout
        while not os.path.ismount(self.path):
            if self.proc.poll() is not None:
                raise RuntimeError("s3fs-mount exited %s:\n%s" % (self.proc.returncode, self.log()))
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("s3fs-mount did not mount in %ss:\n%s" % (timeout, self.log()))
            time.sleep(0.05)
        return self

    def log_lines(self) -> list[str]:
        """Every line the mount has logged."""
        with open(self.log_path, errors="replace") as f:
            return f.read().splitlines()

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 120.0) -> int:
        """Unmount as a user would; returns the process's exit code."""
        if self.proc is None:
            return 0
        if os.path.ismount(self.path):
            subprocess.run(["fusermount", "-u", self.path], check=False, capture_output=True)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """kill -9, then clear the dead mount."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        subprocess.run(["fusermount", "-u", "-z", self.path], check=False, capture_output=True)
