"""The filesystem against a model of it, on the fake store: thousands of random steps, fast.

Each step is one FUSE call made on :class:`S3Operations` directly (no kernel, no
server), its result (bytes, errno) checked against a plain in-memory model of
the files; after every step what the filesystem shows (listings, types, modes,
sizes, each open handle's fstat) is checked against the model too, and every
fourth step all of it (each file's bytes and extended attributes, what each
open handle reads, that each name the model lacks is ENOENT). Now and then
everything is flushed and what reached the store (bodies and ``x-amz-meta-*``)
is checked, and the mount crashes and a new one recovers from its cache
directory: nothing dirty may be lost.

Time runs on a fake clock, moved on between steps, so attribute and listing
TTLs expire as they would over minutes. Another client's writes (straight to
the store) must show once the TTLs have passed.

Libfuse's part is played by the driver: an unlinked file that is still open
(or a rename's target that is) is first renamed to ``.fuse_hidden...`` and
unlinked at its last release, as libfuse does without ``hard_remove``.

The seeds are fixed; a failure names its seed and the last steps. More steps
(locally): ``S3FS_MODEL_STEPS=20000 bash tests/run.sh tests/test_fs_model.py``.
"""

from __future__ import annotations

import errno
import os
import random
import stat
from collections import deque
from dataclasses import dataclass, field

import pytest
from fakeclock import FakeClock
from fakestore import FakeStore

import s3fs_mount.fs.operations as operations_module
from s3fs_mount.fs import attrs as A
from s3fs_mount.fs.fuselib import FuseOSError
from s3fs_mount.fs.operations import XATTR_CREATE, XATTR_REPLACE, S3Operations
from s3fs_mount.fs.options import MountOptions
from s3fs_mount.s3.bucket import Bucket

SEEDS = range(8)
STEPS = int(os.environ.get("S3FS_MODEL_STEPS", "1300"))  # per seed: 8 x 1300 = 10,400 in CI
FULL_CHECK_EVERY = 4  # steps between checks of every file's bytes and xattrs (names, sizes: every step)
FLUSH_EVERY = 97  # steps between checks of what reached the store
CRASH_EVERY = 331  # steps between crashes (and recoveries)

DIRS = ["/d", "/e"]
FILE_NAMES = ["a", "b", "c"]
FILES = [parent.rstrip("/") + "/" + name for parent in ["/"] + DIRS for name in FILE_NAMES]
XATTRS = ["user.color", "user.n"]


@pytest.fixture(autouse=True)
def _context(monkeypatch):
    monkeypatch.setattr(operations_module, "fuse_get_context", lambda: (1000, 1000, 1))


@dataclass
class Inode:
    """A file or symlink of the model: what reads, stat and xattr calls must show."""

    data: bytearray
    mode: int  # the whole st_mode
    xattrs: dict[str, bytes] = field(default_factory=dict)
    mtime: int | None = None  # seconds, once utimens set it (until the next change of content)
    handles: set[int] = field(default_factory=set)
    hidden: str | None = None  # its .fuse_hidden name, once unlinked while open


@dataclass
class Open:
    inode: Inode
    readable: bool
    writable: bool
    append: bool


