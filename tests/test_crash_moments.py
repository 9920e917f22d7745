"""kill -9 at each step of a change that takes several requests; then the next mount's recovery.

Each test holds one kind of request in a proxy (before it reaches S3, or once it has landed,
its answer held), kills the mount there, mounts again on the same cache, and compares what S3
holds (boto3, not through the mount) with what a local disk would: all of the old or all of the
new, nothing lost, nothing back, no multipart upload left.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import threading
import urllib.parse

import pytest
import s3rig
from mountrig import journal_records
from test_reliability import (
    HoldingProxy,
    MiB,
    fill_disk,
    holding,
    in_background,
    is_completion,
    is_copy,
    is_delete,
    is_move,
    killed_while_held,
    multipart_uploads,
    proxy_yaml,
    rand,
    s3_bytes,
    s3_keys,
    s3_sha,
    small_tmpfs,
    write_file,
)
from waiting import eventually

from s3fs_mount import control
from s3fs_mount.fs.renames import JOURNAL_NAME as RENAMES_JOURNAL

pytestmark = pytest.mark.fuse

#: Where a test kills the mount: the held request not sent yet, or landed with its answer held.
MOMENTS = ["before", "landed"]


def is_plain_put(req) -> bool:
    """A PutObject or UploadPart (not a copy)."""
    return req.method == "PUT" and req.header("x-amz-copy-source") is None


@pytest.mark.parametrize("moment", MOMENTS)
@pytest.mark.parametrize("step", ["copy", "delete"])
def test_kill9_during_a_rename_over_an_existing_file(
    mount_factory, s3server, s3config, s3yaml, boto, bucket, tmp_path, step, moment
):
    boto.put_object(Bucket=bucket, Key="src", Body=b"the new bytes")
    boto.put_object(Bucket=bucket, Key="dst", Body=b"the old bytes of dst")
    cache = str(tmp_path / "cache")
    with holding(s3server, is_copy if step == "copy" else is_delete) as proxy:
        m = mount_factory("server_rename=off", config=proxy_yaml(tmp_path, s3config, proxy),
                          cache_dir=cache).start()
        assert sorted(os.listdir(m.path)) == ["dst", "src"]
        proxy.hold_uploads(answers=moment == "landed")
        mover = in_background(os.rename, os.path.join(m.path, "src"), os.path.join(m.path, "dst"))
        killed_while_held(proxy, m)
        mover.join(30)
    m2 = mount_factory(config=str(s3yaml), cache_dir=cache).start()
    keys = s3_keys(boto, bucket)
    if step == "copy" and moment == "before":
        assert keys == ["dst", "src"] and s3_bytes(boto, bucket, "dst") == b"the old bytes of dst"
    else:
        assert keys == ["dst"] and s3_bytes(boto, bucket, "dst") == b"the new bytes"
    assert sorted(os.listdir(m2.path)) == keys
    assert multipart_uploads(boto, bucket) == []
    assert m2.stop() == 0


@pytest.mark.parametrize("moment", MOMENTS)
def test_kill9_between_a_renameobject_and_its_ctime_copy_moves_the_ctime_at_the_next_mount(
    mount_factory, s3server, s3config, s3yaml, boto, bucket, tmp_path, moment
):
    """A file's rename by RenameObject (SeaweedFS) is followed by a self-copy that stores its new
    ctime (round 38). Killed in between, nothing was recorded (round 38 helper 7's notes): the
    file stayed at its old ctime for good (``find -cnewer`` and ``tar --newer`` miss it). Now the
    rename is recorded first and the next mount stores the ctime it took."""
    cache = str(tmp_path / "cache")
    with holding(s3server, is_copy) as proxy:
        m = mount_factory(config=proxy_yaml(tmp_path, s3config, proxy), cache_dir=cache).start()
        with open(os.path.join(m.path, "src"), "wb") as f:
            f.write(b"the bytes")
        before = float(boto.head_object(Bucket=bucket, Key="src")["Metadata"]["ctime"])
        proxy.hold_uploads(answers=moment == "landed")
        mover = in_background(os.rename, os.path.join(m.path, "src"), os.path.join(m.path, "dst"))
        killed_while_held(proxy, m)
        mover.join(30)
    assert s3_keys(boto, bucket) == ["dst"]  # moved: only its ctime was owed
    m2 = mount_factory(config=str(s3yaml), cache_dir=cache).start()
    moved = float(boto.head_object(Bucket=bucket, Key="dst")["Metadata"]["ctime"])
    assert moved > before
    assert os.stat(os.path.join(m2.path, "dst")).st_ctime == pytest.approx(moved, abs=1e-3)
    assert s3_bytes(boto, bucket, "dst") == b"the bytes"
    assert m2.stop() == 0


@pytest.mark.parametrize("until", ["retried", "next mount"])
def test_a_renameobjects_ctime_s3_refuses_is_stored_once_s3_takes_it(
    mount_factory, s3server, s3config, s3yaml, faultproxy, boto, bucket, tmp_path, until
):
    """The self-copy that stores a RenameObject's new ctime is refused (a 500 at every attempt):
    the rename stands, and its ctime was left as it was for good, with a warning (round 39's
    review). Now the rename stays recorded and the ctime is stored once S3 takes it: by the
    background's retries, or by the next mount if this one is killed first."""
    cache = str(tmp_path / "cache")
    m = mount_factory(config=proxy_yaml(tmp_path, s3config, faultproxy), cache_dir=cache).start()
    with open(os.path.join(m.path, "src"), "wb") as f:
        f.write(b"the bytes")
    before = float(boto.head_object(Bucket=bucket, Key="src")["Metadata"]["ctime"])

    def ctime_copy(method: str, target: str) -> bool:  # a PUT of dst that is no RenameObject
        path = urllib.parse.unquote(urllib.parse.urlsplit(target).path)
        return method == "PUT" and "renameObject" not in target and path.endswith("/" + bucket + "/dst")

    faultproxy.fail_where(ctime_copy, 500)
    os.rename(os.path.join(m.path, "src"), os.path.join(m.path, "dst"))
    assert s3_keys(boto, bucket) == ["dst"]  # moved: only its ctime is owed
    assert [line for line in m.log().splitlines() if "WARNING" in line and "ctime" in line]  # says so
    assert float(boto.head_object(Bucket=bucket, Key="dst")["Metadata"]["ctime"]) == before
    assert journal_records(cache, RENAMES_JOURNAL) == 1  # kept until it is stored
    if until == "retried":
        eventually(lambda: m.log().count("still not finished") >= 1, 120)  # tried again, refused
        faultproxy.fail_where(None)
        eventually(lambda: journal_records(cache, RENAMES_JOURNAL) == 0, 120)
        shown = m
    else:
        m.kill()
        faultproxy.fail_where(None)
        shown = mount_factory(config=str(s3yaml), cache_dir=cache).start()
    moved = float(boto.head_object(Bucket=bucket, Key="dst")["Metadata"]["ctime"])
    assert moved > before
    shown_ctime = lambda: os.stat(os.path.join(shown.path, "dst")).st_ctime  # noqa: E731
    eventually(lambda: shown_ctime() == pytest.approx(moved, abs=1e-3), 30)  # (the kernel's attr_ttl)
    assert s3_bytes(boto, bucket, "dst") == b"the bytes"
    assert shown.stop() == 0
    assert journal_records(cache, RENAMES_JOURNAL) == 0


@pytest.mark.parametrize("moment", MOMENTS)
def test_kill9_during_an_unlink_batch_of_500(
    mount_factory, s3server, s3config, s3yaml, boto, bucket, tmp_path, moment
):
    for i in range(500):
        boto.put_object(Bucket=bucket, Key="d/f%03d" % i, Body=b"%d" % i)
    boto.put_object(Bucket=bucket, Key="keep", Body=b"kept")
    cache = str(tmp_path / "cache")
    with holding(s3server, is_delete) as proxy:
        m = mount_factory(config=proxy_yaml(tmp_path, s3config, proxy), cache_dir=cache).start()
        names = sorted(os.listdir(os.path.join(m.path, "d")))
        assert len(names) == 500
        proxy.hold_uploads(answers=moment == "landed")
        for name in names:
            os.unlink(os.path.join(m.path, "d", name))
        killed_while_held(proxy, m)
    m2 = mount_factory(config=str(s3yaml), cache_dir=cache).start()
    assert [k for k in s3_keys(boto, bucket) if not k.endswith("/")] == ["keep"]
    d = os.path.join(m2.path, "d")
    assert not os.path.isdir(d) or os.listdir(d) == []  # the directory, if shown, empty
    assert "keep" in os.listdir(m2.path)
    assert control.read_status(m2.path)["recovered"] == {"deletes sent": 500}
    assert m2.stop() == 0


@pytest.mark.parametrize("moment", MOMENTS)
@pytest.mark.parametrize("size", [0, 5])
def test_kill9_during_a_truncate_of_a_file_in_s3(
    mount_factory, s3server, s3config, s3yaml, boto, bucket, tmp_path, moment, size
):
    boto.put_object(Bucket=bucket, Key="f", Body=b"0123456789" * 100)
    cache = str(tmp_path / "cache")
    with holding(s3server, is_plain_put) as proxy:
        m = mount_factory(config=proxy_yaml(tmp_path, s3config, proxy), cache_dir=cache).start()
        assert os.stat(os.path.join(m.path, "f")).st_size == 1000
        proxy.hold_uploads(answers=moment == "landed")
        cutter = in_background(os.truncate, os.path.join(m.path, "f"), size)
        killed_while_held(proxy, m)
        cutter.join(30)
    m2 = mount_factory(config=str(s3yaml), cache_dir=cache).start()
    assert s3_keys(boto, bucket) == ["f"]
    assert s3_bytes(boto, bucket, "f") == b"0123456789"[:size]
    with open(os.path.join(m2.path, "f"), "rb") as f:
        assert f.read() == b"0123456789"[:size]
    st = control.read_status(m2.path)
    assert st["pending"] == []
    assert m2.stop() == 0


@pytest.mark.parametrize("moment", MOMENTS)
def test_kill9_during_setfattr_on_a_file_being_written(
    mount_factory, s3server, s3config, s3yaml, boto, bucket, tmp_path, moment
):
    boto.put_object(Bucket=bucket, Key="f", Body=b"old", Metadata={"colour": "red"})
    cache = str(tmp_path / "cache")
    with holding(s3server, lambda req: req.method == "PUT") as proxy:
        m = mount_factory(config=proxy_yaml(tmp_path, s3config, proxy), cache_dir=cache).start()
        path = os.path.join(m.path, "f")
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        os.write(fd, b"new bytes being written")
        proxy.hold_uploads(answers=moment == "landed")
        setter = in_background(os.setxattr, path, "user.colour", b"blue")
        setter.join(30)  # no request: the file is staged, dirty
        fsyncer = in_background(os.fsync, fd)  # its upload, with the xattr, is held
        killed_while_held(proxy, m)
        fsyncer.join(30)
        with contextlib.suppress(OSError):
            os.close(fd)
    m2 = mount_factory(config=str(s3yaml), cache_dir=cache).start()
    assert s3_keys(boto, bucket) == ["f"]
    assert s3_bytes(boto, bucket, "f") == b"new bytes being written"
    assert boto.head_object(Bucket=bucket, Key="f")["Metadata"]["colour"] == "blue"
    assert os.getxattr(os.path.join(m2.path, "f"), "user.colour") == b"blue"
    assert multipart_uploads(boto, bucket) == []
    assert m2.stop() == 0


@pytest.mark.parametrize("moment", ["part", "completion", "completion landed"])
def test_kill9_during_a_writeback_upload_of_100mib(
    mount_factory, s3server, s3config, s3yaml, boto, bucket, tmp_path, moment
):
    data = rand(100 * MiB + 3, 5)
    cache = str(tmp_path / "cache")
    held = is_plain_put if moment == "part" else is_completion
    with holding(s3server, held) as proxy:
        m = mount_factory("writeback", config=proxy_yaml(tmp_path, s3config, proxy), cache_dir=cache).start()
        proxy.hold_uploads(let_through=3 if moment == "part" else 0, answers=moment == "completion landed")
        write_file(os.path.join(m.path, "big"), data)
        killed_while_held(proxy, m)
    m2 = mount_factory(config=str(s3yaml), cache_dir=cache).start()
    assert s3_keys(boto, bucket) == ["big"]
    assert s3_sha(boto, bucket, "big") == hashlib.sha256(data).hexdigest()
    assert multipart_uploads(boto, bucket) == []
    st = control.read_status(m2.path)
    assert st["recovered"] == {
        "part": {"files uploaded": 1}, "completion": {"files uploaded": 1},
        "completion landed": {"files already in S3": 1},
    }[moment]
    assert st["pending"] == []
    assert m2.stop() == 0



@pytest.mark.parametrize("failed_first", [False, True])
def test_kill9_during_a_rename_over_a_file_just_written_with_writeback(
    mount_factory, s3server, s3config, s3yaml, boto, bucket, tmp_path, failed_first
):
    # An editor's save with -o writeback: dst written (its upload in the background), then
    # src renamed over it; killed once the copy is made, before the old key's delete. The next
    # mount finishes the rename: dst holds src's bytes; dst's replaced bytes come back nowhere.
    boto.put_object(Bucket=bucket, Key="src", Body=b"the moved bytes")
    boto.put_object(Bucket=bucket, Key="dst", Body=b"dst as it was")
    cache = str(tmp_path / "cache")
    with holding(s3server, is_delete) as proxy:
        m = mount_factory("writeback,server_rename=off", config=proxy_yaml(tmp_path, s3config, proxy),
                          cache_dir=cache).start()
        assert sorted(os.listdir(m.path)) == ["dst", "src"]
        proxy.hold_uploads()
        with open(os.path.join(m.path, "dst"), "wb") as f:
            f.write(b"dst written again")
            if failed_first:  # dst's upload fails (every attempt): dst is still staged, dirty
                before = proxy.requests
                proxy.fail_next(6)
        if failed_first:
            eventually(lambda: proxy.requests >= before + 6, 60, "dst's upload to fail")
        mover = in_background(os.rename, os.path.join(m.path, "src"), os.path.join(m.path, "dst"))
        killed_while_held(proxy, m)
        mover.join(30)
    m2 = mount_factory(config=str(s3yaml), cache_dir=cache).start()
    assert s3_keys(boto, bucket) == ["dst"]
    assert s3_bytes(boto, bucket, "dst") == b"the moved bytes"
    assert sorted(os.listdir(m2.path)) == ["dst"]
    assert control.read_status(m2.path)["pending"] == []
    assert m2.stop() == 0


@pytest.mark.parametrize("rewritten", [False, True], ids=["then-nothing", "then-a-file-rewritten"])
@pytest.mark.parametrize("server_rename", ["on", "off"])
def test_a_directory_rename_s3_fails_part_way_is_finished_at_the_next_mount(
    mount_factory, s3server, s3config, s3yaml, boto, bucket, tmp_path, server_rename, rewritten
):
    # S3 goes down while a directory's files are moved (or copied): rename fails (EIO) with
    # some files at the new name. The rename stays recorded and the next mount finishes it,
    # as after a kill -9: every file under the new name once. (It stayed half under each name
    # for good: 38 and 12 files moved, or all 50 at the old name and 18 copies at the new.)
    # Unless the user then wrote a file at the new name that is still at the old name too (a
    # copy, or not moved yet): moving the old one over it would lose it, so both directories
    # stay as they are (it was finished, and the file's new bytes were gone).
    files = {"d/f%02d" % i: b"%d" % i for i in range(50)}
    for key, data in files.items():
        boto.put_object(Bucket=bucket, Key=key, Body=data)
    cache = str(tmp_path / "cache")
    with holding(s3server, is_move) as proxy:
        m = mount_factory("server_rename=" + server_rename, config=proxy_yaml(tmp_path, s3config, proxy),
                          cache_dir=cache).start()
        assert len(os.listdir(os.path.join(m.path, "d"))) == 50
        proxy.hold_uploads(let_through=10)
        failed: list[OSError] = []
        mover = threading.Thread(target=lambda: _call(os.rename, failed, os.path.join(m.path, "d"),
                                                       os.path.join(m.path, "e")))
        mover.start()
        eventually(lambda: proxy.held >= 1, 20, "a move to be held")
        proxy.mode = "fail"  # S3 down from now on
        proxy.release()
        mover.join(120)
        assert [e.errno for e in failed] == [errno.EIO]
        proxy.mode = "pass"
        keys = [k for k in s3_keys(boto, bucket) if not k.endswith("/")]
        assert any(k.startswith("e/") for k in keys)  # half done
        name = sorted(k[2:] for k in keys if k.startswith("d/"))[-1]  # still at the old name
        if rewritten:
            with open(os.path.join(m.path, "e", name), "wb") as f:
                f.write(b"written after the failure")
            assert s3_bytes(boto, bucket, "e/" + name) == b"written after the failure"
        m.stop()
    m2 = mount_factory(config=str(s3yaml), cache_dir=cache).start()
    if rewritten:
        assert s3_bytes(boto, bucket, "e/" + name) == b"written after the failure"
        assert s3_bytes(boto, bucket, "d/" + name) == files["d/" + name]
        assert control.read_status(m2.path)["recovered"] == {"renames left unfinished": 1}
    else:
        moved = {"e/" + k[2:]: v for k, v in files.items()}
        assert [k for k in s3_keys(boto, bucket) if not k.endswith("/")] == sorted(moved)
        for key, data in moved.items():
            assert s3_bytes(boto, bucket, key) == data, key
        assert sorted(os.listdir(m2.path)) == ["e"]
        assert control.read_status(m2.path)["recovered"] == {"renames finished": 1}
    assert m2.stop() == 0


@pytest.mark.parametrize("big", [False, True])
def test_kill9_before_a_directory_renames_deletes_finishes_it_whatever_the_copies_etag(
    mount_factory, s3server, s3config, s3yaml, boto, bucket, tmp_path, big
):
    # mv d e killed once every file is copied and before the old keys' delete: the next mount
    # finishes the rename. A copy's ETag is not its source's when it was copied in parts (over
    # 5 GiB, lowered here), nor on AWS when its source was uploaded in parts: the same bytes
    # under both names. They were taken for a file rewritten at the new name, and the rename
    # was left half done for good ('renames left unfinished'), the file under both names.
    data = rand(9 * MiB + 3 if big else 1000, 83)
    boto.put_object(Bucket=bucket, Key="d/f", Body=data)
    boto.put_object(Bucket=bucket, Key="d/small", Body=b"small")
    cache = str(tmp_path / "cache")
    env = {"S3FS_MOUNT_TEST_MAX_SINGLE_COPY": str(8 * MiB)}
    with holding(s3server, is_delete) as proxy:
        m = mount_factory("server_rename=off", config=proxy_yaml(tmp_path, s3config, proxy),
                          cache_dir=cache, env=env).start()
        assert sorted(os.listdir(os.path.join(m.path, "d"))) == ["f", "small"]
        proxy.hold_uploads()
        mover = in_background(os.rename, os.path.join(m.path, "d"), os.path.join(m.path, "e"))
        killed_while_held(proxy, m)
        mover.join(30)
    assert sorted(k for k in s3_keys(boto, bucket) if not k.endswith("/")) == [
        "d/f", "d/small", "e/f", "e/small"]
    m2 = mount_factory(config=str(s3yaml), cache_dir=cache, env=env).start()
    assert sorted(k for k in s3_keys(boto, bucket) if not k.endswith("/")) == ["e/f", "e/small"]
    assert s3_sha(boto, bucket, "e/f") == hashlib.sha256(data).hexdigest()
    assert sorted(os.listdir(m2.path)) == ["e"]
    assert control.read_status(m2.path)["recovered"] == {"renames finished": 1}
    assert multipart_uploads(boto, bucket) == []
    assert m2.stop() == 0


def _put_in_parts(client, bucket: str, key: str, data: bytes) -> None:
    """``data`` at ``key``, uploaded in parts of 5 MiB (its ETag: 'MD5-N')."""
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    parts = []
    for n, start in enumerate(range(0, len(data), 5 * MiB), 1):
        etag = client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=n,
                                  Body=data[start:start + 5 * MiB])["ETag"]
        parts.append({"PartNumber": n, "ETag": etag})
    client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload,
                                     MultipartUpload={"Parts": parts})


