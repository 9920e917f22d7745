"""A mount whose identity S3 allows less than everything: read-only keys, keys changed under it.

One SeaweedFS server for the module, with identities beside its admin (s3rig.ServerWithIdentities);
the test's bucket is made and checked by the admin (``boto``).
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import s3rig
from mountrig import BIN, Mount, require_fuse, sync_dir

from s3fs_mount.localserver import LocalS3Server

pytestmark = pytest.mark.fuse

READ_ONLY = s3rig.identity("reader", "Read", "List")
#: Writes under one prefix of one bucket only (SeaweedFS: an action's resource with a '*').
SCOPED = s3rig.identity("scoped", "Read", "List", "Write:scoped/sub/*")


@pytest.fixture(scope="module")
def s3server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3Server]:
    """This module's server: its admin, and READ_ONLY."""
    server = s3rig.start_local_server(tmp_path_factory.mktemp("weed"), identities=[READ_ONLY, SCOPED])
    try:
        yield server
    finally:
        server.stop(kill=True)


@pytest.fixture(scope="module")
def boto(s3server: LocalS3Server) -> Any:
    """The admin's boto3 client of this module's server."""
    return s3rig.make_boto_client(s3server.endpoint, s3server.access_key, s3server.secret_key)


def config_of(who: dict[str, Any], s3config: dict[str, Any], path: str) -> str:
    keys = who["credentials"][0]
    return str(
        s3rig.write_s3yaml(
            path, dict(s3config, access_key_id=keys["accessKey"], secret_access_key=keys["secretKey"])
        )
    )


def errno_of(fn: Any, *args: Any) -> int:
    with pytest.raises(OSError) as info:
        fn(*args)
    return info.value.errno


def status(path: str) -> str:
    return subprocess.run(
        [sys.executable, BIN, "status", path], capture_output=True, text=True, check=False
    ).stdout


def test_read_only_keys_read_and_each_change_is_eacces_and_one_line_and_a_write_waits_staged(
    mount_factory, s3config, boto, bucket, tmp_path
):
    """Found by hand (round 35): with keys that may only read and list, the mount logged five
    warnings about its probes (and sent DELETEs of probe objects S3 had refused to write), and a cp
    said EIO at close ("Input/output error") in two lines, the second without the reason. Now the
    mount says once that S3 refuses writes, each change is EACCES and one line saying S3 refused it;
    the written file stays staged (status says so), and a mount with keys that may write uploads it."""
    boto.put_object(Bucket=bucket, Key="a.txt", Body=b"hello\n")
    boto.put_object(Bucket=bucket, Key="d/b.txt", Body=b"world\n")
    cache = str(tmp_path / "cache")
    reader = config_of(READ_ONLY, s3config, str(tmp_path / "reader.yaml"))
    m = mount_factory(config=reader, cache_dir=cache).start()
    p = m.path
    assert sorted(os.listdir(p)) == ["a.txt", "d"]
    with open(os.path.join(p, "a.txt"), "rb") as f:
        assert f.read() == b"hello\n"
    # At mount: one line says writes are refused; no probe after the first, no DELETE of one
    # never written (before: five WARNING lines, four of them about probe objects).
    warned = [line for line in m.log_lines() if " WARNING " in line or " ERROR " in line]
    assert len(warned) == 1 and "S3 refused this mount a write" in warned[0], warned
    assert "DELETE" not in next(x for x in status(p).splitlines() if x.startswith("requests: "))
    before = len(m.log_lines())

    f = open(os.path.join(p, "new.txt"), "wb")
    f.write(b"ours\n")
    assert errno_of(f.close) == errno.EACCES
    assert errno_of(os.mkdir, os.path.join(p, "e")) == errno.EACCES
    assert errno_of(os.rename, os.path.join(p, "d", "b.txt"), os.path.join(p, "d", "c.txt")) == errno.EACCES
    assert errno_of(os.chmod, os.path.join(p, "a.txt"), 0o600) == errno.EACCES
    assert errno_of(os.setxattr, os.path.join(p, "a.txt"), "user.x", b"1") == errno.EACCES
    said = m.log_lines()[before:]
    assert [line.split(": ")[1].rsplit(" ", 1)[-1] for line in said] == [
        "/new.txt", "/e", "/d/b.txt", "/a.txt", "/a.txt"
    ], said
    assert all("EACCES" in line and "403 AccessDenied" in line for line in said), said
    assert "upload of new.txt failed, kept staged" in said[0]
    waiting = status(p)
    assert "1 file waiting to upload:" in waiting, waiting
    assert "/new.txt  (last error: 403 AccessDenied" in waiting, waiting
    with open(os.path.join(p, "new.txt"), "rb") as f:
        assert f.read() == b"ours\n"  # staged: what this mount shows
    assert sorted(os.listdir(os.path.join(p, "d"))) == ["b.txt"]

    m.stop()
    assert "new.txt" not in {o["Key"] for o in boto.list_objects_v2(Bucket=bucket)["Contents"]}
    admin = mount_factory(cache_dir=cache).start()
    assert boto.get_object(Bucket=bucket, Key="new.txt")["Body"].read() == b"ours\n"
    assert admin.stop() == 0


