"""Shared files: many processes on one file, many clients on one bucket; real mounts on SeaweedFS.

The oracle is a shadow: the same operations on a local directory (ext4 or
tmpfs), or the states a writer knows it went through. What reached S3 is
checked with boto3, straight at the server.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import mmap
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest
from faultproxy import is_delete_objects
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from mountrig import proxied, sync_dir
from waiting import eventually

from s3fs_mount.fs.attrs import FRESH_LOOK

pytestmark = pytest.mark.fuse

MiB = 1 << 20
BIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bin", "s3fs-mount")


def s3_bytes(boto, bucket: str, key: str) -> bytes:
    return boto.get_object(Bucket=bucket, Key=key)["Body"].read()


def s3_keys(boto, bucket: str, prefix: str = "") -> list[str]:
    return sorted(o["Key"] for o in boto.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


def bytes_up(log_text: str, key: str) -> int:
    """Bytes the mount sent for ``key``, from its -o debug request log."""
    total = 0
    for line in log_text.splitlines():
        m = re.search(r"s3fs_mount\.requests: (PUT|POST) \S+ (\S+) \d+ \d+ms up=(\d+)", line)
        if m and m.group(2) == key:
            total += int(m.group(3))
    return total


def read_log(mount) -> str:
    with open(mount.log_path, errors="replace") as f:
        return f.read()


# -- one mount, many processes ------------------------------------------------------------------


def test_appends_while_another_process_reads_never_fail(place, boto):
    """The issue's reproduction: 300 `>>` appends while `cat` loops; no EIO, every line kept."""
    f = os.path.join(place.path, "x.log")
    script = (
        'f="$1"; echo start >"$f"; fails=0;'
        ' (for i in $(seq 300); do echo A$i >>"$f" || echo APPENDFAIL; done) & w=$!;'
        ' while kill -0 $w 2>/dev/null; do cat "$f" >/dev/null || echo CATFAIL; done; wait $w'
    )
    out = subprocess.run(["bash", "-c", script, "sh", f], capture_output=True, text=True, timeout=300)
    assert "FAIL" not in out.stdout + out.stderr, out.stdout[-2000:] + out.stderr[-2000:]
    expected = "start\n" + "".join("A%d\n" % i for i in range(1, 301))
    with open(f) as fh:
        assert fh.read() == expected
    assert s3_bytes(boto, place.bucket, place.key("x.log")).decode() == expected
    assert " 412 " not in place.log()


def test_eight_processes_append_to_one_file(place, boto):
    """8 shells x 200 `>>` lines into one file: 1,600 whole lines, in the file and in S3."""
    f = os.path.join(place.path, "shared.log")
    open(f, "w").close()
    script = 'for i in $(seq 200); do echo "P$2-L$i-xxxxxxxxxxxxxxxx" >>"$1" || exit 1; done'
    procs = [subprocess.Popen(["bash", "-c", script, "sh", f, str(p)]) for p in range(8)]
    assert [p.wait(timeout=300) for p in procs] == [0] * 8
    expected = sorted("P%d-L%d-xxxxxxxxxxxxxxxx" % (p, i) for p in range(8) for i in range(1, 201))
    with open(f) as fh:
        text = fh.read()
    assert sorted(text.splitlines()) == expected
    assert s3_bytes(boto, place.bucket, place.key("shared.log")).decode() == text
    # each writer's own lines stay in its order
    for p in range(8):
        mine = [line for line in text.splitlines() if line.startswith("P%d-" % p)]
        assert mine == ["P%d-L%d-xxxxxxxxxxxxxxxx" % (p, i) for i in range(1, 201)]


SQLITE_WRITER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], timeout=120)
for i in range(int(sys.argv[3])):
    while True:
        try:
            db.execute("insert into t values (?, ?, ?)", (sys.argv[2], i, "p" * 300))
            db.commit()  # the journal's create, writes, fsync and unlink, and the database's fsync
            break
        except sqlite3.OperationalError:  # busy past the timeout: ask again
            time.sleep(0.01)
"""


def test_three_processes_write_one_sqlite_database(place, boto, tmp_path):
    """sqlite in its default (rollback journal) mode, three writers taking turns by its locks:
    every row is there and the database is whole, in the mount and in S3's copy."""
    path = os.path.join(place.path, "app.db")
    db = sqlite3.connect(path)
    db.execute("create table t (w text, i int, pad text)")
    db.commit()
    db.close()
    procs = [subprocess.Popen([sys.executable, "-c", SQLITE_WRITER, path, w, "40"]) for w in "ABC"]
    assert [p.wait(timeout=600) for p in procs] == [0, 0, 0]
    want = sorted((w, i) for w in "ABC" for i in range(40))
    for copy in (path, str(tmp_path / "from-s3.db")):
        if copy != path:
            (tmp_path / "from-s3.db").write_bytes(s3_bytes(boto, place.bucket, place.key("app.db")))
        db = sqlite3.connect(copy)
        assert db.execute("pragma integrity_check").fetchall() == [("ok",)], copy
        assert sorted(db.execute("select w, i from t").fetchall()) == want, copy
        db.close()
    # the journals came and went (an unlink's delete is sent in a batch, just after)
    eventually(lambda: place.names(boto) == ["app.db"], what="S3 to hold app.db alone")


def test_sqlite_in_wal_mode_two_writers_then_a_remount_reads_it_whole(mount_factory, boto, bucket):
    """WAL mode: the -wal file and the -shm index shared by mmap between the writers; after the
    last close (the log checkpointed into the database) a remount with a new cache reads it whole."""
    mount = mount_factory().start()
    path = os.path.join(mount.path, "wal.db")
    db = sqlite3.connect(path)
    assert db.execute("pragma journal_mode=wal").fetchall() == [("wal",)]
    db.execute("create table t (w text, i int, pad text)")
    db.commit()
    procs = [subprocess.Popen([sys.executable, "-c", SQLITE_WRITER, path, w, "40"]) for w in "AB"]
    assert [p.wait(timeout=600) for p in procs] == [0, 0]
    want = sorted((w, i) for w in "AB" for i in range(40))
    assert sorted(db.execute("select w, i from t").fetchall()) == want  # a reader open all along
    db.close()
    mount.stop()
    assert s3_keys(boto, bucket) == ["wal.db"]  # the log and its index were removed at the last close
    again = mount_factory().start()
    db = sqlite3.connect(os.path.join(again.path, "wal.db"))
    assert db.execute("pragma integrity_check").fetchall() == [("ok",)]
    assert sorted(db.execute("select w, i from t").fetchall()) == want
    db.close()


def test_writes_through_a_shared_mmap_reach_s3(place, boto):
    """MAP_SHARED stores, flushed by msync, and stores made after the descriptor was closed
    (the mapping keeps the file open): S3 has them once the mapping is gone."""
    path = os.path.join(place.path, "mapped.bin")
    data = bytearray(os.urandom(3 * MiB))
    with open(path, "wb") as f:
        f.write(data)
    fd = os.open(path, os.O_RDWR)
    m = mmap.mmap(fd, 0)
    m[10:14] = data[10:14] = b"AAAA"
    m.flush()  # msync
    os.close(fd)
    m[2 * MiB : 2 * MiB + 4] = data[2 * MiB : 2 * MiB + 4] = b"BBBB"
    m.close()  # munmap: the last reference, so the release (and the upload) follow
    eventually(lambda: s3_bytes(boto, place.bucket, place.key("mapped.bin")) == bytes(data),
               what="the mapped writes in S3")
    with open(path, "rb") as f:
        assert f.read() == bytes(data)


def test_a_stat_as_a_background_upload_ends_sees_the_new_size(mount_factory, boto, bucket, tmp_path):
    """-o writeback: a file rewritten and closed is stat'ed and read by another process just as
    its upload is done. Before, the staged copy stopped counting (clean, no longer uploading)
    before the namespace was told of the new version: the stat got the size the mount knew
    before (3 here; 0 for a new file), the kernel kept it for attr_ttl, and the read was cut
    to it. Found with unlink-while-open loops: about 1 stat in 40 right after a close."""
    gate = tmp_path / "gate"
    boto.put_object(Bucket=bucket, Key="g.txt", Body=b"old")
    mount = mount_factory("writeback", env={"S3FS_MOUNT_TEST_UPLOAD_GATE": "g.txt:%s" % gate}).start()
    path = os.path.join(mount.path, "g.txt")
    assert os.stat(path).st_size == 3
    new = b"new content, longer than the old"
    with open(path, "wb") as f:
        f.write(new)
    try:
        eventually(lambda: "test gate: the upload of g.txt waits" in mount.log(), 60, "the upload held")
        look = "import os, sys; p = sys.argv[1]; print(os.stat(p).st_size, open(p).read())"
        seen = subprocess.run(
            [sys.executable, "-c", look, path], capture_output=True, text=True, timeout=60
        ).stdout.strip()
    finally:
        gate.touch()
    assert seen == "%d %s" % (len(new), new.decode())
    eventually(lambda: s3_bytes(boto, bucket, "g.txt") == new, 60, "the new bytes in S3")
    with open(path, "rb") as f:
        assert f.read() == new


def test_a_touch_during_a_background_upload_reaches_s3_without_a_sync(mount_factory, boto, bucket, tmp_path):
    """-o writeback: times set on a closed file while its upload runs (tar, cp -p and rsync -a
    set them right after the close) go up too. Before, the file stayed dirty with no release
    to submit it again: S3 kept the upload's times, and status said "waiting to upload", until
    a sync or the unmount (29 of 200 files touched after their close, measured by hand)."""
    gate = tmp_path / "gate"
    mount = mount_factory("writeback", env={"S3FS_MOUNT_TEST_UPLOAD_GATE": "t.txt:%s" % gate}).start()
    path = os.path.join(mount.path, "t.txt")
    with open(path, "wb") as f:
        f.write(b"tarred")
    try:
        eventually(lambda: "test gate: the upload of t.txt waits" in mount.log(), 60, "the upload held")
        os.utime(path, (1_000_000_000, 1_000_000_000))
        os.chmod(path, 0o600)
    finally:
        gate.touch()

    def stored() -> bool:
        meta = boto.head_object(Bucket=bucket, Key="t.txt")["Metadata"]
        return meta.get("mtime") == "1000000000" and int(meta.get("mode", "0")) & 0o777 == 0o600

    eventually(stored, 60, "the times and mode set during the upload in S3")

    def status() -> str:
        return subprocess.run([BIN, "status", mount.path], capture_output=True, text=True, timeout=60).stdout

    eventually(lambda: "nothing waiting to upload" in status(), 60, "nothing waiting to upload")
    assert s3_bytes(boto, bucket, "t.txt") == b"tarred"


def test_a_file_unlinked_while_its_upload_waits_is_not_brought_back(mount_factory, boto, bucket, tmp_path):
    """-o writeback: a file closed (its upload queued), opened, removed, then written and
    fchmod'ed through that handle: its queued upload sends nothing, as on a local disk the
    name stays gone. Before, the write made the unlinked copy dirty again and the queue PUT it
    once its delete had gone out: the removed file came back, in S3 and in the mount, with the
    bytes written after the unlink (found by hand with 300 files queued ahead of it)."""
    gate = tmp_path / "gate"
    env = {"S3FS_MOUNT_TEST_UPLOAD_GATE": "first:%s" % gate}
    mount = mount_factory("writeback,parallel=1", env=env).start()  # one writeback worker
    path = os.path.join(mount.path, "u")
    with open(path, "wb") as f:
        f.write(b"first version")
    eventually(lambda: s3_keys(boto, bucket) == ["u"], 60, "u in S3")
    with open(os.path.join(mount.path, "first"), "wb") as f:
        f.write(b"holds the queue")
    try:
        eventually(lambda: "test gate: the upload of first waits" in mount.log(), 60, "the queue held")
        with open(path, "wb") as f:
            f.write(b"old content")  # its upload waits behind first's
        fd = os.open(path, os.O_RDWR)
        try:
            os.unlink(path)
            eventually(lambda: "u" not in s3_keys(boto, bucket), 60, "u's delete sent")
            os.write(fd, b"written after the unlink")
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
    finally:
        gate.touch()
    sync = subprocess.run([BIN, "sync", mount.path], capture_output=True, text=True, timeout=120)
    assert sync.returncode == 0, sync.stdout + sync.stderr
    assert s3_keys(boto, bucket) == ["first"]
    assert os.listdir(mount.path) == ["first"]


LOCK_TRY = """
import fcntl, sys
with open(sys.argv[1], "r+") as f:
    try:
        (fcntl.flock if sys.argv[2] == "flock" else fcntl.lockf)(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("busy")
    else:
        print("got it")
"""


@pytest.mark.parametrize("kind", ["flock", "lockf"])
def test_a_lock_held_by_one_process_keeps_another_out(place, kind):
    """flock and fcntl (POSIX) locks between processes of one mount: the kernel's, per file."""
    path = os.path.join(place.path, "locked")
    open(path, "w").close()

    def other() -> str:
        return subprocess.run([sys.executable, "-c", LOCK_TRY, path, kind], capture_output=True,
                              text=True, check=True).stdout.strip()

    lock = fcntl.flock if kind == "flock" else fcntl.lockf
    with open(path, "r+") as f:
        lock(f, fcntl.LOCK_EX)
        assert other() == "busy"
        lock(f, fcntl.LOCK_UN)
        assert other() == "got it"