@pytest.mark.parametrize("what", ["file", "directory"])
def test_kill9_once_a_renames_copy_of_a_file_uploaded_in_parts_landed_on_aws_finishes_it(
    mount_factory, moto_server, bucket, tmp_path, what
):
    # On AWS (moto here) a CopyObject of an object uploaded in parts gets the MD5 of its bytes
    # as ETag, not its source's 'MD5-N'. mv killed once the copy landed, its answer not
    # back (a file) or before the old keys' delete (a directory): the next mount took the copy
    # for another file, and left the file under both names for good.
    client = s3rig.make_boto_client(moto_server.endpoint, moto_server.access_key, moto_server.secret_key)
    client.create_bucket(Bucket=bucket)
    data = rand(5 * MiB + 7, 84)
    src, dst = ("d/f", "e/f") if what == "directory" else ("f", "g")
    _put_in_parts(client, bucket, src, data)
    assert client.head_object(Bucket=bucket, Key=src)["ETag"].endswith('-2"')
    settings = {"access_key_id": moto_server.access_key, "secret_access_key": moto_server.secret_key,
                "default_bucket": bucket, "endpoint": moto_server.endpoint, "tls": False}
    direct = str(s3rig.write_s3yaml(tmp_path / "moto.yaml", settings))
    cache = str(tmp_path / "cache")
    try:
        with holding(moto_server, is_copy if what == "file" else is_delete) as proxy:
            m = mount_factory("server_rename=off", config=proxy_yaml(tmp_path, settings, proxy),
                              cache_dir=cache).start()
            os.stat(os.path.join(m.path, src))
            proxy.hold_uploads(answers=what == "file")
            mover = in_background(os.rename, os.path.join(m.path, src.split("/")[0]),
                                  os.path.join(m.path, dst.split("/")[0]))
            killed_while_held(proxy, m)
            mover.join(30)
        assert sorted(k for k in s3_keys(client, bucket) if not k.endswith("/")) == sorted([src, dst])
        m2 = mount_factory(config=direct, cache_dir=cache).start()
        assert [k for k in s3_keys(client, bucket) if not k.endswith("/")] == [dst]
        assert s3_sha(client, bucket, dst) == hashlib.sha256(data).hexdigest()
        assert control.read_status(m2.path)["recovered"] == {"renames finished": 1}
        assert m2.stop() == 0
    finally:
        s3rig.empty_and_delete_bucket(client, bucket)


