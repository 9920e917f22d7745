"""The one mapping between S3 headers and file attributes.

POSIX attributes live in s3fs-fuse's headers, so the two interoperate:

=====================  =====================================  ==================
header                 meaning                                format
=====================  =====================================  ==================
``x-amz-meta-mode``    st_mode, file type bits included       decimal
``x-amz-meta-uid``     owner                                  decimal
``x-amz-meta-gid``     group                                  decimal
``x-amz-meta-mtime``   modification time (rclone's too)       decimal seconds
``x-amz-meta-atime``   access time                            decimal seconds
``x-amz-meta-ctime``   status change time                     decimal seconds
``x-amz-meta-rdev``    device number of a char/block device   decimal
=====================  =====================================  ==================

Times are read in every form peers write (``1700000000``, rclone's
``1700000000.5``, ``1700000000.123456789``) and written in one, by
:func:`format_time`: whole seconds, or seconds and nine digits of
nanoseconds, as s3fs-fuse writes them (a timespec: before 1970 the seconds
are rounded down and the nanoseconds added, ``-2.250000000`` is -1.75 s).
Those keys are reserved: they never show as ``user.*`` attributes. Every
other ``x-amz-meta-NAME`` is the extended attribute ``user.NAME``. A value
that is not plain printable ASCII (or is empty) travels as
``=?UTF-8?B?<base64>?=`` (RFC 2047, as AWS itself does for non-ASCII metadata)
and is decoded on the way back, so any byte string round-trips.

s3fs-fuse (``-o use_xattr``) keeps all of an object's extended attributes in
one header of its own, ``x-amz-meta-xattr``: ``{"NAME":"<base64>",...}``,
percent-encoded. Its ``user.*`` entries are attributes here too (the header
itself is not ``user.xattr``), and an object that carries that header keeps
its attributes there, so a change made here shows through s3fs-fuse and the
other way round (see :func:`with_xattr`); other objects keep one header per
attribute. Its other entries (``system.posix_acl_*``) are kept as they are.
"""

from __future__ import annotations

import base64
import errno
import logging
import re
import stat
import sys
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import TypeVar

from s3fs_mount.fs.errors import FsError
from s3fs_mount.s3.store import META_PREFIX, NO_DIGEST, digest_of

log = logging.getLogger(__name__)

USER_PREFIX = "user."
#: Read-only facts about the object, shown by ``getfattr -d -m -``.
INFO_PREFIX = "s3."
#: Namespaces the kernel and tools ask about (ls -l: SELinux label, ACL) that S3 cannot hold.
UNSTORED_PREFIXES = ("security.", "system.", "trusted.")
INFO_NAMES = ("s3.etag", "s3.checksum", "s3.storage_class", "s3.version_id", "s3.state")
RESERVED = frozenset({"mode", "uid", "gid", "mtime", "atime", "ctime", "rdev", "xattr"})
#: s3fs-fuse's header holding every extended attribute of an object (see the module's docstring).
S3FS_XATTRS = META_PREFIX + "xattr"
MTIME, ATIME, CTIME = META_PREFIX + "mtime", META_PREFIX + "atime", META_PREFIX + "ctime"
#: A lookup's answer (its HEAD and the LIST beside it) this many seconds old is what an open for
#: writing of the name would ask (cp over a file that is there: LOOKUP, then OPEN): taken as it
#: is. A version another client puts or removes in that moment is told by the upload's HEAD and
#: ``If-Match`` (ours in a conflict copy), as one in the moment between the open and the close.
FRESH_LOOK = 0.5
#: What a directory's stat says of its block size (see Attributes.stat).
DIR_BLKSIZE = 32 * 1024
#: S3 limits user metadata (names and values of x-amz-meta-*) to 2 KiB.
METADATA_LIMIT = 2048
#: The largest user or group id (uid_t is 32 bits; (uid_t)-1 means "no change" to chown).
MAX_ID = (1 << 32) - 2
#: A time's seconds must fit a 64-bit time_t (what FUSE hands the kernel).
MAX_SECONDS = float(1 << 63)
#: The file types a mode may name (0: permission bits only, the type from the object).
FILE_TYPES = frozenset(
    {0, stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK}
)

