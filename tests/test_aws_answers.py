"""Answers only AWS gives: a 200 whose body is an ``<Error>`` (a copy or a multipart completion that
failed after the status went out). The FaultProxy answers so, in front of SeaweedFS."""

from __future__ import annotations

import os

import pytest
import s3rig

from s3fs_mount.s3 import RemoteStore, RetryPolicy, S3Connection, S3Error

MiB = 1 << 20


def _store(s3config, proxy, attempts=4, **kw):
    retry = RetryPolicy(max_attempts=attempts, base_delay=0.01, max_delay=0.05)
    return RemoteStore(S3Connection(**dict(s3config, endpoint=proxy.endpoint, retry=retry)), **kw)


@pytest.fixture
def proxied(s3config, faultproxy):
    store = _store(s3config, faultproxy)
    yield store
    store.close()


def test_a_copy_answered_200_with_an_error_is_retried(proxied, faultproxy, boto, bucket, caplog):
    proxied.put("src", b"source bytes", {"x-amz-meta-a": "1"})
    faultproxy.error_in_200(1)
    etag = proxied.copy_object("src", "dst")
    assert faultproxy.errors_in_200 == 1
    assert proxied.connection.stats.retries == 1
    got = boto.get_object(Bucket=bucket, Key="dst")
    assert got["Body"].read() == b"source bytes" and got["ETag"].strip('"') == etag
    assert "S3 answered 200 with an error (InternalError): a failure" in caplog.text

    faultproxy.error_in_200(1, code="SlowDown")
    assert proxied.update_metadata("dst", {"x-amz-meta-b": "2"})
    assert faultproxy.errors_in_200 == 2
    assert boto.head_object(Bucket=bucket, Key="dst")["Metadata"] == {"b": "2"}


def test_a_completion_answered_200_with_an_error_is_retried(s3config, faultproxy, boto, bucket, tmp_path):
    store = _store(s3config, faultproxy, part_size=5 * MiB, multipart_threshold=5 * MiB)
    data = os.urandom(11 * MiB)
    (tmp_path / "big").write_bytes(data)
    try:
        faultproxy.error_in_200(1)
        etag = store.upload_file(str(tmp_path / "big"), "big")
    finally:
        store.close()
    assert faultproxy.errors_in_200 == 1
    got = boto.get_object(Bucket=bucket, Key="big")
    assert got["Body"].read() == data and got["ETag"].strip('"') == etag and etag.endswith("-3")


def test_an_error_in_200_is_never_taken_for_success(s3config, faultproxy, boto, bucket, tmp_path, caplog):
    store = _store(s3config, faultproxy, attempts=3, part_size=5 * MiB, multipart_threshold=5 * MiB)
    try:
        store.put("src", b"x")
        faultproxy.error_in_200(3)
        with pytest.raises(S3Error) as caught:
            store.copy_object("src", "dst")
        assert (caught.value.status, caught.value.code) == (500, "InternalError")
        faultproxy.error_in_200(3)
        assert not store.copy("src", "dst")  # the seed API: False, logged
        assert "copy src -> dst failed: 500 InternalError" in caplog.text
        (tmp_path / "big").write_bytes(os.urandom(6 * MiB))
        faultproxy.error_in_200(3)
        with pytest.raises(S3Error):
            store.upload_file(str(tmp_path / "big"), "big")
    finally:
        store.close()
    assert faultproxy.errors_in_200 == 9
    listed = {o["Key"] for o in boto.list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert listed == {"src"}
    assert not boto.list_multipart_uploads(Bucket=bucket).get("Uploads")  # the failed upload was aborted


@pytest.mark.fuse
def test_a_mount_retries_copies_and_completions_answered_200_with_an_error(
    mount_factory, s3config, faultproxy, boto, bucket, tmp_path
):
    config = s3rig.write_s3yaml(tmp_path / "proxied.yaml", dict(s3config, endpoint=faultproxy.endpoint))
    m = mount_factory(config=str(config)).start()
    data = os.urandom(20 * MiB)  # multipart: ends in a completion
    faultproxy.error_in_200(1)
    with open(os.path.join(m.path, "big.bin"), "wb") as f:
        f.write(data)
    assert faultproxy.errors_in_200 == 1
    with open(os.path.join(m.path, "a.txt"), "wb") as f:
        f.write(b"small")
    faultproxy.error_in_200(1)
    os.rename(os.path.join(m.path, "a.txt"), os.path.join(m.path, "b.txt"))  # a copy
    assert faultproxy.errors_in_200 == 2
    assert sorted(os.listdir(m.path)) == ["b.txt", "big.bin"]
    assert m.stop() == 0
    assert boto.get_object(Bucket=bucket, Key="big.bin")["Body"].read() == data
    assert boto.get_object(Bucket=bucket, Key="b.txt")["Body"].read() == b"small"
    assert "a.txt" not in {o["Key"] for o in boto.list_objects_v2(Bucket=bucket)["Contents"]}
    assert sum("answered 200 with an error" in line for line in m.log_lines()) == 2