def test_kill9_once_a_renames_copy_over_a_file_not_yet_uploaded_landed_on_aws_brings_nothing_back(
    mount_factory, moto_server, bucket, tmp_path
):
    # As test_kill9_during_a_rename_over_a_file_just_written_with_writeback, on AWS (moto) with
    # src uploaded in parts, killed once the copy landed and before its answer: the copy's
    # ETag is the MD5 of src's bytes, not src's 'MD5-N'. dst's staged bytes, which the rename
    # replaced, were uploaded as a conflict copy beside it (a replaced file back).
    client = s3rig.make_boto_client(moto_server.endpoint, moto_server.access_key, moto_server.secret_key)
    client.create_bucket(Bucket=bucket)
    data = rand(5 * MiB + 9, 85)
    _put_in_parts(client, bucket, "src", data)
    client.put_object(Bucket=bucket, Key="dst", Body=b"dst as it was")
    settings = {"access_key_id": moto_server.access_key, "secret_access_key": moto_server.secret_key,
                "default_bucket": bucket, "endpoint": moto_server.endpoint, "tls": False}
    direct = str(s3rig.write_s3yaml(tmp_path / "moto.yaml", settings))
    cache = str(tmp_path / "cache")
    try:
        with holding(moto_server, is_copy) as proxy:
            m = mount_factory("writeback,server_rename=off", config=proxy_yaml(tmp_path, settings, proxy),
                              cache_dir=cache).start()
            assert sorted(os.listdir(m.path)) == ["dst", "src"]
            proxy.hold_uploads(answers=True)
            with open(os.path.join(m.path, "dst"), "wb") as f:
                f.write(b"dst written again")
                before = proxy.requests
                proxy.fail_next(6)  # dst's upload fails (every attempt): still staged, dirty
            eventually(lambda: proxy.requests >= before + 6, 60, "dst's upload to fail")
            mover = in_background(os.rename, os.path.join(m.path, "src"), os.path.join(m.path, "dst"))
            killed_while_held(proxy, m)
            mover.join(30)
        m2 = mount_factory(config=direct, cache_dir=cache).start()
        assert control.read_status(m2.path)["pending"] == []
        assert s3_keys(client, bucket) == ["dst"]
        assert s3_sha(client, bucket, "dst") == hashlib.sha256(data).hexdigest()
        assert m2.stop() == 0
    finally:
        s3rig.empty_and_delete_bucket(client, bucket)


