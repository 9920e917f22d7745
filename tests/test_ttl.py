"""TTLs and backoff on an injected clock: time moves on by hand, nothing sleeps."""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import threading
import time
from collections.abc import Callable

import pytest
from fakeclock import FakeClock
from fakestore import FakeStore

import s3fs_mount.fs.namespace as namespace_module
import s3fs_mount.fs.operations as operations_module
from s3fs_mount.fs.errors import errno_for
from s3fs_mount.fs.fuselib import FuseOSError
from s3fs_mount.fs.operations import S3Operations
from s3fs_mount.fs.options import MountOptions
from s3fs_mount.s3.bucket import Bucket
from s3fs_mount.s3.checksums import digest_of_bytes
from s3fs_mount.s3.errors import ConnectionFailed, GaveUp, S3Error, Unreachable
from s3fs_mount.s3.retry import GiveUp, Outage, RetryPolicy, ahead_of_need


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
        ops.getattr("/d")  # not in a fresh listing of / : no request
    assert missing.value.errno == errno.ENOENT
    assert store.calls["LIST"] == lists
    clock.advance(6.0)
    assert ops.getattr("/d")["st_nlink"] >= 2  # the listing is stale: d/ is looked for, and found
    assert store.calls["LIST"] > lists


def test_a_new_name_in_a_directory_just_made_is_absent_without_a_request_until_dir_ttl(tmp_path):
    store, clock = FakeStore(), FakeClock()
    ops = make_ops(tmp_path, store, clock, attr_ttl=1.0, dir_ttl=10.0)
    ops.mkdir("/d", 0o755)
    store.put("d/theirs", b"1")  # another client, just after our mkdir
    heads, lists = store.calls["HEAD"], store.calls["LIST"]
    clock.advance(9.0)
    for name in ("new", "theirs"):
        with pytest.raises(FuseOSError) as missing:
            ops.getattr("/d/" + name)
        assert missing.value.errno == errno.ENOENT
    assert (store.calls["HEAD"], store.calls["LIST"]) == (heads, lists)  # answered from the listing
    ops.release("/d/new", ops.create("/d/new", 0o644))
    assert ops.getattr("/d/new")["st_size"] == 0  # our own create shows at once
    clock.advance(1.5)  # dir_ttl has passed since the mkdir, our create did not renew it
    assert ops.getattr("/d/theirs")["st_size"] == 1


def asked_of(store: FakeStore, method: str) -> list[str]:
    """The keys (prefixes) ``store.<method>`` is called with from now on (a list that grows)."""
    keys: list[str] = []
    call = getattr(store, method)

    def counted(key, *args, **kwargs):
        keys.append(getattr(key, "key", key))
        return call(key, *args, **kwargs)

    setattr(store, method, counted)
    return keys


def test_a_burst_of_new_names_lists_the_directory_again_instead_of_a_head_each(tmp_path):
    store, clock = FakeStore(), FakeClock()
    ops = make_ops(tmp_path, store, clock, attr_ttl=1.0, dir_ttl=1.0)
    ops.mkdir("/d", 0o755)
    heads, lists = asked_of(store, "head"), asked_of(store, "list")
    for i in range(30):  # a create every 0.1 s: three listings' worth
        with pytest.raises(FuseOSError):
            ops.getattr("/d/f%02d" % i)
        ops.release("/d/f%02d" % i, ops.create("/d/f%02d" % i, 0o644))
        clock.advance(0.1)
    assert [k for k in heads if k.startswith("d/f")] == []  # no HEAD of a new name
    assert 2 <= lists.count("d/") <= 3  # the directory listed again once per dir_ttl
    store.put("d/theirs", b"1")  # another client: seen at the listing after next
    clock.advance(1.0)
    with pytest.raises(FuseOSError):
        ops.getattr("/d/g")  # the listing expired: listed again, which shows theirs
    assert ops.getattr("/d/theirs")["st_size"] == 1
    assert len(names(ops, "/d")) == 31


def test_a_burst_lists_from_the_new_name_on_not_the_whole_directory_again(tmp_path):
    store, clock = FakeStore(), FakeClock()
    ops = make_ops(tmp_path, store, clock, attr_ttl=1.0, dir_ttl=1.0)
    for i in range(500):
        store.put("d/a%03d" % i, b"1")
    assert len(names(ops, "/d")) == 500
    listed: list[int] = []  # entries and prefixes per LIST page of d/ from now on
    real_list = store.list

    def counted(prefix="", *args, **kwargs):
        for page in real_list(prefix, *args, **kwargs):
            if prefix == "d/":
                listed.append(len(page.entries) + len(page.prefixes))
            yield page

    store.list = counted
    heads = asked_of(store, "head")
    for i in range(30):  # a create every 0.1 s, in name order
        with pytest.raises(FuseOSError):
            ops.getattr("/d/f%02d" % i)
        ops.release("/d/f%02d" % i, ops.create("/d/f%02d" % i, 0o644))
        clock.advance(0.1)
    assert [k for k in heads if k.startswith("d/f")] == []  # no HEAD of a new name
    assert 2 <= len(listed) <= 3  # one LIST a dir_ttl, as before
    assert sum(listed) <= 30  # each from the new name on: not the 500 older names again
    store.put("d/g", b"22")  # another client, after the names being made
    store.put("d/b", b"333")  # and before them
    clock.advance(1.0)
    with pytest.raises(FuseOSError):
        ops.getattr("/d/f30")  # expired: listed from f3 on, which shows g
    assert ops.getattr("/d/g")["st_size"] == 2
    assert ops.getattr("/d/b")["st_size"] == 3  # not in that page: asked about once dir_ttl passed
    assert len(names(ops, "/d")) == 532


