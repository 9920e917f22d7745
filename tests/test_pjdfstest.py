"""pjdfstest, the POSIX conformance suite, through a real mount of the test's bucket.

tests/pjdfstest.py builds the vendored suite once (cached under /var/tmp) and runs it with
``prove``. By default (and in CI) the whole suite runs, two test files at a time: ~2.5 minutes
on 2 cores (one at a time takes ~3.5). The mount is ``-o allow_other`` (so also
default_permissions): pjdfstest runs as root and switches to other uids to test permission checks,
which FUSE refuses to other users without allow_other.

The test fails when fewer test points pass than ``PASS_FLOOR``, what the mount passes today:
raise it whenever the mount passes more, never lower it. Files in ``TIMING_DEPENDENT`` (none
today) would be left out of that count.
The failure breakdown (per directory, per cause, per file) is printed either way (``pytest -s``
shows it; the report with every failing TAP line is written beside the test's tmp_path).

``S3FS_PJDFSTEST`` changes what runs: ``all`` the whole suite (the default), ``serial`` the whole
suite one file at a time, ``off`` nothing, or a comma-separated list of directories/files under
pjdfstest's tests/ (e.g. ``chmod,rename/09.t``: report only, no floor).
"""

from __future__ import annotations

import os
from pathlib import Path

import pjdfstest
import pytest

#: Test points passed today (8,539 of 8,798, at -j2 as CI runs it): never lower it; raise it as the
#: mount improves. What still fails, and why, is listed in README.rst ("POSIX conformance").
PASS_FLOOR = 8530
#: Files whose result depends on timing: not counted against the floor (none today).
TIMING_DEPENDENT: tuple[str, ...] = ()
#: Seconds the run may take before it is stopped (and counted as far as it got).
TIMEOUT = 900.0


def chosen() -> tuple[list[str] | None, int, bool]:
    """(tests to run or None for all, prove jobs, whether the floor applies) from S3FS_PJDFSTEST."""
    value = os.environ.get("S3FS_PJDFSTEST", "all").strip()
    if value in ("", "all", "1"):
        return None, 2, True
    if value == "serial":
        return None, 1, True
    if value in ("off", "0", "none"):
        pytest.skip("S3FS_PJDFSTEST=%s" % value)
    return [t.strip() for t in value.split(",") if t.strip()], 2, False


@pytest.mark.fuse
def test_pjdfstest(mount_factory, tmp_path: Path) -> None:
    """At least PASS_FLOOR of pjdfstest's test points pass through an ``-o allow_other`` mount."""
    if os.geteuid() != 0:
        pytest.skip("pjdfstest must run as root (it switches uids to test permissions)")
    tests, jobs, floor_applies = chosen()
    binary = pjdfstest.build()
    mount = mount_factory(options=pjdfstest.MOUNT_OPTIONS).start()
    result = pjdfstest.run(mount.path, tests, timeout=TIMEOUT, binary=binary, jobs=jobs)
    report = tmp_path / "pjdfstest.report"
    report.write_text(result.report(lines=True) + "\n")
    (tmp_path / "pjdfstest.tap").write_text(result.output)
    stable = result.passed_except(TIMING_DEPENDENT)
    print(result.report(lines=False))
    print("passed outside %s: %d (floor %d)" % (", ".join(TIMING_DEPENDENT) or "-", stable, PASS_FLOOR))
    print("every failing line: %s" % report)
    assert result.files, "prove ran no test file:\n%s\n%s" % (result.output[-2000:], result.errors[-2000:])
    assert not result.timed_out, "pjdfstest did not finish in %ss: %s" % (TIMEOUT, result.summary())
    if floor_applies:
        assert stable >= PASS_FLOOR, "pjdfstest: %d passed outside %s, below the floor of %d\n%s" % (
            stable, TIMING_DEPENDENT, PASS_FLOOR, result.report(lines=False))


# -- the TAP parsing, without a mount ----------------------------------------------------------------

ROOT = "/x/tests"
OUTPUT = """\
/x/tests/chmod/00.t ..
1..5
ok 1
not ok 2 - tried 'mkfifo pjdfstest_ab 0644', expected 0, got ENOSYS
not ok 3 - tried 'chmod pjdfstest_ab 0111', expected 0, got ENOENT
not ok 4
ok 5
Failed 3/5 subtests
/x/tests/open/01.t ..
1..3
not ok 1 # TODO not on this system
ok 2 # SKIP no reason
Failed 1/3 subtests
/x/tests/utimensat/02.t ..
1..2
not ok 1
ok 2
Failed 1/2 subtests
"""


def test_parse_counts_every_planned_point() -> None:
    r = pjdfstest.parse(OUTPUT, ROOT)
    assert (r.planned, r.passed, r.failed, r.todo, r.missing, r.files) == (10, 4, 5, 1, 1, 3)
    assert r.failures == {"chmod/00.t": [2, 3, 4], "open/01.t": [3], "utimensat/02.t": [1]}
    assert r.by_dir() == {"chmod": (3, 5), "open": (1, 3), "utimensat": (1, 2)}
    assert r.messages["open/01.t"][3].startswith("never ran")
    assert r.passed_except(["chmod/00.t"]) == 2


def test_causes_tell_causes_from_cascades() -> None:
    causes = pjdfstest.parse(OUTPUT, ROOT).causes()
    assert causes["chmod"] == {
        "mkfifo: got ENOSYS, expected 0": 1,
        "cascade: ENOENT after mkfifo ENOSYS (the node could not be created)": 1,
        "cascade: a check right after a failed call": 1,
    }
    assert list(causes["utimensat"]) == ["bare check failed (test_check: a timestamp/ctime/mtime comparison)"]
    line = "not ok 5 - tried '-u 65534 -g 65534 stat pjdfstest_1 ctime', expected 7, got 8"
    assert pjdfstest.cause(line) == "stat ctime: wrong value"
    line = "not ok 6 - tried '-u 65534 -g 65534 rename pjdfstest_1 pjdfstest_2', expected 0, got EACCES"
    assert pjdfstest.cause(line) == "(as another uid) rename: got EACCES, expected 0"


def test_ranges() -> None:
    assert pjdfstest._ranges([1, 2, 3, 7, 9, 10]) == "1-3, 7, 9-10"