def _call(call, failures: list[OSError], *args) -> None:
    """``call(*args)``; an OSError it raises goes to ``failures``."""
    try:
        call(*args)
    except OSError as exc:
        failures.append(exc)


@pytest.mark.parametrize("during", ["directory rename", "unlink batch"])
def test_sigterm_during_a_directory_rename_or_an_unlink_batch_finishes_it_first(
    mount_factory, s3server, s3config, boto, bucket, tmp_path, during
):
    # SIGTERM (systemd stopping the mount) while a directory's moves, or an unlink batch, are
    # held: the mount exits 0 once they are done, and S3 holds the end state.
    for i in range(50):
        boto.put_object(Bucket=bucket, Key="d/f%02d" % i, Body=b"%d" % i)
    with holding(s3server, is_move if during == "directory rename" else is_delete) as proxy:
        m = mount_factory("server_rename=off", config=proxy_yaml(tmp_path, s3config, proxy)).start()
        names = sorted(os.listdir(os.path.join(m.path, "d")))
        proxy.hold_uploads(let_through=10 if during == "directory rename" else 0)
        if during == "directory rename":
            worker = in_background(os.rename, os.path.join(m.path, "d"), os.path.join(m.path, "e"))
        else:
            for name in names:
                os.unlink(os.path.join(m.path, "d", name))
            worker = None
        eventually(lambda: proxy.held >= 1, 20, "a request to be held")
        m.proc.send_signal(15)
        threading.Timer(2.0, proxy.release).start()
        assert m.proc.wait(120) == 0
        if worker is not None:
            worker.join(30)
    keys = [k for k in s3_keys(boto, bucket) if not k.endswith("/")]
    if during == "directory rename":
        assert keys == sorted("e/f%02d" % i for i in range(50))
    else:
        assert keys == []


