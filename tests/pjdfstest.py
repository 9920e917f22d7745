"""pjdfstest, the POSIX file-system conformance suite, run against a real mount: build, run, count.

The suite's source stays unmodified where it is vendored (``../shared/vendor/pjdfstest`` beside
the repository, or ``$PJDFSTEST_SRC``); :func:`build` copies it into a cache directory keyed by a
hash of the source and compiles it there once, so reruns cost nothing. :func:`run` runs
``prove -r -v`` over some or all of its test files from a fresh directory inside a mount and
parses the TAP output into a :class:`Result`.

As a script it needs no pytest run: it starts its own SeaweedFS, makes a bucket, mounts it with
the real command, runs the suite, prints the totals and every failure, and stops what it started::

    .venv/bin/python tests/pjdfstest.py --all               # the whole suite (238 files), -j2
    .venv/bin/python tests/pjdfstest.py --all -j1 --brief   # one file at a time, no TAP lines
    .venv/bin/python tests/pjdfstest.py chmod rename/00.t   # chosen directories / files

It must run as root (pjdfstest switches uids itself) on a machine with FUSE, autoconf,
automake, a C compiler, make and perl's prove (tests/run.sh installs them).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent
ROOT = TESTS_DIR.parent
DEFAULT_SRC = ROOT.parent / "shared" / "vendor" / "pjdfstest"
CACHE_ROOT = Path("/var/tmp/s3fs-mount-pjdfstest")

#: Mount options pjdfstest needs: it runs as root and switches to other uids to test permission
#: checks, which FUSE refuses without allow_other (our allow_other brings default_permissions, so
#: the kernel checks the stored modes).
MOUNT_OPTIONS = "allow_other"


class BuildError(RuntimeError):
    """pjdfstest's source is missing, or autoreconf/configure/make failed."""


def source_dir() -> Path:
    """The vendored pjdfstest source: ``$PJDFSTEST_SRC``, else ``../shared/vendor/pjdfstest``.

    A checkout cloned from a local repository (``git clone /work/main /tmp/x``) looks beside that
    repository too, where ``shared/`` is.
    """
    if os.environ.get("PJDFSTEST_SRC"):
        return Path(os.environ["PJDFSTEST_SRC"])
    candidates = [DEFAULT_SRC]
    origin = subprocess.run(["git", "-C", str(ROOT), "config", "--get", "remote.origin.url"],
                            capture_output=True, text=True).stdout.strip()
    if origin.startswith("/") or origin.startswith("file://"):
        origin_root = Path(origin.removeprefix("file://")).resolve()
        candidates.append(origin_root.parent / "shared" / "vendor" / "pjdfstest")
    return next((c for c in candidates if (c / "pjdfstest.c").is_file()), DEFAULT_SRC)


def source_hash(src: Path) -> str:
    """A sha256 over every file's relative path, mode and content (``.git`` excluded)."""
    h = hashlib.sha256()
    for path in sorted(p for p in src.rglob("*") if ".git" not in p.relative_to(src).parts):
        if path.is_file():
            h.update(b"%s\0%o\0" % (str(path.relative_to(src)).encode(), path.stat().st_mode & 0o777))
            h.update(path.read_bytes())
    return h.hexdigest()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive flock on ``path`` (two builds of the same tree wait for each other)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _make_writable(tree: Path) -> None:
    """The vendored copy is read-only; the build writes into its copy's directories."""
    for path in [tree, *tree.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | 0o200)