V = TypeVar("V")

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9a-z]+$")
_ENCODED = re.compile(r"^=\?UTF-8\?B\?([A-Za-z0-9+/=]*)\?=$", re.IGNORECASE)


@dataclass
class Defaults:
    """Attributes for objects that carry none: from ``-o uid,gid,umask``."""

    uid: int
    gid: int
    umask: int

    @cached_property  # one int for every listed file (a large directory keeps one per entry)
    def file_mode(self) -> int:
        return stat.S_IFREG | (0o666 & ~self.umask)

    @property
    def dir_mode(self) -> int:
        return stat.S_IFDIR | (0o777 & ~self.umask)


@dataclass(slots=True)  # slots: a listing of a large directory keeps one per entry
class Attributes:
    """What getattr reports for one path, and the headers behind it."""

    mode: int
    size: int = 0
    mtime: float = 0.0
    uid: int = 0
    gid: int = 0
    atime: float | None = None  # None: the same as mtime
    ctime: float | None = None  # None: the same as mtime
    rdev: int = 0
    nlink: int = 0  # 0: the default (1 for a file, 2 for a directory)
    etag: str = ""
    metadata: dict[str, str] = field(default_factory=dict)  # every x-amz-meta-*
    headers: dict[str, str] = field(default_factory=dict)  # Content-Type and friends
    storage_class: str = "STANDARD"
    version_id: str | None = None
    digest: str = ""  # what S3 says the bytes hash to (ObjectInfo.digest); '' if unknown
    complete: bool = True  # False when built from a listing (no metadata known)
    #: S3's Last-Modified of this version (0: not known, our own write). A metadata change by
    #: another client (a self-copy) keeps the ETag and moves this.
    stored: float = 0.0
    #: Our own write (``stored`` 0): the wall-clock time S3 had it by; its Last-Modified is no
    #: later (but for the clocks' skew), so a later one is another client's self-copy.
    written_by: float = 0.0
    ttl: float = 0.0  # seconds to cache, when longer than attr_ttl
    #: When (time.monotonic) S3 was asked for these: an answer sent before a change we made is older.
    seen_at: float = field(default_factory=time.monotonic)
    #: A HEAD asked at ``seen_at`` found these (not our own change, nor a listing): an open for
    #: writing needs only a LIST to tell that S3 still holds this version, and no directory of
    #: the name (Namespace.lookup_to_write).
    headed: bool = False
    #: And the LIST beside it (a lookup's) found no directory of the name: all an open for
    #: writing asks, for FRESH_LOOK.
    looked: bool = False

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_link(self) -> bool:
        return stat.S_ISLNK(self.mode)

    def stat(self) -> dict[str, float | int]:
        """The dict fusepy's getattr returns."""
        nlink = self.nlink or (2 if self.is_dir else 1)
        return {
            "st_mode": self.mode,
            "st_nlink": nlink,
            "st_size": self.size,
            "st_uid": self.uid,
            "st_gid": self.gid,
            "st_rdev": self.rdev,
            "st_mtime": _ns(self.mtime),  # nanoseconds (fusepy's use_ns)
            "st_ctime": _ns(self.mtime if self.ctime is None else self.ctime),
            "st_atime": _ns(self.mtime if self.atime is None else self.atime),
            # glibc's readdir asks for st_blksize bytes of entries at once (32 KiB to 1 MiB): a
            # directory's 32 KiB is ~1,000 entries, so a reader sees the first listing page's
            # entries without waiting for the next 30 pages.
            "st_blksize": DIR_BLKSIZE if self.is_dir else 1 << 20,
            "st_blocks": (self.size + 511) // 512,
        }


#: The longest symlink target (PATH_MAX less its NUL). A FIFO, socket or device is empty.
LINK_MAX_BYTES = 4095


def certain_type(a: Attributes) -> int | None:
    """The file type bits of ``a`` that hold whatever its metadata says, or None.

    For what a listing shows without metadata: a directory is one; an object larger than
    any symlink target can only be a regular file (links and special files are small).
    """
    if a.is_dir:
        return stat.S_IFDIR
    if a.size > LINK_MAX_BYTES:
        return stat.S_IFREG
    return None