def test_s3_server_killed_and_restarted_during_a_writeback_upload_of_100mib(mount_factory, bucket, tmp_path):
    # The server process killed while a -o writeback upload of 100 MiB is under way, then
    # started again on its data: the file is in S3 whole by the unmount, and no multipart
    # upload is left (the one the outage broke is aborted once S3 answers again).
    from s3fs_mount.localserver import LocalS3Server

    data_dir = tmp_path / "weed"
    server = s3rig.start_local_server(data_dir)
    keys = (server.access_key, server.secret_key)
    client = s3rig.make_boto_client(server.endpoint, *keys)
    client.create_bucket(Bucket=bucket)
    host, port = server.endpoint.rsplit(":", 1)
    restarted = None
    data = rand(100 * MiB + 11, 44)
    try:
        with holding_server(host, int(port)) as proxy:
            cfg = s3rig.write_s3yaml(tmp_path / "s3.yaml", {
                "access_key_id": keys[0], "secret_access_key": keys[1], "default_bucket": bucket,
                "endpoint": proxy.endpoint, "tls": False, "timeout": 5,
            })
            m = mount_factory("writeback", config=str(cfg)).start()
            proxy.hold_uploads(let_through=4)  # some parts land, the next wait
            write_file(os.path.join(m.path, "big"), data)
            eventually(lambda: proxy.held >= 1, 30, "a part to be held")
            server.stop(kill=True)
            tried = proxy.forwarded
            proxy.release()  # the held parts meet a dead server
            eventually(lambda: proxy.forwarded >= tried + 3, 30, "parts to meet the dead server")
            restarted = LocalS3Server(str(data_dir), access_key=keys[0], secret_key=keys[1])
            restarted.start(lambda: s3rig.boto_ready(restarted)())
            new_host, new_port = restarted.endpoint.rsplit(":", 1)
            proxy.upstream = (new_host, int(new_port))
            assert m.stop() == 0  # unmount uploads whatever is still staged
            client = s3rig.make_boto_client(restarted.endpoint, *keys)
            assert s3_sha(client, bucket, "big") == hashlib.sha256(data).hexdigest()
            assert multipart_uploads(client, bucket) == []
    finally:
        server.stop(kill=True)
        if restarted is not None:
            restarted.stop(kill=True)