def test_a_burst_of_new_names_in_a_directory_not_listed_lists_it_once_not_a_head_each(tmp_path):
    store, clock = FakeStore(), FakeClock()
    # The fake clock moves with real time too, and 200 creates took more than a second on a
    # loaded machine: the listing expired midway and was (rightly) listed again from the name
    # on. The listing must outlive the burst, so dir_ttl is far past it.
    ops = make_ops(tmp_path, store, clock, attr_ttl=1.0, dir_ttl=600.0)
    for i in range(20):
        store.put("d/old%02d" % i, b"1")  # another client's directory, not listed here
    assert ops.getattr("/d")["st_nlink"] >= 2
    heads, lists = asked_of(store, "head"), asked_of(store, "list")
    for i in range(200):  # cp -r into it: a lookup, then a create, of each new name
        with pytest.raises(FuseOSError) as missing:
            ops.getattr("/d/f%03d" % i)
        assert missing.value.errno == errno.ENOENT
        fh = ops.create("/d/f%03d" % i, 0o644)
        ops.flush("/d/f%03d" % i, fh)  # uploaded (close waits for S3)
        ops.release("/d/f%03d" % i, fh)
    assert [k for k in heads if k.startswith("d/f")] == ["d/f000"]  # the first miss only
    assert lists.count("d/") == 1  # the second lookup listed d once: the rest answered from it
    assert len([k for k in lists if k.startswith("d/f")]) <= 2  # the first miss's own LISTs
    assert {"d/f%03d" % i for i in range(200)} <= set(store.objects)
    assert ops.getattr("/d/old05")["st_size"] == 1  # an old name: still there
    assert len(names(ops, "/d")) == 220


def test_another_clients_name_after_a_bursts_listing_is_not_overwritten_and_shows_after_dir_ttl(tmp_path):
    store, clock = FakeStore(), FakeClock()
    ops = make_ops(tmp_path, store, clock, attr_ttl=1.0, dir_ttl=10.0)
    store.put("d/old", b"1")
    for name in ("a", "b"):  # the second lookup lists d
        with pytest.raises(FuseOSError):
            ops.getattr("/d/" + name)
        ops.release("/d/" + name, ops.create("/d/" + name, 0o644))
    store.put("d/theirs", b"someone else's")  # another client, after that listing
    heads = store.calls["HEAD"]
    with pytest.raises(FuseOSError) as missing:
        ops.getattr("/d/theirs")  # the listing answers, for dir_ttl: no request
    assert missing.value.errno == errno.ENOENT and store.calls["HEAD"] == heads
    fh = ops.create("/d/theirs", 0o644)
    ops.write("/d/theirs", b"mine", 0, fh)
    with pytest.raises(FuseOSError) as conflict:
        ops.flush("/d/theirs", fh)  # the PUT's If-None-Match: * finds theirs
    assert conflict.value.errno == errno.ESTALE
    ops.release("/d/theirs", fh)
    assert store.objects["d/theirs"].data == b"someone else's"
    aside = [k for k in store.objects if k.startswith("d/theirs.conflict-")]
    assert len(aside) == 1 and store.objects[aside[0]].data == b"mine"
    clock.advance(10.5)  # dir_ttl passed since that listing: S3 says
    assert ops.getattr("/d/theirs")["st_size"] == len(b"someone else's")


def test_names_this_mount_made_or_removed_around_a_bursts_listing_answer_right(tmp_path):
    store, clock = FakeStore(), FakeClock()
    ops = make_ops(tmp_path, store, clock, attr_ttl=1.0, dir_ttl=10.0)
    store.put("d/old", b"1")
    with pytest.raises(FuseOSError):
        ops.getattr("/d/a")  # the first miss: the next lookup lists d
    real_list = store.list

    def list_then_change(prefix="", *args, **kwargs):
        for page in real_list(prefix, *args, **kwargs):
            if prefix == "d/":  # while the listing is on its way: ours
                fh = ops.create("/d/made", 0o644)
                ops.flush("/d/made", fh)  # uploaded
                ops.release("/d/made", fh)
                ops.unlink("/d/old")
                ops.fsyncdir("/d", 0, 0)
            yield page

    store.list = list_then_change
    with pytest.raises(FuseOSError):
        ops.getattr("/d/b")  # lists d: the page shows old, not made
    store.list = real_list
    assert "d/made" in store.objects and "d/old" not in store.objects
    ops.staging.forget("d/made")
    clock.advance(2.0)  # past attr_ttl, within dir_ttl: the listing answers for names it lacks
    assert ops.getattr("/d/made")["st_size"] == 0  # ours, made after it was asked: not absent
    with pytest.raises(FuseOSError) as gone:
        ops.getattr("/d/old")  # removed by us: not brought back by the page that showed it
    assert gone.value.errno == errno.ENOENT
    assert names(ops, "/d") == ["made"]