def _ns(t: float) -> int:
    """A time (seconds) in nanoseconds, rounded to the microsecond: as it is stored and shown.

    A float holds a time of today to a quarter of a microsecond, so finer digits are noise;
    and a time shown with them changed by itself once read back from S3 (``stat`` gave
    ``.489045504``, then ``.489046016`` once the attributes were asked again).
    """
    return round(t * 1e6) * 1000


def format_time(t: float) -> str:
    """A time (seconds) as the ``x-amz-meta-*time`` headers hold it (the one format we write):
    to the microsecond, as :func:`_ns` shows it."""
    ns = _ns(t)
    sec, frac = divmod(ns, 1_000_000_000)
    return "%d" % sec if not frac else "%d.%09d" % (sec, frac)


def parse_time(text: str) -> float | None:
    """A header's time in any form peers write, or None (also for nan, inf and times past a
    64-bit time_t, which no file can have).

    A time before 1970 with a fraction is a timespec, as s3fs-fuse (and :func:`format_time`)
    writes it: whole seconds rounded down, then nanoseconds to add (``-2.250000000`` is
    -1.75 s). rclone writes a decimal number there (-2.25 s): such a time reads up to a second
    late, where s3fs-fuse's read a second early before.
    """
    try:
        text = text.strip()
        value = float(text)
    except (ValueError, AttributeError):
        return None
    if not abs(value) < MAX_SECONDS:  # nan, inf, or past any time_t: no time a file can have
        return None
    whole, dot, fraction = text.partition(".")
    if dot and whole.lstrip("-").isdigit() and fraction.isdigit() and int(whole) < 0:
        return int(whole) + float("0." + fraction)
    return value  # (-0.5: no timespec's seconds are -0, so a decimal number)


#: relatime: a read moves atime when it is not after mtime and ctime, or at least this old.
RELATIME_MAX_AGE = 24 * 3600.0


def relatime_due(atime: float | None, mtime: float, ctime: float | None, now: float) -> bool:
    """Does a read at ``now`` move atime, as Linux's ``relatime`` says? (None: as mtime.)"""
    atime = mtime if atime is None else atime
    ctime = mtime if ctime is None else ctime
    return atime <= mtime or atime <= ctime or now - atime >= RELATIME_MAX_AGE


def time_metadata(mtime: float, atime: float | None = None, ctime: float | None = None) -> dict[str, str]:
    """The three time headers (atime and ctime default to mtime)."""
    return {
        MTIME: format_time(mtime),
        ATIME: format_time(mtime if atime is None else atime),
        CTIME: format_time(mtime if ctime is None else ctime),
    }


#: What each integer header may hold: an id, a mode of a known file type, a 32-bit device.
_VALID_INT = {
    "mode": lambda v: 0 <= v <= 0o177777 and stat.S_IFMT(v) in FILE_TYPES,
    "uid": lambda v: 0 <= v <= MAX_ID,
    "gid": lambda v: 0 <= v <= MAX_ID,
    "rdev": lambda v: 0 <= v < 1 << 32,
}
#: (header, value) pairs already warned about (bounded: another tool may write many).
_warned: set[tuple[str, str]] = set()


def _ignored(name: str, value: str, what: str) -> None:
    """Log once per header and value that it holds no ``what`` a file can have."""
    if (name, value) not in _warned and len(_warned) < 1000:
        _warned.add((name, value))
        log.warning("x-amz-meta-%s %r is no %s a file can have: ignored, as if absent (an object "
                    "another tool wrote)", name, value, what)


def _meta_int(meta: dict[str, str], name: str) -> int | None:
    """The integer header ``name`` (mode, uid, gid, rdev), or None: absent, or a value no file
    can have (logged), which ctypes would wrap (uid -5 as 4294967291) or FUSE refuse (EIO)."""
    text = meta.get(META_PREFIX + name)
    if text is None:
        return None
    try:
        value = int(text.strip())
    except ValueError:
        value = None
    if value is None or not _VALID_INT[name](value):
        _ignored(name, text, name)
        return None
    return value