@contextlib.contextmanager
def holding_server(host: str, port: int):
    with HoldingProxy(host, port) as proxy:
        yield proxy


def test_on_a_full_cache_disk_each_change_is_made_or_refused_whole_and_a_kill9_keeps_it(
    mount_factory, s3server, s3config, s3yaml, boto, bucket, tmp_path
):
    # The cache disk full (another program): unlink, rename (a copy, then a delete: recorded
    # first), a directory's rename and setfattr each succeed or fail with ENOSPC, and the mount
    # shows what S3 holds: a refused unlink left the file hidden while S3 kept it (back at the
    # next mount). Then kill -9 and a mount with room: the same, nothing lost, nothing back.
    files = {key: b"bytes of " + key.encode() for key in ("a", "b", "c", "d/x", "d/y", "g1", "g2")}
    for key, data in files.items():
        boto.put_object(Bucket=bucket, Key=key, Body=data)
    model = dict(files)

    def moved(old: str, new: str) -> None:
        for key in [k for k in model if k == old or k.startswith(old + "/")]:
            model[new + key[len(old):]] = model.pop(key)

    def shown(root: str, under: str = "") -> list[str]:
        out = []
        for name in os.listdir(os.path.join(root, under)):
            rel = os.path.join(under, name)
            out += shown(root, rel) if os.path.isdir(os.path.join(root, rel)) else [rel]
        return sorted(out)

    disk = tmp_path / "disk"
    with small_tmpfs(disk, "8m"):
        cache = str(disk / "cache")
        m = mount_factory("server_rename=off", cache_dir=cache).start()
        m2 = None
        try:
            assert shown(m.path) == sorted(files)
            fill_disk(disk / "filler")
            p = functools.partial(os.path.join, m.path)
            for call, change in [
                (lambda: os.unlink(p("g1")), lambda: model.pop("g1")),
                (lambda: os.rename(p("a"), p("a2")), lambda: moved("a", "a2")),
                (lambda: os.rename(p("b"), p("c")), lambda: moved("b", "c")),
                (lambda: os.rename(p("d"), p("e")), lambda: moved("d", "e")),
                (lambda: os.setxattr(p("g2"), "user.k", b"v"), lambda: None),
                (lambda: os.unlink(p("g2")), lambda: model.pop("g2")),
            ]:
                try:
                    call()
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                else:
                    change()
                assert shown(m.path) == sorted(model)
            m.kill()
            os.unlink(disk / "filler")
            m2 = mount_factory(config=str(s3yaml), cache_dir=cache).start()
            assert s3_keys(boto, bucket) == sorted(model)
            for key, data in model.items():
                assert s3_bytes(boto, bucket, key) == data, key
            assert shown(m2.path) == sorted(model)
            assert m2.stop() == 0
        finally:  # the tmpfs can go only once no mount uses it
            m.kill()
            if m2 is not None:
                m2.kill()