def test_a_directory_of_more_than_a_page_is_listed_once_for_misses_then_asked_name_by_name(tmp_path):
    store, clock = FakeStore(), FakeClock()
    ops = make_ops(tmp_path, store, clock, attr_ttl=1.0, dir_ttl=1.0)
    for i in range(namespace_module.RELIST_NAMES + 1):
        store.put("d/old%04d" % i, b"1")
    lists = asked_of(store, "list")
    for i in range(20):
        with pytest.raises(FuseOSError):
            ops.getattr("/d/f%02d" % i)
        ops.release("/d/f%02d" % i, ops.create("/d/f%02d" % i, 0o644))
        clock.advance(0.5)
    assert lists.count("d/") == 1  # one page, which was not all of d: not listed again
    clock.advance(namespace_module.LARGE_DIR_TTL)
    for name in ("g0", "g1"):
        with pytest.raises(FuseOSError):
            ops.getattr("/d/" + name)
    assert lists.count("d/") == 2  # once LARGE_DIR_TTL passed, a burst tries again


def test_a_name_we_made_while_the_directory_was_listed_is_not_taken_for_absent(tmp_path):
    store, clock = FakeStore(), FakeClock()
    ops = make_ops(tmp_path, store, clock, attr_ttl=1.0, dir_ttl=10.0)
    store.put("d/a", b"1")
    listing = ops.namespace.iter_dir("/d")
    assert next(listing)[0] == "a"  # the listing's one page is in
    fh = ops.create("/d/b", 0o644)  # made while the listing was under way
    ops.flush("/d/b", fh)  # uploaded
    ops.release("/d/b", fh)
    ops.staging.forget("d/b")  # no staged copy left to answer for it
    assert list(listing) == []
    clock.advance(2.0)  # past attr_ttl, within dir_ttl: the listing answers for names it lacks
    assert ops.namespace.lookup("/d/b").size == 0  # a HEAD, not "no such entry"


def test_a_name_we_removed_that_another_client_makes_again_shows_once_the_ttls_passed(tmp_path):
    """What we removed is hidden from answers to requests sent before S3 answered its delete (a
    listing under way meanwhile); another client's object of that name, made after, is S3's
    word: it shows once attr_ttl and dir_ttl have passed, as any other client's change (it was
    hidden for REMOVED_TTL, 30 s, from lookups and listings alike)."""
    store, clock = FakeStore(), FakeClock()
    ops = make_ops(tmp_path, store, clock)
    store.put("gone", b"1")
    assert names(ops) == ["gone"]
    ops.unlink("/gone")
    ops.fsyncdir("/", 0, 0)  # its delete sent (a batch's) and answered
    assert "gone" not in store.objects and names(ops) == []
    with pytest.raises(FuseOSError):
        ops.getattr("/gone")
    store.put("gone", b"22")  # another client's
    clock.advance(1.5)
    assert names(ops) == ["gone"]
    assert ops.getattr("/gone")["st_size"] == 2


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