def stored_mode(meta: dict[str, str]) -> int | None:
    """The ``x-amz-meta-mode`` of an object's metadata, or None (absent, or no mode)."""
    return _meta_int(meta, "mode")


def _meta_time(meta: dict[str, str], name: str) -> float | None:
    """The time header ``name``, or None: absent, or no time (logged)."""
    text = meta.get(META_PREFIX + name)
    if text is None:
        return None
    value = parse_time(text)
    if value is None:
        _ignored(name, text, "time")
    return value


def attributes_from(
    metadata: dict[str, str],
    size: int,
    last_modified: float,
    defaults: Defaults,
    kind: str = "file",
    times: tuple[float, float | None, float | None] | None = None,
    **extra: object,
) -> Attributes:
    """Attributes of an object (``kind`` 'file' or 'dir') from its metadata, else defaults.

    ``times``: (mtime, atime, ctime) the caller knows already (a staged file's), taken as they
    are instead of parsed from the metadata's time headers (a staged file's getattr parsed back
    the three it had just formatted, then dropped them: 16 parses a small file, bench/README.md
    round 37)."""
    default_mode = defaults.dir_mode if kind == "dir" else defaults.file_mode
    mode = stored_mode(metadata)
    if mode is None:
        mode = default_mode
    elif stat.S_IFMT(mode) == 0:  # permission bits only
        mode |= stat.S_IFMT(default_mode)
    if kind == "dir" and not stat.S_ISDIR(mode):
        mode = stat.S_IFDIR | stat.S_IMODE(mode)
    elif kind != "dir" and (stat.S_ISDIR(mode) or (size > LINK_MAX_BYTES and not stat.S_ISREG(mode))):
        # Too big to be a link (or a special file, which are empty): a regular file, as its
        # listing already told the kernel (certain_type), whatever another tool stored.
        mode = stat.S_IFREG | stat.S_IMODE(mode)
    uid = _meta_int(metadata, "uid")
    gid = _meta_int(metadata, "gid")
    if times is not None:
        mtime, atime, ctime = times
    else:
        mtime = _meta_time(metadata, "mtime")
        if mtime is None:
            mtime = last_modified
        atime, ctime = _meta_time(metadata, "atime"), _meta_time(metadata, "ctime")
    return Attributes(
        mode=mode,
        size=size,
        mtime=mtime,
        atime=atime,
        ctime=ctime,
        rdev=_meta_int(metadata, "rdev") or 0,
        uid=defaults.uid if uid is None else uid,
        gid=defaults.gid if gid is None else gid,
        metadata=dict(metadata),
        **extra,  # type: ignore[arg-type]
    )


#: A listed file's metadata and headers (a listing carries none), shared and read-only.
NO_FIELDS: MappingProxyType[str, str] = MappingProxyType({})


def listed_file(defaults: Defaults, size: int, mtime: float, etag: str, storage_class: str) -> Attributes:
    """What a listing says of a file (no metadata: mode and owner the defaults, ``complete`` False).

    The same as :func:`attributes_from` of no metadata, built directly: a walk of a large
    directory makes one per entry, and the namespace keeps up to ``attr_cache`` of them, so
    what every entry has alike is one object for all (no metadata and no headers: one
    read-only empty mapping; the mode; the storage class): ~220 of ~730 bytes an entry
    (bench/README.md).
    """
    return Attributes(
        mode=defaults.file_mode,
        size=size,
        mtime=mtime,
        uid=defaults.uid,
        gid=defaults.gid,
        etag=etag,
        metadata=NO_FIELDS,  # type: ignore[arg-type]  # read-only: nothing changes a listed file's in place
        headers=NO_FIELDS,  # type: ignore[arg-type]
        storage_class=sys.intern(storage_class),
        complete=False,
        stored=mtime,
    )


def posix_metadata(
    mode: int, uid: int, gid: int, mtime: float, atime: float | None = None, ctime: float | None = None
) -> dict[str, str]:
    """The s3fs-fuse headers for these POSIX attributes."""
    out = {
        META_PREFIX + "mode": str(mode),
        META_PREFIX + "uid": str(uid),
        META_PREFIX + "gid": str(gid),
    }
    out.update(time_metadata(mtime, atime, ctime))
    return out


