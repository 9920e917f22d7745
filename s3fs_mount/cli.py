"""The ``s3fs-mount`` command: check everything, then mount in the foreground or as a daemon.

::

    s3fs-mount [-c CONFIG] [-f] [-o OPT[,OPT...]]... BUCKET[:/PREFIX] MOUNTPOINT
    s3fs-mount [-f] [-o OPT[,OPT...]]... --local DATA_DIR MOUNTPOINT

Options may also follow the positionals, as mount(8) and mount.fuse3 put them
(``s3fs-mount SOURCE MOUNTPOINT -o OPTIONS``). Every failure before the mount
is one line on stderr: exit status 2 for usage errors, 1 for the rest. A
traceback is only ever logged, at debug level (``-o debug``).

Without ``-f`` the command forks: the child becomes a daemon and serves the
mount; the parent returns 0 once the mount point is mounted, or 1 with the
reason when the child gives up first.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import logging.handlers
import os
import re
import secrets
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

from s3fs_mount import __version__, control
from s3fs_mount.config import load_settings
from s3fs_mount.fs.options import MountOptions, OptionError, human_size, split_options
from s3fs_mount.s3 import RemoteStore, RetryPolicy, S3Connection
from s3fs_mount.s3.errors import (
    HEAD_400,
    KEYS_REFUSED,
    ConfigError,
    ConnectionFailed,
    RemoteStoreError,
    S3Error,
    TimedOut,
    TLSFailed,
    TransportError,
)

log = logging.getLogger(__name__)

PROG = "s3fs-mount"
LOCAL_BUCKET = "local"
MOUNT_WAIT = 30.0  # seconds the parent waits for the daemon's mount
LOCAL_MOUNT_WAIT = 90.0  # the embedded server may take up to 60 s to start
#: How long a --local mount waits for the server of an earlier mount of its data dir to stop.
LOCAL_LOCK_WAIT = 45.0
POLL_INTERVAL = 0.05
DEV_FUSE = "/dev/fuse"
SYSLOG_SOCKET = "/dev/log"
USAGE = (
    "%(prog)s [-c CONFIG] [-f] [-o OPT[,OPT...]]... BUCKET[:/PREFIX] MOUNTPOINT\n"
    "       %(prog)s [-f] [-o OPT[,OPT...]]... --local DATA_DIR MOUNTPOINT\n"
    "       %(prog)s status MOUNTPOINT | sync MOUNTPOINT"
)
EPILOG = """\
BUCKET may be BUCKET:/PREFIX (or s3://BUCKET/PREFIX) to mount only the keys
under PREFIX. Settings come from CONFIG, ./s3.yaml or
~/.config/s3fs-mount/s3.yaml, then AWS_* variables and ~/.aws (see
s3.yaml.example). '-o help' lists the mount options.

'status MOUNTPOINT' shows what is mounted from where, cache use and the files
waiting to upload; 'sync MOUNTPOINT' waits until nothing is pending.

examples:
  s3fs-mount my-bucket ~/bucket
  s3fs-mount -c ~/work.yaml -o ro,cache_size=2G my-bucket:/photos /mnt/photos
  s3fs-mount --local ~/s3-data ~/bucket
unmount with: fusermount3 -u MOUNTPOINT (or umount)
"""


class CliError(Exception):
    """A failure to report as one line; ``status`` is the exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line instead of usage plus message."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise CliError("error: %s (see --help)" % message, 2)


@dataclass
class Invocation:
    """What the command line asks for, checked and normalized."""

    bucket: str  # empty: the config's default_bucket
    prefix: str  # '' or ends with '/'
    mountpoint: str
    opts: MountOptions
    config_path: str | None = None
    foreground: bool = False
    local_dir: str | None = None
    quiet: bool = False


# -- the command line -----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        usage=USAGE,
        description="Mount an S3 bucket as a directory.",
        epilog=EPILOG + "\nmount options (-o NAME[=VALUE][,...]):\n" + MountOptions.help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("places", nargs="*", metavar="BUCKET[:/PREFIX] MOUNTPOINT", help=argparse.SUPPRESS)
    parser.add_argument("-c", "--config", metavar="CONFIG", help="settings file (s3.yaml)")
    parser.add_argument(
        "-f", "--foreground", action="store_true", help="stay in the foreground, log to stderr"
    )
    parser.add_argument("-d", "--debug", action="store_true", help="same as -f -o debug")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing when the mount succeeds")
    parser.add_argument(
        "-o",
        dest="options",
        action="append",
        default=[],
        metavar="OPT[,OPT...]",
        help="mount options; '-o help' lists them",
    )
    parser.add_argument(
        "--local", metavar="DATA_DIR", help="serve from an embedded SeaweedFS storing in DATA_DIR"
    )
    parser.add_argument("--version", action="version", version="%s %s" % (PROG, __version__))
    return parser


def normalize_prefix(prefix: str) -> str:
    """``'/a//b/'`` -> ``'a/b/'``; ``''`` and ``'/'`` -> ``''``."""
    parts = [p for p in prefix.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise CliError("error: prefix %r may not hold '.' or '..' parts" % prefix, 2)
    return "/".join(parts) + "/" if parts else ""


def split_source(source: str) -> tuple[str, str]:
    """``'bucket:/photos'`` (or ``bucket:photos``, ``s3://bucket/photos``) -> ``('bucket', 'photos/')``."""
    if source.startswith("s3://"):
        bucket, _, prefix = source[len("s3://") :].partition("/")
    elif ":" in source:
        bucket, _, prefix = source.partition(":")
    else:
        bucket, _, prefix = source.partition("/")  # bucket names never hold '/'
    if not bucket:
        raise CliError("error: no bucket in %r: use BUCKET or BUCKET:/PREFIX" % source, 2)
    return bucket, normalize_prefix(prefix)


def _asks_help(specs: Sequence[str]) -> bool:
    """Is ``help`` one of the ``-o`` items? (A malformed one is said by MountOptions.parse.)"""
    try:
        return any(name == "help" for spec in specs for name, _ in split_options(spec))
    except OptionError:
        return False


def parse_command_line(argv: Sequence[str]) -> Invocation:
    """Parse ``argv`` (without the program name).

    :raises CliError: status 2, for any usage error or bad ``-o``.
    :raises SystemExit: 0, after ``--help``, ``--version`` or ``-o help``.
    """
    args = build_parser().parse_intermixed_args(list(argv))
    if _asks_help(args.options):
        print("%s mount options (-o NAME[=VALUE][,...]):\n%s" % (PROG, MountOptions.help_text()))
        raise SystemExit(0)
    try:
        opts = MountOptions.parse(args.options)
    except OptionError as exc:
        raise CliError("error: %s" % exc, 2) from None
    if args.debug:
        opts.debug = True
    if args.config and opts.config and os.path.abspath(args.config) != os.path.abspath(opts.config):
        raise CliError("error: both -c %s and -o config=%s given" % (args.config, opts.config), 2)
    local_dir = args.local or opts.local or None
    places = args.places
    if local_dir:
        if len(places) == 1:
            bucket, prefix = LOCAL_BUCKET, ""
        elif len(places) == 2:
            bucket, prefix = split_source(places[0])
            if bucket != LOCAL_BUCKET:
                raise CliError("error: with --local the bucket is %r, not %r" % (LOCAL_BUCKET, bucket), 2)
        else:
            raise CliError("error: --local takes DATA_DIR, then MOUNTPOINT", 2)
    elif len(places) == 2:
        bucket, prefix = split_source(places[0])
    elif len(places) == 1:
        bucket, prefix = "", ""  # the config's default_bucket, checked once settings are loaded
    else:
        raise CliError("error: expected BUCKET[:/PREFIX] MOUNTPOINT", 2)
    # The daemon runs from '/', so every path it keeps must be absolute.
    opts.cache_dir = os.path.abspath(os.path.expanduser(opts.cache_dir))
    if opts.log_file:
        opts.log_file = os.path.abspath(os.path.expanduser(opts.log_file))
    if opts.sse_c_key_file:
        opts.sse_c_key_file = os.path.abspath(os.path.expanduser(opts.sse_c_key_file))
    return Invocation(
        bucket=bucket,
        prefix=prefix,
        mountpoint=os.path.abspath(os.path.expanduser(places[-1])),
        opts=opts,
        config_path=args.config or opts.config or None,
        foreground=args.foreground or args.debug,
        quiet=args.quiet,
        local_dir=os.path.abspath(os.path.expanduser(local_dir)) if local_dir else None,
    )


# -- logging --------------------------------------------------------------------------------

_installed: list[logging.Handler] = []


def _log_to(handler: logging.Handler, fmt: str, debug: bool, default: int) -> None:
    """Make ``handler`` the one handler we own on the root logger."""
    root = logging.getLogger()
    for old in _installed:
        root.removeHandler(old)
    _installed[:] = [handler]
    handler.setFormatter(logging.Formatter(fmt))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else default)
    # urllib3's connection chatter drowns our per-request lines; mfusepy ("fuse") logs its
    # set-up and every errno we return, which s3fs_mount.fs.errors already reports.
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    logging.getLogger("fuse").setLevel(logging.INFO)


def _log_checks_to_stderr(debug: bool) -> None:
    """Before the mount: warnings as one tidy line each, everything with -o debug."""
    _log_to(logging.StreamHandler(sys.stderr), PROG + ": %(levelname)s: %(message)s", debug, logging.WARNING)


def _log_serving(handler: logging.Handler, debug: bool) -> None:
    _log_to(handler, "%(asctime)s %(levelname)s %(name)s: %(message)s", debug, logging.INFO)


# -- checks ---------------------------------------------------------------------------------


def check_mountpoint(path: str, nonempty: bool = False) -> None:
    """The mount point must be an unmounted (empty, unless ``nonempty``) directory, and FUSE there."""
    if not os.path.lexists(path):
        raise CliError("mount point does not exist: %s" % path)
    if not os.path.isdir(path):
        raise CliError("mount point is not a directory: %s" % path)
    if os.path.ismount(path):
        raise CliError("already mounted: %s (unmount it first: fusermount3 -u %s)" % (path, path))
    try:
        occupied = not nonempty and bool(os.listdir(path))
    except OSError:
        occupied = False  # unreadable to us: FUSE decides
    if occupied:
        # libfuse3 mounts over it silently (libfuse2 refused): the files would be hidden.
        raise CliError(
            "mount point is not empty: %s (its files would be hidden; -o nonempty mounts anyway)" % path
        )
    if not os.path.exists(DEV_FUSE):
        raise CliError(
            "%s not found: load the fuse module (modprobe fuse), or give the container --device %s"
            % (DEV_FUSE, DEV_FUSE)
        )


def check_bucket(store: RemoteStore, bucket: str, debug: bool = False) -> None:
    """HEAD the bucket, turning each way it can fail into one line that says what to fix."""
    conn = store.connection
    where = "%s://%s" % (conn.scheme, conn.endpoint)
    saved_retry = conn.retry
    # A few quick tries: a person is waiting, and a dead endpoint should say so soon.
    conn.retry = RetryPolicy(max_attempts=3, max_total=15.0)
    retry_log = logging.getLogger("s3fs_mount.s3.retry")
    saved_level = retry_log.level
    if not debug:
        retry_log.setLevel(logging.ERROR)  # the final error says it all
    try:
        found = store.bucket_exists(bucket)
    except S3Error as headed:
        exc = _said_why(store, bucket, headed)
        if exc.hint and exc.hint not in (HEAD_400, KEYS_REFUSED):
            said = "%s (S3 said: %d %s)" % (exc.hint, exc.status, exc.code)
            raise CliError("cannot use bucket %s at %s: %s" % (bucket, where, said)) from None
        if exc.access_denied:
            raise CliError(
                "access denied to bucket %s at %s: check the access key and secret (S3 said: %s)"
                % (bucket, where, exc.code)
            ) from None
        hint = ""
        if exc.status in (301, 307, 400):
            hint = ": check region and endpoint (the bucket may live in another region)"
        raise CliError(
            "cannot use bucket %s at %s (S3 said: %d %s)%s" % (bucket, where, exc.status, exc.code, hint)
        ) from None
    except TLSFailed as exc:
        raise CliError(
            "cannot reach S3 at %s: TLS failed (%s); for plain http set tls: false" % (where, exc.reason)
        ) from None
    except TimedOut as exc:
        raise CliError("cannot reach S3 at %s: timed out (%s)" % (where, exc.reason)) from None
    except ConnectionFailed as exc:
        raise CliError("cannot reach S3 at %s: %s" % (where, exc.reason)) from None
    except TransportError as exc:
        raise CliError("request to S3 at %s failed: %s" % (where, exc.reason)) from None
    finally:
        conn.retry = saved_retry
        retry_log.setLevel(saved_level)
    if not found:
        raise CliError("no such bucket: %s at %s" % (bucket, where))
    # Drop the pooled socket: the daemon must not share a connection with its parent.
    conn.close()


def _said_why(store: RemoteStore, bucket: str, exc: S3Error) -> S3Error:
    """A HEAD's refusal has no body to name its reason: a one-key listing asks S3 again for it."""
    if exc.message or exc.status not in (400, 403):
        return exc
    try:
        next(store.list(bucket=bucket, delimiter=None, max_keys=1))
    except S3Error as listed:
        return listed
    except RemoteStoreError:
        pass
    return exc


def _load_serve() -> Callable[..., int]:
    try:
        from s3fs_mount.fs.mount import serve
    except (ImportError, OSError) as exc:  # fusepy raises OSError when libfuse is missing
        log.debug("importing the filesystem failed", exc_info=True)
        raise CliError("cannot load the filesystem: %s" % exc) from None
    return serve


# -- running --------------------------------------------------------------------------------


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, (CliError, ConfigError)):
        return text
    return "%s: %s" % (exc.__class__.__name__, text) if text else exc.__class__.__name__