class RefusingS3:
    """Requests that fail to reach S3 (connection refused) until ``up``; ``sent`` lists them.
    While ``hold`` is set, a request waits (once sent) until ``go`` is."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.up = False
        self.hold = False
        self.go = threading.Event()

    def request(self, what: str) -> Callable[[], str]:
        def send() -> str:
            self.sent.append(what)
            if self.hold:
                assert self.go.wait(30)
            if not self.up:
                raise ConnectionFailed(what, "Connection refused")
            return "answer"

        return send


def in_threads(policy: RetryPolicy, s3: RefusingS3, names: list[str]) -> tuple[list[threading.Thread], dict]:
    """Each of ``names`` a request through ``policy`` in a thread of its own, started;
    ``outcomes``: name -> its answer or exception, as each ends."""
    outcomes: dict[str, object] = {}

    def one(name: str) -> None:
        try:
            outcomes[name] = policy.call(s3.request(name), name)
        except Exception as exc:
            outcomes[name] = exc

    threads = [threading.Thread(target=one, args=(name,)) for name in names]
    for t in threads:
        t.start()
    return threads, outcomes


def until(condition: Callable[[], bool]) -> None:
    """Wait (at most 30 s) until ``condition()``."""
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.005)


def outage_policy(clock: FakeClock, **kw: object) -> RetryPolicy:
    """A policy on ``clock`` (its backoff does not wait) whose breaker probes every 0.2 s
    (``kw``: other Outage settings); its next first request spends 2.5 s of retries: an outage."""
    kw = {"probe_every": 0.2, **kw}
    policy = RetryPolicy(max_attempts=6, clock=clock, outage=Outage(clock, **kw))  # type: ignore[arg-type]
    policy.delay = lambda attempt: 0.5  # type: ignore[method-assign]
    return policy


def test_once_s3_is_unreachable_one_request_a_second_is_sent_and_the_others_wait_for_its_outcome(caplog):
    # An outage (connections refused): the first request spends its retries and opens the
    # breaker; then one request a probe_every is sent, once, not retried (the probe), and the
    # others wait for its outcome: refused, they fail unsent; S3's first answer closes it and
    # they are sent. The log: one line when lost, one when back. Before round 37 every request
    # spent its six attempts, a WARNING line each; in round 37 the others failed unsent at
    # once, until the next probe: for up to a second after S3 was back, every lookup was EIO.
    policy = outage_policy(FakeClock())
    s3 = RefusingS3()
    with caplog.at_level(logging.INFO, logger="s3fs_mount.s3.retry"):
        with pytest.raises(ConnectionFailed):
            policy.call(s3.request("first"), "first")
        assert s3.sent == ["first"] * 6 and policy.outage.down
        s3.hold = True
        probe, outcomes = in_threads(policy, s3, ["probe"])
        until(lambda: s3.sent[6:] == ["probe"])  # in flight
        waiters, outcomes_w = in_threads(policy, s3, ["waits %d" % n for n in range(7)])
        until(lambda: policy.outage.waiting == 7)
        s3.go.set()
        for t in probe + waiters:
            t.join()
        assert s3.sent[6:] == ["probe"]  # once, not retried; the others unsent
        probed = outcomes["probe"]
        assert isinstance(probed, ConnectionFailed) and not isinstance(probed, Unreachable)
        assert all(isinstance(e, Unreachable) and e.in_outage for e in outcomes_w.values()), outcomes_w
        s3.hold = False
        with pytest.raises(ConnectionFailed):  # a call around a request (a read's fetch): the probe is both
            policy.call(lambda: policy.call(s3.request("nested"), "nested"), "outer")
        assert s3.sent[7:] == ["nested"]
        assert "S3 unreachable for" in policy.outage.summary()
        s3.up = True  # right after a probe failed: the next request waits for the next probe, is it
        assert policy.call(s3.request("back"), "back") == "answer"
        assert s3.sent[8:] == ["back"]
        assert not policy.outage.down and policy.outage.summary() == ""
        assert policy.call(s3.request("after"), "after") == "answer"
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("S3 is unreachable (first: Connection refused)")
    assert "10 requests failed meanwhile" in warnings[1]  # the first, 7 unsent, 2 probes


def test_requests_waiting_for_a_probe_that_finds_s3_back_are_sent():
    # S3 comes back while a probe is in flight and requests wait for it: each is sent once the
    # probe is answered, none fails. Before (round 37) each failed unsent.
    policy = outage_policy(FakeClock())
    s3 = RefusingS3()
    with pytest.raises(ConnectionFailed):
        policy.call(s3.request("first"), "first")
    s3.hold = True
    probe, outcomes = in_threads(policy, s3, ["probe"])
    until(lambda: len(s3.sent) == 7)
    waiters, outcomes_w = in_threads(policy, s3, ["waits %d" % n for n in range(5)])
    until(lambda: policy.outage.waiting == 5)
    s3.up = True
    s3.go.set()
    for t in probe + waiters:
        t.join()
    assert outcomes["probe"] == "answer"
    assert outcomes_w == {"waits %d" % n: "answer" for n in range(5)}
    assert sorted(s3.sent[7:]) == ["waits %d" % n for n in range(5)]


def test_requests_wait_for_a_probe_boundedly_in_number_and_time():
    # At most max_waiting requests wait for a probe (libfuse's threads must not all block):
    # the next fails unsent at once; and one waits at most wait_most s (a probe that hangs).
    clock = FakeClock()
    policy = outage_policy(clock, probe_every=10, max_waiting=2, wait_most=0.3)
    s3 = RefusingS3()
    with pytest.raises(ConnectionFailed):
        policy.call(s3.request("first"), "first")
    clock.advance(10)  # the probe is due; the next not before the waiters give up
    s3.hold = True
    probe, _ = in_threads(policy, s3, ["probe"])
    until(lambda: len(s3.sent) == 7)
    waiters, outcomes = in_threads(policy, s3, ["waits 1", "waits 2"])
    until(lambda: policy.outage.waiting == 2)
    with pytest.raises(Unreachable):
        policy.call(s3.request("third"), "third")
    for t in waiters:
        t.join()  # the probe still hangs: each gave up after wait_most, unsent
    assert all(isinstance(e, Unreachable) for e in outcomes.values()), outcomes
    assert s3.sent[6:] == ["probe"] and policy.outage.waiting == 0
    s3.go.set()
    for t in probe:
        t.join()


def test_while_s3_is_unreachable_a_change_is_sent_once_and_its_success_closes_the_breaker():
    # A write or delete (a sync, an fsync someone waits on) is s3.sent while the breaker is open,
    # at once, once, not retried; when it is answered S3 is back. Found merging round 37: the
    # first second after S3 came back failed every upload of a `sync` unsent (123 files "could
    # not be uploaded", the good ones among them), as if S3 were still away.
    policy = outage_policy(FakeClock(), max_waiting=0)  # a lookup: unsent at once
    s3 = RefusingS3()
    with pytest.raises(ConnectionFailed):
        policy.call(s3.request("first"), "first")
    assert policy.outage.down
    with pytest.raises(ConnectionFailed) as info:
        policy.call(s3.request("lookup"), "lookup")
    assert isinstance(info.value, Unreachable)  # unsent
    with pytest.raises(ConnectionFailed) as info:
        policy.call(s3.request("put"), "put", change=True)
    assert not isinstance(info.value, Unreachable) and s3.sent[6:] == ["put"]  # s3.sent, once
    s3.up = True
    assert policy.call(s3.request("put again"), "put again", change=True) == "answer"  # same second
    assert s3.sent[7:] == ["put again"] and not policy.outage.down


def test_a_request_retrying_when_another_finds_s3_lost_is_not_sent_again():
    # Round 39: a lookup's LIST beside its HEAD retried on its own jitter; the HEAD's retries
    # spent opened the breaker, and the LIST went out once more (an 11th request in the CI's
    # outage test, which counted 10.8 at most). A request between its tries when S3 is found
    # lost is not sent again: one request a probe, none else.
    clock = FakeClock()
    policy = outage_policy(clock)
    s3 = RefusingS3()

    def pause(seconds: float) -> None:  # while the LIST waits to try again, the HEAD's retries are spent
        policy.outage.lost(ConnectionFailed("head", "Connection refused"))
        FakeClock.sleep(clock, seconds)

    clock.sleep = pause  # type: ignore[method-assign]
    with pytest.raises(ConnectionFailed) as info:
        policy.call(s3.request("list"), "list")
    assert s3.sent == ["list"]  # its first try only
    assert info.value.in_outage and not isinstance(info.value, Unreachable)
    assert "2 requests failed since" in policy.outage.summary()  # the HEAD, the LIST


def test_a_request_whose_job_was_given_up_while_it_waited_for_a_probe_is_not_the_probe():
    # Round 39: a lookup whose HEAD failed returns EIO at once; its LIST (beside, waiting for
    # the next probe) must not then be that probe, a request for a lookup that is over.
    clock = FakeClock()
    policy = outage_policy(clock)
    s3 = RefusingS3()
    with pytest.raises(ConnectionFailed):
        policy.call(s3.request("first"), "first")
    assert policy.outage.down and len(s3.sent) == 6
    job = GiveUp(loud=False)
    outcome: list[BaseException] = []

    def beside() -> None:
        try:
            policy.call(s3.request("list"), "list", give_up=job)
        except Exception as exc:
            outcome.append(exc)

    t = threading.Thread(target=beside)
    t.start()
    until(lambda: policy.outage.waiting == 1)  # for the probe due in probe_every
    job.fail(ConnectionFailed("head", "Connection refused"))
    clock.advance(1)  # the probe is due: the LIST is not it
    t.join()
    assert isinstance(outcome[0], GaveUp) and len(s3.sent) == 6
    with pytest.raises(ConnectionFailed) as info:
        policy.call(s3.request("next"), "next")  # the next request is the probe, sent
    assert not isinstance(info.value, Unreachable) and s3.sent[6:] == ["next"]
    assert "1 probes sent" in policy.outage.summary()


def test_requests_sent_ahead_of_need_neither_wait_for_a_probe_nor_are_one():
    # Round 39: the stat-ahead's HEADs (a walk's next names) waited for the probe's outcome as a
    # user's lookup does, and could take the MAX_WAITING places: the user's lookup then failed
    # at once. Sent ahead of need (its lookup asks again itself), a request fails at once, unsent.
    clock = FakeClock()
    policy = outage_policy(clock, max_waiting=1)
    s3 = RefusingS3()
    with pytest.raises(ConnectionFailed):
        policy.call(s3.request("first"), "first")
    clock.advance(1)  # the probe is due: not the stat-ahead's
    with ahead_of_need(), pytest.raises(Unreachable):
        policy.call(s3.request("ahead"), "ahead")
    assert len(s3.sent) == 6 and policy.outage.waiting == 0
    s3.hold = True
    probe, _ = in_threads(policy, s3, ["probe"])
    until(lambda: len(s3.sent) == 7)
    with ahead_of_need(), pytest.raises(Unreachable):
        policy.call(s3.request("ahead 2"), "ahead 2")  # not waiting: the place is the user's
    waiter, outcomes = in_threads(policy, s3, ["user"])
    until(lambda: policy.outage.waiting == 1)
    s3.up = True
    s3.go.set()
    for t in probe + waiter:
        t.join()
    assert outcomes == {"user": "answer"} and s3.sent[6:] == ["probe", "user"]


def test_failures_to_reach_s3_over_less_than_a_second_are_no_outage():
    clock = FakeClock()
    policy = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05, clock=clock)

    def refused() -> None:
        raise ConnectionFailed("HEAD k", "Connection refused")

    for _ in range(3):
        with pytest.raises(ConnectionFailed) as info:
            policy.call(refused)
        assert not isinstance(info.value, Unreachable)
    assert not policy.outage.down and len(clock.slept) == 9  # each retried


def test_an_answer_of_s3s_even_an_error_is_no_outage():
    clock = FakeClock()
    policy = RetryPolicy(max_attempts=3, base_delay=0.1, clock=clock)

    def slow_down() -> None:
        raise S3Error(503, "SlowDown")

    for _ in range(3):
        with pytest.raises(S3Error):
            policy.call(slow_down)
    assert not policy.outage.down and len(clock.slept) == 6  # each retried


def test_a_lookup_older_than_our_upload_does_not_bring_back_the_replaced_version(tmp_path):
    """The staged copy and the namespace tell "which came first" by one clock: the injected one.

    With the clock moved on, a staged item's version time (taken off the real clock) looked
    older than any lookup, and a reopen dropped the bytes just uploaded for the version they replaced.
    """
    store, clock = FakeStore(), FakeClock()
    ops = make_ops(tmp_path, store, clock)
    store.put("f", b"")
    clock.advance(100.0)
    assert ops.getattr("/f")["st_size"] == 0  # the empty version, seen now
    fh = ops.open("/f", os.O_RDWR)
    ops.write("/f", b"0123456789", 0, fh)
    ops.uploader.flush(ops._handle(fh).item)  # as at unmount: the namespace is not told
    assert store.objects["f"].data == b"0123456789"
    again = ops.open("/f", os.O_RDONLY)  # the cached lookup is older than the upload: not followed
    assert ops.read("/f", 100, 0, again) == b"0123456789"
    ops.release("/f", again)
    ops.release("/f", fh)


def test_what_we_change_is_newer_than_any_lookup_on_the_injected_clock(tmp_path):
    store, clock = FakeStore(), FakeClock()
    ops = make_ops(tmp_path, store, clock)
    clock.advance(100.0)
    fh = ops.create("/f", 0o644)
    ops.release("/f", fh)
    assert ops.namespace.lookup("/f").seen_at >= clock.monotonic() - 1.0


def test_another_clients_metadata_change_of_the_same_bytes_is_followed_and_kept(tmp_path):
    """A chmod elsewhere is a self-copy: same bytes, same ETag. A cached copy here must take the
    new metadata at its next open, or show the old mode and put it back with its next upload."""
    store, clock = FakeStore(), FakeClock()
    ops = make_ops(tmp_path, store, clock)
    fh = ops.create("/f", 0o644)
    ops.write("/f", b"data", 0, fh)
    ops.flush("/f", fh)
    ops.release("/f", fh)  # a small file stays cached, clean
    etag = store.objects["f"].etag
    meta = dict(store.objects["f"].metadata, **{"x-amz-meta-mode": str(0o100600), "x-amz-meta-k": "v"})
    store.copy_object("f", "f", meta, replace_metadata=True)  # another client's chmod and setxattr
    assert store.objects["f"].etag == etag
    clock.advance(2.0)
    fh = ops.open("/f", os.O_RDWR)
    assert ops.getattr("/f")["st_mode"] == 0o100600
    assert ops.getxattr("/f", "user.k") == b"v"
    ops.write("/f", b"DATA", 0, fh)
    ops.flush("/f", fh)
    ops.release("/f", fh)
    assert store.objects["f"].data == b"DATA"
    assert store.objects["f"].metadata["x-amz-meta-mode"] == str(0o100600)
    assert store.objects["f"].metadata["x-amz-meta-k"] == "v"


def test_a_readdir_within_dir_ttl_is_answered_from_the_listing_with_our_changes(tmp_path):
    store, clock = FakeStore(), FakeClock()
    ops = make_ops(tmp_path, store, clock, attr_ttl=1.0, dir_ttl=10.0, listing_attrs=True)
    for name in ("a", "b", "c/x"):
        store.put("d/" + name, b"1")
    assert names(ops, "/d") == ["a", "b", "c"]
    lists = asked_of(store, "list")
    store.put("d/theirs", b"1")  # another client: shows once dir_ttl has passed
    ops.unlink("/d/a")
    ops.release("/d/new", ops.create("/d/new", 0o644))
    ops.mkdir("/d/sub", 0o755)
    assert names(ops, "/d") == ["b", "c", "new", "sub"]  # ours at once, no LIST (rm -r's second read)
    assert lists.count("d/") == 0
    entries = {e[0]: e[1] for e in ops.readdir("/d", 0) if not isinstance(e, str)}
    assert entries["b"]["st_size"] == 1 and entries["new"]["st_size"] == 0
    clock.advance(2.0)  # the listed entries' attributes are gone from the cache: listed again
    assert names(ops, "/d") == ["b", "c", "new", "sub", "theirs"]
    assert lists.count("d/") == 1
    clock.advance(10.0)  # and after dir_ttl
    store.put("d/later", b"1")
    assert "later" in names(ops, "/d")


def copy_into(ops: S3Operations, tree: dict[str, list[str]]) -> None:
    """What ``cp -rT`` does into directories that are there: a stat of each directory, then per
    new file a stat and the kernel's lookup (both ENOENT), a create and a close (an upload)."""
    for directory, files in tree.items():
        assert ops.getattr(directory)["st_nlink"] >= 2
        for name in files:
            path = directory + "/" + name
            for _ in range(2):
                with pytest.raises(FuseOSError) as missing:
                    ops.getattr(path)
                assert missing.value.errno == errno.ENOENT
            fh = ops.create(path, 0o644)
            ops.write(path, b"x", 0, fh)
            ops.flush(path, fh)
            ops.release(path, fh)