def posix_metadata_of(a: Attributes) -> dict[str, str]:
    """All POSIX headers of ``a`` (so that a change of one pins the others)."""
    out = posix_metadata(a.mode, a.uid, a.gid, a.mtime, a.atime, a.ctime)
    if a.rdev:
        out[META_PREFIX + "rdev"] = str(a.rdev)
    return out


# -- extended attributes ----------------------------------------------------------


def require_user_name(name: str) -> None:
    """FsError ENOTSUP unless ``name`` is a ``user.*`` attribute: the only ones stored."""
    if not name.startswith(USER_PREFIX):
        raise FsError(errno.ENOTSUP, "only user.* attributes are stored")


def header_for_xattr(name: str) -> str:
    """``user.state`` -> ``x-amz-meta-state``; FsError for names that can't map.

    A name with capitals is EINVAL: S3 keeps metadata names in lower case, so ``user.Tag``
    would come back as ``user.tag``, another name, and ``rsync -X`` run again would set
    ``user.Tag`` and then remove ``user.tag`` (the same key) as one the source lacks.
    """
    require_user_name(name)
    short = name[len(USER_PREFIX) :]
    if short != short.lower():
        raise FsError(errno.EINVAL, "S3 keeps metadata names in lower case: %r would come back as %r"
                      % (name, USER_PREFIX + short.lower()))
    if short in RESERVED:
        raise FsError(errno.EPERM, "user.%s is reserved (POSIX attributes, s3fs-fuse's xattr header)" % short)
    if not _TOKEN.match(short):
        raise FsError(errno.EINVAL, "%r cannot be an HTTP header name" % name)
    return META_PREFIX + short


def s3fs_xattrs(metadata: dict[str, str]) -> dict[str, bytes] | None:
    """The attributes in s3fs-fuse's ``x-amz-meta-xattr`` header, every namespace (None: the
    object has no such header). As s3fs-fuse parses it: percent-decoded, the text between the
    first ``{`` and the last ``}``, pairs split at ``,`` and a pair at its last ``:``; a pair
    that is not two quoted strings is skipped."""
    raw = metadata.get(S3FS_XATTRS)
    if raw is None:
        return None
    text = urllib.parse.unquote(raw)
    start, end = text.find("{"), text.rfind("}")
    out: dict[str, bytes] = {}
    if start < 0 or end <= start:
        return out
    for pair in text[start + 1 : end].split(","):
        name, colon, value = pair.rpartition(":")
        name, value = name.strip(), value.strip()
        if not colon or len(name) < 2 or len(value) < 2 or not (
                name[0] == name[-1] == '"' and value[0] == value[-1] == '"'):
            continue
        try:
            out[name[1:-1]] = base64.b64decode(value[1:-1])
        except ValueError:
            continue
    return out


def s3fs_xattrs_header(xattrs: dict[str, bytes]) -> str:
    """``x-amz-meta-xattr``'s value for ``xattrs``, as s3fs-fuse writes it (``{}`` when empty)."""
    body = ",".join('"%s":"%s"' % (name, base64.b64encode(value).decode("ascii"))
                    for name, value in sorted(xattrs.items()))
    return urllib.parse.quote("{%s}" % body, safe="/")


def xattr_of(metadata: dict[str, str], name: str) -> bytes | None:
    """The value of attribute ``name`` in an object's metadata (None: it has none; never for a
    POSIX key, nor for a name with capitals, which no attribute here can have)."""
    return xattrs_of(metadata).get(name)


def xattrs_of(metadata: dict[str, str]) -> dict[str, bytes]:
    """The user.* attributes of an object's metadata: its own headers, and the ``user.*``
    entries of s3fs-fuse's ``x-amz-meta-xattr`` (which win over a header of the same name:
    s3fs-fuse copies every other header along when it changes its own)."""
    out = {}
    for header, value in metadata.items():
        short = header[len(META_PREFIX) :]
        if header.startswith(META_PREFIX) and short not in RESERVED:
            out[USER_PREFIX + short] = decode_value(value)
    for name, value in (s3fs_xattrs(metadata) or {}).items():
        if name.startswith(USER_PREFIX):
            out[name] = value
    return out