def build(dest_dir: str | Path = CACHE_ROOT, src: str | Path | None = None) -> Path:
    """Build pjdfstest into ``dest_dir/<hash of the source>`` (once); return the binary's path.

    The binary sits at the top of the copied tree, beside its ``tests/`` directory, which is where
    tests/misc.sh looks for it (it walks up from each test file).
    """
    src = Path(src) if src else source_dir()
    if not (src / "pjdfstest.c").is_file() or not (src / "tests" / "misc.sh").is_file():
        raise BuildError("pjdfstest source not found at %s (set PJDFSTEST_SRC)" % src)
    tree = Path(dest_dir) / source_hash(src)[:16]
    binary = tree / "pjdfstest"
    stamp = tree / ".built"
    if stamp.is_file() and os.access(binary, os.X_OK):
        return binary
    with _locked(Path(dest_dir) / ".lock"):
        if stamp.is_file() and os.access(binary, os.X_OK):
            return binary
        tools = ("autoreconf", "automake", "cc", "make", "prove")
        missing = [tool for tool in tools if not shutil.which(tool)]
        if missing:
            raise BuildError("cannot build pjdfstest: missing %s (apt-get install autoconf automake "
                             "gcc make perl)" % ", ".join(missing))
        work = tree.with_name(tree.name + ".tmp%d" % os.getpid())
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(src, work, symlinks=True, ignore=shutil.ignore_patterns(".git"))
        _make_writable(work)
        log_path = work / "build.log"
        with open(log_path, "wb") as log:
            for cmd in (["autoreconf", "-ifs"], ["./configure"], ["make", "pjdfstest"]):
                log.write(b"$ %s\n" % " ".join(cmd).encode())
                log.flush()
                rc = subprocess.run(cmd, cwd=work, stdout=log, stderr=subprocess.STDOUT).returncode
                if rc != 0:
                    raise BuildError("%s failed (exit %d); see %s:\n%s"
                                     % (" ".join(cmd), rc, log_path, _tail(log_path)))
        (work / ".built").write_text(src.as_posix() + "\n")
        shutil.rmtree(tree, ignore_errors=True)
        os.rename(work, tree)
    return binary


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


# -- running and parsing ----------------------------------------------------------------------


@dataclass
class Result:
    """Totals of one prove run. Every planned test point is passed, failed or todo."""

    planned: int = 0
    passed: int = 0  #: ``ok`` (including ``# SKIP``)
    failed: int = 0  #: ``not ok``, plus points planned but never reported (``missing``)
    todo: int = 0  #: ``not ok # TODO``: failures the suite expects on this system
    missing: int = 0  #: planned but not reported: the script stopped early (or timed out)
    files: int = 0
    failures: dict[str, list[int]] = field(default_factory=dict)  #: ``chmod/00.t`` -> failed numbers
    messages: dict[str, dict[int, str]] = field(default_factory=dict)  #: file -> number -> text
    seconds: float = 0.0
    timed_out: bool = False
    output: str = ""  #: prove's whole stdout
    errors: str = ""  #: the tests' stderr

    plans: dict[str, int] = field(default_factory=dict)  #: file -> test points it planned
    file_passed: dict[str, int] = field(default_factory=dict)  #: file -> test points it passed

    def passed_except(self, files: Sequence[str]) -> int:
        """Test points passed in every file but ``files``."""
        return self.passed - sum(self.file_passed.get(f, 0) for f in files)

    def by_dir(self) -> dict[str, tuple[int, int]]:
        """``{'chmod': (failed, planned), ...}`` for every directory that ran."""
        dirs: dict[str, list[int]] = {}
        for name, planned in sorted(self.plans.items()):
            entry = dirs.setdefault(name.split("/")[0], [0, 0])
            entry[0] += len(self.failures.get(name, ()))
            entry[1] += planned
        return {d: (f, p) for d, (f, p) in dirs.items()}

    def summary(self) -> str:
        line = "%d planned, %d passed, %d failed" % (self.planned, self.passed, self.failed)
        extra = [text for text, show in (("%d todo" % self.todo, self.todo),
                                         ("%d never ran" % self.missing, self.missing),
                                         ("TIMED OUT", self.timed_out)) if show]
        return "%s%s (%d files, %.0fs)" % (line, " (%s)" % ", ".join(extra) if extra else "", self.files,
                                           self.seconds)

    def causes(self) -> dict[str, Counter[str]]:
        """Failures per directory, grouped by what failed (see :func:`cause`), most common first."""
        out: dict[str, Counter[str]] = {}
        for name, numbers in self.failures.items():
            state = FileState()
            counter = out.setdefault(name.split("/")[0], Counter())
            for n in numbers:
                counter[cause(self.messages[name][n], state, n)] += 1
        return out

    def report(self, lines: bool = True) -> str:
        """Totals, failures per directory (with their causes), per file (with each failing line)."""
        out = ["pjdfstest: " + self.summary()]
        if self.failed:
            out.append("failures by directory (failed/planned), then by cause:")
            causes = self.causes()
            for d, (f, p) in self.by_dir().items():
                if f:
                    out.append("  %-16s %4d/%d" % (d, f, p))
                    out += ["      %5d  %s" % (k, c) for c, k in causes[d].most_common()]
            out.append("failures by file:")
            for name, numbers in self.failures.items():
                out.append("  %-16s %s" % (name, _ranges(numbers)))
                if lines:
                    out += ["      %s" % self.messages[name][n] for n in numbers]
        return "\n".join(out)