def test_cp_r_into_a_tree_another_client_emptied_lists_each_directory_once_not_a_head_and_lists_per_name(
    tmp_path,
):
    # SeaweedFS keeps a directory whose keys were all deleted (the bench's cp -r into the tree the
    # round before left): each is a directory to a lookup, with nothing in it.
    store, clock = FakeStore(drops_marker_metadata=True, keeps_directories=True), FakeClock()
    ops = make_ops(tmp_path, store, clock, attr_ttl=1.0, dir_ttl=1.0)
    tree = {"/t": []}
    for d in range(3):
        tree["/t/d%d" % d] = []
        for e in range(4):
            tree["/t/d%d/e%d" % (d, e)] = ["f%d" % i for i in range(3)]
    keys = ["t" + p[2:] + "/" + f for p, files in tree.items() for f in files]
    for key in keys:
        store.put(key, b"old")
    store.delete_keys(keys)  # another client: the tree's directories stay, empty
    heads, lists = asked_of(store, "head"), asked_of(store, "list")
    copy_into(ops, tree)
    assert {k for k in keys} <= set(store.objects)  # each file in S3
    # No file's name is asked about (each directory's listing answers), and a directory's bare
    # name only on the way down to the first leaf (from there on, each directory a listing of
    # its parent showed is listed as it is entered).
    assert [k for k in heads if "/f" in k] == []
    bare = [k for k in heads if not k.endswith(("/", "_$folder$"))]
    assert bare == ["t", "t/d0", "t/d0/e0"], bare
    assert not [k for k in lists if "/f" in k]  # no LIST of a new name's keys
    per_dir = {p: lists.count(p) for p in set(lists) if p.endswith("/")}
    assert all(n == 1 for n in per_dir.values()), per_dir
    assert len(lists) <= 2 * len(tree), lists  # 3 LISTs a directory's first new name before