def test_a_reader_sees_only_states_that_existed(place, boto):
    """A reader loops while a writer appends, truncates and rewrites: never EIO, never mixed bytes."""
    path = os.path.join(place.path, "state.txt")
    states = [b""]
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[str] = []
    seen: list[bytes] = []

    def record(content: bytes) -> None:
        with lock:
            states.append(content)

    def writer() -> None:
        cur = b""
        for round_ in range(25):
            for i in range(6):  # appends
                line = b"r%02d-a%d-%s\n" % (round_, i, b"z" * (round_ * 37 % 200))
                with open(path, "ab") as f:
                    f.write(line)
                cur += line
                record(cur)
            with open(path, "r+b") as f:  # truncate to a prefix
                f.truncate(len(cur) // 2)
            cur = cur[: len(cur) // 2]
            record(cur)
            cur = b"rewrite-%02d\n" % round_ * (round_ + 1)
            with open(path, "wb") as f:  # rewrite whole (O_TRUNC, then the bytes)
                f.write(cur)
            record(b"")
            record(cur)
        stop.set()

    def reader() -> None:
        while not stop.is_set():
            try:
                with open(path, "rb") as f:
                    seen.append(f.read())
            except FileNotFoundError:
                continue
            except OSError as exc:
                errors.append("read: %s" % exc)

    with open(path, "wb"):
        pass
    threads = [threading.Thread(target=t) for t in (writer, reader, reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors[:5]
    assert len(seen) > 50
    # A read overlaps writes, so it may see a state part-way into the next one: each read must
    # be a prefix of some state that existed. The one exception is the kernel's, not ours (README,
    # "Consistency"): a read racing a shrinking truncate may see the old length, zeros past the new end.
    pairs = zip(states, states[1:], strict=False)
    shrinks = {(after, len(before)) for before, after in pairs if before.startswith(after)}
    for data in set(seen):
        if any(s.startswith(data) for s in states):
            continue
        kept = data.rstrip(b"\0")
        assert any(kept.startswith(after) and len(data) <= n for after, n in shrinks), data[-200:]
    with open(path, "rb") as f:
        final = f.read()
    assert final == states[-1] == s3_bytes(boto, place.bucket, place.key("state.txt"))


def test_mmap_in_two_processes_and_fsync_while_another_handle_writes(place, boto):
    path = os.path.join(place.path, "mapped.bin")
    data = os.urandom(3 * MiB)
    with open(path, "wb") as f:
        f.write(data)
    prog = (
        "import mmap, sys, hashlib\n"
        "with open(sys.argv[1], 'rb') as f:\n"
        "    m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)\n"
        "    print(hashlib.sha256(m[:]).hexdigest())\n"
    )
    outs = [subprocess.run([sys.executable, "-c", prog, path], capture_output=True, text=True) for _ in "ab"]
    assert [o.stdout.strip() for o in outs] == [hashlib.sha256(data).hexdigest()] * 2
    # fsync from one handle while another writes: both handles' bytes are in S3 after the fsync
    a = os.open(path, os.O_RDWR)
    b = os.open(path, os.O_RDWR)
    try:
        os.pwrite(a, b"AAAA", 10)
        os.pwrite(b, b"BBBB", 2 * MiB)
        os.fsync(a)
        expected = bytearray(data)
        expected[10:14] = b"AAAA"
        expected[2 * MiB : 2 * MiB + 4] = b"BBBB"
        assert s3_bytes(boto, place.bucket, place.key("mapped.bin")) == bytes(expected)
        assert os.pread(a, 4, 2 * MiB) == b"BBBB" and os.pread(b, 4, 10) == b"AAAA"
    finally:
        os.close(a)
        os.close(b)


# -- a randomized model: several handles on a few files, against a local shadow -----------------

FILES = ("f0", "f1", "f2")
OPEN_FLAGS = (
    os.O_RDONLY,
    os.O_RDWR,
    os.O_RDWR | os.O_APPEND,
    os.O_WRONLY | os.O_APPEND,
    os.O_RDWR | os.O_TRUNC,
    os.O_WRONLY | os.O_TRUNC,
)


def _outcome(fn, *args):
    try:
        return ("ok", fn(*args))
    except OSError as exc:
        return ("err", exc.errno)


class SharedHandles(RuleBasedStateMachine):
    """Interleaved open/read/write/append/truncate/fsync/close/rename/unlink on both trees."""

    mount_dir = ""
    shadow_dir = ""

    def __init__(self) -> None:
        super().__init__()
        self.handles: list[tuple[int, int, int]] = []  # (mount fd, shadow fd, flags)
        for name in FILES:
            for root in (self.mount_dir, self.shadow_dir):
                try:
                    os.unlink(os.path.join(root, name))
                except FileNotFoundError:
                    pass

    def both(self, fn, *args_for):
        """Run ``fn`` on the mount, then on the shadow; the outcomes must agree."""
        got = _outcome(fn, *args_for[0])
        want = _outcome(fn, *args_for[1])
        assert got == want, (fn.__name__, args_for, got, want)
        return got

    @rule(name=st.sampled_from(FILES), flags=st.sampled_from(OPEN_FLAGS), create=st.booleans())
    def open(self, name, flags, create):
        if len(self.handles) >= 6:
            return
        flags |= os.O_CREAT if create and flags & os.O_ACCMODE else 0
        m = _outcome(os.open, os.path.join(self.mount_dir, name), flags, 0o644)
        s = _outcome(os.open, os.path.join(self.shadow_dir, name), flags, 0o644)
        assert m[0] == s[0] and (m[0] == "ok" or m[1] == s[1]), (name, flags, m, s)
        if m[0] == "ok":
            self.handles.append((m[1], s[1], flags))

    @precondition(lambda self: self.handles)
    @rule(i=st.integers(0, 5), offset=st.integers(0, 300_000),
          size=st.integers(1, 70_000), seed=st.integers(0, 9))
    def write(self, i, offset, size, seed):
        m, s, flags = self.handles[i % len(self.handles)]
        data = (seed.to_bytes(16, "little") * (size // 16 + 1))[:size]
        if flags & os.O_APPEND:
            self.both(os.write, (m, data), (s, data))
        else:
            self.both(os.pwrite, (m, data, offset), (s, data, offset))

    @precondition(lambda self: self.handles)
    @rule(i=st.integers(0, 5), offset=st.integers(0, 400_000), size=st.integers(1, 200_000))
    def read(self, i, offset, size):
        m, s, _ = self.handles[i % len(self.handles)]
        self.both(os.pread, (m, size, offset), (s, size, offset))

    @precondition(lambda self: self.handles)
    @rule(i=st.integers(0, 5), length=st.integers(0, 350_000))
    def truncate(self, i, length):
        m, s, _ = self.handles[i % len(self.handles)]
        self.both(os.ftruncate, (m, length), (s, length))

    @precondition(lambda self: self.handles)
    @rule(i=st.integers(0, 5))
    def fsync(self, i):
        m, s, _ = self.handles[i % len(self.handles)]
        self.both(os.fsync, (m,), (s,))

    @precondition(lambda self: self.handles)
    @rule(i=st.integers(0, 5))
    def fstat_size(self, i):
        m, s, _ = self.handles[i % len(self.handles)]
        assert os.fstat(m).st_size == os.fstat(s).st_size

    @precondition(lambda self: self.handles)
    @rule(i=st.integers(0, 5))
    def close(self, i):
        m, s, _ = self.handles.pop(i % len(self.handles))
        self.both(os.close, (m,), (s,))

    @rule(a=st.sampled_from(FILES), b=st.sampled_from(FILES))
    def rename(self, a, b):
        self.both(
            os.rename,
            (os.path.join(self.mount_dir, a), os.path.join(self.mount_dir, b)),
            (os.path.join(self.shadow_dir, a), os.path.join(self.shadow_dir, b)),
        )

    @rule(name=st.sampled_from(FILES))
    def unlink(self, name):
        self.both(os.unlink, (os.path.join(self.mount_dir, name),), (os.path.join(self.shadow_dir, name),))

    @invariant()
    def same_files(self):
        for name in FILES:
            m = _outcome(lambda p: open(p, "rb").read(), os.path.join(self.mount_dir, name))
            s = _outcome(lambda p: open(p, "rb").read(), os.path.join(self.shadow_dir, name))
            assert m == s, name

    def teardown(self):
        for m, s, _ in self.handles:
            os.close(m)
            os.close(s)


def test_many_handles_against_a_local_shadow(place, boto, tmp_path):
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    SharedHandles.mount_dir = place.path
    SharedHandles.shadow_dir = str(shadow)
    run_state_machine_as_test(
        SharedHandles,
        settings=settings(
            max_examples=int(os.environ.get("S3FS_MODEL_EXAMPLES", "25")),
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
    # After the last close (FUSE's release comes after close returns), S3 holds exactly the shadow's files.
    def in_s3(name: str) -> bool:
        local = shadow / name
        if local.exists():
            return name in place.names(boto, name) and s3_bytes(boto, place.bucket, place.key(name)) == (
                local.read_bytes())
        return name not in place.names(boto, name)

    for name in FILES:
        eventually(lambda name=name: in_s3(name), what="S3 to hold %s as the shadow does" % name)


# -- fsync and sync during a streamed write -------------------------------------------------------


def _block(i: int, base: bytes) -> bytes:
    return i.to_bytes(8, "little") + base[8:]


def test_fsync_every_100mib_of_a_1gib_write_sends_each_byte_about_once(mount_factory, boto, bucket):
    m = mount_factory("debug").start()
    path = os.path.join(m.path, "big.bin")
    base = os.urandom(MiB)
    digest = hashlib.md5()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i in range(1024):
            block = _block(i, base)
            os.write(fd, block)
            digest.update(block)
            if i % 100 == 99:
                os.fsync(fd)
                # what was written so far is in S3, now
                head = boto.head_object(Bucket=bucket, Key="big.bin")
                assert head["ContentLength"] == (i + 1) * MiB
    finally:
        os.close(fd)
    body = boto.get_object(Bucket=bucket, Key="big.bin")["Body"]
    got = hashlib.md5()
    for chunk in iter(lambda: body.read(8 * MiB), b""):
        got.update(chunk)
    assert got.hexdigest() == digest.hexdigest()
    log = read_log(m)
    sent = bytes_up(log, "big.bin")
    # A part or copy the server fails for good makes that fsync upload the file whole, with a
    # warning: once is allowed. (A copy of hundreds of MiB outlasted the timeout under load
    # until copies were given time by their size: RemoteStore.copy_wait.)
    # Before, the file then never streamed again (every later fsync sent it all: 3,836 MiB).
    again = resent_whole(log, "big.bin")[:1]
    bound = 1.25 * 1024 * MiB + sum(again)
    assert 1024 * MiB <= sent <= bound, (sent / MiB, again, upload_story(log, "big.bin"))
    assert not boto.list_multipart_uploads(Bucket=bucket).get("Uploads")


def resent_whole(log_text: str, key: str) -> list[int]:
    """Bytes of ``key`` uploaded whole right after each stream the mount abandoned because a
    request failed (its warning, then the "uploaded KEY (N bytes)" of that flush)."""
    sizes, failed = [], False
    for line in log_text.splitlines():
        if "%s: streamed upload abandoned after" % key in line and "its upload failed" in line:
            failed = True
        m = re.search(r"uploaded %s \((\d+) bytes\)" % re.escape(key), line)
        if m and failed:
            sizes.append(int(m.group(1)))
            failed = False
    return sizes


def upload_story(log_text: str, key: str) -> str:
    """What a failed bound needs to be understood: ``key``'s requests counted by method and
    status, and the mount's other lines about it (abandoned, retried, restarted...)."""
    kinds: dict[str, int] = {}
    lines = []
    for line in log_text.splitlines():
        m = re.search(r"s3fs_mount\.requests: (\S+) \S+ (\S+) (\d+) ", line)
        if m:
            if m.group(2) == key:
                kind = "%s %s" % (m.group(1), m.group(3))
                kinds[kind] = kinds.get(kind, 0) + 1
        elif " WARNING " in line or " ERROR " in line or (key in line and " -> " in line):
            lines.append(line)
        elif key in line and " DEBUG s3fs_mount.fs.upload: " not in line:
            lines.append(line)
    return "requests: %s\n%s" % (kinds, "\n".join(lines[-60:]))


def test_sync_during_a_write_reports_the_open_file_and_does_not_restart_it(mount_factory, boto, bucket):
    m = mount_factory("debug").start()
    path = os.path.join(m.path, "growing.bin")
    base = os.urandom(MiB)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i in range(96):
            os.write(fd, _block(i, base))
        results = []
        for _ in range(3):  # sync, three times, while the file stays open and grows
            r = subprocess.run([sys.executable, BIN, "sync", m.path], capture_output=True, text=True)
            results.append(r)
            for i in range(len(results) * 96, (len(results) + 1) * 96):
                os.write(fd, _block(i, base))
        for r in results:
            # 0: all written so far is in S3 (the writer is between writes); the file is named either way
            assert r.returncode in (0, 1), r.stdout + r.stderr
            assert "growing.bin is still open for writing" in r.stdout, r.stdout
        assert boto.head_object(Bucket=bucket, Key="growing.bin")["ContentLength"] >= 96 * MiB
    finally:
        os.close(fd)
    size = 4 * 96 * MiB
    assert s3_bytes(boto, bucket, "growing.bin") == b"".join(_block(i, base) for i in range(4 * 96))
    sent = bytes_up(read_log(m), "growing.bin")
    assert size <= sent <= 1.25 * size, sent / MiB
    r = subprocess.run([sys.executable, BIN, "sync", m.path], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "all files are in S3" in r.stdout, r.stdout


# -- between clients: no silent lost update -------------------------------------------------------


def test_another_clients_put_between_open_and_close_keeps_both(place, boto):
    path = os.path.join(place.path, "doc.txt")
    with open(path, "w") as f:
        f.write("v1\n")
    fd = os.open(path, os.O_WRONLY)  # not O_APPEND: an append is added to theirs (below)
    os.pwrite(fd, b"ours\n", 3)
    put = boto.put_object(Bucket=place.bucket, Key=place.key("doc.txt"), Body=b"theirs\n")
    theirs = put["ETag"].strip('"')
    with pytest.raises(OSError) as exc:
        os.close(fd)
    assert exc.value.errno == errno.ESTALE
    keys = place.names(boto)
    conflicts = [k for k in keys if k.startswith("doc.txt.conflict-")]
    assert len(conflicts) == 1, keys
    assert s3_bytes(boto, place.bucket, place.key("doc.txt")) == b"theirs\n"
    assert s3_bytes(boto, place.bucket, place.key(conflicts[0])) == b"v1\nours\n"
    lines = [line for line in place.log_lines() if "changed in S3 since this mount saw it" in line]
    assert lines and theirs in lines[0] and conflicts[0] in lines[0]
    with open(path) as f:  # the conflict made the mount forget what it knew of doc.txt
        assert f.read() == "theirs\n"
    assert sorted(os.listdir(place.path)) == ["doc.txt", conflicts[0]]


def test_two_mounts_appending_to_one_log_keep_every_line_once(mount_factory, boto, bucket):
    """Found in round 36: two mounts each appending 100 lines with bash `>>` to one log: about 5%
    of the appends ended only in a conflict copy (close said ESTALE, which bash ignores), and a
    few writes said EIO (the version followed moved on 3 times). An O_APPEND handle that wrote
    nothing but appends lands them at the end of whatever version S3 holds when its upload meets
    another client's (fetched, ours added, PUT If-Match theirs), as O_APPEND does on one disk:
    every line once in the log, no conflict copy, no error."""
    one, two = mount_factory().start(), mount_factory().start()
    boto.put_object(Bucket=bucket, Key="shared.log", Body=b"start\n")
    script = 'for i in $(seq 100); do echo "M$2-L$i" >>"$1" || echo FAIL; done'
    procs = [
        subprocess.Popen(["bash", "-c", script, "sh", os.path.join(m.path, "shared.log"), str(n)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for n, m in ((1, one), (2, two))
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs) and not any("FAIL" in o + e for o, e in outs), outs
    assert s3_keys(boto, bucket) == ["shared.log"]  # no conflict copy
    lines = s3_bytes(boto, bucket, "shared.log").decode().splitlines()
    assert sorted(lines) == sorted(["start"] + ["M%d-L%d" % (n, i) for n in (1, 2) for i in range(1, 101)])
    for n in (1, 2):  # each mount's lines in its order
        mine = [line for line in lines if line.startswith("M%d-" % n)]
        assert mine == ["M%d-L%d" % (n, i) for i in range(1, 101)]
    assert "ERROR" not in read_log(one) + read_log(two)


@pytest.mark.parametrize("also", ["", "fsync", "pwrite", "ftruncate", "chmod", "deleted"])
def test_an_append_meeting_another_clients_version_goes_after_theirs(place, boto, also):
    """An O_APPEND handle that wrote nothing but appends meets another client's version at its
    close: theirs is fetched, ours goes after it (PUT If-Match theirs), as O_APPEND lands each
    write at the current end on one disk; no conflict copy, the close says nothing (appends
    after an fsync: those since it). Any other change to the file (a pwrite through another
    handle, a truncate, a chmod), or an object gone (a removal is not appended to), keeps both,
    as any write: ESTALE, ours under a conflict name."""
    path = os.path.join(place.path, "log")
    bucket, key = place.bucket, place.key("log")
    with open(path, "wb") as f:
        f.write(b"v1\n")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"ours\n")
    ours = b"v1\nours\n"
    other = os.open(path, os.O_WRONLY)  # (closed last: its close would upload the file)
    if also == "pwrite":
        os.pwrite(other, b"V", 0)
        ours = b"V1\nours\n"
    elif also == "ftruncate":
        os.ftruncate(fd, 7)
        ours = b"v1\nours"
    elif also == "chmod":
        os.chmod(path, 0o600)
    elif also == "fsync":
        os.fsync(fd)  # S3 has v1 and ours now: what we append next is all that goes after theirs
        os.write(fd, b"more\n")
    if also == "deleted":
        boto.delete_object(Bucket=bucket, Key=key)
    else:
        boto.put_object(Bucket=bucket, Key=key, Body=b"theirs\n", Metadata={"owner": "them"})
    if also in ("", "fsync"):
        appended = b"ours\n" if not also else b"more\n"
        os.close(fd)
        os.close(other)
        assert place.names(boto) == ["log"]
        assert s3_bytes(boto, bucket, key) == b"theirs\n" + appended
        assert boto.head_object(Bucket=bucket, Key=key)["Metadata"]["owner"] == "them"  # theirs kept
        assert "ours go after theirs, as O_APPEND on one disk" in place.log()
        with open(path, "rb") as f:
            assert f.read() == b"theirs\n" + appended
        with open(path, "ab") as f:  # and on from there
            f.write(b"on\n")
        assert s3_bytes(boto, bucket, key) == b"theirs\n" + appended + b"on\n"
        return
    with pytest.raises(OSError) as exc:
        os.close(fd)
    assert exc.value.errno == errno.ESTALE
    os.close(other)
    [aside] = [k for k in place.names(boto) if k != "log"]
    assert aside.startswith("log.conflict-") and s3_bytes(boto, bucket, place.key(aside)) == ours
    if also != "deleted":
        assert s3_bytes(boto, bucket, key) == b"theirs\n"


def log_read_through(place, flags: int) -> tuple[str, int]:
    """``log`` made holding ``start\n`` in the test's directory, opened with ``flags`` and read whole:
    (path, fd)."""
    path = os.path.join(place.path, "log")
    with open(path, "wb") as f:
        f.write(b"start\n")
    fd = os.open(path, flags)
    assert os.read(fd, 100) == b"start\n"
    return path, fd


def append_ours_after_theirs(path: str, boto, bucket: str, key: str, between=lambda: True) -> None:
    """``ours\n`` appended to ``log`` (holding ``start\n``) here while boto3 puts ``start\ntheirs\n``
    (after ``between()``, which must hold): the close's upload meets theirs, and ours goes after it."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"ours\n")
    assert between()
    boto.put_object(Bucket=bucket, Key=key, Body=b"start\ntheirs\n")
    os.close(fd)
    assert s3_bytes(boto, bucket, key) == b"start\ntheirs\nours\n"


def test_a_reader_open_while_our_appends_go_after_another_clients_version_gets_eio_not_a_mix(place, boto):
    """Found merging round 37 (appends moved after theirs, and handles kept on their version):
    a reader here (tail -f) had read our appended bytes, then our upload met another client's
    version and put ours after theirs: its next read got the new file's bytes at its offset,
    theirs cut mid-line, silently (a reader beside two mounts appending to one log saw cut and
    repeated lines). Such a reader may have had the old bytes from us or from the kernel's
    pages our writes filled: EIO, and every later read; a new open reads the file as it is."""
    path, reader = log_read_through(place, os.O_RDONLY)
    try:
        # what this mount's file holds, as on one disk
        append_ours_after_theirs(path, boto, place.bucket, place.key("log"),
                                 lambda: os.read(reader, 100) == b"ours\n")
        time.sleep(1.1)  # attr_ttl: the kernel's size of the file (11) is asked again
        assert os.fstat(reader).st_size == 18
        for _ in range(2):
            with pytest.raises(OSError) as exc:
                os.read(reader, 100)  # was b"s\nours\n": theirs, cut where its last read ended
            assert exc.value.errno == errno.EIO
    finally:
        os.close(reader)
    with open(path, "rb") as f:
        assert f.read() == b"start\ntheirs\nours\n"
    assert "our appends went after another client's version while this handle was open" in place.log()


def test_a_handle_that_read_the_file_before_our_appends_went_after_theirs_writes_eio_not_over_theirs(
    place, boto
):
    """Found in round 38: after our appends went after another client's version, a handle open
    for reading and writing that had read the file took EIO on its next read, but its pwrite went
    on at the offset it chose from the bytes now moved, over theirs, and its close put that in S3
    silently. Now the write is EIO too, and S3 keeps theirs and ours."""
    path, rw = log_read_through(place, os.O_RDWR)
    try:
        append_ours_after_theirs(path, boto, place.bucket, place.key("log"))
        with pytest.raises(OSError) as exc:
            os.pwrite(rw, b"OURS\n", 6)  # (was: over "their", in S3 at the close)
        assert exc.value.errno == errno.EIO
    finally:
        os.close(rw)
    assert s3_bytes(boto, place.bucket, place.key("log")) == b"start\ntheirs\nours\n"
    assert place.names(boto) == ["log"]


def test_a_conflict_on_a_long_name_keeps_ours_under_a_name_that_fits(place, boto):
    """Found by hand (round 31): ours went to NAME.conflict-TIMESTAMP even when that name
    passed 255 bytes; SeaweedFS refused the key, close said EIO and ours stayed dirty for ever.
    The conflict name is shortened to fit: ESTALE, ours in S3, nothing left to upload."""
    name = "é" * 120 + "x" * 10  # 250 bytes
    path = os.path.join(place.path, name)
    bucket = place.bucket
    with open(path, "wb") as f:
        f.write(b"v1\n")
    fd = os.open(path, os.O_WRONLY)
    os.pwrite(fd, b"ours\n", 3)
    boto.put_object(Bucket=bucket, Key=place.key(name), Body=b"theirs\n")
    with pytest.raises(OSError) as exc:
        os.close(fd)
    assert exc.value.errno == errno.ESTALE
    (aside,) = [k for k in place.names(boto) if k != name]
    assert re.fullmatch(r"é{115}\.conflict-\d{8}T\d{6}", aside), aside  # 230 + 25 bytes
    assert s3_bytes(boto, bucket, place.key(aside)) == b"v1\nours\n"
    assert s3_bytes(boto, bucket, place.key(name)) == b"theirs\n"
    assert sorted(os.listdir(place.path)) == sorted([name, aside])
    status = subprocess.run([BIN, "status", place.mount.path], capture_output=True, text=True, check=True)
    assert "nothing waiting to upload" in status.stdout


def occupy_conflict_names(boto, bucket: str, key: str, seconds: int = 90) -> dict[str, bytes]:
    """Another mount's conflict copies of ``key`` at every name a conflict of it could take from
    a second ago for ``seconds`` seconds (KEY.conflict-T, local time as the mount names them):
    {name: body}."""
    now = time.time()
    placed = {}
    for i in range(-1, seconds):
        name = "%s.conflict-%s" % (key, time.strftime("%Y%m%dT%H%M%S", time.localtime(now + i)))
        placed[name] = b"another mount's conflict copy %d" % i
        boto.put_object(Bucket=bucket, Key=name, Body=placed[name])
    return placed


@pytest.mark.parametrize("size", ["small", "streamed past the cache"])
def test_a_conflict_copy_never_lands_on_another_mounts_conflict_copy(mount_factory, boto, bucket, size):
    """Two mounts that each lose a conflict on one file in the same second pick the same name,
    KEY.conflict-T. Ours went there with If-None-Match (a small file): refused, close said EIO
    and ours stayed staged at that name for ever; theirs set aside while ours streamed past the
    cache went there by an unconditional CopyObject: the other mount's copy silently gone. Now
    a taken name is left to whoever has it, and the copy goes to the next (-2, -3...)."""
    big = size != "small"
    m = mount_factory("cache_size=20M,part_size=5M,multipart_threshold=5M" if big else "").start()
    path = os.path.join(m.path, "f")
    ours = hashlib.shake_256(b"ours").digest(40 * MiB) if big else b"ours\n"
    boto.put_object(Bucket=bucket, Key="f", Body=b"v0\n")
    with open(path, "rb") as f:
        assert f.read() == b"v0\n"
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    for at in range(0, len(ours), MiB):
        os.pwrite(fd, ours[at : at + MiB], at)
    boto.put_object(Bucket=bucket, Key="f", Body=b"theirs\n")
    placed = occupy_conflict_names(boto, bucket, "f")
    if big:  # ours holds bytes only its upload has: it goes to the path, theirs aside
        os.close(fd)
    else:
        with pytest.raises(OSError) as exc:
            os.close(fd)
        assert exc.value.errno == errno.ESTALE
    for name, body in placed.items():
        assert s3_bytes(boto, bucket, name) == body, name
    [aside] = [k for k in s3_keys(boto, bucket) if k != "f" and k not in placed]
    assert re.fullmatch(r"f\.conflict-\d{8}T\d{6}-\d+", aside), aside
    assert s3_bytes(boto, bucket, "f") == (ours if big else b"theirs\n")
    assert s3_bytes(boto, bucket, aside) == (b"theirs\n" if big else ours)
    status = subprocess.run([BIN, "status", m.path], capture_output=True, text=True, check=True)
    assert "nothing waiting to upload" in status.stdout
    assert m.stop() == 0
    assert "Traceback" not in read_log(m)


@pytest.mark.parametrize("how", ["rdwr", "wronly", "append", "rdwr-large"])
def test_a_write_through_a_handle_that_kept_the_kernels_pages_meets_another_clients_version(place, boto, how):
    """A file read whole through the mount, opened again for writing: the open keeps the
    kernel's pages (checked bytes of its version), so the handle counted as having served
    them, and its first write, which fetches the file, found another client's version: EIO.
    Now a handle opened for reading too has the bytes fetched at its open (its process may
    have read them from those pages): ours (their bytes and our write) goes to a conflict
    copy at the close, ESTALE, theirs stays. One write-only has served nothing: it follows
    their version, as a handle that kept no page does. So does one for reading and writing of
    a file over 8 MiB, whose open does not fetch it but drops the kernel's pages."""
    path = os.path.join(place.path, "f")
    bucket, key = place.bucket, place.key("f")
    v0 = b"v0 from boto\n" * (MiB if how == "rdwr-large" else 1)
    boto.put_object(Bucket=bucket, Key=key, Body=v0)
    with open(path, "rb") as f:
        assert f.read() == v0
    flags = {"wronly": os.O_WRONLY, "append": os.O_WRONLY | os.O_APPEND}.get(how, os.O_RDWR)
    fd = os.open(path, flags)
    if how == "rdwr":
        assert os.pread(fd, 100, 0) == b"v0 from boto\n"
    boto.put_object(Bucket=bucket, Key=key, Body=b"theirs version\n")
    if how == "append":
        os.write(fd, b"ours\n")
    else:
        os.pwrite(fd, b"OURS", 0)
    if how == "rdwr":  # read through it first: its bytes are the old version's
        with pytest.raises(OSError) as exc:
            os.close(fd)
        assert exc.value.errno == errno.ESTALE
        [aside] = [k for k in place.names(boto) if k != "f"]
        assert s3_bytes(boto, bucket, place.key(aside)) == b"OURSrom boto\n"
        assert s3_bytes(boto, bucket, key) == b"theirs version\n"
    else:
        os.close(fd)
        assert place.names(boto) == ["f"]
        expected = b"theirs version\nours\n" if how == "append" else b"OURSrs version\n"
        assert s3_bytes(boto, bucket, key) == expected
        with open(path, "rb") as f:
            assert f.read() == expected
    assert "Traceback" not in place.log()


@pytest.mark.parametrize("call", ["pread", "pwrite"])
def test_a_read_or_write_through_a_handle_of_an_object_another_client_deleted_is_estale(place, boto, call):
    """Another client deletes an object this mount has open and has fetched no byte of: the
    next read or write is ESTALE with a log line (it was ENOENT, which write(2) never says)."""
    boto.put_object(Bucket=place.bucket, Key=place.key("gone"), Body=b"theirs" * 1000)
    fd = os.open(os.path.join(place.path, "gone"), os.O_RDWR)
    try:
        boto.delete_object(Bucket=place.bucket, Key=place.key("gone"))
        with pytest.raises(OSError) as info:
            if call == "pread":
                os.pread(fd, 4096, 0)
            else:
                os.pwrite(fd, b"ours", 10)
        assert info.value.errno == errno.ESTALE, info.value
    finally:
        os.close(fd)
    assert "ESTALE" in place.log()


def test_a_cat_of_a_file_another_client_deleted_within_attr_ttl_is_estale_once_then_enoent(
    mount_factory, boto, bucket
):
    """Found by hand (round 36): a file stat'ed here (attr_ttl), another client deleted it; each
    ``cat`` said "Stale file handle" (its read-only open trusts the cached attributes, its GET
    finds nothing) and ``stat`` showed it for the rest of attr_ttl. The first read's 404 still
    says ESTALE (no request is spent at the open to learn it), but the name is forgotten: the
    next ``cat`` says ENOENT, and the listing no longer shows it."""
    one = mount_factory("attr_ttl=600,dir_ttl=600").start()
    boto.put_object(Bucket=bucket, Key="r", Body=b"theirs")
    boto.put_object(Bucket=bucket, Key="s", Body=b"stays")
    assert os.stat(os.path.join(one.path, "r")).st_size == 6
    assert sorted(os.listdir(one.path)) == ["r", "s"]
    boto.delete_object(Bucket=bucket, Key="r")
    first = subprocess.run(["cat", os.path.join(one.path, "r")], capture_output=True, text=True)
    assert first.returncode == 1 and "Stale file handle" in first.stderr, first.stderr
    again = subprocess.run(["cat", os.path.join(one.path, "r")], capture_output=True, text=True)
    assert again.returncode == 1 and "No such file or directory" in again.stderr, again.stderr
    assert os.listdir(one.path) == ["s"]


@pytest.mark.parametrize("theirs", [b"their longer version\n" * 20, b"theirs\n"], ids=["longer", "shorter"])
def test_a_cat_within_attr_ttl_of_a_file_another_client_replaced_never_reads_it_cut_at_the_old_size(
    mount_factory, boto, bucket, theirs
):
    """Found by a two-mount ``git checkout`` while the other mount ``cat``s the work tree (round
    39): a read-only open trusts the cached attributes, its first read finds another client's
    version and follows it, but the kernel holds the old size and cut the new bytes there (a
    file of neither version, read without error). Now such a read of a longer version is EIO,
    and the next ``cat`` (its open ESTALE, the kernel looking the name up again) reads it whole;
    a shorter one is read whole at once (the kernel takes the short read as the new end)."""
    boto.put_object(Bucket=bucket, Key="f", Body=b"our first version, 39 bytes long......\n")
    m = mount_factory("attr_ttl=600").start()
    f = os.path.join(m.path, "f")
    assert os.stat(f).st_size == 39  # the kernel and the mount hold this version's attributes
    boto.put_object(Bucket=bucket, Key="f", Body=theirs)
    outcomes: list[object] = []
    for _ in range(2):
        try:
            with open(f, "rb") as fh:
                outcomes.append(fh.read())
        except OSError as exc:
            outcomes.append(exc.errno)
    assert outcomes == ([errno.EIO, theirs] if len(theirs) > 39 else [theirs, theirs])
    assert os.stat(f).st_size == len(theirs)


@pytest.mark.parametrize("theirs", [b"their longer version\n" * 20, b"theirs\n"], ids=["longer", "shorter"])
def test_a_cat_after_this_mount_followed_another_clients_version_unknown_to_the_kernel_reads_it_whole(
    mount_factory, boto, bucket, theirs
):
    """The window left by the test above (round 39's CI: a ``cat`` during another mount's ``git
    checkout`` read 1,560 bytes of a 1,860-byte version, no error): the mount follows another
    client's version while the kernel keeps the old one's attributes (here an open for writing,
    which asks S3; in the CI the mount's cached answer expired a moment before the kernel's).
    A ``cat`` then opens the new version: its open is ESTALE at first (the kernel holds another
    size), the kernel looks the name up again, and the ``cat`` reads the version whole."""
    boto.put_object(Bucket=bucket, Key="f", Body=b"our first version, 39 bytes long......\n")
    m = mount_factory("attr_ttl=600").start()
    f = os.path.join(m.path, "f")
    assert os.stat(f).st_size == 39  # the kernel holds this size for 600 s
    boto.put_object(Bucket=bucket, Key="f", Body=theirs)
    time.sleep(FRESH_LOOK + 0.1)  # (an open for writing takes a lookup this fresh for S3's answer)
    os.close(os.open(f, os.O_WRONLY))  # asks S3: the mount follows their version, the kernel not
    with open(f, "rb") as fh:
        assert fh.read() == theirs
    assert os.stat(f).st_size == len(theirs)


def test_a_reader_of_an_object_another_client_replaces_reads_one_version_or_eio(place, boto):
    """Another client's PUT while a process reads a large object here: the reader gets the
    bytes of the version it opened, then EIO with a log line, never the new version's bytes."""
    size = 48 * MiB
    boto.put_object(Bucket=place.bucket, Key=place.key("big"), Body=b"A" * size)
    fd = os.open(os.path.join(place.path, "big"), os.O_RDONLY)
    try:
        got = [os.pread(fd, 1024, 0)]
        boto.put_object(Bucket=place.bucket, Key=place.key("big"), Body=b"B" * size)
        offset, failed = 1024, None
        while offset < size:
            try:
                chunk = os.pread(fd, MiB, offset)
            except OSError as exc:
                failed = exc
                break
            assert chunk, offset
            got.append(chunk)
            offset += len(chunk)
    finally:
        os.close(fd)
    assert b"".join(got) == b"A" * offset
    assert failed is None or failed.errno == errno.EIO, failed
    if failed is not None:  # (none if the version opened was all read ahead before the PUT)
        assert "was replaced in S3 by another client" in place.log()
        with open(os.path.join(place.path, "big"), "rb") as f:  # the mount asked S3 again
            assert f.read(10) == b"B" * 10


@pytest.mark.parametrize("options", ["", "writeback"])
@pytest.mark.parametrize("how", ["append", "pwrite"])
def test_a_write_to_a_file_opened_on_attributes_cached_before_another_clients_version_follows_it(
    mount_factory, boto, bucket, options, how
):
    """Found in round 35 (two mounts appending to one log, open-write-close a line each: 74 of
    150 `>>` of one failed): an open within attr_ttl of our lookup uses the cached ETag, and the
    first write's fetch of the object got 412 from S3, which was EIO. Nothing was read or written
    through the handle yet, so the write follows the version S3 holds, as a read does (and as an
    open a moment later would): `>>` appends to their bytes."""
    mount = mount_factory(",".join(o for o in (options, "attr_ttl=600") if o)).start()
    path = os.path.join(mount.path, "log")
    boto.put_object(Bucket=bucket, Key="log", Body=b"first line\n")
    assert os.stat(path).st_size == 11  # cached for attr_ttl
    boto.put_object(Bucket=bucket, Key="log", Body=b"first line\ntheirs\n")  # another client
    if how == "append":
        with open(path, "ab") as f:
            f.write(b"ours\n")
            f.flush()
            os.fsync(f.fileno())  # in S3 (with -o writeback too)
        expected = b"first line\ntheirs\nours\n"
    else:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, b"FIRST", 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        expected = b"FIRST line\ntheirs\n"
    assert s3_bytes(boto, bucket, "log") == expected
    with open(path, "rb") as f:
        assert f.read() == expected
    assert not [k for k in s3_keys(boto, bucket) if ".conflict-" in k]


def test_a_file_created_here_while_another_client_created_it(place, boto):
    fd = os.open(os.path.join(place.path, "new.txt"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, b"mine")
    boto.put_object(Bucket=place.bucket, Key=place.key("new.txt"), Body=b"someone else's")
    with pytest.raises(OSError) as exc:
        os.close(fd)
    assert exc.value.errno == errno.ESTALE
    assert s3_bytes(boto, place.bucket, place.key("new.txt")) == b"someone else's"
    conflict = [k for k in place.names(boto) if k.startswith("new.txt.conflict-")]
    assert len(conflict) == 1 and s3_bytes(boto, place.bucket, place.key(conflict[0])) == b"mine"


def test_a_name_another_client_made_in_a_directory_we_listed_is_not_overwritten(place, boto):
    d = os.path.join(place.path, "d")
    os.mkdir(d)
    assert os.listdir(d) == []  # listed: a new name there is "no such entry" with no request
    boto.put_object(Bucket=place.bucket, Key=place.key("d/new.txt"), Body=b"someone else's")
    try:
        fd = os.open(os.path.join(d, "new.txt"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        pytest.skip("dir_ttl passed before the create (a busy machine): the HEAD found theirs")
    os.write(fd, b"mine")
    with pytest.raises(OSError) as exc:
        os.close(fd)  # the PUT's If-None-Match: * finds theirs
    assert exc.value.errno == errno.ESTALE
    assert s3_bytes(boto, place.bucket, place.key("d/new.txt")) == b"someone else's"
    conflict = [k for k in place.names(boto, "d/") if k.startswith("d/new.txt.conflict-")]
    assert len(conflict) == 1 and s3_bytes(boto, place.bucket, place.key(conflict[0])) == b"mine"


@pytest.mark.parametrize("existing", [False, True])
def test_two_mounts_write_one_key_at_once(mount_factory, boto, bucket, existing):
    if existing:
        boto.put_object(Bucket=bucket, Key="k", Body=b"original")
    one, two = mount_factory().start(), mount_factory().start()
    bodies = {one.path: b"from mount one " * 1000, two.path: b"from mount two " * 2000}
    barrier = threading.Barrier(2)
    outcome: dict[str, object] = {}

    def writer(root: str) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        fd = os.open(os.path.join(root, "k"), flags, 0o644)
        os.write(fd, bodies[root])
        barrier.wait()
        try:
            os.close(fd)
            outcome[root] = "ok"
        except OSError as exc:
            outcome[root] = exc.errno

    threads = [threading.Thread(target=writer, args=(r,)) for r in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcome.values(), key=str) == sorted(["ok", errno.ESTALE], key=str), outcome
    winner = next(r for r, o in outcome.items() if o == "ok")
    loser = next(r for r, o in outcome.items() if o != "ok")
    assert s3_bytes(boto, bucket, "k") == bodies[winner]
    conflict = [k for k in s3_keys(boto, bucket) if k.startswith("k.conflict-")]
    assert len(conflict) == 1 and s3_bytes(boto, bucket, conflict[0]) == bodies[loser]


@pytest.mark.parametrize("options", ["", "writeback"])
def test_an_rm_on_one_mount_does_not_delete_what_the_other_wrote_after_its_lookup(mount_factory, boto, bucket,
                                                                                  options):
    """Found by hand (round 33): mount two stat'ed f, mount one's newer bytes landed, then mount
    two's rm deleted them (its batched DeleteObjects named no version): one's close and fsync
    had said ok, and nothing said otherwise. Now the delete names the version two saw."""
    one = mount_factory(options).start()
    two = mount_factory("attr_ttl=600").start()  # its view of f stays the one it looked up
    with open(os.path.join(one.path, "f"), "wb") as f:
        f.write(b"first")
        f.flush()
        os.fsync(f.fileno())  # in S3 now, with -o writeback too
    assert os.stat(os.path.join(two.path, "f")).st_size == 5
    with open(os.path.join(one.path, "f"), "wb") as f:
        f.write(b"newer bytes")
        f.flush()
        os.fsync(f.fileno())
    os.unlink(os.path.join(two.path, "f"))
    sync_dir(two.path)
    assert s3_bytes(boto, bucket, "f") == b"newer bytes"
    assert "f changed in S3 since this mount saw it" in read_log(two)
    assert os.stat(os.path.join(two.path, "f")).st_size == 11  # there again, as it is in S3


@pytest.mark.parametrize(
    "options,size,by",
    [
        ("", 1000, "mount"),
        ("writeback", 1000, "mount"),
        ("", 1000, "boto3"),
        ("writeback", 1000, "boto3"),
        ("part_size=5M,multipart_threshold=5M", 6 * MiB, "mount"),  # a multipart upload at close
        ("part_size=5M,multipart_threshold=5M,writeback", 11 * MiB, "boto3"),  # streamed, O_TRUNC
    ],
)
def test_another_clients_metadata_change_while_we_write_is_merged(mount_factory, boto, bucket, options, size,
                                                                  by):
    """Found by hand (round 33): mount two's setfattr and chmod (or boto3's self-copy with
    MetadataDirective=REPLACE) while mount one had f open and written: both succeeded, and one's
    upload replaced their metadata with its own, unlogged (a self-copy keeps the ETag, so its
    If-Match held). Now one's bytes and their attributes both stand, and one's log says so."""
    one = mount_factory(options).start()
    # Started first: a process started while f is open closes its copy of the descriptor at exec,
    # and that close is a flush (the upload would land before their change).
    two = mount_factory().start() if by == "mount" else None
    path = os.path.join(one.path, "f")
    with open(path, "wb") as f:
        f.write(b"v1" * (size // 2))
        f.flush()
        os.fsync(f.fileno())  # in S3 (with -o writeback too)
    os.setxattr(path, "user.old", b"o")
    ours = os.urandom(size)
    flags = os.O_WRONLY | (os.O_TRUNC if size > 8 * MiB else 0)
    fd = os.open(path, flags)
    try:
        os.write(fd, ours)
        if two is not None:
            os.setxattr(os.path.join(two.path, "f"), "user.tag", b"theirs")
            os.chmod(os.path.join(two.path, "f"), 0o600)
        else:
            meta = boto.head_object(Bucket=bucket, Key="f")["Metadata"]
            meta.update(tag="theirs", mode=str(0o100600))
            boto.copy_object(Bucket=bucket, Key="f", CopySource={"Bucket": bucket, "Key": "f"},
                             Metadata=meta, MetadataDirective="REPLACE")
        os.fsync(fd)
    finally:
        os.close(fd)
    sync_dir(one.path)
    head = boto.head_object(Bucket=bucket, Key="f")
    assert s3_bytes(boto, bucket, "f") == ours
    assert head["Metadata"].get("tag") == "theirs", head["Metadata"]
    assert int(head["Metadata"]["mode"]) & 0o777 == 0o600
    assert head["Metadata"].get("old") == "o"  # ours, from before, kept
    lines = [line for line in read_log(one).splitlines() if "another client changed" in line]
    assert len(lines) == 1 and "mode, user.tag" in lines[0] and "merged" in lines[0], read_log(one)[-4000:]
    assert not [k for k in s3_keys(boto, bucket) if ".conflict-" in k]


def test_conflict_check_off_says_so_and_lets_the_last_writer_win(mount_factory, boto, bucket):
    m = mount_factory("conflict_check=off").start()
    path = os.path.join(m.path, "lww.txt")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"mount")
    boto.put_object(Bucket=bucket, Key="lww.txt", Body=b"boto")
    os.close(fd)
    assert s3_bytes(boto, bucket, "lww.txt") == b"mount"
    assert "conflict check off" in read_log(m)


# -- another client changes the tree under a mount ---------------------------------------------


def _listed(path: str) -> list[str] | None:
    """The names in directory ``path``, in order; None if there is none (yet)."""
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return None


def test_files_created_in_a_cwd_whose_tree_another_client_deleted_all_reach_s3(place, boto):
    """A process keeps creating files in its cwd while boto3 deletes the whole tree: each create
    succeeds, each file is in S3 (the directory is made again by its keys), and ls shows them."""
    bucket = place.bucket
    for i in range(5):
        boto.put_object(Bucket=bucket, Key=place.key("t/sub/old%d" % i), Body=b"o")
    path = os.path.join(place.path, "t", "sub")
    here = os.getcwd()
    os.chdir(path)
    try:
        for i in range(20):
            if i == 5:
                for key in place.names(boto, "t/"):
                    boto.delete_object(Bucket=bucket, Key=place.key(key))
            with open("n%02d" % i, "wb") as f:
                f.write(b"n%d" % i)
            if i == 5:
                time.sleep(1.2)  # what the mount knew of the directory (attr_ttl, dir_ttl) expires
    finally:
        os.chdir(here)
    made = ["t/sub/n%02d" % i for i in range(5, 20)]
    assert [k for k in place.names(boto, "t/") if k >= "t/sub/n05"] == made
    assert [s3_bytes(boto, bucket, place.key(k)) for k in made] == [b"n%d" % i for i in range(5, 20)]
    eventually(lambda: sorted(os.listdir(path)) == [k.rsplit("/", 1)[1] for k in made], what="ls of sub")


def test_a_directory_another_client_renames_under_an_open_file_keeps_both(mount_factory, boto, bucket):
    """Two mounts: one renames d to d2 while the other has d/f0 open and written. The writer's
    close is ESTALE and its bytes are kept beside (d/f0.conflict-...); the renamed directory is
    whole; a file the writer then makes in d is in S3 as d/late; each mount shows, once its
    attr_ttl passed, what S3 has."""
    one, two = mount_factory().start(), mount_factory().start()
    os.mkdir(os.path.join(one.path, "d"))
    for i in range(3):
        with open(os.path.join(one.path, "d", "f%d" % i), "wb") as f:
            f.write(b"orig%d" % i)
    seen = os.path.join(two.path, "d")
    eventually(lambda: sorted(os.listdir(seen)) == ["f0", "f1", "f2"], what="two sees d")
    fd = os.open(os.path.join(two.path, "d", "f0"), os.O_RDWR)
    os.write(fd, b"TWO!")
    os.rename(os.path.join(one.path, "d"), os.path.join(one.path, "d2"))
    with pytest.raises(OSError) as exc:
        os.close(fd)
    assert exc.value.errno == errno.ESTALE
    with open(os.path.join(two.path, "d", "late"), "wb") as f:
        f.write(b"late")
    keys = s3_keys(boto, bucket)
    conflict = [k for k in keys if k.startswith("d/f0.conflict-")]
    assert len(conflict) == 1 and s3_bytes(boto, bucket, conflict[0]) == b"TWO!0"
    assert [s3_bytes(boto, bucket, "d2/f%d" % i) for i in range(3)] == [b"orig%d" % i for i in range(3)]
    assert s3_bytes(boto, bucket, "d/late") == b"late"
    in_d = sorted(["late", conflict[0][2:]])
    for m in (one, two):  # the renamer too: what it removed is S3's once its TTLs passed
        eventually(lambda m=m: _listed(os.path.join(m.path, "d")) == in_d, what="d in each mount")
        eventually(lambda m=m: _listed(os.path.join(m.path, "d2")) == ["f0", "f1", "f2"], what="d2")


def test_a_directory_renamed_by_one_mount_while_the_other_lists_it_ends_whole_in_both(
    mount_factory, boto, bucket
):
    """One mount renames a directory of 200 files while the other lists it over and over: each
    listing is some of the names (never a name twice, never another's), no error; once attr_ttl
    passed, both show d2 whole and no d."""
    for i in range(200):
        boto.put_object(Bucket=bucket, Key="d/f%03d" % i, Body=b"%d" % i)
    one, two = mount_factory().start(), mount_factory().start()
    names = ["f%03d" % i for i in range(200)]
    assert sorted(os.listdir(os.path.join(two.path, "d"))) == names
    stop = threading.Event()
    seen: list[list[str]] = []
    errors: list[int] = []

    def lister() -> None:
        while not stop.is_set():
            try:
                seen.append(os.listdir(os.path.join(two.path, "d")))
            except OSError as exc:
                errors.append(exc.errno)

    t = threading.Thread(target=lister)
    t.start()
    try:
        os.rename(os.path.join(one.path, "d"), os.path.join(one.path, "d2"))
    finally:
        stop.set()
        t.join(60)
    assert set(errors) <= {errno.ENOENT}, errors
    for listed in seen:
        assert len(listed) == len(set(listed)) and set(listed) <= set(names)
    assert s3_keys(boto, bucket, "d/") == []
    assert [k for k in s3_keys(boto, bucket, "d2/") if k != "d2/"] == ["d2/" + n for n in names]
    for m in (one, two):
        eventually(lambda m=m: "d" not in os.listdir(m.path), what="d gone")
        assert sorted(os.listdir(os.path.join(m.path, "d2"))) == names


@pytest.mark.parametrize("ours", ["chmod", "setxattr", "utime"])
@pytest.mark.parametrize("by", ["mount", "boto3"])
def test_a_metadata_change_of_a_clean_file_keeps_another_clients_change_made_meanwhile(
    mount_factory, boto, bucket, ours, by
):
    """Found by hand (round 34): mount one stat'ed f, mount two's setfattr landed, then one's chmod
    (or setfattr, touch -d) of the clean file replaced all of f's metadata with what one had
    cached: two's attribute was gone, both calls had succeeded, no line said so (a self-copy
    keeps the ETag, so one's x-amz-copy-source-if-match held). Now one's change is applied to
    what S3 holds, and both stand."""
    one = mount_factory("attr_ttl=600").start()  # its view of f stays the one it looked up
    path = os.path.join(one.path, "f")
    with open(path, "wb") as f:
        f.write(b"bytes")
    os.setxattr(path, "user.old", b"o")
    assert os.stat(path).st_mode & 0o777 == 0o644
    if by == "mount":
        two = mount_factory().start()
        os.setxattr(os.path.join(two.path, "f"), "user.theirs", b"t")
    else:
        meta = boto.head_object(Bucket=bucket, Key="f")["Metadata"]
        meta.update(theirs="t")
        boto.copy_object(Bucket=bucket, Key="f", CopySource={"Bucket": bucket, "Key": "f"},
                         Metadata=meta, MetadataDirective="REPLACE")
    change_metadata(path, ours)
    meta = boto.head_object(Bucket=bucket, Key="f")["Metadata"]
    assert meta.get("theirs") == "t" and meta.get("old") == "o", meta
    if ours == "chmod":
        assert int(meta["mode"]) & 0o777 == 0o600
    elif ours == "setxattr":
        assert meta.get("ours") == "u"
    else:
        assert float(meta["mtime"]) == 1_000_000_000
    assert s3_bytes(boto, bucket, "f") == b"bytes"
    assert os.getxattr(path, "user.theirs") == b"t"  # one shows what it stored


def test_a_metadata_change_of_a_directory_keeps_another_mounts_change_made_meanwhile(mount_factory):
    """As for a file (round 34): one's chmod of a directory it had looked up rewrote its holder
    from what one cached, and two's setfattr on it, a moment before, was gone unseen."""
    one = mount_factory("attr_ttl=600").start()
    two = mount_factory().start()
    os.mkdir(os.path.join(one.path, "d"), 0o755)
    assert os.stat(os.path.join(one.path, "d")).st_mode & 0o777 == 0o755
    sync_dir(one.path)  # mkdir's objects go up in the background (fs/newdirs.py): there for two now
    os.setxattr(os.path.join(two.path, "d"), "user.theirs", b"t")
    os.chmod(os.path.join(one.path, "d"), 0o700)
    one_again = mount_factory().start()  # a fresh cache: what S3 holds
    d = os.path.join(one_again.path, "d")
    assert os.getxattr(d, "user.theirs") == b"t"
    assert os.stat(d).st_mode & 0o777 == 0o700


@pytest.mark.parametrize("options", ["", "writeback"])
def test_a_directory_another_mount_removed_is_not_made_again_by_our_times(mount_factory, boto, bucket,
                                                                          options):
    """Found by hand (round 34): mount one made d and files in it, mount two's rm -rf d returned,
    then one's background write of d's times (or of the holder its mkdir left for later) PUT
    d_$folder$ again: d was back in both mounts, empty, for good. Now a directory none of whose
    objects is in S3 any more is not made again by those writes."""
    one = mount_factory(options).start()
    two = mount_factory().start()
    d = os.path.join(one.path, "d")
    os.mkdir(d)
    for i in range(3):
        with open(os.path.join(d, "f%d" % i), "wb") as f:
            f.write(b"x")
    sync_dir(one.path)  # the files in S3 (with -o writeback too); d's times still in memory
    subprocess.run(["rm", "-rf", os.path.join(two.path, "d")], check=True)
    assert s3_keys(boto, bucket, "d") == []
    one.stop()  # its last times written (at the latest)
    assert s3_keys(boto, bucket, "d") == []
    assert "d" not in os.listdir(mount_factory().start().path)


@pytest.mark.parametrize("ours", ["chmod", "setxattr", "utime"])
def test_a_metadata_change_of_a_file_another_client_rewrote_meanwhile_applies_to_theirs(mount_factory, boto,
                                                                                     bucket, ours):
    """Found by hand (round 34): mount one's chmod (setfattr, touch -d) of a file another mount had
    appended to since one's lookup was EIO ("changed in S3 since we read it"): 28 of 75 such calls
    of two mounts while a third appended to the files now and then. A chmod is of the file the name holds: it
    applies to their version now (conditional on it), their bytes and attributes untouched."""
    one = mount_factory("attr_ttl=600").start()  # its view of f stays the one it looked up
    path = os.path.join(one.path, "f")
    with open(path, "wb") as f:
        f.write(b"ours")
    with open(path, "rb") as f:
        assert f.read() == b"ours"  # staged here, clean
    meta = boto.head_object(Bucket=bucket, Key="f")["Metadata"]
    boto.put_object(Bucket=bucket, Key="f", Body=b"their longer bytes", Metadata=dict(meta, theirs="t"))
    change_metadata(path, ours)
    head = boto.head_object(Bucket=bucket, Key="f")
    assert head["Metadata"].get("theirs") == "t", head["Metadata"]
    if ours == "chmod":
        assert int(head["Metadata"]["mode"]) & 0o777 == 0o600
    elif ours == "setxattr":
        assert head["Metadata"].get("ours") == "u"
    else:
        assert float(head["Metadata"]["mtime"]) == 1_000_000_000
    assert s3_bytes(boto, bucket, "f") == b"their longer bytes"
    with open(path, "rb") as f:
        assert f.read() == b"their longer bytes"  # not our staged bytes of the version before
    assert not [k for k in s3_keys(boto, bucket) if ".conflict-" in k]


@pytest.mark.parametrize("options", ["", "writeback"])
def test_a_listing_shows_another_mounts_chmod_of_a_file_we_wrote(mount_factory, boto, bucket, options):
    """Found by hand (round 34): mount one wrote f, mount two chmod'ed and setfattr'ed it a few
    seconds later; one's find -printf %m (and ls -l) showed one's own mode for good, across its
    remounts too (attributes.sqlite): its first listing took the self-copy's Last-Modified for
    that of one's own write, whose date it did not know, and kept one's attributes for it. Now
    a date later than one's write is another version, which a HEAD tells."""
    one = mount_factory(options).start()
    two = mount_factory().start()
    os.mkdir(os.path.join(one.path, "d"))
    with open(os.path.join(one.path, "d", "f"), "wb") as f:
        f.write(b"bytes")
        f.flush()
        os.fsync(f.fileno())  # in S3 (with -o writeback too)
    time.sleep(3.0)  # their change a few seconds after our write: a later Last-Modified
    os.chmod(os.path.join(two.path, "d", "f"), 0o600)
    assert int(boto.head_object(Bucket=bucket, Key="d/f")["Metadata"]["mode"]) & 0o777 == 0o600

    def listed_mode() -> str:
        out = subprocess.run(["find", os.path.join(one.path, "d"), "-type", "f", "-printf", "%m"],
                             capture_output=True, text=True, check=True)
        return out.stdout

    eventually(lambda: listed_mode() == "600", what="one's listing to show two's chmod")
    one.stop()
    one.start()  # its kept attributes too
    assert listed_mode() == "600"


def change_metadata(path: str, how: str) -> None:
    """Our metadata change of ``path``: ``chmod`` 600, ``setxattr`` user.ours, or else a utime."""
    if how == "chmod":
        os.chmod(path, 0o600)
    elif how == "setxattr":
        os.setxattr(path, "user.ours", b"u")
    else:
        os.utime(path, (1_000_000_000, 1_000_000_000))


@pytest.mark.parametrize("how", ["touch", "truncate", "append"])
def test_a_write_open_of_a_file_another_client_removed_within_attr_ttl_makes_it_anew(mount_factory, boto,
                                                                                      bucket, how):
    """Found by hand (round 34): mount one stat'ed f, another client deleted it, then one's
    ``touch f`` said ENOENT ("setting times"), ``echo new >f`` returned 0 and put the bytes in a
    conflict copy (f absent), ``echo new >>f`` said ESTALE; a local disk creates f each time. The
    kernel still held f's entry, so it sent an open, not a create: the open now asks S3 (a write
    is coming) and answers ESTALE; the kernel looks f up again, finds it gone and creates it."""
    one = mount_factory("attr_ttl=600").start()  # its entry for f stays for the whole test
    path = os.path.join(one.path, "f")
    with open(path, "wb") as f:
        f.write(b"ours before")
    os.stat(path)
    boto.delete_object(Bucket=bucket, Key="f")
    command = {"touch": 'touch "$1"', "truncate": 'echo new >"$1"', "append": 'echo new >>"$1"'}[how]
    done = subprocess.run(["bash", "-ec", command, "sh", path], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    want = b"" if how == "touch" else b"new\n"
    with open(path, "rb") as f:
        assert f.read() == want
    sync_dir(one.path)
    assert s3_keys(boto, bucket) == ["f"]  # no conflict copy
    assert s3_bytes(boto, bucket, "f") == want


def test_an_open_of_a_file_another_client_removed_without_o_creat_is_enoent(mount_factory, boto, bucket):
    """As above, without O_CREAT: ENOENT, for an open for writing (it asks S3 always) and for a
    ``cat`` of a name known from a listing only (its open's HEAD finds nothing): not ESTALE."""
    one = mount_factory("attr_ttl=600").start()
    for key in ("w", "r"):
        boto.put_object(Bucket=bucket, Key=key, Body=b"theirs")
    assert sorted(os.listdir(one.path)) == ["r", "w"]
    os.stat(os.path.join(one.path, "w"))
    for key in ("w", "r"):
        boto.delete_object(Bucket=bucket, Key=key)
    with pytest.raises(OSError) as exc:
        os.open(os.path.join(one.path, "w"), os.O_WRONLY)
    assert exc.value.errno == errno.ENOENT
    done = subprocess.run(["cat", os.path.join(one.path, "r")], capture_output=True, text=True)
    assert done.returncode == 1 and "No such file or directory" in done.stderr, done.stderr
    assert s3_keys(boto, bucket) == []


@pytest.mark.parametrize("theirs", [b"first\nsecond line\n", b"FIRST\n"], ids=["longer", "same-size"])
def test_a_stat_while_another_process_holds_the_file_open_shows_another_clients_new_version(
    mount_factory, boto, bucket, theirs
):
    """``tail -f log`` holds the file open; another client puts a new version. A ``stat`` (or
    ``ls -l``) by name after attr_ttl must show S3's size, as it does with no handle open. Found in
    round 36: it showed the held version's for as long as any process had the file open; with the
    default attr_ttl the kernel kept that size, and a ``cat`` right after it (its open follows the
    new version) read the new bytes cut at the old size, silently (6 of 18 bytes here). A new open
    reads the new version, not the kernel's pages of the old one (same size: the kernel keeps them
    at the stat); the holder, which read the old bytes, gets EIO, not other bytes after them (one
    that is its bytes and more, an append, it goes on into: tests/test_ttl.py)."""
    one = mount_factory("attr_ttl=0,dir_ttl=0").start()
    boto.put_object(Bucket=bucket, Key="log", Body=b"first\n")
    path = os.path.join(one.path, "log")
    with open(path, "rb", buffering=0) as held:
        assert held.read() == b"first\n"
        boto.put_object(Bucket=bucket, Key="log", Body=theirs)
        shown = os.stat(path).st_size
        with open(path, "rb") as again:
            fresh = again.read()
        assert fresh == theirs  # an open follows it (close-to-open)
        assert shown == len(fresh)
        if not theirs.startswith(b"first\n"):
            os.posix_fadvise(held.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # the kernel's pages go
            with pytest.raises(OSError) as exc:
                os.pread(held.fileno(), 100, 0)
            assert exc.value.errno == errno.EIO


@pytest.mark.parametrize("ours", ["chmod", "setxattr", "utime", "touch"])
def test_a_metadata_change_of_a_name_that_became_a_directory_goes_to_the_directory(mount_factory, boto,
                                                                                  bucket, ours):
    """Found by hand (round 34): mount one held ``a`` as a file (attr_ttl), another client made
    ``a/x``, so the directory ``a`` shadows the file (README "Files and directories"); one's chmod
    (setfattr, touch) of ``a`` changed the hidden file, with no word. Now S3 is asked beside the
    change's HEAD (a LIST): ESTALE, the kernel looks ``a`` up again and the change goes to the
    directory; the hidden file is untouched."""
    one = mount_factory("attr_ttl=600").start()
    path = os.path.join(one.path, "a")
    with open(path, "wb") as f:
        f.write(b"file a")
    assert not os.path.isdir(path)
    before = boto.head_object(Bucket=bucket, Key="a")
    boto.put_object(Bucket=bucket, Key="a/x", Body=b"x")
    if ours == "touch":
        subprocess.run(["touch", "-d", "@1000000000", path], check=True)
    else:
        change_metadata(path, ours)
    after = boto.head_object(Bucket=bucket, Key="a")
    assert (after["ETag"], after["Metadata"]) == (before["ETag"], before["Metadata"])
    fresh = mount_factory().start()  # what S3 holds
    d = os.path.join(fresh.path, "a")
    assert os.path.isdir(d) and os.path.isdir(path)
    if ours == "chmod":
        assert os.stat(d).st_mode & 0o777 == 0o600
    elif ours == "setxattr":
        assert os.getxattr(d, "user.ours") == b"u"
    else:
        assert os.stat(d).st_mtime == 1_000_000_000
    assert os.listdir(d) == ["x"]


def test_a_rename_of_a_file_another_client_replaced_by_a_directory_within_attr_ttl_moves_the_directory(
    mount_factory, boto, bucket
):
    """Found by hand (round 36): mount one held ``a`` as a file (attr_ttl), another client
    deleted it and put ``a/x``; one's ``mv a b`` said ENOENT and ``ls`` showed the file ``a``
    still. A local disk (or NFS) renames what the name is now: the directory. The rename's
    404 now forgets ``a`` and answers ESTALE; the kernel looks ``a`` up again, finds the
    directory and renames it (no request more when the file is there)."""
    one = mount_factory("attr_ttl=600,dir_ttl=600").start()
    path = os.path.join(one.path, "a")
    with open(path, "wb") as f:
        f.write(b"file a")
    assert not os.path.isdir(path) and os.listdir(one.path) == ["a"]
    boto.delete_object(Bucket=bucket, Key="a")
    boto.put_object(Bucket=bucket, Key="a/x", Body=b"x")
    os.rename(path, os.path.join(one.path, "b"))
    assert os.path.isdir(os.path.join(one.path, "b")) and os.listdir(os.path.join(one.path, "b")) == ["x"]
    assert os.listdir(one.path) == ["b"]
    assert [k for k in s3_keys(boto, bucket) if not k.endswith("/")] == ["b/x"]
    assert s3_bytes(boto, bucket, "b/x") == b"x"


def test_a_symlink_lock_taken_by_another_mount_since_our_listing_is_eexist(mount_factory, boto, bucket):
    """Found by hand (round 36): two mounts listed a directory (dir_ttl: the name is absent to
    both), one's ``ln -s one lock`` took the lock, then two's ``ln -s two lock`` succeeded too
    and replaced it: an ``ln -s`` lock held by no one. The link's PUT carries ``If-None-Match:
    *`` (no request more): two's is EEXIST, as symlink(2) says of a name taken, and one's stays."""
    one = mount_factory("attr_ttl=600,dir_ttl=600").start()
    two = mount_factory("attr_ttl=600,dir_ttl=600").start()
    assert os.listdir(one.path) == [] and os.listdir(two.path) == []
    assert not os.path.lexists(os.path.join(two.path, "lock"))
    os.symlink("one", os.path.join(one.path, "lock"))
    with pytest.raises(OSError) as exc:
        os.symlink("two", os.path.join(two.path, "lock"))
    assert exc.value.errno == errno.EEXIST
    assert s3_bytes(boto, bucket, "lock") == b"one"
    assert os.readlink(os.path.join(one.path, "lock")) == "one"
    assert os.readlink(os.path.join(two.path, "lock")) == "one"  # two asks S3 again


@pytest.mark.parametrize("call", ["rename_over", "unlink"])
def test_a_file_another_client_replaced_by_a_directory_is_not_removed_nor_renamed_over_in_silence(
    mount_factory, boto, bucket, call
):
    """Found in round 36's hunt: mount one held ``a`` as a file (attr_ttl), another client
    deleted it and put ``a/x``. One's ``mv b a`` returned 0 and put b's bytes at key ``a``,
    hidden by the directory ``a/`` (every other S3 tool sees both); its ``rm a`` returned 0 and
    S3 was unchanged. A local disk says EISDIR to both. A cached answer older than
    namespace.RECHECK_AFTER is checked (one LIST of ``a/``): ESTALE, the kernel looks ``a`` up
    again, finds the directory and says EISDIR itself. Nothing changes in S3."""
    one = mount_factory("attr_ttl=600,dir_ttl=600").start()
    a, b = os.path.join(one.path, "a"), os.path.join(one.path, "b")
    for path, body in ((a, b"file a"), (b, b"file b")):
        with open(path, "wb") as f:
            f.write(body)
    assert sorted(os.listdir(one.path)) == ["a", "b"] and os.path.isfile(a)
    boto.delete_object(Bucket=bucket, Key="a")
    boto.put_object(Bucket=bucket, Key="a/x", Body=b"x")
    time.sleep(1.5)  # older than namespace.RECHECK_AFTER: the age at which the answer is checked
    with pytest.raises(IsADirectoryError):
        if call == "rename_over":
            os.rename(b, a)
        else:
            os.unlink(a)
    sync_dir(one.path)
    assert [k for k in s3_keys(boto, bucket) if not k.endswith("/") and "$folder$" not in k] == ["a/x", "b"]
    assert s3_bytes(boto, bucket, "b") == b"file b"
    assert os.path.isdir(a) and os.listdir(a) == ["x"]


@pytest.mark.xfail(
    strict=True,
    raises=FileExistsError,
    reason="the kernel answers EEXIST itself from the entry our lookup gave: its LOOKUP_EXCL "
    "revalidation reaches us as a getattr, which a stat also is; mkdir, create and symlink never come "
    "(README Limitations)",
)
@pytest.mark.parametrize("call", ["mkdir", "o_excl", "symlink"])
def test_a_create_of_a_name_another_client_deleted_within_attr_ttl_makes_it(
    mount_factory, boto, bucket, call
):
    """Round 36's hunt: mount one holds ``e`` (attr_ttl), another client deletes it; within
    attr_ttl ``mkdir e``, ``open(e, O_CREAT|O_EXCL)`` and ``ln -s t e`` say EEXIST, as the name is
    free. -o debug shows no mkdir, create or symlink call reaching the mount: the kernel answers
    from the lookup's cached answer. Tracked here: a fix (a lookup that knows it is an exclusive
    create's) makes this pass."""
    one = mount_factory("attr_ttl=600,dir_ttl=600").start()
    path = os.path.join(one.path, "e")
    with open(path, "wb") as f:
        f.write(b"e")
    assert os.path.isfile(path)
    boto.delete_object(Bucket=bucket, Key="e")
    if call == "mkdir":
        os.mkdir(path)
        assert os.path.isdir(path)
    elif call == "o_excl":
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    else:
        os.symlink("t", path)
    sync_dir(one.path)
    assert [k for k in s3_keys(boto, bucket) if k.startswith("e")]


@pytest.mark.parametrize("by", ["mount", "boto3"])
def test_an_rmdir_after_another_client_put_a_file_in_the_emptied_directory_is_enotempty(mount_factory, boto,
                                                                                        bucket, by):
    """Found by a two-mount hunt (round 34): mount one's rm -rf r returned 0 while mount two wrote
    into r/sub, and S3 kept two's files with r/sub's marker and holder (its mode) deleted. rmdir's
    shortcut (a listing a moment ago, every name in it removed since) never asked S3 again. Now
    the directory's objects are deleted, then one LIST: another client's file makes them again,
    with the mode, and rmdir says ENOTEMPTY, as a local disk with another process in it does."""
    # dir_ttl long: one's rmdir takes its shortcut (its listing fresh) however slow the machine
    one = mount_factory("dir_ttl=60").start()
    two = mount_factory().start() if by == "mount" else None
    sub = os.path.join(one.path, "r", "sub")
    os.makedirs(sub)
    os.chmod(sub, 0o750)
    for i in range(3):
        with open(os.path.join(sub, "f%d" % i), "wb") as f:
            f.write(b"ours")
    for name in os.listdir(sub):  # rm -r: its readdir, its unlinks
        os.unlink(os.path.join(sub, name))
    if by == "mount":
        with open(os.path.join(two.path, "r", "sub", "theirs"), "wb") as f:
            f.write(b"theirs")
    else:
        boto.put_object(Bucket=bucket, Key="r/sub/theirs", Body=b"theirs")
    with pytest.raises(OSError) as exc:
        os.rmdir(sub)
    assert exc.value.errno == errno.ENOTEMPTY
    assert "put by another client since this mount listed the directory" in read_log(one)
    assert s3_bytes(boto, bucket, "r/sub/theirs") == b"theirs"
    fresh = mount_factory().start()  # what S3 holds: the directory with its mode, their file
    assert os.stat(os.path.join(fresh.path, "r", "sub")).st_mode & 0o777 == 0o750
    assert os.listdir(os.path.join(fresh.path, "r", "sub")) == ["theirs"]
    assert os.listdir(sub) == ["theirs"]  # one lists it again
    subprocess.run(["rm", "-rf", os.path.join(one.path, "r")], check=True)
    assert s3_keys(boto, bucket, "r") == []


def test_a_rename_of_a_directory_another_mount_renamed_meanwhile_is_enoent_and_leaves_nothing(
    mount_factory, boto, bucket
):
    """Found by a two-mount hunt (round 34): one's mv rr rrA while two's mv rr rrB: two won,
    one's mv failed, and left rrA/ (and rrA/rr/, mv's retry) empty in S3. Here two's rename
    is over before one's begins (one's view of rr is a moment old): one's rename says ENOENT
    and makes nothing."""
    for i in range(20):
        boto.put_object(Bucket=bucket, Key="rr/f%02d" % i, Body=b"%d" % i)
    one = mount_factory("attr_ttl=600").start()
    two = mount_factory().start()
    assert len(os.listdir(os.path.join(one.path, "rr"))) == 20
    os.rename(os.path.join(two.path, "rr"), os.path.join(two.path, "rrB"))
    with pytest.raises(OSError) as exc:
        os.rename(os.path.join(one.path, "rr"), os.path.join(one.path, "rrA"))
    assert exc.value.errno == errno.ENOENT
    assert s3_keys(boto, bucket, "rrA") == []
    assert [k for k in s3_keys(boto, bucket, "rrB/") if k != "rrB/"] == ["rrB/f%02d" % i for i in range(20)]
    assert "rrA" not in os.listdir(one.path)


def test_two_mounts_renaming_one_directory_at_once_leave_each_file_under_one_name_and_no_empty_one(
    mount_factory, boto, bucket
):
    """Found by a two-mount hunt (round 34): one's mv rr rrA and two's mv rr rrB at once. Each
    file ends under one of the names; a name that got no file is not left as an empty directory;
    a mount whose rename lost says so in its log."""
    names = ["f%03d" % i for i in range(100)]
    for n in names:
        boto.put_object(Bucket=bucket, Key="rr/" + n, Body=n.encode())
    one, two = mount_factory().start(), mount_factory().start()
    for m in (one, two):
        assert len(os.listdir(os.path.join(m.path, "rr"))) == 100
    outcome: dict[str, object] = {}

    def move(m, to: str) -> None:
        try:
            os.rename(os.path.join(m.path, "rr"), os.path.join(m.path, to))
            outcome[to] = "ok"
        except OSError as exc:
            outcome[to] = exc.errno

    threads = [threading.Thread(target=move, args=(m, to)) for m, to in ((one, "rrA"), (two, "rrB"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert set(outcome.values()) <= {"ok", errno.ENOENT}, outcome  # both lose when each moved some
    keys = s3_keys(boto, bucket)
    files = sorted(k.split("/", 1)[1] for k in keys if not k.endswith("/") and "$folder$" not in k)
    assert files == names  # each under one name, once
    assert not [k for k in keys if k.startswith("rr/") or k.startswith("rr_")], keys
    for top in ("rrA", "rrB"):
        has_files = any(k.startswith(top + "/") and not k.endswith("/") for k in keys)
        made = [k for k in keys if k.startswith(top + "/") or k.startswith(top + "_")]
        assert has_files or not made, (top, made)
    for to, result in outcome.items():
        if result != "ok":
            assert "another client moved or removed" in read_log(one if to == "rrA" else two)

# -- on AWS, another mount's metadata change of a file uploaded in parts moves its ETag --------

@pytest.fixture
def moto_mounts(mount_factory, moto_server, bucket, tmp_path):
    """(make a mount, boto3 client) on moto, which answers as AWS: a CopyObject of an object
    uploaded in parts (ETag 'MD5-N') gets the MD5 of its bytes as ETag; an upload's
    x-amz-checksum-crc32 is checked and kept (s3rig.moto_checks_checksums), so mounts upload
    with CRC32s, in parts FULL_OBJECT, and a copy keeps the object's CRC32 of all its bytes."""
    import s3rig

    client = s3rig.make_boto_client(moto_server.endpoint, moto_server.access_key, moto_server.secret_key)
    client.create_bucket(Bucket=bucket)
    config = str(s3rig.write_s3yaml(tmp_path / "moto.yaml", {
        "access_key_id": moto_server.access_key, "secret_access_key": moto_server.secret_key,
        "default_bucket": bucket, "endpoint": moto_server.endpoint, "tls": False}))
    with s3rig.moto_checks_checksums():
        yield (lambda options="": mount_factory(options, config=config)), client
    s3rig.empty_and_delete_bucket(client, bucket)


def test_on_aws_a_read_goes_on_after_another_mounts_chmod_of_a_file_uploaded_in_parts(moto_mounts, bucket):
    make, client = moto_mounts
    one, two = make().start(), make().start()
    data = os.urandom(40 * 1024 * 1024 + 5)
    with open(os.path.join(two.path, "f"), "wb") as f:
        f.write(data)
    assert client.head_object(Bucket=bucket, Key="f")["ETag"].endswith('-6"')
    try:
        with open(os.path.join(one.path, "f"), "rb") as f:
            assert f.read(1024 * 1024) == data[: 1024 * 1024]
            os.chmod(os.path.join(two.path, "f"), 0o600)
            f.seek(30 * 1024 * 1024)
            assert f.read() == data[30 * 1024 * 1024:]  # was OSError EIO
        assert "with the same bytes" in read_log(one)
    finally:
        assert one.stop() == 0
        assert two.stop() == 0
    head = client.head_object(Bucket=bucket, Key="f", ChecksumMode="ENABLED")
    assert not head["ETag"].endswith('-6"') and head["ChecksumCRC32"]  # a copy's ETag, the CRC32 of all


def test_on_aws_a_read_goes_on_through_its_check_after_another_mounts_chmod(moto_mounts, bucket):
    """The same, read from byte 0 to the end: the stream's check of the whole object goes on in
    the new version's bytes (the same CRC32 of all its bytes), and passes."""
    make, client = moto_mounts
    one, two = make("debug").start(), make().start()
    data = os.urandom(40 * 1024 * 1024 + 5)
    with open(os.path.join(two.path, "f"), "wb") as f:
        f.write(data)
    try:
        with open(os.path.join(one.path, "f"), "rb") as f:
            got = f.read(1024 * 1024)
            os.chmod(os.path.join(two.path, "f"), 0o600)
            while chunk := f.read(1024 * 1024):
                got += chunk
        assert got == data
        log = read_log(one)
        assert "with the same bytes" in log and "read of f verified (CRC32:" in log
    finally:
        assert one.stop() == 0
        assert two.stop() == 0


def test_on_aws_a_read_fails_when_another_mount_wrote_other_bytes_of_the_same_size(moto_mounts, bucket):
    """Other bytes under a new ETag (same size): EIO, as before; never the new version's bytes."""
    make, client = moto_mounts
    one, two = make().start(), make().start()
    data, other = os.urandom(40 * 1024 * 1024 + 5), os.urandom(40 * 1024 * 1024 + 5)
    with open(os.path.join(two.path, "f"), "wb") as f:
        f.write(data)
    try:
        with open(os.path.join(one.path, "f"), "rb") as f:
            assert f.read(1024 * 1024) == data[: 1024 * 1024]
            with open(os.path.join(two.path, "f"), "r+b") as g:
                g.write(other)
            f.seek(30 * 1024 * 1024)
            with pytest.raises(OSError) as exc:
                f.read()
            assert exc.value.errno == errno.EIO
        assert "other bytes" in read_log(one)
    finally:
        assert one.stop() == 0
        assert two.stop() == 0


def test_on_aws_a_read_fails_when_another_clients_copy_changed_the_checksum(moto_mounts, bucket):
    """Another client's REPLACE copy that asks for another checksum (SHA256): the bytes are the
    same, but nothing S3 says tells so: EIO, as before, never a guess."""
    make, client = moto_mounts
    one, two = make().start(), make().start()
    data = os.urandom(40 * 1024 * 1024 + 5)
    with open(os.path.join(two.path, "f"), "wb") as f:
        f.write(data)
    try:
        with open(os.path.join(one.path, "f"), "rb") as f:
            assert f.read(1024 * 1024) == data[: 1024 * 1024]
            client.copy_object(Bucket=bucket, Key="f", CopySource={"Bucket": bucket, "Key": "f"},
                               MetadataDirective="REPLACE", Metadata={"owner": "them"},
                               ChecksumAlgorithm="SHA256")
            f.seek(30 * 1024 * 1024)
            with pytest.raises(OSError) as exc:
                f.read()
            assert exc.value.errno == errno.EIO
    finally:
        assert one.stop() == 0
        assert two.stop() == 0


@pytest.mark.parametrize("written", [
    pytest.param(False, id="write-after-chmod"),
    pytest.param(True, id="write-before-chmod"),
])
def test_on_aws_our_write_survives_another_mounts_chmod_of_a_file_uploaded_in_parts(
    moto_mounts, bucket, written
):
    """The chmod's self-copy gives the object a new ETag on AWS. A write that reaches the mount after
    it (Python's buffered f.write goes at the close) follows that version (round 35: it was EIO);
    one written before it is uploaded over it, the chmod merged (the same CRC32 of all the bytes:
    it was a conflict copy). Our bytes and their mode both stand."""
    make, client = moto_mounts
    one, two = make("writeback").start(), make().start()
    data = os.urandom(20 * 1024 * 1024 + 5)
    with open(os.path.join(one.path, "f"), "wb") as f:
        f.write(data)
    subprocess.run(["s3fs-mount", "sync", one.path], check=True, capture_output=True)
    assert client.head_object(Bucket=bucket, Key="f")["ETag"].endswith('-3"')
    with open(os.path.join(one.path, "f"), "ab") as f:
        f.write(b"more")
        if written:
            f.flush()  # write(2) now, before the chmod
        os.chmod(os.path.join(two.path, "f"), 0o600)
    assert one.stop() == 0
    assert two.stop() == 0
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", []))
    assert keys == ["f"]  # was ['f', 'f.conflict-T']
    head = client.head_object(Bucket=bucket, Key="f")
    assert head["ContentLength"] == len(data) + 4 and head["Metadata"]["mode"] == str(0o100600)
    assert client.get_object(Bucket=bucket, Key="f")["Body"].read() == data + b"more"


@pytest.mark.parametrize("by", ["another mount's chmod", "other bytes", "another checksum"])
def test_on_aws_an_open_file_written_again_after_another_clients_change(moto_mounts, bucket, by):
    """A file written in parts, fsynced and written on while another client changes it: its
    chmod (a copy: a new ETag, the same CRC32 of all the bytes) is merged into our upload, as on
    SeaweedFS; other bytes of the same size (a PUT), or the same bytes under another checksum (a
    REPLACE copy asking for SHA256: nothing S3 says tells they are the same), send ours to a
    conflict copy, as before, and theirs stays."""
    make, client = moto_mounts
    one = make("writeback").start()
    data = os.urandom(20 * 1024 * 1024 + 5)
    theirs = os.urandom(len(data)) if by == "other bytes" else data
    with open(os.path.join(one.path, "f"), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
        assert client.head_object(Bucket=bucket, Key="f")["ETag"].endswith('-3"')
        if by == "other bytes":
            client.put_object(Bucket=bucket, Key="f", Body=theirs, ChecksumAlgorithm="CRC32")
        elif by == "another checksum":
            client.copy_object(Bucket=bucket, Key="f", CopySource={"Bucket": bucket, "Key": "f"},
                               MetadataDirective="REPLACE", Metadata={"owner": "them"},
                               ChecksumAlgorithm="SHA256")
        else:
            two = make().start()
            os.chmod(os.path.join(two.path, "f"), 0o600)
            assert two.stop() == 0
        f.write(b"more")
    assert one.stop() == 0
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", []))
    if by == "another mount's chmod":
        assert keys == ["f"]
        assert "with the same bytes" in read_log(one)
        head = client.head_object(Bucket=bucket, Key="f")
        assert head["Metadata"]["mode"] == str(0o100600)
        assert client.get_object(Bucket=bucket, Key="f")["Body"].read() == data + b"more"
        return
    assert len(keys) == 2 and keys[0] == "f" and keys[1].startswith("f.conflict-"), keys
    assert client.get_object(Bucket=bucket, Key="f")["Body"].read() == theirs
    assert client.get_object(Bucket=bucket, Key=keys[1])["Body"].read() == data + b"more"


# -- names another client writes while this mount renames (round 38) ------------------------------

def _deletes_of(bucket: str, key: str) -> Callable[[str, str], bool]:
    """(method, target) -> whether it is a DELETE of ``key``, or a DeleteObjects."""
    return lambda m, t: _is_request_for(m, t, "DELETE", bucket, key) or is_delete_objects(m, t)


def _is_request_for(method: str, target: str, wanted: str, bucket: str, key: str) -> bool:
    return method == wanted and target.split("?")[0] == "/%s/%s" % (bucket, key)


def _hold_until_told(proxy, held: Callable[[str, str], bool]) -> Callable[[], None]:
    """Hold every request ``held`` is true of until the returned call (a request through
    ``proxy`` that frees them): what another client does meanwhile comes between two steps of a
    rename. Returns the call."""
    import urllib.error
    import urllib.request

    proxy.hold_until(lambda m, t: "go" if held(m, t) else None,
                     lambda m, t: "go" if t.startswith("/s3fs-test-go") else None, 120)

    def free() -> None:
        try:
            urllib.request.urlopen(proxy.url + "/s3fs-test-go", timeout=30).close()
        except urllib.error.HTTPError:
            pass  # the server's answer does not matter: the request came

    return free


def _heard(proxy, held: Callable[[str, str], bool]) -> bool:
    return any(held(m, t) for m, t, _ in list(proxy.heard))


def test_a_rename_keeps_the_version_another_client_put_at_the_old_name_after_the_copy(
    mount_factory, tmp_path, s3config, faultproxy, boto, bucket
):
    """Found by the round-38 hunt: a file's rename (no RenameObject) is a copy, then a delete of
    the old key; the delete named no version, so a version another client put at the old name
    between the two was deleted, never copied: lost. As on a local disk (their write after our
    rename made the name anew), it stays: the rename moved the version it copied."""
    boto.put_object(Bucket=bucket, Key="a", Body=b"ours")
    mount = proxied(mount_factory, tmp_path, s3config, faultproxy, options="server_rename=off").start()
    a, b = os.path.join(mount.path, "a"), os.path.join(mount.path, "b")
    with open(a, "rb") as f:
        assert f.read() == b"ours"
    free = _hold_until_told(faultproxy, _deletes_of(bucket, "a"))
    mover = threading.Thread(target=os.rename, args=(a, b))
    mover.start()
    eventually(lambda: _heard(faultproxy, _deletes_of(bucket, "a")), 60, "the rename's delete")
    boto.put_object(Bucket=bucket, Key="a", Body=b"theirs")  # straight at the server
    free()
    mover.join(60)
    assert not mover.is_alive()
    assert s3_bytes(boto, bucket, "b") == b"ours"
    assert s3_bytes(boto, bucket, "a") == b"theirs"
    eventually(lambda: sorted(os.listdir(mount.path)) == ["a", "b"], what="both names shown")
    with open(a, "rb") as f:
        assert f.read() == b"theirs"


def test_a_directory_rename_keeps_the_versions_another_client_put_meanwhile(
    mount_factory, tmp_path, s3config, faultproxy, boto, bucket
):
    """Found by the round-38 hunt: mv d e copies d's files, then deletes d's keys in one
    DeleteObjects naming no version: a file another client rewrote in d between the copies and
    that delete was deleted, never copied: lost. Now each delete is of the version copied; theirs
    stays in d (as their write after the rename would make it on a local disk), and e is whole."""
    names = ["f%d" % i for i in range(5)] + ["sub/g"]
    for n in names:
        boto.put_object(Bucket=bucket, Key="d/" + n, Body=b"ours " + n.encode())
    mount = proxied(mount_factory, tmp_path, s3config, faultproxy, options="server_rename=off").start()
    assert _listed(os.path.join(mount.path, "d")) == ["f0", "f1", "f2", "f3", "f4", "sub"]
    free = _hold_until_told(faultproxy, _deletes_of(bucket, "d/f2"))
    d, e = os.path.join(mount.path, "d"), os.path.join(mount.path, "e")
    mover = threading.Thread(target=os.rename, args=(d, e))
    mover.start()
    eventually(lambda: _heard(faultproxy, _deletes_of(bucket, "d/f2")), 60, "the rename's deletes")
    boto.put_object(Bucket=bucket, Key="d/f2", Body=b"theirs")
    boto.put_object(Bucket=bucket, Key="d/sub/g", Body=b"theirs too")
    free()
    mover.join(60)
    assert not mover.is_alive()
    for n in names:
        assert s3_bytes(boto, bucket, "e/" + n) == b"ours " + n.encode(), n
    assert s3_bytes(boto, bucket, "d/f2") == b"theirs"
    assert s3_bytes(boto, bucket, "d/sub/g") == b"theirs too"
    assert [k for k in s3_keys(boto, bucket, "d/") if not k.endswith("/")] == ["d/f2", "d/sub/g"]
    eventually(lambda: _listed(d) == ["f2", "sub"], what="d shows theirs")
    assert _listed(e) == ["f0", "f1", "f2", "f3", "f4", "sub"]


def test_a_directory_rename_moves_the_version_another_client_put_before_its_copy_once(
    mount_factory, tmp_path, s3config, faultproxy, boto, bucket
):
    """The other side of the test above: a file rewritten between the rename's listing and its
    copy. The copy is of the version listed (412), then of theirs (one HEAD), and the delete of
    theirs: it is moved, as their write before our rename would be on a local disk; not under
    both names."""
    for i in range(3):
        boto.put_object(Bucket=bucket, Key="d/f%d" % i, Body=b"ours %d" % i)
    mount = proxied(mount_factory, tmp_path, s3config, faultproxy, options="server_rename=off").start()
    d, e = os.path.join(mount.path, "d"), os.path.join(mount.path, "e")
    assert _listed(d) == ["f0", "f1", "f2"]

    def copy_f1(method: str, target: str) -> bool:
        return _is_request_for(method, target, "PUT", bucket, "e/f1")

    free = _hold_until_told(faultproxy, copy_f1)
    mover = threading.Thread(target=os.rename, args=(d, e))
    mover.start()
    eventually(lambda: _heard(faultproxy, copy_f1), 60, "the rename's copy")
    boto.put_object(Bucket=bucket, Key="d/f1", Body=b"theirs")
    free()
    mover.join(60)
    assert not mover.is_alive()
    assert [s3_bytes(boto, bucket, "e/f%d" % i) for i in range(3)] == [b"ours 0", b"theirs", b"ours 2"]
    assert [k for k in s3_keys(boto, bucket, "d/") if not k.endswith("/")] == []
    assert _listed(e) == ["f0", "f1", "f2"]


def test_a_directory_rename_onto_an_empty_one_another_client_put_a_file_in_is_enotempty(
    mount_factory, boto, bucket
):
    """Found by the round-38 hunt: mv d e, where this mount made e (or listed it empty) a moment
    ago and another client put e/x since: the rename took e's emptiness from that listing and
    copied d/x over their e/x: lost, and rename said 0. A local disk says ENOTEMPTY; so does the
    mount now (S3 is asked whether e holds a key before anything is copied)."""
    mount = mount_factory("dir_ttl=60").start()  # the listing of e stays fresh however slow the machine
    d, e = os.path.join(mount.path, "d"), os.path.join(mount.path, "e")
    os.mkdir(d)
    os.mkdir(e)
    with open(os.path.join(d, "x"), "wb") as f:
        f.write(b"ours")
    assert os.listdir(e) == []
    boto.put_object(Bucket=bucket, Key="e/x", Body=b"theirs")
    with pytest.raises(OSError) as exc:
        os.rename(d, e)
    assert exc.value.errno == errno.ENOTEMPTY
    assert s3_bytes(boto, bucket, "e/x") == b"theirs"
    assert s3_bytes(boto, bucket, "d/x") == b"ours"
    assert os.listdir(e) == ["x"]
