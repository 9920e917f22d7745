"""Mount options: the ``-o`` settings, with their defaults, parsed in one place."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, fields
from typing import Any

from s3fs_mount.fs.attrs import MAX_ID
from s3fs_mount.fs.namespace import ATTR_CACHE_ENTRIES, MIN_ATTR_CACHE
from s3fs_mount.s3.parts import MAX_OBJECT_SIZE, most_steady_parts, streaming_layout

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


SIZE_OPTIONS = (
    "cache_size",
    "part_size",
    "upload_memory",
    "multipart_threshold",
    "readahead",
    "kernel_readahead",
    "local_size",
)


class OptionError(ValueError):
    """A bad ``-o`` option; the message names it."""


def split_options(spec: str) -> list[tuple[str, str | None]]:
    """``'ro,cache_dir="/a,b"'`` -> ``[('ro', None), ('cache_dir', '/a,b')]``: items split at the
    commas outside double quotes, a value's quotes dropped, as mount(8) (libmount) reads an fstab
    line's options; spaces around an item, its name and its value are no part of them."""
    items: list[str] = []
    current, quoted = "", False
    for char in spec:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            items.append(current)
            current = ""
        else:
            current += char
    if quoted:
        raise OptionError("unbalanced double quote in -o %s" % spec)
    items.append(current)
    out: list[tuple[str, str | None]] = []
    for item in filter(None, (s.strip() for s in items)):
        name, has_value, value = item.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        out.append((name.strip(), value if has_value else None))
    return out


def parse_size(text: str) -> int:
    """``'512M'`` -> 536870912. Suffixes K, M, G, T (powers of 1024); plain bytes otherwise."""
    t = text.strip().upper().rstrip("B").rstrip("I")
    mult = 1
    if t and t[-1] in "KMGT":
        mult = 1024 ** ("KMGT".index(t[-1]) + 1)
        t = t[:-1]
    try:
        value = float(t)
    except ValueError:
        raise OptionError("not a size: %r (use e.g. 512M or 10G)" % text) from None
    if value < 0:
        raise OptionError("size must not be negative: %r" % text)
    return int(value * mult)


