"""TTLs and backoff on an injected clock: time moves on by hand, nothing sleeps."""

from __future__ import annotations

import errno

import pytest
from fakeclock import FakeClock
from fakestore import FakeStore

import s3fs_mount.fs.operations as operations_module
from s3fs_mount.fs.fuselib import FuseOSError
from s3fs_mount.fs.namespace import REMOVED_TTL
from s3fs_mount.fs.operations import S3Operations
from s3fs_mount.fs.options import MountOptions
from s3fs_mount.s3.bucket import Bucket
from s3fs_mount.s3.errors import S3Error
from s3fs_mount.s3.retry import RetryPolicy


@pytest.fixture(autouse=True)
def _context(monkeypatch):
    monkeypatch.setattr(operations_module, "fuse_get_context", lambda: (1000, 1000, 1))


def make_ops(tmp_path, store: FakeStore, clock: FakeClock, **options) -> S3Operations:
    opts = MountOptions(cache_dir=str(tmp_path / "cache"), **options)
    ops = S3Operations(Bucket(store, "bucket"), "", opts, clock=clock)
    ops.uploader.configure_checks(opts.conflict_check)
    ops.namespace.configure_directories()
    ops.namespace.load_root()
    return ops


def names(ops: S3Operations, path: str = "/") -> list[str]:
    return sorted(e if isinstance(e, str) else e[0] for e in ops.readdir(path, 0) if e not in (".", ".."))


def test_another_clients_change_shows_once_attr_ttl_has_passed(tmp_path):
    store, clock = FakeStore(), FakeClock()
    ops = make_ops(tmp_path, store, clock, attr_ttl=5.0)
    store.put("f", b"1")
    assert ops.getattr("/f")["st_size"] == 1
    store.put("f", b"22")  # another client
    heads = store.calls["HEAD"]
    clock.advance(4.0)
    assert ops.getattr("/f")["st_size"] == 1  # cached: no request
    assert store.calls["HEAD"] == heads
    clock.advance(1.5)
    assert ops.getattr("/f")["st_size"] == 2
    assert store.calls["HEAD"] == heads + 1


def test_a_listing_is_trusted_for_dir_ttl_then_asked_again(tmp_path):
    store, clock = FakeStore(), FakeClock()
    ops = make_ops(tmp_path, store, clock, attr_ttl=1.0, dir_ttl=10.0)
    store.put("f", b"1")
    assert names(ops) == ["f"]
    store.put("d/x", b"2")  # another client makes directory d
    lists = store.calls["LIST"]
    clock.advance(5.0)
    with pytest.raises(FuseOSError) as missing:
        ops.getattr("/d")  # not in a fresh listing of / : one HEAD, no LIST for a directory d
    assert missing.value.errno == errno.ENOENT
    assert store.calls["LIST"] == lists
    clock.advance(6.0)
    assert ops.getattr("/d")["st_nlink"] >= 2  # the listing is stale: d/ is looked for, and found
    assert store.calls["LIST"] > lists


def test_what_we_removed_stays_hidden_from_lagging_listings_for_a_while(tmp_path):
    store, clock = FakeStore(), FakeClock()
    ops = make_ops(tmp_path, store, clock)
    store.put("gone", b"1")
    assert names(ops) == ["gone"]
    ops.unlink("/gone")
    ops.fsyncdir("/", 0, 0)  # its delete sent (a batch's): the hiding counts from S3's answer
    store.put("gone", b"1")  # as a server that goes on listing a removed key (SeaweedFS, briefly)
    clock.advance(REMOVED_TTL - 1)
    assert names(ops) == []
    clock.advance(2)
    assert names(ops) == ["gone"]


def test_backoff_sleeps_on_the_policys_clock_within_its_bounds():
    clock = FakeClock()
    policy = RetryPolicy(max_attempts=5, base_delay=0.5, max_delay=2.0, max_total=60.0, clock=clock)
    failures = [S3Error(503, "SlowDown")] * 3

    def flaky() -> str:
        if failures:
            raise failures.pop()
        return "done"

    assert policy.call(flaky) == "done"
    assert len(clock.slept) == 3 and policy.retries == 3
    assert all(0 <= pause <= min(2.0, 0.5 * 2**n) for n, pause in enumerate(clock.slept))


def test_backoff_stops_at_max_total():
    clock = FakeClock()
    policy = RetryPolicy(max_attempts=1000, base_delay=4.0, max_delay=4.0, max_total=30.0, clock=clock)

    def down() -> None:
        raise S3Error(503, "SlowDown")

    with pytest.raises(S3Error):
        policy.call(down)
    assert sum(clock.slept) <= 30.0 < sum(clock.slept) + 4.0  # no pause would have fitted in