def test_kill9_during_setfattr_on_a_file_copied_in_parts_leaves_no_upload(
    mount_factory, s3server, s3config, s3yaml, boto, bucket, tmp_path
):
    # setfattr on a file over 5 GiB (lowered here) is a self-copy in parts. Killed while a
    # part is copied, the next mount aborts the upload it began (recorded in copies.journal;
    # it was recorded nowhere, and left behind).
    data = rand(12 * MiB + 5, 82)
    boto.put_object(Bucket=bucket, Key="f", Body=data)
    cache = str(tmp_path / "cache")
    with holding(s3server, lambda req: is_copy(req) and "partNumber=" in req.target) as proxy:
        m = mount_factory(config=proxy_yaml(tmp_path, s3config, proxy), cache_dir=cache,
                          env={"S3FS_MOUNT_TEST_MAX_SINGLE_COPY": str(8 * MiB)}).start()
        os.stat(os.path.join(m.path, "f"))
        proxy.hold_uploads()
        setter = in_background(os.setxattr, os.path.join(m.path, "f"), "user.k", b"v")
        killed_while_held(proxy, m)
        setter.join(30)
    m2 = mount_factory(config=str(s3yaml), cache_dir=cache).start()
    assert s3_sha(boto, bucket, "f") == hashlib.sha256(data).hexdigest()
    assert multipart_uploads(boto, bucket) == []
    assert control.read_status(m2.path)["recovered"] == {"copies in parts aborted": 1}
    assert m2.stop() == 0
    assert not [f for _, _, fs in os.walk(cache) for f in fs if f == "copies.journal"]  # nothing owed


