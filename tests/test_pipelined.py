"""The request pipeline (s3fs_mount/s3/pipelined.py, S3Connection.send_ahead): a walk's HEADs sent
by one thread over many kept-alive sockets answer as ``head`` does, are counted, signed and
retried by the one retry policy, and fail at once, unsent, while S3 is unreachable. Against
SeaweedFS through the FaultProxy (which counts what reached the server and makes the faults)."""

from __future__ import annotations

import collections
import concurrent.futures
import threading

import pytest
from test_keepalive import _retry, tls_front  # noqa: F401 - a fixture, and the tests' retry policy
from waiting import eventually

from s3fs_mount.s3 import RemoteStore, S3Connection, S3Error, S3Name
from s3fs_mount.s3.connection import AHEAD_SOCKETS
from s3fs_mount.s3.errors import ConnectionFailed, TimedOut, TLSFailed, Unreachable
from s3fs_mount.s3.pipelined import Pending


@pytest.fixture
def proxied(faultproxy, s3config):
    store = RemoteStore(S3Connection(**dict(s3config, endpoint=faultproxy.endpoint, retry=_retry())))
    yield store
    store.close()


def _put(boto, bucket: str, count: int) -> list[str]:
    keys = ["w/f%04d" % i for i in range(count)]
    for i, key in enumerate(keys):
        boto.put_object(Bucket=bucket, Key=key, Body=b"x" * i, Metadata={"mode": str(0o100600 + i % 8)})
    return keys


def _heads(faultproxy, mark: int = 0) -> collections.Counter[str]:
    return collections.Counter(target for method, target in faultproxy.seen[mark:] if method == "HEAD")


def test_heads_sent_ahead_answer_as_head_does_one_request_each(proxied, faultproxy, boto, bucket):
    keys = _put(boto, bucket, 3 * AHEAD_SOCKETS + 5)
    mark = len(faultproxy.seen)
    pending = [proxied.head_ahead(S3Name(key, bucket)) for key in keys]
    missing = proxied.head_ahead(S3Name("w/none", bucket))
    got = [p.result() for p in pending]
    with pytest.raises(S3Error) as caught:
        missing.result()
    assert caught.value.not_found and caught.value.status == 404
    assert _heads(faultproxy, mark) == collections.Counter(
        "/%s/%s" % (bucket, k) for k in keys + ["w/none"]
    )  # one HEAD a key, nothing else
    for i, (key, info) in enumerate(zip(keys, got, strict=True)):
        same = proxied.head(S3Name(key, bucket))
        assert (info.key, info.size, info.etag, info.metadata) == (key, i, same.etag, same.metadata)
        assert info.metadata == {"x-amz-meta-mode": str(0o100600 + i % 8)}
    stats = proxied.connection.stats
    assert stats.requests["HEAD"] == len(keys) * 2 + 1 and stats.misses == 1 and stats.retries == 0
    assert faultproxy.accepted <= AHEAD_SOCKETS + 1  # at most AHEAD_SOCKETS at once (+1: head())


def test_an_error_answer_is_raised_as_head_raises_it(proxied, faultproxy, boto, bucket):
    _put(boto, bucket, 1)
    faultproxy.fail_next(1, status=403, code="AccessDenied")
    with pytest.raises(S3Error) as caught:
        proxied.head_ahead(S3Name("w/f0000", bucket)).result()
    assert caught.value.status == 403 and proxied.connection.stats.retries == 0
    faultproxy.fail_next(2, status=503)  # retried by the policy, then answered
    assert proxied.head_ahead(S3Name("w/f0000", bucket)).result().size == 0
    assert proxied.connection.stats.retries == 2


def test_a_socket_closed_mid_batch_has_its_head_sent_again_once(proxied, faultproxy, boto, bucket):
    keys = _put(boto, bucket, 2 * AHEAD_SOCKETS)
    for p in [proxied.head_ahead(S3Name(key, bucket)) for key in keys]:
        p.result()  # the pipeline's sockets open
    mark = len(faultproxy.seen)
    faultproxy.drop_next(1)  # one request of the batch: its connection closed, no answer
    got = [p.result() for p in [proxied.head_ahead(S3Name(key, bucket)) for key in keys]]
    assert [info.size for info in got] == list(range(len(keys)))
    heads = _heads(faultproxy, mark)
    assert sorted(heads.values()) == [1] * (len(keys) - 1) + [2]  # the dropped one sent again, once
    assert proxied.connection.stats.retries == 1


def test_sockets_the_server_closed_while_idle_are_not_sent_on(proxied, faultproxy, boto, bucket):
    keys = _put(boto, bucket, AHEAD_SOCKETS)
    for p in [proxied.head_ahead(S3Name(key, bucket)) for key in keys]:
        p.result()
    faultproxy.hang_up()  # as a server's idle timeout closes kept-alive connections
    eventually(lambda: not faultproxy._conns, what="the proxy to close its side")
    mark = len(faultproxy.seen)
    assert [p.result().size for p in [proxied.head_ahead(S3Name(key, bucket)) for key in keys]] == list(
        range(len(keys))
    )
    assert sorted(_heads(faultproxy, mark).values()) == [1] * len(keys)
    assert proxied.connection.stats.retries == 0