CREATES = frozenset({"create", "open", "openat", "mkdir", "mkdirat", "mkfifo", "mkfifoat", "mknod",
                     "mknodat", "bind", "bindat", "symlink", "symlinkat", "link", "linkat", "rename"})
TRIED = re.compile(r"^not ok \d+ - tried '(?P<cmd>.*)', expected (?P<expected>.*), got (?P<got>.*)$")
NAME = re.compile(r"pjdfstest_[0-9a-f]+")
ERRNO = re.compile(r"^E[A-Z0-9]+$")


@dataclass
class FileState:
    """What :func:`cause` remembers while it reads one file's failing lines in order."""

    failed_creates: dict[str, str] = field(default_factory=dict)  #: name -> e.g. ``"mkfifo ENOSYS"``
    last_create: str = ""  #: the latest failed create
    previous: tuple[int, bool] = (0, False)  #: (number, was a failed call or cascade) of the last line


def cause(message: str, state: FileState | None = None, number: int = 0) -> str:
    """A short, name-free label for one failing TAP line, e.g. ``mkfifo: got ENOSYS, expected 0``.

    pjdfstest's lines read ``not ok N - tried '[-u U] [-g G] call args [: call args...]', expected
    E, got R`` (R is what the last call printed); ``stat`` mismatches are labelled by field. With
    ``state`` (one per file, lines fed in order with their ``number``), consequences of an earlier
    failure are labelled ``cascade:`` instead of as causes of their own: an ENOENT (or a success
    where an error was due) after a create failed, and a bare ``not ok N`` (a ``test_check``, mostly
    a timestamp comparison) right after a failed call.
    """
    state = FileState() if state is None else state
    label, failed_call = _label(message, state, number)
    state.previous = (number, failed_call)
    return label


def _label(message: str, state: FileState, number: int) -> tuple[str, bool]:
    if message.startswith("never ran"):
        return "never ran: the test script stopped early", False
    m = TRIED.match(message)
    if not m:
        if state.previous == (number - 1, True):
            return "cascade: a check right after a failed call", True
        return "bare check failed (test_check: a timestamp/ctime/mtime comparison)", False
    calls = [c.split() for c in m["cmd"].split(" : ")]
    while len(calls[0]) > 1 and calls[0][0] in ("-u", "-g", "-U"):
        calls[0] = calls[0][2:]
    call = calls[-1]
    op = call[0] if call else "?"
    expected, got = m["expected"], m["got"].strip()
    creates = [c for c in calls if c and c[0] in CREATES]
    if creates and expected == "0":
        missing_source = got == "ENOENT" and bool(state.last_create)  # its source/parent was never made
        what = state.last_create if missing_source else "%s %s" % (creates[0][0], got or "?")
        state.failed_creates.update({n: what for n in NAME.findall(" ".join(creates[0][1:2]))})
        if missing_source:
            return "cascade: ENOENT after %s (the node could not be created)" % what, True
        state.last_create = what
    elif state.last_create and (got == "ENOENT" or (got == "0" and ERRNO.match(expected.split("|")[0]))):
        # On that name, or through a symlink/link to it, or in its place: the missing node.
        hit = [state.failed_creates[n] for n in NAME.findall(m["cmd"]) if n in state.failed_creates]
        return "cascade: %s after %s (the node could not be created)" % (
            "ENOENT" if got == "ENOENT" else "success where an error was due",
            hit[0] if hit else state.last_create), True
    if op in ("stat", "lstat", "fstat", "fstatat") and len(call) >= 3 and not ERRNO.match(got):
        return "%s %s: wrong value" % (op, call[-1]), True
    who = "(as another uid) " if m["cmd"].startswith("-") else ""
    return "%s%s: got %s, expected %s" % (who, op, got or "nothing", expected), True