def launch(
    inv: Invocation, run: Callable[[], int], wait: float = MOUNT_WAIT, done: Callable[[], str] | None = None
) -> int:
    """Run ``run`` (which serves the mount until unmounted) here with ``-f``, else in a daemon.

    ``done`` makes the line printed once the daemon's mount is up (unless ``-q``).
    """
    if inv.foreground:
        _log_serving(logging.StreamHandler(sys.stderr), inv.opts.debug)
        _report_crashes(sys.stderr)
        return run()
    code = daemonize(run, inv.mountpoint, inv.opts, wait)
    if code == 0 and done is not None and not inv.quiet:
        print(done())
    return code


def _report_crashes(stream: TextIO) -> None:
    """A crash below Python (libfuse, ctypes) writes every thread's stack to ``stream``, if it is
    a file (a harness may have swapped stderr for a buffer: then nothing)."""
    try:
        faulthandler.enable(stream)
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both of the last two
        log.debug("no crash report: %r has no file descriptor", stream)


def _mounted_line(inv: Invocation, bucket: str, endpoint: str, extra: str = "") -> str:
    source = bucket + (":/" + inv.prefix.rstrip("/") if inv.prefix else "")
    return "mounted %s from %s on %s%s (cache %s)" % (
        source,
        endpoint,
        inv.mountpoint,
        extra,
        inv.opts.cache_dir,
    )