def with_xattr(metadata: dict[str, str], name: str, value: bytes, create: bool = False,
               replace: bool = False) -> dict[str, str]:
    """``metadata`` with attribute ``name`` set to ``value`` (FsError: EEXIST for ``create``
    of a name it has, ENODATA for ``replace`` of one it lacks, or what :func:`header_for_xattr`
    refuses). Where the object keeps s3fs-fuse's ``x-amz-meta-xattr``, the value goes there
    (a header of the same name is dropped); elsewhere into ``x-amz-meta-NAME``."""
    held = s3fs_xattrs(metadata)
    if held is None or name not in held:
        header = header_for_xattr(name)  # a name s3fs-fuse gave the object is its, as it is
    present = name in xattrs_of(metadata)
    if create and present:
        raise FsError(errno.EEXIST)
    if replace and not present:
        raise FsError(errno.ENODATA)
    out = dict(metadata)
    if held is None:
        out[header] = encode_value(bytes(value))
        return out
    held[name] = bytes(value)
    out.pop(META_PREFIX + name[len(USER_PREFIX) :], None)
    out[S3FS_XATTRS] = s3fs_xattrs_header(held)
    return out


def without_xattr(metadata: dict[str, str], name: str) -> dict[str, str]:
    """``metadata`` without attribute ``name`` (ENODATA: it has none), wherever it was kept."""
    held = s3fs_xattrs(metadata)
    if held is None or name not in held:
        header_for_xattr(name)
    if name not in xattrs_of(metadata):
        raise FsError(errno.ENODATA)
    out = dict(metadata)
    if held is not None and name in held:
        del held[name]
        out[S3FS_XATTRS] = s3fs_xattrs_header(held)
    out.pop(META_PREFIX + name[len(USER_PREFIX) :], None)
    return out


def encode_value(value: bytes) -> str:
    """Bytes -> a header value that survives HTTP (and decode_value undoes).

    An empty value is encoded too (``=?UTF-8?B??=``): SeaweedFS drops an empty header from a
    PUT (it keeps it on a copy), so an attribute set before the upload was lost.
    """
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        text = None
    plain = (
        bool(value)
        and text is not None
        and all(0x20 <= b < 0x7F for b in value)
        and text == text.strip()
        and not _ENCODED.match(text)
    )
    if plain:
        return text  # type: ignore[return-value]
    return "=?UTF-8?B?%s?=" % base64.b64encode(value).decode("ascii")


def decode_value(value: str) -> bytes:
    """A stored header value -> the attribute's bytes."""
    m = _ENCODED.match(value.strip())
    if m:
        try:
            return base64.b64decode(m.group(1))
        except ValueError:
            pass
    return value.encode("utf-8", "surrogateescape")


def metadata_size(metadata: dict[str, str]) -> int:
    """Bytes S3 counts against its 2 KiB user-metadata limit (of the ``x-amz-meta-*`` headers
    among ``metadata``: names without the prefix, and values, in UTF-8)."""
    return sum(
        len(k) - len(META_PREFIX) + len(v.encode("utf-8"))
        for k, v in metadata.items()
        if k.startswith(META_PREFIX)
    )


def check_metadata_size(metadata: dict[str, str]) -> None:
    """E2BIG before any request when metadata (or an upload's headers) would exceed S3's limit,
    which AWS answers with MetadataTooLarge; the reason names the largest user.* attributes, the
    ones a user can remove (the POSIX keys an upload adds count too)."""
    size = metadata_size(metadata)
    if size <= METADATA_LIMIT:
        return
    xattrs = sorted(
        ((metadata_size({k: v}), USER_PREFIX + k[len(META_PREFIX) :]) for k, v in metadata.items()
         if k.startswith(META_PREFIX) and k[len(META_PREFIX) :] not in RESERVED),
        reverse=True,
    )
    largest = ", ".join("%s (%d bytes)" % (name, n) for n, name in xattrs[:3]) or "none"
    raise FsError(
        errno.E2BIG,
        "user metadata of %d bytes is over S3's 2 KiB limit (%d): remove user.* attributes"
        " (setfattr -x), the largest: %s" % (size, METADATA_LIMIT, largest),
    )