def _ranges(numbers: Sequence[int]) -> str:
    """[1, 2, 3, 7] -> '1-3, 7'."""
    parts: list[str] = []
    for n in numbers:
        if parts and parts[-1].split("-")[-1] == str(n - 1):
            parts[-1] = parts[-1].split("-")[0] + "-%d" % n
        else:
            parts.append(str(n))
    return ", ".join(parts)


HEADER = re.compile(r"^(?P<path>/\S+\.t) \.+ ?$")
PLAN = re.compile(r"^1\.\.(?P<n>\d+)")
POINT = re.compile(r"^(?P<not>not )?ok (?P<n>\d+)\b(?P<rest>.*)$")


def parse(output: str, tests_root: str | Path) -> Result:
    """Count the TAP in ``prove -v`` output (test files under ``tests_root``)."""
    result = Result(output=output)
    root = str(tests_root).rstrip("/") + "/"
    current: str | None = None
    plans: dict[str, int] = {}
    seen: dict[str, set[int]] = {}

    for line in output.splitlines():
        header = HEADER.match(line)
        if header and header["path"].startswith(root):
            current = header["path"][len(root):]
            plans.setdefault(current, 0)
            seen.setdefault(current, set())
            continue
        if current is None:
            continue
        plan = PLAN.match(line)
        if plan:
            plans[current] = int(plan["n"])
            continue
        point = POINT.match(line)
        if point:
            n = int(point["n"])
            seen[current].add(n)
            directive = point["rest"].partition("#")[2].strip().upper()
            if point["not"] and directive.startswith("TODO"):
                result.todo += 1
            elif point["not"]:
                result.failures.setdefault(current, []).append(n)
                result.messages.setdefault(current, {})[n] = line
            else:
                result.passed += 1
                result.file_passed[current] = result.file_passed.get(current, 0) + 1

    for name, planned in plans.items():
        unseen = sorted(set(range(1, planned + 1)) - seen[name])
        if unseen:
            result.missing += len(unseen)
            result.failures.setdefault(name, []).extend(unseen)
            never = {n: "never ran %d (the script stopped)" % n for n in unseen}
            result.messages.setdefault(name, {}).update(never)
        result.planned += planned
    result.failures = {k: sorted(v) for k, v in sorted(result.failures.items())}
    result.failed = sum(len(v) for v in result.failures.values())
    result.files = len(plans)
    result.plans = plans
    return result


def prove_paths(tree: Path, subset: Sequence[str] | None) -> list[str]:
    """Absolute paths for prove: ``subset`` entries are directories or files under tests/."""
    tests = tree / "tests"
    if not subset:
        return [str(tests)]
    paths = []
    for entry in subset:
        path = tests / entry
        if not path.exists():
            raise ValueError("no such pjdfstest test: %s (under %s)" % (entry, tests))
        paths.append(str(path))
    return paths