def daemonize(run: Callable[[], int], mountpoint: str, opts: MountOptions, wait: float = MOUNT_WAIT) -> int:
    """Fork; the child serves ``run`` as a daemon, the parent waits for the mount to appear.

    No threads may exist yet: only the forking thread survives a fork.
    """
    log_path = opts.log_file or os.path.join(opts.cache_dir, "s3fs-mount.log")
    use_syslog = not opts.log_file and os.path.exists(SYSLOG_SOCKET)
    where = "the system log (journalctl -t %s) and %s" % (PROG, log_path) if use_syslog else log_path
    try:
        os.makedirs(os.path.dirname(log_path), mode=0o700, exist_ok=True)
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    except OSError as exc:
        raise CliError("cannot open log file %s: %s" % (log_path, exc.strerror or exc)) from None
    # The child sends its last words through this pipe, so the parent can print them.
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(read_fd)
        _run_daemon(run, log_fd, write_fd, use_syslog, opts.debug)
    os.close(write_fd)
    os.close(log_fd)
    try:
        return _wait_for_mount(pid, read_fd, mountpoint, where, wait)
    finally:
        os.close(read_fd)


def _run_daemon(run: Callable[[], int], log_fd: int, report_fd: int, use_syslog: bool, debug: bool) -> None:
    """The child's life: detach, log, serve, exit. Never returns."""
    code = 1
    try:
        os.setsid()  # leave the terminal's session: its hangup must not kill the mount
        os.chdir("/")  # do not keep the caller's directory busy
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        os.dup2(log_fd, 1)  # libfuse and stray prints land in the log file
        os.dup2(log_fd, 2)
        os.close(log_fd)
        # Python's streams may have been swapped (by a test harness, say): point them at the log too.
        sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
        sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        if use_syslog:
            try:
                handler = logging.handlers.SysLogHandler(
                    SYSLOG_SOCKET, facility=logging.handlers.SysLogHandler.LOG_DAEMON
                )
                handler.ident = "%s[%d]: " % (PROG, os.getpid())
            except OSError:
                handler = logging.StreamHandler(sys.stderr)
        _log_serving(handler, debug)
        _report_crashes(sys.stderr)  # the log file
        log.info("%s %s daemon started (pid %d)", PROG, __version__, os.getpid())
        code = run()
        if code:
            _report(report_fd, "the filesystem stopped with status %d" % code)
    except BaseException as exc:  # noqa: B036 - the daemon must always reach os._exit
        log.error("mount failed: %s", _describe(exc))
        log.debug("traceback", exc_info=True)
        _report(report_fd, _describe(exc))
    finally:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def _report(fd: int, message: str) -> None:
    try:
        os.write(fd, message.encode("utf-8", "replace")[:4000])
    except OSError:
        pass  # the parent is gone: the log has it