def test_a_job_given_up_stops_the_retries_of_its_other_requests():
    """Two parts of one upload share a GiveUp: part a fails (a 500) and, while it waits to try
    again, part b fails for good (a 403): a makes no second attempt and raises its own 500;
    a part c not yet begun is not sent, and says b's errno."""
    clock = FakeClock()
    policy = RetryPolicy(max_attempts=6, base_delay=0.5, clock=clock)
    job = GiveUp()
    calls = {"a": 0, "b": 0, "c": 0}

    def part(name: str, error: S3Error) -> Callable[[], str]:
        def send() -> str:
            calls[name] += 1
            raise error

        return send

    wait = clock.sleep

    def b_fails_meanwhile(seconds: float) -> None:
        wait(seconds)
        with pytest.raises(S3Error):
            policy.call(part("b", S3Error(403, "AccessDenied")), "part b", give_up=job)

    clock.sleep = b_fails_meanwhile  # type: ignore[method-assign]
    with pytest.raises(S3Error) as a:
        policy.call(part("a", S3Error(500, "InternalError")), "part a", give_up=job)
    assert a.value.status == 500 and calls == {"a": 1, "b": 1, "c": 0}
    assert isinstance(job.cause, S3Error) and job.cause.status == 403
    with pytest.raises(GaveUp) as c:
        policy.call(part("c", S3Error(500, "InternalError")), "part c", give_up=job)
    assert calls["c"] == 0 and errno_for(c.value) == errno.EACCES
    assert policy.retries == 1  # a's one retry planned; none after