def _write_with_times(path: str, data: bytes) -> None:
    """Write ``path`` and set its times before the close, as ``cp -p`` does."""
    with open(path, "wb") as f:
        f.write(data)
        os.utime(f.fileno(), (1_000_000_000, 1_000_000_000))


def test_kill9_during_an_uploads_self_copy_in_parts_leaves_no_upload(
    mount_factory, s3server, s3config, s3yaml, boto, bucket, tmp_path
):
    # A file streamed up in parts whose times were set before its close (cp -p) gets them by a
    # self-copy once its upload completes: in parts for a file over 5 GiB (lowered here), as is
    # the self-copy of another client's metadata merged at the complete and the copy of theirs
    # to a conflict name. Killed while a part is copied, the next mount aborts the upload it
    # began: those three copies of the uploader were recorded nowhere (copies.journal had the
    # mount's other copies), and the copy's upload was left behind, listed and billed.
    data = rand(20 * MiB + 7, 83)
    cache = str(tmp_path / "cache")
    with holding(s3server, lambda req: is_copy(req) and "partNumber=" in req.target) as proxy:
        m = mount_factory(config=proxy_yaml(tmp_path, s3config, proxy), cache_dir=cache,
                          env={"S3FS_MOUNT_TEST_MAX_SINGLE_COPY": str(8 * MiB)}).start()
        proxy.hold_uploads()
        writer = in_background(_write_with_times, os.path.join(m.path, "f"), data)
        killed_while_held(proxy, m)
        writer.join(30)
    assert len(multipart_uploads(boto, bucket)) == 1  # the crash left the self-copy's upload
    m2 = mount_factory(config=str(s3yaml), cache_dir=cache).start()
    assert multipart_uploads(boto, bucket) == []
    assert control.read_status(m2.path)["recovered"].get("copies in parts aborted") == 1
    assert s3_sha(boto, bucket, "f") == hashlib.sha256(data).hexdigest()
    assert m2.stop() == 0
    assert not [f for _, _, fs in os.walk(cache) for f in fs if f == "copies.journal"]  # nothing owed