def _wait_for_mount(pid: int, read_fd: int, mountpoint: str, where: str, wait: float) -> int:
    deadline = time.monotonic() + wait
    while True:
        if os.path.ismount(mountpoint):
            return 0
        done, _status = os.waitpid(pid, os.WNOHANG)
        if done:
            reason = os.read(read_fd, 4096).decode("utf-8", "replace").strip()
            if reason:
                raise CliError("mount failed: %s; see %s" % (reason.splitlines()[0], where))
            raise CliError("mount failed, see %s" % where)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGTERM)  # a mount that shows up after we gave up would surprise
            raise CliError("mount did not appear within %.0f s, gave up; see %s" % (wait, where))
        time.sleep(POLL_INTERVAL)


# -- the two kinds of mount -----------------------------------------------------------------


def mount_bucket(inv: Invocation) -> int:
    """Mount a bucket of the configured S3."""
    check_mountpoint(inv.mountpoint, inv.opts.nonempty)  # local and quick: before credentials are sought
    settings = load_settings(inv.config_path, inv.opts.profile or None)
    bucket = inv.bucket or settings.get("default_bucket")
    if not bucket:
        raise CliError("error: no BUCKET given and no default_bucket in the settings", 2)
    settings["default_bucket"] = bucket
    settings.update(inv.opts.object_settings())
    conn = S3Connection(**settings)
    if conn.object_options.describe():
        log.info("objects are written with %s", conn.object_options.describe())
    store = RemoteStore(
        conn,
        part_size=inv.opts.part_size,
        multipart_threshold=inv.opts.multipart_threshold,
        max_workers=inv.opts.parallel,
        checksums=inv.opts.checksum,
    )
    check_bucket(store, bucket, inv.opts.debug)
    serve = _load_serve()
    log.debug(
        "mounting %s/%s from %s://%s on %s", bucket, inv.prefix, conn.scheme, conn.endpoint, inv.mountpoint
    )
    endpoint = "%s://%s" % (conn.scheme, conn.endpoint)
    return launch(
        inv,
        lambda: serve(store, bucket, inv.prefix, inv.mountpoint, inv.opts),
        done=lambda: _mounted_line(inv, bucket, endpoint),
    )


