"""LocalS3Server: starts, serves signed S3 requests, and stop() really ends the process."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import s3rig

from s3fs_mount.localserver import LocalS3Server, ServerError, saved_endpoint


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_start_put_get_stop(tmp_path: Path) -> None:
    t0 = time.monotonic()
    server = s3rig.start_local_server(tmp_path / "data")
    try:
        startup = time.monotonic() - t0
        assert server.endpoint.startswith("127.0.0.1:")
        assert server.pid is not None and _alive(server.pid)
        client = s3rig.make_boto_client(server.endpoint, server.access_key, server.secret_key)
        client.create_bucket(Bucket="rig-bucket")
        client.put_object(Bucket="rig-bucket", Key="dir/obj.txt", Body=b"hello",
                          Metadata={"color": "blue"})
        got = client.get_object(Bucket="rig-bucket", Key="dir/obj.txt")
        assert got["Body"].read() == b"hello"
        assert got["Metadata"] == {"color": "blue"}
        names = [b["Name"] for b in client.list_buckets()["Buckets"]]
        assert "rig-bucket" in names
        # Wrong secret must be rejected: auth is really on.
        bad = s3rig.make_boto_client(server.endpoint, server.access_key, "wrong")
        with pytest.raises(Exception, match="SignatureDoesNotMatch"):
            bad.list_buckets()
        print(f"LocalS3Server startup {startup:.2f}s")
    finally:
        pid = server.pid
        server.stop(kill=True)
    assert pid is not None and not _alive(pid)
    assert not server.is_running()
    server.stop(kill=True)  # idempotent


def test_context_manager_default_ready(tmp_path: Path) -> None:
    with LocalS3Server(str(tmp_path), access_key="AKIDTEST", secret_key="s3cr3t") as server:
        assert server.access_key == "AKIDTEST"
        assert server.default_ready()
        pid = server.pid
    assert pid is not None and not _alive(pid)


def test_start_failure_is_one_line_with_its_cause(tmp_path: Path) -> None:
    server = LocalS3Server(str(tmp_path), extra_args=["-no-such-flag"])
    with pytest.raises(ServerError) as e:
        server.start(lambda: True, timeout=20)
    first = str(e.value).splitlines()[0]
    assert "exited" in first and "no-such-flag" in first and str(server.log_path) in first, first
    assert not server.is_running()


def test_stable_server_keeps_its_endpoint_and_its_data_dir_to_itself(tmp_path: Path) -> None:
    first = LocalS3Server(str(tmp_path), stable=True)
    first.lock(timeout=1)
    try:
        first.start(timeout=60)
        endpoint = first.endpoint
        assert saved_endpoint(tmp_path) == endpoint
        second = LocalS3Server(str(tmp_path), stable=True)
        told: list[str] = []
        with pytest.raises(ServerError, match="in use by pid %d" % os.getpid()):
            second.lock(timeout=0.5, waiting=told.append)
        assert told == ["pid %d" % os.getpid()]
    finally:
        first.stop(kill=True)
        first.unlock()
    again = LocalS3Server(str(tmp_path), stable=True)
    again.lock(timeout=1)
    try:
        again.start(timeout=60)
        assert again.endpoint == endpoint  # the same port, remembered in DATA_DIR/ports.json
    finally:
        again.stop(kill=True)
        again.unlock()


def test_session_fixtures(boto, bucket: str, s3config: dict, s3yaml: Path) -> None:  # noqa: ANN001
    boto.put_object(Bucket=bucket, Key="k", Body=b"v")
    assert boto.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"
    assert s3config["default_bucket"] == bucket and s3config["tls"] is False
    assert s3yaml.stat().st_mode & 0o777 == 0o600
    import yaml

    assert yaml.safe_load(s3yaml.read_text()) == {"s3": s3config}


def test_moto_server(moto_server: s3rig.MotoServer) -> None:
    client = s3rig.make_boto_client(moto_server.endpoint, "testing", "testing")
    client.create_bucket(Bucket="moto-bucket")
    client.put_object(Bucket="moto-bucket", Key="a", Body=b"1")
    assert client.get_object(Bucket="moto-bucket", Key="a")["Body"].read() == b"1"


def test_faultproxy_in_front_of_seaweed(faultproxy, boto, bucket: str) -> None:  # noqa: ANN001
    client = s3rig.make_boto_client(faultproxy.endpoint, *_creds(boto))
    faultproxy.fail_next(1)  # boto retries once (max_attempts=2) and succeeds
    client.put_object(Bucket=bucket, Key="p", Body=b"x" * 70000)
    assert client.get_object(Bucket=bucket, Key="p")["Body"].read() == b"x" * 70000
    assert faultproxy.requests == 3 and faultproxy.forwarded == 2


def _creds(client) -> tuple[str, str]:  # noqa: ANN001
    c = client._request_signer._credentials
    return c.access_key, c.secret_key
