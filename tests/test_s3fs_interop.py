"""One bucket through this mount and through s3fs-fuse (Debian's ``s3fs``) at once: what one makes,
the other shows the same (type, mode, owner, times, link target, user xattrs), both ways.

Skipped only where the ``s3fs`` binary is missing (tests/run.sh installs it, so CI runs these).
s3fs-fuse runs with ``use_xattr`` (its xattrs are off by default) and no stat cache, so it asks
S3 each time.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterator

import pytest
from waiting import eventually

pytestmark = pytest.mark.fuse


class S3fsFuse:
    """One ``s3fs -f`` process serving the test's bucket at ``path``; stopped by its PID."""

    def __init__(self, server, bucket: str, tmp_path) -> None:
        self.path = str(tmp_path / "s3fs-fuse")
        self.log_path = str(tmp_path / "s3fs-fuse.log")
        passwd = tmp_path / "s3fs-passwd"
        passwd.write_text("%s:%s\n" % (server.access_key, server.secret_key))
        passwd.chmod(0o600)
        options = ["url=http://%s" % server.endpoint, "use_path_request_style", "passwd_file=%s" % passwd,
                   "use_xattr", "max_stat_cache_size=0", "dbglevel=warn"]
        os.makedirs(self.path)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(["s3fs", bucket, self.path, "-f", "-o", ",".join(options)],
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not os.path.ismount(self.path):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("s3fs-fuse did not mount:\n" + open(self.log_path).read()[-2000:])
            time.sleep(0.05)

    def stop(self) -> None:
        if os.path.ismount(self.path):
            subprocess.run(["fusermount", "-u", self.path], check=False, capture_output=True)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            subprocess.run(["fusermount", "-u", "-z", self.path], check=False, capture_output=True)


@pytest.fixture
def s3fs_fuse(s3server, bucket, tmp_path) -> Iterator[S3fsFuse]:
    if shutil.which("s3fs") is None:
        pytest.skip("s3fs-fuse is not installed (apt-get install s3fs; tests/run.sh does)")
    peer = S3fsFuse(s3server, bucket, tmp_path)
    try:
        yield peer
    finally:
        peer.stop()


def facts(path: str) -> tuple:
    """What both mounts must agree on of one name (times to the microsecond)."""
    st = os.lstat(path)
    return (stat.S_IFMT(st.st_mode), oct(stat.S_IMODE(st.st_mode)), st.st_uid, st.st_gid,
            st.st_mtime_ns // 1000, st.st_size)


def settles(value, expected) -> None:
    """``value()`` comes to equal ``expected`` (the other mount's view may lag its TTLs)."""
    try:
        eventually(lambda: value() == expected, what="%r" % (expected,))
    except AssertionError:
        assert value() == expected


def user_xattrs(path: str) -> dict[str, bytes]:
    return {n: os.getxattr(path, n) for n in os.listxattr(path) if n.startswith("user.")}


def test_what_this_mount_makes_s3fs_fuse_shows_the_same(mount, s3fs_fuse, boto, bucket):
    ours, theirs = mount.path, s3fs_fuse.path
    os.mkdir(os.path.join(ours, "d"))
    f = os.path.join(ours, "d", "f")
    with open(f, "wb") as out:
        out.write(b"hello\n")
    os.chmod(f, 0o640)
    os.chown(f, 1234, 5678)
    os.utime(f, ns=(1_577_934_245_000_000_000, 1_577_934_245_250_000_000))
    os.symlink("d/f", os.path.join(ours, "link"))
    os.mkfifo(os.path.join(ours, "fifo"), 0o600)
    for name in ("d/f", "link", "fifo"):
        settles(lambda n=name: facts(os.path.join(theirs, n)), facts(os.path.join(ours, name)))
    assert os.readlink(os.path.join(theirs, "link")) == "d/f"
    assert open(os.path.join(theirs, "d", "f"), "rb").read() == b"hello\n"
    assert stat.S_ISDIR(os.stat(os.path.join(theirs, "d")).st_mode)


def test_what_s3fs_fuse_makes_this_mount_shows_the_same(mount, s3fs_fuse, boto, bucket):
    ours, theirs = mount.path, s3fs_fuse.path
    os.mkdir(os.path.join(theirs, "d"))
    os.mkdir(os.path.join(theirs, "d", "sub"))
    f = os.path.join(theirs, "d", "f")
    with open(f, "wb") as out:
        out.write(b"theirs\n")
    os.chmod(f, 0o604)
    os.chown(f, 42, 43)
    os.utime(f, ns=(1_557_126_489_500_000_000, 1_557_126_489_500_000_000))
    os.setxattr(f, "user.shape", b"round")
    os.setxattr(f, "user.bin", b"\x00\xff")
    os.symlink("f", os.path.join(theirs, "d", "link"))
    os.mkfifo(os.path.join(theirs, "d", "fifo"), 0o600)
    assert "xattr" in boto.head_object(Bucket=bucket, Key="d/f")["Metadata"]  # s3fs-fuse's one header
    for name in ("d/f", "d/link", "d/fifo"):
        settles(lambda n=name: facts(os.path.join(ours, n)), facts(os.path.join(theirs, name)))
    assert os.readlink(os.path.join(ours, "d", "link")) == "f"
    assert stat.S_ISDIR(os.stat(os.path.join(ours, "d", "sub")).st_mode)
    assert user_xattrs(os.path.join(ours, "d", "f")) == {"user.shape": b"round", "user.bin": b"\x00\xff"}


def test_xattrs_of_an_object_s3fs_fuse_gave_attributes_change_on_either_side(mount, s3fs_fuse, boto, bucket):
    ours, theirs = os.path.join(mount.path, "f"), os.path.join(s3fs_fuse.path, "f")
    with open(theirs, "wb") as out:
        out.write(b"x")
    os.setxattr(theirs, "user.a", b"1")
    settles(lambda: user_xattrs(ours), {"user.a": b"1"})
    os.setxattr(ours, "user.b", b"2")
    os.setxattr(ours, "user.a", b"one")
    settles(lambda: user_xattrs(theirs), {"user.a": b"one", "user.b": b"2"})
    os.removexattr(theirs, "user.b")
    settles(lambda: user_xattrs(ours), {"user.a": b"one"})
    meta = boto.head_object(Bucket=bucket, Key="f")["Metadata"]
    assert "a" not in meta and "b" not in meta  # kept in s3fs-fuse's header only, one place


def test_an_old_style_directory_shows_its_s3fs_fuse_mode_on_both(mount, s3fs_fuse, boto, bucket):
    """``dir_$folder$`` alone (no ``dir/``), as s3fs-fuse and Hadoop wrote directories: both mounts
    show it as a directory with the mode it holds."""
    meta = {"mode": str(stat.S_IFDIR | 0o701), "uid": "7", "gid": "8", "mtime": "1600000000"}
    boto.put_object(Bucket=bucket, Key="old_$folder$", Body=b"", Metadata=meta)
    for top in (mount.path, s3fs_fuse.path):
        st = os.stat(os.path.join(top, "old"))
        assert (stat.S_ISDIR(st.st_mode), oct(stat.S_IMODE(st.st_mode)), st.st_uid, st.st_gid,
                int(st.st_mtime)) == (True, "0o701", 7, 8, 1600000000), top