def local_credentials(data_dir: str) -> tuple[str, str]:
    """The embedded server's keys, kept in DATA_DIR/credentials.json (0600) across remounts."""
    path = os.path.join(data_dir, "credentials.json")
    try:
        with open(path, encoding="utf-8") as fi:
            data = json.load(fi)
        access_key, secret_key = data["access_key_id"], data["secret_access_key"]
        if not (isinstance(access_key, str) and isinstance(secret_key, str) and access_key and secret_key):
            raise ValueError("empty keys")
        return access_key, secret_key
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not valid"
        raise CliError("%s: %s (delete it to make new keys)" % (path, detail)) from None
    access_key = "S3FS" + secrets.token_hex(8).upper()
    secret_key = secrets.token_hex(20)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fo:
            json.dump({"access_key_id": access_key, "secret_access_key": secret_key}, fo, indent=2)
            fo.write("\n")
    except OSError as exc:
        raise CliError("cannot write %s: %s" % (path, exc.strerror or exc)) from None
    return access_key, secret_key


def _local_connection(server: object, **extra: object) -> S3Connection:
    return S3Connection(
        access_key_id=server.access_key,  # type: ignore[attr-defined]
        secret_access_key=server.secret_key,  # type: ignore[attr-defined]
        endpoint=server.endpoint,  # type: ignore[attr-defined]
        tls=False,
        **extra,  # type: ignore[arg-type]
    )