class Driver:
    """One mount on one store and clock, driven by one seeded random source, checked against the model."""

    def __init__(self, tmp_path, seed: int) -> None:
        self.tmp_path = tmp_path
        self.rnd = random.Random(seed)
        self.store = FakeStore()
        self.clock = FakeClock()
        self.files: dict[str, Inode] = {}  # path -> file or symlink
        self.dirs: set[str] = {"/"}
        self.dir_xattrs: dict[str, dict[str, bytes]] = {}
        self.handles: dict[int, Open] = {}
        self.hidden_count = 0
        self.log: deque[str] = deque(maxlen=25)
        self.ops = self.mount()

    # -- the mount -----------------------------------------------------------------------

    def mount(self) -> S3Operations:
        opts = MountOptions(cache_dir=str(self.tmp_path / "cache"), attr_ttl=1.0, dir_ttl=1.0)
        ops = S3Operations(Bucket(self.store, "bucket"), "", opts, clock=self.clock)
        ops.uploader.configure_checks(opts.conflict_check)
        ops.namespace.configure_directories()
        ops.namespace.load_root()
        return ops

    def crash(self) -> None:
        """The mount dies between two calls; a new one recovers from the same cache directory."""
        self.ops.prefetcher.close()
        self.ops.changes.deletes.halt()  # a dead mount sends no more deletes; they stay recorded
        self.ops.staging.close()  # what the kernel does with the flock of a dead process
        self.handles.clear()
        for path in [p for p, inode in self.files.items() if inode.hidden]:
            del self.files[path]
        for inode in self.files.values():
            inode.handles.clear()
        self.ops = self.mount()
        assert self.ops.recover() == []
        self.check_store()

    # -- calls and their errnos -------------------------------------------------------------

    def call(self, expect: int, name: str, *args):
        """``ops.name(*args)``; it must fail with ``expect`` (or succeed, for 0)."""
        try:
            result = getattr(self.ops, name)(*args)
            if name == "readdir":
                result = list(result)
        except FuseOSError as exc:
            assert exc.errno == expect, "%s%r: %s, expected %s" % (
                name, args, errno.errorcode.get(exc.errno), errno.errorcode.get(expect, "success"))
            return None
        assert expect == 0, "%s%r succeeded, expected %s" % (name, args, errno.errorcode[expect])
        return result

    # -- the model's view ---------------------------------------------------------------------

    def parent(self, path: str) -> str:
        return os.path.dirname(path) or "/"

    def exists(self, path: str) -> bool:
        return path in self.files or path in self.dirs

    def children(self, d: str) -> list[str]:
        prefix = d.rstrip("/") + "/"
        paths = [p for p in list(self.files) + list(self.dirs) if p != "/" and p.startswith(prefix)]
        names = [p[len(prefix):] for p in paths]
        return sorted(n for n in names if "/" not in n and not n.startswith(".fuse_hidden"))

    def live_files(self) -> list[str]:
        return [p for p, i in self.files.items() if not i.hidden]

    def regular(self) -> list[str]:
        return [p for p in self.live_files() if stat.S_ISREG(self.files[p].mode)]

    def data(self, size: int) -> bytes:
        return self.rnd.randbytes(size)

    # -- steps --------------------------------------------------------------------------------

    def step(self) -> None:
        self.clock.advance(self.rnd.choice([0.0, 0.0, 0.0, 0.4, 1.5, 40.0]))
        if self.handles and self.rnd.random() < 0.45:
            self.handle_step()
        else:
            getattr(self, "do_" + self.rnd.choice(PATH_STEPS))()

    def handle_step(self) -> None:
        fh = self.rnd.choice(sorted(self.handles))
        h = self.handles[fh]
        kind = self.rnd.choice(["write", "write", "read", "ftruncate", "flush", "fsync", "release", "fstat"])
        cur = h.inode.data
        if kind == "write":
            offset = self.rnd.choice([0, len(cur), self.rnd.randrange(0, 4000)])
            data = self.data(self.rnd.choice([1, 100, 1000, 3000]))  # the kernel sends no empty write
            self.log.append("write fh=%d off=%d len=%d" % (fh, offset, len(data)))
            if not h.writable:
                self.call(errno.EBADF, "write", None, data, offset, fh)
                return
            assert self.call(0, "write", None, data, offset, fh) == len(data)
            if h.append:
                offset = len(cur)
            if offset > len(cur):
                cur.extend(bytes(offset - len(cur)))
            cur[offset:offset + len(data)] = data
            h.inode.mtime = None
        elif kind == "read" and h.readable:
            offset, size = self.rnd.choice([(0, len(cur) + 10), (self.rnd.randrange(0, 4000), 700)])
            self.log.append("read fh=%d off=%d size=%d" % (fh, offset, size))
            assert self.call(0, "read", None, size, offset, fh) == bytes(cur[offset:offset + size])
        elif kind == "ftruncate" and h.writable:
            length = self.rnd.choice([0, 10, len(cur) // 2, len(cur) + 500])
            self.log.append("ftruncate fh=%d %d" % (fh, length))
            self.call(0, "truncate", None, length, fh)
            del cur[length:]
            cur.extend(bytes(length - len(cur)))
            h.inode.mtime = None
        elif kind in ("flush", "fsync"):
            self.log.append("%s fh=%d" % (kind, fh))
            if kind == "flush":
                self.call(0, "flush", None, fh)
            else:
                self.call(0, "fsync", None, 0, fh)
        elif kind == "release":
            self.release(fh)
        else:
            self.log.append("fstat fh=%d" % fh)
            st = self.call(0, "getattr", None, fh)
            assert st["st_size"] == len(cur)

    def release(self, fh: int) -> None:
        self.log.append("release fh=%d" % fh)
        h = self.handles.pop(fh)
        if h.writable:
            self.call(0, "flush", None, fh)  # close(2) flushes first
        self.call(0, "release", None, fh)
        h.inode.handles.discard(fh)
        if h.inode.hidden and not h.inode.handles:  # libfuse: the last close of an unlinked file
            self.call(0, "unlink", h.inode.hidden)
            del self.files[h.inode.hidden]

    def hide(self, path: str) -> None:
        """libfuse's unlink (or rename over) an open file: a rename to a hidden name first."""
        self.hidden_count += 1
        hidden = self.parent(path).rstrip("/") + "/.fuse_hidden%08d" % self.hidden_count
        self.call(0, "rename", path, hidden)
        inode = self.files.pop(path)
        inode.hidden = hidden
        self.files[hidden] = inode

    def do_create(self) -> None:
        path = self.rnd.choice(FILES)
        self.log.append("create %s" % path)
        if self.exists(path):
            return self.do_open(path)  # O_CREAT of an existing name: the kernel opens it
        if self.parent(path) not in self.dirs:
            return self.call(errno.ENOENT, "create", path, 0o644)
        mode = self.rnd.choice([0o644, 0o600, 0o755])
        fh = self.call(0, "create", path, mode)
        inode = Inode(bytearray(), stat.S_IFREG | mode)
        self.files[path] = inode
        self.add_handle(fh, inode, True, True, False)

    def add_handle(self, fh: int, inode: Inode, readable: bool, writable: bool, append: bool) -> None:
        assert fh not in self.handles
        self.handles[fh] = Open(inode, readable, writable, append)
        inode.handles.add(fh)

    def do_open(self, path: str | None = None) -> None:
        path = path or self.rnd.choice(FILES + DIRS)
        access = self.rnd.choice([os.O_RDONLY, os.O_WRONLY, os.O_RDWR])
        flags = access
        if access != os.O_RDONLY:
            flags |= self.rnd.choice([0, 0, os.O_TRUNC, os.O_APPEND])
        self.log.append("open %s %o" % (path, flags))
        if path in self.dirs or path not in self.files:
            # The kernel sends an open only for an entry it looked up as a file: one absent or a
            # directory is then out of date (ESTALE), and its look again says ENOENT or EISDIR.
            return self.call(errno.ESTALE, "open", path, flags)
        inode = self.files[path]
        if not stat.S_ISREG(inode.mode):
            return  # the kernel follows a symlink itself
        fh = self.call(0, "open", path, flags)
        if flags & os.O_TRUNC:
            del inode.data[:]
            inode.mtime = None
        self.add_handle(fh, inode, access != os.O_WRONLY, access != os.O_RDONLY, bool(flags & os.O_APPEND))

    def do_truncate(self) -> None:
        path = self.rnd.choice(FILES + DIRS)
        length = self.rnd.choice([0, 5, 2000, 5000])
        self.log.append("truncate %s %d" % (path, length))
        if path in self.dirs:
            return self.call(errno.EISDIR, "truncate", path, length)
        if path not in self.files:
            return self.call(errno.ENOENT, "truncate", path, length)
        if not stat.S_ISREG(self.files[path].mode):
            return  # the kernel follows a symlink itself
        self.call(0, "truncate", path, length)
        cur = self.files[path].data
        del cur[length:]
        cur.extend(bytes(length - len(cur)))
        self.files[path].mtime = None

    def do_unlink(self) -> None:
        path = self.rnd.choice(FILES + DIRS)
        self.log.append("unlink %s" % path)
        if path in self.dirs:
            return self.call(errno.EISDIR, "unlink", path)
        if path not in self.files:
            return self.call(errno.ENOENT, "unlink", path)
        if self.files[path].handles:
            return self.hide(path)
        self.call(0, "unlink", path)
        del self.files[path]

    def do_rename(self) -> None:
        if self.rnd.random() < 0.25:
            return self.rename_dir()
        old, new = self.rnd.choice(FILES), self.rnd.choice(FILES)
        self.log.append("rename %s %s" % (old, new))
        if old not in self.files:
            return self.call(errno.ENOENT, "rename", old, new)
        if self.parent(new) not in self.dirs:
            return self.call(errno.ENOENT, "rename", old, new)
        if old == new:
            return  # the kernel answers a rename onto itself
        if new in self.files and self.files[new].handles:
            self.hide(new)
        self.call(0, "rename", old, new)
        self.files.pop(new, None)
        self.files[new] = self.files.pop(old)

    def rename_dir(self) -> None:
        old, new = self.rnd.choice(DIRS), self.rnd.choice(DIRS)
        self.log.append("rename dir %s %s" % (old, new))
        if old not in self.dirs:
            return self.call(errno.ENOENT, "rename", old, new)
        if old == new:
            return
        if new in self.dirs and self.children(new):
            return self.call(errno.ENOTEMPTY, "rename", old, new)
        self.call(0, "rename", old, new)
        self.dirs.discard(new)
        self.dir_xattrs.pop(new, None)
        self.dirs.add(new)
        self.dirs.discard(old)
        if old in self.dir_xattrs:
            self.dir_xattrs[new] = self.dir_xattrs.pop(old)
        for path in [p for p in self.files if p.startswith(old + "/")]:
            inode = self.files.pop(path)
            moved = new + path[len(old):]
            if inode.hidden:
                inode.hidden = moved
            self.files[moved] = inode

    def do_mkdir(self) -> None:
        path = self.rnd.choice(DIRS)
        self.log.append("mkdir %s" % path)
        if self.exists(path):
            return self.call(errno.EEXIST, "mkdir", path, 0o755)
        self.call(0, "mkdir", path, 0o755)
        self.dirs.add(path)

    def do_rmdir(self) -> None:
        path = self.rnd.choice(DIRS + FILES[:1])
        self.log.append("rmdir %s" % path)
        if path in self.files:
            return self.call(errno.ENOTDIR, "rmdir", path)
        if path not in self.dirs:
            return self.call(errno.ENOENT, "rmdir", path)
        if self.children(path):
            return self.call(errno.ENOTEMPTY, "rmdir", path)
        self.call(0, "rmdir", path)
        self.dirs.discard(path)
        self.dir_xattrs.pop(path, None)

    def do_symlink(self) -> None:
        path = self.rnd.choice(FILES)
        target = self.rnd.choice(["a", "../b", "/some/where"])
        self.log.append("symlink %s -> %s" % (path, target))
        if self.exists(path) or self.parent(path) not in self.dirs:
            return  # the kernel answers EEXIST (its lookup found it), or ENOENT for the parent
        self.call(0, "symlink", path, target)
        self.files[path] = Inode(bytearray(target.encode()), stat.S_IFLNK | 0o777)

    def do_readlink(self) -> None:
        path = self.rnd.choice(FILES)
        self.log.append("readlink %s" % path)
        inode = self.files.get(path)
        if inode is None or not stat.S_ISLNK(inode.mode):
            return  # the kernel answers ENOENT or EINVAL itself: it knows what the name is
        assert self.call(0, "readlink", path) == inode.data.decode()

    def pick_any(self) -> str:
        return self.rnd.choice(FILES + DIRS)

    def xattrs_of(self, path: str) -> dict[str, bytes] | None:
        if path in self.files:
            return self.files[path].xattrs
        if path in self.dirs:
            return self.dir_xattrs.setdefault(path, {})
        return None

    def do_setxattr(self) -> None:
        path, name = self.pick_any(), self.rnd.choice(XATTRS)
        value = self.rnd.choice([b"red", b"", b"\x00\xff binary", b" padded "])
        flags = self.rnd.choice([0, 0, XATTR_CREATE, XATTR_REPLACE])
        self.log.append("setxattr %s %s %r %d" % (path, name, value, flags))
        xattrs = self.xattrs_of(path)
        if xattrs is None:
            return self.call(errno.ENOENT, "setxattr", path, name, value, flags)
        if flags == XATTR_CREATE and name in xattrs:
            return self.call(errno.EEXIST, "setxattr", path, name, value, flags)
        if flags == XATTR_REPLACE and name not in xattrs:
            return self.call(errno.ENODATA, "setxattr", path, name, value, flags)
        self.call(0, "setxattr", path, name, value, flags)
        xattrs[name] = value

    def xattr_named(self, op: str) -> tuple[str, str, dict[str, bytes]] | None:
        """A path and attribute name for ``op`` (getxattr, removexattr): the name and the attributes
        of a file that has it; where none, the call is made here and must fail as it should."""
        path, name = self.pick_any(), self.rnd.choice(XATTRS)
        self.log.append("%s %s %s" % (op, path, name))
        xattrs = self.xattrs_of(path)
        if xattrs is None:
            self.call(errno.ENOENT, op, path, name)
        elif name not in xattrs:
            self.call(errno.ENODATA, op, path, name)
        else:
            return path, name, xattrs
        return None

    def do_getxattr(self) -> None:
        found = self.xattr_named("getxattr")
        if found is not None:
            path, name, xattrs = found
            assert self.call(0, "getxattr", path, name) == xattrs[name]

    def do_removexattr(self) -> None:
        found = self.xattr_named("removexattr")
        if found is not None:
            path, name, xattrs = found
            self.call(0, "removexattr", path, name)
            del xattrs[name]

    def do_chmod(self) -> None:
        path = self.rnd.choice(FILES)
        perm = self.rnd.choice([0o600, 0o640, 0o755])
        self.log.append("chmod %s %o" % (path, perm))
        if path not in self.files:
            return self.call(errno.ENOENT, "chmod", path, perm)
        inode = self.files[path]
        if stat.S_ISLNK(inode.mode):
            return  # chmod follows a symlink
        self.call(0, "chmod", path, perm)
        inode.mode = stat.S_IFMT(inode.mode) | perm

    def do_utimens(self) -> None:
        path = self.rnd.choice(FILES)
        mtime = self.rnd.randrange(1_000_000_000, 1_700_000_000)
        self.log.append("utimens %s %d" % (path, mtime))
        if path not in self.files:
            return self.call(errno.ENOENT, "utimens", path, (mtime * 10**9, mtime * 10**9))
        self.call(0, "utimens", path, (mtime * 10**9, mtime * 10**9))
        self.files[path].mtime = mtime

    def time_passes(self) -> None:
        """What the mount does on its own within the 31 s the clock moves on below: its batched
        deletes (sent after a 50 ms window of the real clock) reach S3 before the other client acts."""
        self.ops.changes.deletes.flush()

    def do_other_client(self) -> None:
        """Another client puts a file at a name no open file holds; it shows once the TTLs pass."""
        path = self.rnd.choice(FILES)
        inode = self.files.get(path)
        if self.parent(path) not in self.dirs or (inode is not None and inode.handles):
            return
        data = self.data(self.rnd.choice([0, 10, 2500]))
        self.log.append("other client puts %s (%d bytes)" % (path, len(data)))
        self.time_passes()
        # No x-amz-meta-mode, as most tools write: a listing shows a file's mode only once a HEAD
        # has seen the object (readdir sends none), so a mode here would show as the default for a while.
        self.store.put(path.lstrip("/"), data)
        self.files[path] = Inode(bytearray(data), self.ops.defaults.file_mode)
        self.clock.advance(31.0)  # past every TTL, and past the memory of our own removals

    def do_other_client_chmod(self) -> None:
        """Another client changes a file's metadata: a self-copy, so the ETag stays (a cached copy here
        must take the new metadata, and its next upload keep it)."""
        path = self.rnd.choice(FILES)
        inode = self.files.get(path)
        if inode is None or inode.handles or not stat.S_ISREG(inode.mode):
            return
        key = path.lstrip("/")
        perm = self.rnd.choice([0o600, 0o640, 0o644])
        self.log.append("other client chmods %s %o and sets user.n" % (path, perm))
        self.time_passes()
        meta = dict(self.store.objects[key].metadata)
        meta.update({A.META_PREFIX + "mode": str(stat.S_IFREG | perm), A.META_PREFIX + "n": "theirs"})
        self.store.copy_object(key, key, meta, replace_metadata=True)
        inode.mode = stat.S_IFREG | perm
        inode.xattrs["user.n"] = b"theirs"
        self.clock.advance(31.0)

    def do_check_store(self) -> None:
        self.log.append("fsync every open file and check the store")
        self.ops.fsyncdir("/", 0, None)  # and the removals: fsync of a directory sends its pending deletes
        for fh, h in self.handles.items():
            if h.writable:
                self.call(0, "fsync", None, 0, fh)
        assert self.ops.staging.pending() == []
        self.check_store()

    # -- checks --------------------------------------------------------------------------------

    def check(self, full: bool = True) -> None:
        """What the mount shows is what the model says: names, types, modes and sizes, what each
        handle's fstat says; with ``full`` too every file's bytes, xattrs and each handle's read."""
        # Files first: a listing shows the mode a HEAD saw (else the default, README: readdir),
        # and after a remount only a lookup has seen them.
        for path in FILES + DIRS if full else []:  # a missing name costs a HEAD and a LIST each time
            if not self.exists(path):
                self.call(errno.ENOENT, "getattr", path)
        for path, inode in self.files.items():
            st = self.call(0, "getattr", path)
            assert (st["st_mode"], st["st_size"]) == (inode.mode, len(inode.data)), path
            if inode.mtime is not None:
                assert st["st_mtime"] == inode.mtime * 10**9, path
            if full:
                self.check_xattrs(path, inode.xattrs)
        for d in sorted(self.dirs):
            listed = [e if isinstance(e, str) else e[0] for e in self.call(0, "readdir", d, 0)]
            assert sorted(n for n in listed if n not in (".", "..")) == self.children(d), d
            st = self.call(0, "getattr", d)
            assert stat.S_ISDIR(st["st_mode"]), d
            if full:
                self.check_xattrs(d, self.dir_xattrs.get(d, {}))
        for fh, h in self.handles.items():
            assert self.call(0, "getattr", None, fh)["st_size"] == len(h.inode.data)
        if not full:
            return
        for path in self.regular():
            fh = self.call(0, "open", path, os.O_RDONLY)
            try:
                got = self.call(0, "read", path, len(self.files[path].data) + 1, 0, fh)
                assert got == self.files[path].data, path
            finally:
                self.call(0, "release", path, fh)
        for fh, h in self.handles.items():
            if h.readable:
                assert self.call(0, "read", None, len(h.inode.data) + 1, 0, fh) == h.inode.data

    def check_xattrs(self, path: str, xattrs: dict[str, bytes]) -> None:
        assert self.call(0, "listxattr", path) == sorted(xattrs), path
        for name, value in xattrs.items():
            assert self.call(0, "getxattr", path, name) == value, (path, name)

    def check_store(self) -> None:
        """What reached the store (everything, after a flush): bodies, modes, user metadata."""
        objects = dict(self.store.objects)
        expected = {p.lstrip("/") for p in self.live_files()}
        expected |= {d.lstrip("/") + "/" for d in self.dirs - {"/"}}
        assert set(objects) - {"_$folder$"} == expected
        for path in self.live_files():
            inode, o = self.files[path], objects[path.lstrip("/")]
            assert o.data == inode.data, path
            stored_mode = o.metadata.get(A.META_PREFIX + "mode")  # none: another client's, as it put it
            assert int(stored_mode or self.ops.defaults.file_mode) == inode.mode, path
            assert A.xattrs_of(o.metadata) == inode.xattrs, path
            if inode.mtime is not None:
                assert A.parse_time(o.metadata[A.MTIME]) == inode.mtime, path
        for d in self.dirs - {"/"}:
            assert A.xattrs_of(objects[d.lstrip("/") + "/"].metadata) == self.dir_xattrs.get(d, {}), d


PATH_STEPS = (
    ["create"] * 4 + ["open"] * 4 + ["truncate", "unlink", "unlink", "rename", "rename", "mkdir", "mkdir"]
    + ["rmdir", "symlink", "readlink", "setxattr", "setxattr", "getxattr", "removexattr", "chmod"]
    + ["utimens", "other_client", "other_client_chmod"]
)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_steps_match_the_model(tmp_path, seed):
    driver = Driver(tmp_path, seed)
    n = 0
    try:
        for n in range(1, STEPS + 1):
            driver.step()
            driver.check(full=n % FULL_CHECK_EVERY == 0)
            if n % FLUSH_EVERY == 0:
                driver.do_check_store()
            if n % CRASH_EVERY == 0:
                driver.log.append("crash and recover")
                driver.crash()
                driver.check()
    except AssertionError as exc:
        steps = "\n  ".join(driver.log)
        raise AssertionError("seed %d, step %d: %s\nlast steps:\n  %s" % (seed, n, exc, steps)) from exc
    finally:
        driver.ops.prefetcher.close()
        driver.ops.staging.close()