def test_read_only_keys_an_rm_says_eacces_at_the_directorys_fsync_and_the_file_shows_again(
    mount_factory, s3config, boto, bucket, tmp_path
):
    """Found by hand (round 35): an rm returns before its delete is sent (in a batch); one that S3
    refused showed again and logged a line, but the fsync of the directory, which README says
    makes S3 right, returned 0. Now it says EACCES, once."""
    boto.put_object(Bucket=bucket, Key="a.txt", Body=b"hello\n")
    m = mount_factory(config=config_of(READ_ONLY, s3config, str(tmp_path / "reader.yaml"))).start()
    os.unlink(os.path.join(m.path, "a.txt"))
    assert errno_of(sync_dir, m.path) == errno.EACCES
    sync_dir(m.path)  # told once
    assert os.listdir(m.path) == ["a.txt"]
    assert boto.get_object(Bucket=bucket, Key="a.txt")["Body"].read() == b"hello\n"


def test_keys_that_may_write_under_the_mounted_prefix_only_write_there(s3config, boto, tmp_path):
    """The mount's probes write at the bucket's top, which such keys may not: that is no read-only
    mount (a guard for the line a whole-bucket mount says then), and files go up."""
    boto.create_bucket(Bucket="scoped")
    try:
        settings = dict(s3config, default_bucket="scoped")
        config = config_of(SCOPED, settings, str(tmp_path / "scoped.yaml"))
        require_fuse()
        where = [str(tmp_path / name) for name in ("mnt", "cache", "m.log")]
        m = Mount(config, "scoped:/sub", *where)
        m.start()
        try:
            with open(os.path.join(m.path, "f.txt"), "wb") as f:
                f.write(b"in sub\n")
            os.mkdir(os.path.join(m.path, "d"))
        finally:
            assert m.stop() == 0
        assert "S3 refused this mount a write" not in "\n".join(m.log_lines())
        assert boto.get_object(Bucket="scoped", Key="sub/f.txt")["Body"].read() == b"in sub\n"
    finally:
        s3rig.empty_and_delete_bucket(boto, "scoped")


def test_keys_the_server_stops_taking_mid_mount_are_eacces_with_a_line_that_says_so_and_no_retries(
    tmp_path,
):
    """Found by hand (round 35): keys changed on the server under a mount (its identities file
    changed, the server restarted) gave EACCES, but the lines said '403 AccessDenied' with nothing
    pointing at the keys. Now they say S3 does not take them; each call is one request (no retry),
    a write stays staged, and it goes up once the server takes the keys again."""
    require_fuse()
    writer = s3rig.identity("writer", "Read", "List", "Write")
    server = s3rig.ServerWithIdentities(str(tmp_path / "weed"), [writer], stable=True)
    s3rig.start_and_wait(server)
    try:
        admin = s3rig.make_boto_client(server.endpoint, server.access_key, server.secret_key)
        admin.create_bucket(Bucket="keys")
        config = config_of(writer, s3rig.s3_config(server, "keys"), str(tmp_path / "writer.yaml"))
        m = Mount(config, "keys", str(tmp_path / "mnt"), str(tmp_path / "cache"), str(tmp_path / "m.log"))
        m.start()
        try:
            with open(os.path.join(m.path, "before.txt"), "wb") as f:
                f.write(b"taken\n")
            f = open(os.path.join(m.path, "after.txt"), "wb")
            f.write(b"waits\n")
            server.stop(kill=True)
            writer["credentials"][0]["secretKey"] = "CHANGED"
            s3rig.start_and_wait(server)
            # The kill may have opened the outage breaker (s3/retry.py Outage): the calls below
            # wait for its next probe, which finds the server back (before round 38 they failed
            # with EIO unsent until then, and this test waited for status to say S3 was back).
            sent, lines = requests_sent(m.path), len(m.log_lines())
            assert errno_of(os.listdir, m.path) == errno.EACCES
            assert errno_of(os.stat, os.path.join(m.path, "other.txt")) == errno.EACCES
            assert errno_of(f.close) == errno.EACCES
            # Not counted: the background retries of the failed close (2 s on, then at doubling
            # intervals; a request and a line each), which a loaded machine's status call can
            # take longer than 2 s to reach.
            sent = requests_sent(m.path) - sent
            sent -= sum("background upload of after.txt" in line for line in m.log_lines()[lines:])
            # (A HEAD's 403 has no body to say why: a lookup's line says AccessDenied only. The
            # restarts' forks close the open file too: a flush each.)
            said = [line for line in m.log_lines() if "readdir /: EACCES" in line or "flush /after" in line]
            assert "S3 does not take these keys" in said[-2] and "readdir" in said[-2], said
            assert "S3 does not take these keys" in said[-1] and "kept staged" in said[-1], said
            assert sent <= 4  # the LIST, the lookup's, the PUT (+ a HEAD)
            server.stop(kill=True)
            writer["credentials"][0]["secretKey"] = "WRITER-SECRET"
            s3rig.start_and_wait(server)
            assert sorted(os.listdir(m.path)) == ["after.txt", "before.txt"]
        finally:
            m.stop()
        assert admin.get_object(Bucket="keys", Key="after.txt")["Body"].read() == b"waits\n"
    finally:
        server.stop(kill=True)


def requests_sent(path: str) -> int:
    line = next(line for line in status(path).splitlines() if line.startswith("requests: "))
    return int(line.split()[1])