def _local_ready(server: object) -> bool:
    """True once our own connector can create the ``local`` bucket on the embedded server."""
    if not getattr(server, "endpoint", None):
        return False
    store = RemoteStore(
        _local_connection(server, timeout=5.0, retry=RetryPolicy(max_attempts=1)), max_workers=1
    )
    try:
        store.create_bucket(LOCAL_BUCKET)
        return True
    except RemoteStoreError as exc:
        log.debug("local S3 not ready yet: %s", exc)
        return False
    finally:
        store.close()


def mount_local(inv: Invocation) -> int:
    """Mount the ``local`` bucket of an embedded SeaweedFS that lives as long as the mount."""
    try:
        from s3fs_mount.localserver import LocalS3Server, ServerError, saved_endpoint, volumes_for
    except (ImportError, OSError) as exc:
        raise CliError("--local is not available: %s" % exc) from None
    serve = _load_serve()
    data_dir = inv.local_dir or ""
    try:
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise CliError("cannot create %s: %s" % (data_dir, exc.strerror or exc)) from None
    check_mountpoint(inv.mountpoint, inv.opts.nonempty)
    _wait_for_data_dir(data_dir)
    access_key, secret_key = local_credentials(data_dir)
    sized_by = "-o local_size" if inv.opts.local_size else "the disk's free space; -o local_size sets it"

    def full() -> str | None:
        if not server.full():
            return None
        return (
            "the embedded S3 server is full (it holds %s, %s): free space in %s or mount with a larger "
            "-o local_size" % (capacity, sized_by, data_dir)
        )

    # Started in the process that serves the mount (run), so that they end together.
    server = LocalS3Server(
        data_dir,
        access_key=access_key,
        secret_key=secret_key,
        stable=True,
        volume_max=volumes_for(data_dir, inv.opts.local_size),
    )
    capacity = human_size(server.capacity)

    def run() -> int:
        try:
            try:
                server.lock(timeout=LOCAL_LOCK_WAIT, owner=", mounted on %s" % inv.mountpoint)  # one per dir
                server.start(lambda: _local_ready(server), timeout=60)
            except ServerError as exc:
                raise CliError(str(exc).splitlines()[0]) from None
            conn = _local_connection(server, default_bucket=LOCAL_BUCKET, **inv.opts.object_settings())
            store = RemoteStore(
                conn,
                part_size=inv.opts.part_size,
                multipart_threshold=inv.opts.multipart_threshold,
                max_workers=inv.opts.parallel,
                checksums=inv.opts.checksum,
            )
            log.info("local S3 at http://%s (bucket %s, data in %s)", server.endpoint, LOCAL_BUCKET, data_dir)
            return serve(store, LOCAL_BUCKET, inv.prefix, inv.mountpoint, inv.opts, server_full=full)
        finally:
            # Everything is in S3 (the unmount uploaded it) and weed's writes are in the kernel's
            # hands: SIGKILL at once. On SIGTERM weed waits ~14 s for its gRPC streams before it
            # syncs and closes anything; in the 3 s it had here (round 38) it wrote no byte to
            # its data directory (strace, round 39: bench/README.md), so they bought nothing.
            server.stop(kill=True)
            server.unlock()

    def done() -> str:
        extra = ", keys in %s, holds up to %s" % (os.path.join(data_dir, "credentials.json"), capacity)
        return _mounted_line(inv, LOCAL_BUCKET, "http://%s" % saved_endpoint(data_dir), extra)

    return launch(inv, run, LOCAL_MOUNT_WAIT, done=done)