def run(mountpoint: str | Path, tests_subset: Sequence[str] | None = None, timeout: float = 3600.0,
        binary: str | Path | None = None, jobs: int = 1) -> Result:
    """Run pjdfstest (all of it, or ``tests_subset``) with cwd a fresh directory in ``mountpoint``.

    Must run as root. The directory is removed afterwards (best effort). On ``timeout`` prove's
    process group is killed and what ran is counted (``timed_out`` is set).
    """
    tree = Path(binary).parent if binary else build().parent
    cmd = ["prove", "-r", "-v", *(["-j%d" % jobs] if jobs > 1 else []), *prove_paths(tree, tests_subset)]
    workdir = Path(tempfile.mkdtemp(prefix="pjdfstest-", dir=mountpoint))
    workdir.chmod(0o755)  # the tests run as other uids too, and must search their cwd
    t0 = time.monotonic()
    timed_out = False
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=workdir, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                start_new_session=True)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        seconds = time.monotonic() - t0
        out.seek(0)
        err.seek(0)
        output = out.read().decode(errors="replace")
        errors = err.read().decode(errors="replace")
    shutil.rmtree(workdir, ignore_errors=True)
    result = parse(output, tree / "tests")
    result.seconds, result.timed_out, result.errors = seconds, timed_out, errors
    return result


# -- the script: a fresh SeaweedFS, bucket and mount ----------------------------------------------


def run_fresh(tests_subset: Sequence[str] | None, options: str = MOUNT_OPTIONS, timeout: float = 3600.0,
              jobs: int = 1, keep: bool = False) -> Result:
    """Start SeaweedFS, make a bucket, mount it, run pjdfstest, unmount, stop the server."""
    import s3rig
    from mountrig import Mount

    binary = build()
    base = Path(tempfile.mkdtemp(prefix="s3fs-pjdfstest-"))
    server = s3rig.start_local_server(base / "weed")
    mount: Mount | None = None
    try:
        boto = s3rig.make_boto_client(server.endpoint, server.access_key, server.secret_key)
        bucket = s3rig.unique_bucket_name("pjdfstest")
        boto.create_bucket(Bucket=bucket)
        config = s3rig.write_s3yaml(base / "s3.yaml", s3rig.s3_config(server, bucket))
        mount = Mount(str(config), bucket, str(base / "mnt"), str(base / "cache"), str(base / "mount.log"),
                      options)
        mount.start()
        print("mounted %s at %s (-o %s); log %s" % (bucket, mount.path, options, mount.log_path),
              file=sys.stderr)
        return run(mount.path, tests_subset, timeout=timeout, binary=binary, jobs=jobs)
    finally:
        if mount is not None:
            try:
                mount.stop(timeout=60)
            except Exception:  # noqa: BLE001 - a hung unmount must not leave the server running
                mount.kill()
        server.stop(kill=True)
        if keep:
            print("kept %s" % base, file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tests", nargs="*", help="directories/files under pjdfstest's tests/")
    parser.add_argument("--all", action="store_true", help="run the whole suite (also without tests)")
    parser.add_argument("-o", "--options", default=MOUNT_OPTIONS, help="mount options (default: %(default)s)")
    parser.add_argument("-j", "--jobs", type=int, default=2, help="test files at a time (default 2, as CI)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds for prove (default 3600)")
    parser.add_argument("--keep", action="store_true", help="keep the server data, mount log and cache")
    parser.add_argument("--tap", metavar="FILE", help="also write prove's raw output here")
    parser.add_argument("--brief", action="store_true", help="no failing TAP lines, only numbers")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("pjdfstest must run as root")
    if args.all and args.tests:
        parser.error("--all or tests, not both")
    subset = args.tests or None
    t0 = time.monotonic()
    result = run_fresh(subset, args.options, args.timeout, args.jobs, args.keep)
    if args.tap:
        Path(args.tap).write_text(result.output)
    print(result.report(lines=not args.brief))
    print("wall time %.0fs (prove %.0fs)" % (time.monotonic() - t0, result.seconds))
    print("%d passed, %d failed" % (result.passed, result.failed))
    return 0 if result.failed == 0 and not result.timed_out else 1


if __name__ == "__main__":
    sys.exit(main())
