"""Mount options: the ``-o`` settings, with their defaults, parsed in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


SIZE_OPTIONS = ("cache_size", "part_size", "multipart_threshold", "readahead", "kernel_readahead")


class OptionError(ValueError):
    """A bad ``-o`` option; the message names it."""


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


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "s3fs-mount")


@dataclass
class MountOptions:
    """Everything ``-o`` can set. Field docs are what ``-o help`` prints."""

    cache_dir: str = field(default_factory=default_cache_dir, metadata={"help": "staging cache directory"})
    cache_size: int = field(default=4 * GiB, metadata={"help": "cache size bound (K/M/G suffixes)"})
    allow_other: bool = field(default=False, metadata={"help": "let other users in (checks stored modes)"})
    nonempty: bool = field(default=False, metadata={"help": "mount over a non-empty directory (hides it)"})
    ro: bool = field(default=False, metadata={"help": "mount read-only"})
    uid: int = field(default_factory=os.getuid, metadata={"help": "owner of objects without x-amz-meta-uid"})
    gid: int = field(default_factory=os.getgid, metadata={"help": "group of objects without x-amz-meta-gid"})
    umask: int = field(default=0o022, metadata={"help": "umask (octal) for objects without x-amz-meta-mode"})
    attr_ttl: float = field(default=1.0, metadata={"help": "seconds attributes are cached"})
    dir_ttl: float = field(default=1.0, metadata={"help": "seconds directory listings are cached"})
    noatime: bool = field(default=False, metadata={"help": "reads never move atime (else: relatime)"})
    debug: bool = field(default=False, metadata={"help": "log one line per S3 request and FUSE call"})
    writeback: bool = field(default=False, metadata={"help": "close returns before the upload ends"})
    conflict_check: bool = field(
        default=True, metadata={"help": "uploads never replace another client's newer version"}
    )
    part_size: int = field(default=8 * MiB, metadata={"help": "multipart part size"})
    multipart_threshold: int = field(default=16 * MiB, metadata={"help": "upload in parts from this size"})
    parallel: int = field(default=8, metadata={"help": "parts/requests in flight per file"})
    readahead: int = field(default=64 * MiB, metadata={"help": "largest sequential readahead window"})
    kernel_readahead: int = field(
        default=1 * MiB, metadata={"help": "the kernel's readahead per file (root only; 0: leave it)"}
    )
    threads: bool = field(default=True, metadata={"help": "serve FUSE calls from many threads"})
    log_file: str = field(default="", metadata={"help": "log to this file"})
    profile: str = field(default="", metadata={"help": "AWS profile for credentials"})
    config: str = field(default="", metadata={"help": "path of s3.yaml (as -c)"})
    local: str = field(default="", metadata={"help": "run an embedded SeaweedFS storing here"})

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
            for item in filter(None, (s.strip() for s in spec.split(","))):
                name, has_value, value = item.partition("=")
                if name in cls.IGNORED or name.startswith("x-"):
                    continue
                if name not in known:
                    raise OptionError("unknown mount option: %s (see -o help)" % name)
                setattr(opts, name, _convert(name, known[name].type, value if has_value else None))
        return opts

    @classmethod
    def defaults_shown(cls) -> dict[str, str]:
        """Every option's default as ``-o help`` (and README.rst's table) writes it: ``4G``, ``on``."""
        defaults = cls()
        shown = {}
        for f in fields(cls):
            value = getattr(defaults, f.name)
            if f.name == "umask":
                text = "%03o" % value
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
        shown = cls.defaults_shown()
        return "\n".join(
            "  %-22s %s (default: %s)" % (f.name, f.metadata.get("help", ""), shown[f.name])
            for f in fields(cls)
        )


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
        if kind == "int" and name in SIZE_OPTIONS:
            return parse_size(value)
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
    except ValueError:
        raise OptionError("bad value for option %s: %r" % (name, value)) from None
    return value