def _wait_for_data_dir(data_dir: str, timeout: float = LOCAL_LOCK_WAIT) -> None:
    """Wait (saying so) while the server of an earlier mount of ``data_dir`` is still stopping."""
    from s3fs_mount.localserver import DataDirInUse, wait_until_free

    def waiting(holder: str) -> None:
        print(
            "%s: waiting for the embedded server still using %s (%s) to stop..." % (PROG, data_dir, holder),
            file=sys.stderr,
        )

    def mounted(holder: str) -> bool:  # its mount is up: waiting would not help
        where = holder.partition(", mounted on ")[2]
        return bool(where) and os.path.ismount(where)

    try:
        wait_until_free(data_dir, timeout, waiting, mounted)
    except DataDirInUse as exc:
        raise CliError(
            "%s is in use by the embedded server of another mount (%s); unmount it first"
            % (data_dir, exc.holder)
        ) from None
    except OSError as exc:
        raise CliError("cannot open %s/server.lock: %s" % (data_dir, exc.strerror or exc)) from None


# -- entry points ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``s3fs-mount`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    try:
        return _main(sys.argv[1:] if argv is None else list(argv))
    except BrokenPipeError:
        # Whoever read our output has gone (``s3fs-mount status M | head -1``): stop quietly, as
        # a shell tool killed by SIGPIPE would, and let nothing write to that pipe at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def _main(argv: list[str]) -> int:
    """main's work."""
    if argv and argv[0] in ("status", "sync"):
        return control.main(argv)
    try:
        inv = parse_command_line(argv)
        _log_checks_to_stderr(inv.opts.debug)
        if inv.local_dir:
            return mount_local(inv)
        return mount_bucket(inv)
    except SystemExit as exc:  # --help, --version, -o help
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    except CliError as exc:
        print("%s: %s" % (PROG, exc), file=sys.stderr)
        return exc.status
    except ConfigError as exc:
        print("%s: %s" % (PROG, _describe(exc)), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("%s: interrupted" % PROG, file=sys.stderr)
        return 130
    except BrokenPipeError:
        raise  # see main
    except Exception as exc:
        log.debug("unexpected error", exc_info=True)
        print("%s: %s (-o debug shows more)" % (PROG, _describe(exc)), file=sys.stderr)
        return 1


def strip_mount_helper_flags(argv: Sequence[str]) -> tuple[list[str], bool]:
    """Drop what mount(8) adds for a helper: ``-s -n -v``, ``-N NS``, ``-t TYPE``; ``-f`` means fake.

    Returns the remaining arguments and whether this is a fake (``mount -f``) run.
    """
    kept: list[str] = []
    fake = False
    items = iter(argv)
    for arg in items:
        if arg in ("-t", "-N"):
            next(items, None)
        elif re.fullmatch(r"-[sfnv]+", arg):
            fake = fake or "f" in arg
        else:
            kept.append(arg)
    return kept, fake


def mount_helper_main(argv: Sequence[str] | None = None) -> int:
    """``mount.fuse.s3fs-mount SOURCE DIR [-sfnv] [-o OPTS]``: what mount(8) runs for fstab lines.

    Same as :func:`main`, but with mount(8)'s helper flags, where ``-f`` means
    "fake" (do nothing) rather than foreground.
    """
    args, fake = strip_mount_helper_flags(sys.argv[1:] if argv is None else argv)
    if fake:
        return 0
    return main(args)


if __name__ == "__main__":
    sys.exit(main())