def checksum_fact(digest: str, etag: str) -> str:
    """The ``s3.checksum`` fact: S3's ``digest`` if known, else what the ``etag`` says as an MD5;
    '' when S3 said there is nothing to check with (:data:`~s3fs_mount.s3.store.NO_DIGEST`)."""
    return "" if digest == NO_DIGEST else digest or digest_of(etag)


# -- merging another client's metadata change -----------------------------------------

#: The times: each records the latest event, so where both sides moved one the later stands.
TIME_HEADERS = frozenset({MTIME, ATIME, CTIME})


@dataclass(frozen=True)
class MetadataMerge:
    """What :func:`merge_metadata` made of our metadata and theirs.

    ``taken``: attributes only they changed (theirs kept); ``overridden``: attributes both
    changed, to different values (ours kept, theirs lost). Names as a user knows them:
    ``mode``, ``uid``, ``user.tag``.
    """

    metadata: dict[str, str]
    taken: tuple[str, ...] = ()
    overridden: tuple[str, ...] = ()


def merge_metadata(
    base: dict[str, str] | None, ours: dict[str, str], theirs: dict[str, str]
) -> MetadataMerge:
    """Our metadata and another client's, both changed since ``base`` (what S3 had when we
    last saw it; None: not known), made one, attribute by attribute (a three-way merge):

    * changed on one side only: that side's value (their ``chmod``, ``setfattr``, ``touch``
      stays; so does ours); a removal is a change;
    * changed on both sides to different values: for a time (mtime, atime, ctime), the later
      one; for anything else, ours (the later writer), named in ``overridden``.

    With no ``base``, every difference counts as changed on both sides. s3fs-fuse's
    ``x-amz-meta-xattr`` is merged entry by entry, as the attributes it holds.
    """
    merged, taken, overridden = _merge3(base, ours, theirs, _header_name)
    held = [s3fs_xattrs(m) for m in (base or {}, ours, theirs)]
    if held[1] is not None and held[2] is not None and held[1] != held[2]:
        base_held = held[0] if base is not None else None
        entries, in_taken, in_over = _merge3(base_held, held[1], held[2], lambda name: name)
        merged[S3FS_XATTRS] = s3fs_xattrs_header(entries)
        taken = [n for n in taken if n != "xattr"] + in_taken
        overridden = [n for n in overridden if n != "xattr"] + in_over
    return MetadataMerge(merged, tuple(taken), tuple(overridden))


def _header_name(header: str) -> str:
    """``x-amz-meta-mode`` -> ``mode``; ``x-amz-meta-tag`` -> ``user.tag`` (for log lines)."""
    short = header[len(META_PREFIX) :] if header.startswith(META_PREFIX) else header
    return short if short in RESERVED else USER_PREFIX + short


def _merge3(
    base: Mapping[str, V] | None,
    ours: Mapping[str, V],
    theirs: Mapping[str, V],
    name: Callable[[str], str],
) -> tuple[dict[str, V], list[str], list[str]]:
    """:func:`merge_metadata`'s rule over one mapping: (merged, taken names, overridden names)."""
    merged: dict[str, V] = dict(ours)
    taken: list[str] = []
    overridden: list[str] = []
    for key in sorted(set(ours) | set(theirs) | set(base or {})):
        mine, other = ours.get(key), theirs.get(key)
        if mine == other:
            continue
        was = (base or {}).get(key)
        if base is not None and mine == was:  # only they changed it
            if other is None:
                merged.pop(key, None)
            else:
                merged[key] = other
            taken.append(name(key))
        elif base is not None and other == was:  # only we did
            continue
        elif key in TIME_HEADERS and isinstance(mine, str) and isinstance(other, str):
            later = other if (parse_time(other) or 0.0) > (parse_time(mine) or 0.0) else mine
            merged[key] = later  # type: ignore[assignment]  # V is str for headers
        else:
            overridden.append(name(key))
    return merged, taken, overridden