def test_a_server_that_stops_answering_is_timed_out_as_the_policy_says(faultproxy, s3config, boto, bucket):
    _put(boto, bucket, 1)
    connection = S3Connection(**dict(s3config, endpoint=faultproxy.endpoint, retry=_retry(), timeout=0.2))
    store = RemoteStore(connection)
    faultproxy.stall(5)
    with pytest.raises(TimedOut):
        store.head_ahead(S3Name("w/f0000", bucket)).result()
    assert connection.stats.retries == 3  # four attempts, as the policy bounds them
    faultproxy.stall(0)
    assert store.head_ahead(S3Name("w/f0000", bucket)).result().size == 0
    store.close()


def test_a_server_that_is_gone_is_a_connection_failure_retried_by_the_policy(faultproxy, s3config, bucket):
    connection = S3Connection(**dict(s3config, endpoint=faultproxy.endpoint, retry=_retry()))
    store = RemoteStore(connection)
    faultproxy.close()
    with pytest.raises(ConnectionFailed):
        store.head_ahead(S3Name("w/f0000", bucket)).result()
    assert connection.stats.retries == 3
    store.close()


def test_while_s3_is_unreachable_heads_sent_ahead_fail_at_once_unsent(proxied, faultproxy, boto, bucket):
    _put(boto, bucket, 1)
    outage = proxied.connection.retry.outage
    outage.lost(ConnectionFailed("HEAD x", "Connection refused"))  # the breaker opens
    mark = len(faultproxy.seen)
    with pytest.raises(Unreachable):
        proxied.head_ahead(S3Name("w/f0000", bucket)).result()
    assert faultproxy.seen[mark:] == [] and outage.waiting == 0  # not the probe, not waiting for it
    outage.answered()
    assert proxied.head_ahead(S3Name("w/f0000", bucket)).result().size == 0


def test_a_head_cancelled_before_it_was_sent_is_not_sent(proxied, faultproxy, boto, bucket):
    keys = _put(boto, bucket, AHEAD_SOCKETS + 5)
    busy = {"/%s/%s" % (bucket, key) for key in keys[:AHEAD_SOCKETS]}
    # The first AHEAD_SOCKETS HEADs are held by the server until a LIST of prefix "go" comes: every
    # socket of the pipeline is busy meanwhile, and the HEADs after them wait, unsent.
    faultproxy.hold_until(
        lambda method, target: "go" if method == "HEAD" and target in busy else None,
        lambda method, target: "go" if method == "GET" and "prefix=go" in target else None,
        60.0,
    )
    mark = len(faultproxy.seen)
    first = [proxied.head_ahead(S3Name(key, bucket)) for key in keys[:AHEAD_SOCKETS]]
    eventually(lambda: sum(_heads(faultproxy, mark).values()) == AHEAD_SOCKETS, what="every socket busy")
    queued = [proxied.head_ahead(S3Name(key, bucket)) for key in keys[AHEAD_SOCKETS:]]
    assert [p.cancel() for p in queued] == [True] * len(queued)
    assert all(p.done() for p in queued) and not any(p.done() for p in first)
    next(proxied.list("go", bucket=bucket))  # the held HEADs go on
    assert [p.result().size for p in first] == list(range(AHEAD_SOCKETS))
    for p in queued:
        with pytest.raises(concurrent.futures.CancelledError):
            p.result()
    assert set(_heads(faultproxy, mark)) == busy  # the cancelled ones were never sent
    assert [outcome for _, outcome in faultproxy.held_outcomes] == ["request"] * AHEAD_SOCKETS


def test_a_pending_answer_is_started_or_cancelled_never_both():
    for _ in range(200):
        answer: Pending[int] = Pending()
        outcome: list[object] = []
        go = threading.Barrier(2)

        def sender(answer=answer, outcome=outcome, go=go):
            go.wait()
            if answer.start():
                answer.settle(7)
                outcome.append("sent")

        thread = threading.Thread(target=sender)
        thread.start()
        go.wait()
        cancelled = answer.cancel()
        thread.join()
        assert cancelled != (outcome == ["sent"])
        if cancelled:
            with pytest.raises(concurrent.futures.CancelledError):
                answer.result()
        else:
            assert answer.result() == 7
        assert answer.done()


def test_heads_sent_ahead_over_tls_check_the_certificate(
    tls_front, s3config, bucket, boto, monkeypatch  # noqa: F811 - the fixture
):
    front, cert = tls_front
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    keys = _put(boto, bucket, AHEAD_SOCKETS + 10)
    settings = dict(s3config, endpoint="https://" + front.endpoint, retry=_retry())
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", cert)
    store = RemoteStore(S3Connection(**settings))
    try:
        pending = [store.head_ahead(S3Name(key, bucket)) for key in keys]
        assert [p.result().size for p in pending] == list(range(len(keys)))
        assert store.connection.stats.pipelined == len(keys)
    finally:
        store.close()
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")  # the system's bundle does not know this certificate
    unknown = RemoteStore(S3Connection(**settings))
    with pytest.raises(TLSFailed) as caught:
        unknown.head_ahead(S3Name(keys[0], bucket)).result()
    assert caught.value.reason == "certificate verify failed"
    assert unknown.connection.stats.retries == 0  # not retried: a TLS failure is no accident