def test_a_parts_412_does_not_give_its_job_up():
    """A copied part's 412 (its source changed) is S3's answer, not the upload failing: the
    caller decides, and the next part is sent (the connector's conformance test goes on with
    the upload after an expected 412)."""
    policy = RetryPolicy(max_attempts=3, base_delay=0.5, clock=FakeClock())
    job = GiveUp()

    def changed() -> str:
        raise S3Error(412, "PreconditionFailed")

    with pytest.raises(S3Error):
        policy.call(changed, "part 1", give_up=job)
    assert job.cause is None
    assert policy.call(lambda: "etag", "part 2", give_up=job) == "etag"


def with_crc32s(store: FakeStore) -> None:
    """HEADs tell each object's CRC32 (x-amz-checksum-crc32), as SeaweedFS and AWS do for boto3's PUTs."""
    real_head = store.head

    def head(remote_name):
        info = real_head(remote_name)
        key = info.key
        data = store.objects[key].data if key in store.objects else b""
        return dataclasses.replace(info, checksum=digest_of_bytes("CRC32", [data]))

    store.head = head


def test_a_stat_of_a_file_held_open_shows_another_clients_version_and_the_reader_keeps_its_own(tmp_path):
    """``tail -f`` holds a file open; another client puts other bytes. A stat after attr_ttl shows
    S3's version (it showed the held one's for as long as the file was open: round 36), and a new
    open reads it; the holder, which read the old bytes, gets EIO, never the new bytes after its
    own (round 36's fix let it: test_shared's same-size test on moto)."""
    store, clock = FakeStore(), FakeClock()
    ops = make_ops(tmp_path, store, clock, attr_ttl=1.0)
    store.put("f", b"old version\n")
    held = ops.open("/f", os.O_RDONLY)
    assert ops.read("/f", 4096, 0, held) == b"old version\n"
    store.put("f", b"NEW VERSION, LONGER\n")
    clock.advance(1.5)
    assert ops.getattr("/f")["st_size"] == 20
    fresh = ops.open("/f", os.O_RDONLY)
    assert ops.read("/f", 4096, 0, fresh) == b"NEW VERSION, LONGER\n"
    with pytest.raises(FuseOSError) as exc:
        ops.read("/f", 4096, 0, held)
    assert exc.value.errno == errno.EIO
    assert ops.read("/f", 4096, 0, fresh) == b"NEW VERSION, LONGER\n"
    ops.release("/f", held)
    ops.release("/f", fresh)