def format_size(n: int) -> str:
    """536870912 -> ``'512M'``: the largest K/M/G/T suffix that divides it (as ``-o`` takes sizes)."""
    for exp, suffix in ((4, "T"), (3, "G"), (2, "M"), (1, "K")):
        if n and n % (1024**exp) == 0:
            return "%d%s" % (n // 1024**exp, suffix)
    return str(n)


def parse_listen(text: str) -> tuple[str, int]:
    """``'127.0.0.1:9108'``, ``'[::1]:9108'`` or ``'9108'`` (loopback) -> (host, port).

    :raises OptionError: with a message that says what is wrong.
    """
    host, sep, port_text = text.strip().rpartition(":")
    if not sep:
        host, port_text = "127.0.0.1", text.strip()
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
        if not 0 < port < 65536:
            raise ValueError
    except ValueError:
        raise OptionError("metrics=%s: expected HOST:PORT or PORT (e.g. 127.0.0.1:9108)" % text) from None
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise OptionError("metrics=%s: the host must be an IP address or localhost" % text) from None
    return host, port


def human_size(n: float) -> str:
    """1610612736 -> ``'1.5 GiB'``: a size for people to read (status, messages)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return ("%d %s" if unit == "B" else "%.1f %s") % (n, unit)
        n /= 1024
    return str(n)


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "s3fs-mount")


#: The groups of ``-o help`` (and README.rst's table), in order: key -> heading.
GROUPS = {
    "source": "where the bucket is",
    "access": "who may do what",
    "consistency": "what is seen when",
    "storage": "how objects are stored",
    "cache": "the cache and the transfers",
    "diagnostics": "watching it",
}


def _option(default: object, help: str, group: str) -> Any:
    """A field of MountOptions: its default (a callable: computed per instance), help and group."""
    meta = {"help": help, "group": group}
    if callable(default):
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class MountOptions:
    """Everything ``-o`` can set. Field docs are what ``-o help`` prints."""

    # -- where the bucket is -------------------------------------------------------------
    config: str = _option("", "path of s3.yaml (as -c)", "source")
    profile: str = _option("", "AWS profile for credentials", "source")
    local: str = _option("", "run an embedded SeaweedFS storing here (as --local)", "source")
    local_size: int = _option(0, "what the embedded server may hold (disk: its free space)", "source")
    # -- who may do what --------------------------------------------------------------------
    allow_other: bool = _option(False, "let other users in (checks stored modes)", "access")
    ro: bool = _option(False, "mount read-only", "access")
    nonempty: bool = _option(False, "mount over a non-empty directory (hides it)", "access")
    uid: int = _option(os.getuid, "owner of objects without x-amz-meta-uid", "access")
    gid: int = _option(os.getgid, "group of objects without x-amz-meta-gid", "access")
    umask: int = _option(0o022, "umask (octal) for objects without x-amz-meta-mode", "access")
    noatime: bool = _option(False, "reads never move atime (else: relatime)", "access")
    # -- what is seen when ------------------------------------------------------------------
    attr_ttl: float = _option(1.0, "seconds attributes are cached", "consistency")
    dir_ttl: float = _option(1.0, "seconds directory listings are cached", "consistency")
    attr_cache: int = _option(
        ATTR_CACHE_ENTRIES,
        "attributes kept in memory; larger directories are walked a page at a time, "
        "and the kernel holds about as many of their names at most",
        "consistency",
    )
    listing_attrs: bool = _option(
        False,
        "files show as listed, with the default mode and owner (no HEAD per file): for buckets "
        "whose objects carry no x-amz-meta-mode (symlinks, modes of s3fs-fuse or this mount)",
        "consistency",
    )
    conflict_check: bool = _option(
        True, "uploads never replace another client's newer version", "consistency"
    )
    exclusive_mkdir: bool = _option(
        True,
        "mkdir puts its marker (If-None-Match: *) before it returns: a lock directory holds across "
        "mounts; off: it returns at once, its objects put in the background (faster cp -r)",
        "consistency",
    )
    checksum: bool = _option(True, "checksums on uploads (CRC32 or MD5), whole reads checked", "consistency")
    # -- how objects are stored -------------------------------------------------------------
    storage_class: str = _option("", "storage class of what is written (STANDARD_IA, ...)", "storage")
    sse: str = _option("", "server-side encryption: AES256, aws:kms or aws:kms:KEYID", "storage")
    sse_c_key_file: str = _option("", "file holding an SSE-C key: every write and read carries it", "storage")
    requester_pays: bool = _option(False, "requests carry x-amz-request-payer: requester", "storage")
    acl: str = _option("", "canned ACL of what is written (bucket-owner-full-control, ...)", "storage")
    server_rename: bool = _option(
        True, "a file is renamed by S3 RenameObject where the server has it (else copy, delete)", "storage"
    )
    # -- the cache and the transfers --------------------------------------------------------
    cache_dir: str = _option(default_cache_dir, "staging cache directory", "cache")
    cache_size: int = _option(4 * GiB, "cache size bound (K/M/G suffixes)", "cache")
    writeback: bool = _option(False, "close returns before the upload ends", "cache")
    part_size: int = _option(8 * MiB, "multipart part size", "cache")
    multipart_threshold: int = _option(16 * MiB, "upload in parts from this size", "cache")
    part_doubling: int = _option(
        0, "parts of a streamed upload between doublings of its part size (0: auto)", "cache"
    )
    parallel: int = _option(
        8, "ranged GETs in flight per file read; files uploaded at once with writeback", "cache"
    )
    upload_parallel: int = _option(
        8, "parts of files streamed while written in flight at once, over all files", "cache"
    )
    upload_memory: int = _option(
        64 * MiB, "upload part bytes in memory at once, over all files (at least one part)", "cache"
    )
    readahead: int = _option(64 * MiB, "largest sequential readahead window", "cache")
    kernel_readahead: int = _option(
        1 * MiB, "the kernel's readahead per file (root only; 0: leave it)", "cache"
    )
    # -- watching it ------------------------------------------------------------------------
    debug: bool = _option(False, "log one line per S3 request and FUSE call", "diagnostics")
    log_file: str = _option("", "log to this file", "diagnostics")
    metrics: str = _option("", "serve Prometheus metrics at HOST:PORT (or PORT; loopback)", "diagnostics")
    threads: bool = _option(True, "serve FUSE calls from many threads", "diagnostics")

    # Options mount(8) passes through to us that mean nothing here.
    IGNORED = frozenset(
        {
            "rw",
            "_netdev",
            "auto",
            "noauto",
            "user",
            "nouser",
            "defaults",
            "nofail",
            "exec",
            "noexec",
            "suid",
            "nosuid",
            "dev",
            "nodev",
            "atime",
            "relatime",
            "strictatime",
            "x-systemd.automount",
            "fg",
            "bg",
            # more of what mount(8) may hand a helper from an fstab line
            "users",
            "owner",
            "group",
            "comment",
            "sync",
            "async",
            "dirsync",
            "diratime",
            "nodiratime",
            "lazytime",
            "nolazytime",
            "silent",
            "loud",
        }
    )

    @classmethod
    def parse(cls, specs: list[str]) -> MountOptions:
        """Build options from ``-o`` strings such as ``'ro,cache_size=2G'``."""
        opts = cls()
        known = {f.name: f for f in fields(cls)}
        for spec in specs:
            for name, value in split_options(spec):
                if name in cls.IGNORED or name.startswith("x-"):
                    continue
                if name not in known:
                    raise OptionError("unknown mount option: %s (see -o help)" % name)
                setattr(opts, name, _convert(name, known[name].type, value))
        if opts.metrics:
            parse_listen(opts.metrics)
        for name in ("uid", "gid"):  # libfuse keeps 32 bits: 2**32 would be root; 2**32-1 is "none"
            if not 0 <= getattr(opts, name) <= MAX_ID:
                raise OptionError("%s=%d: an id is 0 to %d" % (name, getattr(opts, name), MAX_ID))
        for name in ("attr_ttl", "dir_ttl"):  # (nan would keep listings for ever)
            if not getattr(opts, name) >= 0:
                raise OptionError("%s=%g: seconds, 0 or more" % (name, getattr(opts, name)))
        if opts.attr_cache < MIN_ATTR_CACHE:
            raise OptionError("attr_cache=%d: keep at least %d entries" % (opts.attr_cache, MIN_ATTR_CACHE))
        for name in ("parallel", "upload_parallel"):
            if getattr(opts, name) < 1:
                raise OptionError("%s=%d: at least 1" % (name, getattr(opts, name)))
        if opts.part_doubling < 0:
            raise OptionError("part_doubling=%d: must be 0 (auto) or a number of parts" % opts.part_doubling)
        if opts.part_doubling:
            layout = streaming_layout(opts.part_size, opts.part_doubling)
            if layout.capacity() < MAX_OBJECT_SIZE:
                raise OptionError(
                    "part_doubling=%d with part_size=%s: 10,000 parts would hold only %s, not 5 TiB "
                    "(at most %d, or 0 for that)"
                    % (
                        opts.part_doubling,
                        format_size(layout.base),
                        human_size(layout.capacity()),
                        most_steady_parts(layout.base),
                    )
                )
        return opts

    #: The options that are settings of the connection too (s3.yaml's ``s3:`` keys of the same names).
    OBJECT_OPTIONS = ("storage_class", "sse", "sse_c_key_file", "requester_pays", "acl")

    def object_settings(self) -> dict[str, Any]:
        """The storage options given with ``-o``, as S3Connection settings (they beat s3.yaml's)."""
        return {name: getattr(self, name) for name in self.OBJECT_OPTIONS if getattr(self, name)}

    @classmethod
    def defaults_shown(cls) -> dict[str, str]:
        """Every option's default as ``-o help`` (and README.rst's table) writes it: ``4G``, ``on``."""
        defaults = cls()
        shown = {}
        for f in fields(cls):
            value = getattr(defaults, f.name)
            if f.name == "umask":
                text = "%03o" % value
            elif f.name == "local_size" and not value:
                text = "disk"
            elif f.name == "part_doubling" and not value:
                text = "auto"
            elif isinstance(value, bool):
                text = "on" if value else "off"
            elif f.name in SIZE_OPTIONS:
                text = format_size(value)
            elif isinstance(value, float):
                text = "%g" % value
            else:
                text = str(value) if value != "" else "none"
            shown[f.name] = text
        return shown

    @classmethod
    def help_text(cls) -> str:
        """Every option with its default, under the headings of GROUPS."""
        shown = cls.defaults_shown()
        lines = []
        for group, heading in GROUPS.items():
            lines.append(" %s:" % heading)
            lines.extend(
                "  %-22s %s (default: %s)" % (f.name, f.metadata["help"], shown[f.name])
                for f in fields(cls)
                if f.metadata["group"] == group
            )
        return "\n".join(lines)


def _convert(name: str, kind: object, value: str | None) -> object:
    kind = str(kind)
    if kind == "bool":
        if value is None or value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise OptionError("option %s takes no value or true/false, not %r" % (name, value))
    if value is None or value == "":
        raise OptionError("option %s needs a value: %s=..." % (name, name))
    try:
        if name == "umask":
            return int(value, 8)
        if name == "local_size" and value == "disk":
            return 0
        if kind == "int" and name in SIZE_OPTIONS:
            return parse_size(value)
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
    except ValueError:
        raise OptionError("bad value for option %s: %r" % (name, value)) from None
    return value