def test_a_reader_keeps_its_version_when_another_open_here_follows_a_new_one(tmp_path):
    """The item is the file's current version for every open; a handle that has read bytes of the
    version before it stays in that one: EIO (a new open's follow handed the reader the new
    version's bytes after its own, silently)."""
    store, clock = FakeStore(), FakeClock()
    ops = make_ops(tmp_path, store, clock, attr_ttl=1.0)
    store.put("f", b"a" * 100)
    held = ops.open("/f", os.O_RDONLY)
    assert ops.read("/f", 50, 0, held) == b"a" * 50
    store.put("f", b"b" * 100)
    clock.advance(1.5)
    fresh = ops.open("/f", os.O_RDONLY)
    assert ops.read("/f", 100, 0, fresh) == b"b" * 100
    with pytest.raises(FuseOSError) as exc:
        ops.read("/f", 50, 50, held)
    assert exc.value.errno == errno.EIO
    ops.release("/f", held)
    ops.release("/f", fresh)


@pytest.mark.parametrize("kind", ["pwrite", "ftruncate", "append"])
def test_a_handle_that_read_bytes_our_appends_moved_writes_on_them_no_more(tmp_path, kind):
    """Found in round 38 (one check, ``_keep_version``, for a handle's bytes no longer being the
    file's): a handle that had read the file, and our appends through another handle that then
    went after another client's version at their upload (rebase_appends): its next read was EIO,
    but a write or a truncate through it went on, at an offset it chose from bytes now elsewhere,
    over theirs, silently (as a handle that read a version another client replaced writes on it
    never). Now EIO, as its reads; an O_APPEND write lands at the end, whatever it read."""
    store, clock = FakeStore(), FakeClock()
    ops = make_ops(tmp_path, store, clock, attr_ttl=1.0)
    store.put("log", b"start\n")
    flags = os.O_RDWR | (os.O_APPEND if kind == "append" else 0)
    rw = ops.open("/log", flags)
    assert ops.read("/log", 4096, 0, rw) == b"start\n"
    fd = ops.open("/log", os.O_WRONLY | os.O_APPEND)
    assert ops.write("/log", b"ours\n", 6, fd) == 5
    store.put("log", b"start\ntheirs\n")
    ops.flush("/log", fd)  # its upload meets theirs: ours goes after it
    ops.release("/log", fd)
    assert store.objects["log"].data == b"start\ntheirs\nours\n"
    if kind == "append":
        assert ops.write("/log", b"more\n", 0, rw) == 5
        ops.flush("/log", rw)
        ops.release("/log", rw)
        assert store.objects["log"].data == b"start\ntheirs\nours\nmore\n"
        return
    with pytest.raises(FuseOSError) as exc:
        if kind == "pwrite":
            ops.write("/log", b"OURS\n", 6, rw)  # (was: over "their", in S3 at the release)
        else:
            ops.truncate("/log", 6, rw)  # (was: theirs and ours cut off)
    assert exc.value.errno == errno.EIO
    with pytest.raises(FuseOSError):
        ops.read("/log", 4096, 6, rw)
    ops.flush("/log", rw)
    ops.release("/log", rw)
    assert store.objects["log"].data == b"start\ntheirs\nours\n"


@pytest.mark.parametrize("crc32s", [True, False])
def test_a_reader_goes_on_into_another_clients_append_that_a_crc32_tells(tmp_path, crc32s):
    """Another client puts the file again with lines added (``tail -f`` of a log a boto3 client
    appends to): the reader goes on into the new lines where the CRC32s tell that the new version
    is its bytes and more (only the added bytes fetched); where nothing tells, EIO."""
    store, clock = FakeStore(), FakeClock()
    if crc32s:
        with_crc32s(store)
    ops = make_ops(tmp_path, store, clock, attr_ttl=1.0)
    store.put("log", b"line 1\n")
    held = ops.open("/log", os.O_RDONLY)
    assert ops.read("/log", 4096, 0, held) == b"line 1\n"
    for n in range(2, 5):
        store.put("log", b"".join(b"line %d\n" % i for i in range(1, n + 1)))
        clock.advance(1.5)
        size = ops.getattr("/log")["st_size"]
        assert size == 7 * n
        if not crc32s:
            with pytest.raises(FuseOSError) as exc:
                ops.read("/log", 4096, 0, held)
            assert exc.value.errno == errno.EIO
            break
        assert ops.read("/log", 4096, 0, held) == b"".join(b"line %d\n" % i for i in range(1, n + 1))
    store.put("log", b"other bytes, longer than before\n")  # not an append: EIO
    clock.advance(1.5)
    ops.getattr("/log")
    with pytest.raises(FuseOSError) as exc:
        ops.read("/log", 4096, 0, held)
    assert exc.value.errno == errno.EIO
    ops.release("/log", held)
