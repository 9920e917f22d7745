"""Integrity end to end: bytes checked on the way up and down, through real mounts on SeaweedFS.

Corruption comes from tests/faultproxy.py, which changes one byte of a request
or response body on demand; what reached S3 is checked with boto3, directly.
"""

from __future__ import annotations

import base64
import ctypes
import errno
import hashlib
import mmap
import os
import re
import zlib

import pytest
import s3rig
from waiting import eventually

pytestmark = pytest.mark.fuse

MiB = 1 << 20
_libc = ctypes.CDLL(None, use_errno=True)
SYNC_FILE_RANGE_WRITE = 2


def proxy_yaml(tmp_path, s3config: dict, proxy) -> str:
    return str(s3rig.write_s3yaml(tmp_path / "proxy.yaml", dict(s3config, endpoint=proxy.endpoint)))


def s3_bytes(boto, bucket: str, key: str) -> bytes:
    return boto.get_object(Bucket=bucket, Key=key)["Body"].read()


def put_in_parts(boto, bucket: str, key: str, data: bytes, part: int | list[int], algorithm: str = "",
                 kind: str = "COMPOSITE") -> None:
    """``data`` in parts of ``part`` bytes (or of these sizes, one a part), as another client
    writes them; with ``algorithm`` each part carries that checksum and S3 keeps the object's
    as ``kind`` (COMPOSITE: of the parts'; FULL_OBJECT)."""
    checked = {"ChecksumAlgorithm": algorithm} if algorithm else {}
    up = boto.create_multipart_upload(
        Bucket=bucket, Key=key, **checked, **({"ChecksumType": kind} if algorithm else {})
    )
    if isinstance(part, int):
        part = [min(part, len(data) - off) for off in range(0, len(data), part)]
    assert sum(part) == len(data)
    parts = []
    for n, length in enumerate(part, start=1):
        off = sum(part[: n - 1])
        r = boto.upload_part(Bucket=bucket, Key=key, UploadId=up["UploadId"], PartNumber=n,
                             Body=data[off:off + length], **checked)
        parts.append({"ETag": r["ETag"], "PartNumber": n,
                      **({"Checksum" + algorithm: r["Checksum" + algorithm]} if algorithm else {})})
    extra = {"ChecksumType": kind} if kind == "FULL_OBJECT" else {}
    boto.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=up["UploadId"],
                                   MultipartUpload={"Parts": parts}, **extra)


def put_obj(boto, bucket: str, size: int) -> bytes:
    """Object "obj" of ``size`` random bytes, as another client writes it: in 5 MiB parts when
    over 5 MiB (its ETag the MD5 of their MD5s), else in one PUT; returns the bytes."""
    data = os.urandom(size)
    if size > 5 * MiB:
        put_in_parts(boto, bucket, "obj", data, 5 * MiB)
    else:
        boto.put_object(Bucket=bucket, Key="obj", Body=data)
    return data


def test_a_body_changed_on_the_way_up_is_refused_and_sent_again(
    mount_factory, faultproxy, s3config, boto, bucket, tmp_path
):
    mount = mount_factory(config=proxy_yaml(tmp_path, s3config, faultproxy)).start()
    small, big = os.urandom(300_000), os.urandom(20 * MiB)
    faultproxy.flip_request(1)
    with open(os.path.join(mount.path, "small"), "wb") as f:
        f.write(small)
    faultproxy.flip_request(1)
    with open(os.path.join(mount.path, "big"), "wb") as f:  # parts, streamed while written
        f.write(big)
    assert len(faultproxy.flipped) == 2
    assert s3_bytes(boto, bucket, "small") == small
    assert s3_bytes(boto, bucket, "big") == big
    assert mount.log().count("BadDigest") >= 2  # the server refused, the retry policy sent again


@pytest.mark.parametrize("size", [300_000, 20 * MiB], ids=["one PUT", "in parts"])
def test_a_body_changed_on_the_way_down_is_eio_never_silent(
    mount_factory, faultproxy, s3config, boto, bucket, tmp_path, size
):
    data = put_obj(boto, bucket, size)
    mount = mount_factory(config=proxy_yaml(tmp_path, s3config, faultproxy)).start()
    assert_flipped_read_is_eio_then_right(mount, faultproxy, "obj", data)


@pytest.mark.parametrize("size", [300_000, 20 * MiB], ids=["one PUT", "in parts"])
def test_a_file_read_whole_and_checked_is_checked_again_when_read_again(
    mount_factory, faultproxy, s3config, boto, bucket, tmp_path, size
):
    data = put_obj(boto, bucket, size)
    mount = mount_factory(config=proxy_yaml(tmp_path, s3config, faultproxy)).start()
    path = os.path.join(mount.path, "obj")
    with open(path, "rb") as other, open(path, "rb") as f:  # two handles: the kernel's pages not kept
        assert f.read() == data  # read whole, checked: fine
        assert other.read(4096) == data[:4096]
    # Read again (the open drops the kernel's pages: fetched again), a byte changed on the way.
    assert_flipped_read_is_eio_then_right(mount, faultproxy, "obj", data)


def test_a_file_read_whole_and_checked_is_read_again_from_the_kernels_pages(
    mount_factory, faultproxy, s3config, boto, bucket, tmp_path
):
    data = os.urandom(20 * MiB)
    put_in_parts(boto, bucket, "obj", data, 5 * MiB)
    # attr_ttl=0: every open looks the object up, so another client's version is seen at once.
    mount = mount_factory("attr_ttl=0", config=proxy_yaml(tmp_path, s3config, faultproxy)).start()
    path = os.path.join(mount.path, "obj")
    with open(path, "rb") as f:
        assert f.read(5 * MiB) == data[: 5 * MiB]  # part of it: not checked whole
    faultproxy.flip_response(1)
    with pytest.raises(OSError) as raised:  # so its pages were dropped: fetched again, checked
        with open(path, "rb") as f:
            f.read()
    assert raised.value.errno == errno.EIO and len(faultproxy.flipped) == 1
    with open(path, "rb") as f:
        assert f.read() == data  # read whole, checked
    faultproxy.flip_response(1)  # a GET now would have a byte changed on the way
    for _ in range(2):
        with open(path, "rb") as f:
            assert f.read() == data  # the kernel's pages of that read: no GET
    assert len(faultproxy.flipped) == 1
    faultproxy.reset()
    new = os.urandom(20 * MiB)
    put_in_parts(boto, bucket, "obj", new, 5 * MiB)  # another client's version: read anew
    with open(path, "rb") as f:
        assert f.read() == new


def boto3_client_without_checksums(s3server, config_class):
    """A boto3 client for ``s3server`` that sends no checksum where S3 does not require one."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url="http://%s" % s3server.endpoint,
        aws_access_key_id=s3server.access_key,
        aws_secret_access_key=s3server.secret_key,
        region_name=s3rig.REGION,
        config=config_class(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
        ),
    )


def _evicted_then_read(path: str, start: int, length: int) -> bytes:
    """Read ``path`` whole after the kernel dropped its pages of ``[start, start+length)``."""
    with open(path, "rb") as f:
        os.posix_fadvise(f.fileno(), start, length, os.POSIX_FADV_DONTNEED)
        return f.read()


@pytest.mark.parametrize("flip", [True, False], ids=["byte changed", "right"])
@pytest.mark.parametrize("kind", ["parts", "one_put_md5", "one_put_crc32", "crc32_parts"])
def test_pages_the_kernel_dropped_after_a_checked_read_are_checked_when_fetched_again(
    mount_factory, faultproxy, s3config, s3server, boto, bucket, tmp_path, kind, flip
):
    data = os.urandom(20 * MiB)
    if kind == "one_put_md5":  # no checksum sent: its ETag, one MD5 of it all, is all there is
        from botocore.config import Config

        md5_only = boto3_client_without_checksums(s3server, Config)
        md5_only.put_object(Bucket=bucket, Key="obj", Body=data)
    elif kind == "one_put_crc32":
        boto.put_object(Bucket=bucket, Key="obj", Body=data)  # boto3 sends a CRC32 of it all
    else:
        put_in_parts(boto, bucket, "obj", data, 5 * MiB, algorithm="CRC32" if kind == "crc32_parts" else "")
    mount = mount_factory("attr_ttl=0,debug", config=proxy_yaml(tmp_path, s3config, faultproxy)).start()
    path = os.path.join(mount.path, "obj")
    with open(path, "rb") as f:
        assert f.read() == data
    verified = "read of obj verified (%s" % ("MD5:" if kind == "one_put_md5" else "")
    assert verified in "\n".join(mount.log_lines())
    if not flip:  # the MiB the kernel dropped is fetched again (in the pieces around it), right
        assert _evicted_then_read(path, 4 * MiB, MiB) == data
        return
    faultproxy.flip_response(1)  # the next GET has a byte changed on the way
    with pytest.raises(OSError) as raised:
        _evicted_then_read(path, 4 * MiB, MiB)  # (was: its bytes, one flipped, no EIO)
    assert raised.value.errno == errno.EIO and len(faultproxy.flipped) == 1
    faultproxy.reset()
    with open(path, "rb") as f:
        assert f.read() == data


#: Another client's parts, sized part by part (each at least 5 MiB but the last): no one size.
UNEQUAL = [5 * MiB, 7 * MiB + 1, 6 * MiB, 2 * MiB + 3]


def test_parts_of_unequal_sizes_are_checked_and_a_byte_changed_in_any_part_is_eio(
    mount_factory, faultproxy, s3config, boto, bucket, tmp_path
):
    data = os.urandom(sum(UNEQUAL))
    put_in_parts(boto, bucket, "obj", data, UNEQUAL)
    mount = mount_factory("debug", config=proxy_yaml(tmp_path, s3config, faultproxy)).start()
    path = os.path.join(mount.path, "obj")
    with open(path, "rb") as other:  # a second handle: each open drops the kernel's pages
        with open(path, "rb") as f:
            assert f.read() == data
        assert "read of obj verified" in "\n".join(mount.log_lines())  # each part's MD5, where it is
        starts = [sum(UNEQUAL[:i]) for i in range(len(UNEQUAL))]
        # in part 1, the first byte of part 2, the last of part 3, the last of the short last part
        for offset in (MiB, starts[1], starts[3] - 1, len(data) - 1):
            flipped = len(faultproxy.flipped)
            faultproxy.flip_response_at(offset)
            with pytest.raises(OSError) as raised:
                with open(path, "rb") as f:
                    f.read()
            assert raised.value.errno == errno.EIO and len(faultproxy.flipped) == flipped + 1, offset
            with open(path, "rb") as f:
                assert f.read() == data  # the fault is gone: fetched again, checked, right
        assert other.read(4096) == data[:4096]
    assert "\n".join(mount.log_lines()).count("do not match what it stored") == 4


def test_an_etag_only_objects_parts_hashed_side_by_side_are_eio_for_a_byte_changed_in_any(
    mount_factory, faultproxy, s3config, boto, bucket, tmp_path
):
    """An object of 8 MiB parts with no checksum (boto3's upload without one: what the bench's
    cold read reads) is checked by its ETag, the MD5s of its parts hashed side by side in vector
    lanes (s3fs_mount/s3/_md5lanes.c): a stream's GETs queue them (Verifier.feed_later) until a
    vector's worth is queued, the read of the end hashes the rest. A byte changed in the first,
    a middle or the last part is EIO, and read again without the fault the bytes are right and
    "verified"."""
    from s3fs_mount.s3 import _md5lanes  # built by setup.py (tests/run.sh installs): the path tested

    assert _md5lanes.LANES >= 8
    data = os.urandom(12 * 8 * MiB + 12345)  # 13 parts: more than a vector's worth in flight
    put_in_parts(boto, bucket, "obj", data, 8 * MiB)
    mount = mount_factory("debug", config=proxy_yaml(tmp_path, s3config, faultproxy)).start()
    path = os.path.join(mount.path, "obj")
    with open(path, "rb") as other:  # a second handle: each open drops the kernel's pages
        for offset in (3, 5 * 8 * MiB + 4 * MiB, len(data) - 1):
            flipped = len(faultproxy.flipped)
            faultproxy.flip_response_at(offset)
            with pytest.raises(OSError) as raised:
                with open(path, "rb") as f:
                    while f.read(256 << 10):  # fio's block size: the kernel sends 1 MiB READs
                        pass
            assert raised.value.errno == errno.EIO and len(faultproxy.flipped) == flipped + 1, offset
            with open(path, "rb") as f:
                assert f.read() == data, offset
        assert other.read(4096) == data[:4096]
    log = "\n".join(mount.log_lines())
    assert log.count("do not match what it stored") == 3
    assert log.count("read of obj verified") == 3
    side_by_side = [int(n) for n in re.findall(r"obj: (\d+) parts hashed side by side", log)]
    assert max(side_by_side, default=0) >= 2, side_by_side  # hashed in lanes, not one part at a time


def test_parts_that_only_look_of_one_size_are_eio_once_then_checked_where_they_are(
    mount_factory, boto, bucket
):
    sizes = [8 * MiB, 6 * MiB, 10 * MiB, 3 * MiB]  # the first and the last fit 8 MiB parts; not the others
    data = os.urandom(sum(sizes))
    put_in_parts(boto, bucket, "obj", data, sizes)
    mount = mount_factory("debug").start()
    path = os.path.join(mount.path, "obj")
    with pytest.raises(OSError) as raised:  # hashed on 8 MiB parts: the bytes were not checked
        with open(path, "rb") as f:
            f.read()
    assert raised.value.errno == errno.EIO
    assert "not where its first and last part put them" in "\n".join(mount.log_lines())
    with open(path, "rb") as f:
        assert f.read() == data  # checked where S3 says each part is
    assert "read of obj verified" in "\n".join(mount.log_lines())


def test_an_object_replaced_by_another_client_mid_read_is_eio_never_a_mix(
    mount_factory, s3config, boto, bucket
):
    old, new = os.urandom(40 * MiB), os.urandom(40 * MiB)
    put_in_parts(boto, bucket, "obj", old, 8 * MiB)
    # a window of 8 MiB: the read must GET again after the replace; attr_ttl=0: a new open sees it
    mount = mount_factory("readahead=8M,attr_ttl=0").start()
    path = os.path.join(mount.path, "obj")
    got = b""
    with pytest.raises(OSError) as raised:
        with open(path, "rb") as f:
            got = f.read(4 * MiB)
            put_in_parts(boto, bucket, "obj", new, 8 * MiB)  # another client's version, mid-read
            while True:
                chunk = f.read(MiB)
                if not chunk:
                    break
                got += chunk
    assert raised.value.errno == errno.EIO
    assert got == old[: len(got)] and len(got) < len(old)  # what it had was the old version's
    with open(path, "rb") as f:
        assert f.read() == new  # a new open: the new version, whole and checked


def assert_flipped_read_is_eio_then_right(mount, faultproxy, key: str, data: bytes) -> None:
    """A whole read through a GET with a byte flipped is EIO; once the fault is gone, the bytes."""
    path = os.path.join(mount.path, key)
    faultproxy.flip_response(1)
    with pytest.raises(OSError) as raised:
        with open(path, "rb") as f:
            f.read()
    assert raised.value.errno == errno.EIO and faultproxy.flipped
    assert "do not match what it stored" in mount.log()
    with open(path, "rb") as f:
        assert f.read() == data  # the fault is gone: fetched again, checked, right


def read_backwards(path: str, chunk: int = 64 << 10) -> bytes:
    """The file read in ``chunk`` preads from its end to its start: a random reader, never sequential."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        return b"".join(reversed([os.pread(fd, chunk, off) for off in reversed(range(0, size, chunk))]))
    finally:
        os.close(fd)


@pytest.mark.parametrize("size", [300_000, 20 * MiB], ids=["one PUT", "in parts"])
def test_random_reads_of_a_changed_body_are_eio_never_silent(
    mount_factory, faultproxy, s3config, boto, bucket, tmp_path, size
):
    data = put_obj(boto, bucket, size)  # another client's parts: checked as a whole
    mount = mount_factory(config=proxy_yaml(tmp_path, s3config, faultproxy)).start()
    path = os.path.join(mount.path, "obj")
    faultproxy.flip_response(1)  # the first GET: the whole object if small, else its last bytes
    with pytest.raises(OSError) as raised:
        read_backwards(path)
    assert raised.value.errno == errno.EIO and faultproxy.flipped
    assert "do not match what S3 stored" in mount.log()
    assert read_backwards(path) == data  # the fault is gone: fetched again, checked, right


def s3_keys(boto, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in boto.list_objects_v2(Bucket=bucket).get("Contents", []))


@pytest.mark.parametrize("faults", ["once", "every time"])
@pytest.mark.parametrize("kind", ["MD5 of parts", "composite CRC32"])
def test_another_clients_version_our_appends_go_after_is_checked_on_its_way_down(
    mount_factory, faultproxy, s3config, boto, bucket, tmp_path, kind, faults
):
    """Found in round 37's review: an O_APPEND handle's upload that meets another client's
    version fetches theirs and puts our appends after it (fs/upload.py), but checked theirs only
    against a digest of all its bytes: a version in parts (an ETag of the parts' MD5s, or a
    composite CRC32) came down unchecked, and a byte changed on the way went back up to S3 under
    ours. Now theirs comes through the readers' checked path (part by part): a byte changed once
    is fetched again (theirs + ours, right, in S3); changed every time, ours goes to a conflict
    copy (ESTALE) and theirs stays as it was, never their changed bytes in S3."""
    mount = mount_factory(config=proxy_yaml(tmp_path, s3config, faultproxy)).start()
    path = os.path.join(mount.path, "log")
    with open(path, "wb") as f:
        f.write(b"v1\n")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"ours\n")
    theirs = os.urandom(6 * MiB + 7)  # parts of 5 MiB and 1 MiB + 7
    put_in_parts(boto, bucket, "log", theirs, 5 * MiB, algorithm="CRC32" if "CRC32" in kind else "")
    head = boto.head_object(Bucket=bucket, Key="log", ChecksumMode="ENABLED")
    assert head["ETag"].endswith('-2"') and (("ChecksumCRC32" in head) == ("CRC32" in kind)), head
    faultproxy.flip_response(1 if faults == "once" else 100)  # their GET's middle byte, on the way
    if faults == "once":
        os.close(fd)
        assert len(faultproxy.flipped) == 1
        assert s3_keys(boto, bucket) == ["log"]
        assert s3_bytes(boto, bucket, "log") == theirs + b"ours\n"  # (was: theirs with a byte changed)
        assert "failed their check" in "\n".join(mount.log_lines())
        return
    with pytest.raises(OSError) as raised:
        os.close(fd)  # (was: no error, their changed bytes and ours in S3)
    assert raised.value.errno == errno.ESTALE and len(faultproxy.flipped) == 2
    faultproxy.reset()
    [aside] = [k for k in s3_keys(boto, bucket) if k != "log"]
    assert s3_bytes(boto, bucket, "log") == theirs and s3_bytes(boto, bucket, aside) == b"v1\nours\n"
    assert "our appends are not added to them" in "\n".join(mount.log_lines())


def test_objects_of_other_writers_read_back_verified(mount_factory, boto, bucket):
    objects = {
        "plain": os.urandom(1 * MiB + 5),
        "parts5": os.urandom(17 * MiB + 3),
        "parts7": os.urandom(15 * MiB),
        "crc": os.urandom(200_000),
    }
    boto.put_object(Bucket=bucket, Key="plain", Body=objects["plain"])
    put_in_parts(boto, bucket, "parts5", objects["parts5"], 5 * MiB)
    put_in_parts(boto, bucket, "parts7", objects["parts7"], 7 * MiB)
    boto.put_object(Bucket=bucket, Key="crc", Body=objects["crc"], ChecksumAlgorithm="CRC32")
    mount = mount_factory("debug").start()
    for key, data in objects.items():
        with open(os.path.join(mount.path, key), "rb") as f:
            assert f.read() == data
        assert re.search(r"read of %s verified" % key, "\n".join(mount.log_lines())), key
    digest = {k: os.getxattr(os.path.join(mount.path, k), "s3.checksum").decode() for k in objects}
    for key in objects:  # boto3 adds a CRC32 to the PUTs it can; else the ETag is the digest
        head = boto.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        if "ChecksumCRC32" in head:
            assert digest[key] == "CRC32:" + head["ChecksumCRC32"], key
        elif "-" in head["ETag"]:
            assert digest[key] == "MD5-of-parts:" + head["ETag"].strip('"'), key
        else:
            assert digest[key] == "MD5:" + hashlib.md5(objects[key]).hexdigest(), key
    assert digest["crc"].startswith("CRC32:") and digest["parts5"].endswith("-4")
    with open(os.path.join(mount.path, "mine"), "wb") as f:
        f.write(b"x" * 1000)
    crc = base64.b64encode(zlib.crc32(b"x" * 1000).to_bytes(4, "big")).decode()
    assert os.getxattr(os.path.join(mount.path, "mine"), "s3.checksum").decode() == "CRC32:" + crc
    # the probe found SeaweedFS checks it (logged at mount: the whole log, not its tail)
    assert any("uploads carry x-amz-checksum-crc32" in line for line in mount.log_lines())


def test_a_staged_byte_changed_on_disk_between_a_crash_and_the_remount_is_found(
    mount_factory, faultproxy, s3config, boto, bucket, tmp_path
):
    cache = str(tmp_path / "cache")
    mount = mount_factory(config=proxy_yaml(tmp_path, s3config, faultproxy), cache_dir=cache).start()
    data = os.urandom(3 * MiB)
    f = open(os.path.join(mount.path, "f"), "wb")
    f.write(data)
    faultproxy.mode = "fail"  # S3 is down: the upload reads the bytes, records their MD5, fails
    with pytest.raises(OSError):
        os.fsync(f.fileno())
    mount.kill()  # the open handle dies with it
    (staged,) = [os.path.join(d, n) for d, _, names in os.walk(cache) for n in names if n.endswith(".data")]
    with open(staged, "r+b") as out:
        out.seek(MiB)
        out.write(b"\0" if data[MiB] else b"\1")
    faultproxy.mode = "pass"
    again = mount_factory(cache_dir=cache).start()
    assert "changed on disk since it was written" in again.log()
    with pytest.raises(boto.exceptions.ClientError):
        boto.head_object(Bucket=bucket, Key="f")  # never sent as if it were the file's bytes
    assert os.path.exists(staged)  # kept, for the user to look at


def test_what_the_mount_writes_carries_a_crc32_that_its_reads_check(mount_factory, boto, bucket):
    mount = mount_factory("debug").start()
    big = os.urandom(20 * MiB + 7)
    with open(os.path.join(mount.path, "big"), "wb") as f:  # multipart, streamed while written
        f.write(big)
    head = boto.head_object(Bucket=bucket, Key="big", ChecksumMode="ENABLED")
    # In parts (an ETag of parts), with the CRC32 of all its bytes (FULL_OBJECT), which a copy
    # keeps (on AWS, where it moves the ETag): see test_shared's test_on_aws_*.
    assert head["ETag"].strip('"').endswith("-3")
    assert head["ChecksumCRC32"] == base64.b64encode(zlib.crc32(big).to_bytes(4, "big")).decode()
    mount.stop()
    again = mount_factory("debug").start()
    with open(os.path.join(again.path, "big"), "rb") as f:
        assert f.read() == big
    assert "read of big verified (CRC32:%s)" % head["ChecksumCRC32"] in again.log()


def test_parts_written_in_order_go_from_the_staged_file_with_the_crc32s_of_the_writes(
    mount_factory, boto, bucket
):
    mount = mount_factory("debug").start()
    big = os.urandom(20 * MiB + 7)
    with open(os.path.join(mount.path, "big"), "wb") as f:  # 1 MiB writes, as dd bs=1M
        for at in range(0, len(big), MiB):
            f.write(big[at : at + MiB])
    assert s3_bytes(boto, bucket, "big") == big
    # The object's CRC32 (of all its bytes, FULL_OBJECT: the server combines the parts') is the
    # one of the bytes written: the server checked each part's (8 MiB) against what it got from
    # the staged file.
    crcs = [zlib.crc32(big[at : at + 8 * MiB]).to_bytes(4, "big") for at in range(0, len(big), 8 * MiB)]
    expected = base64.b64encode(zlib.crc32(big).to_bytes(4, "big")).decode()
    assert boto.head_object(Bucket=bucket, Key="big", ChecksumMode="ENABLED")["ChecksumCRC32"] == expected
    log = mount.log()
    for number, crc in ((1, crcs[0]), (2, crcs[1])):
        line = "big: part %d sent from the staged file with the CRC32:%s of its writes"
        assert line % (number, base64.b64encode(crc).decode()) in log


def test_a_write_that_lands_on_a_part_just_after_it_went_up_makes_it_go_again(
    mount_factory, boto, bucket, tmp_path
):
    # Two writers of one file: write() in order, and a shared mapping whose dirty page the
    # kernel writes back (no file lock held: the way two writes of one file reach the mount at
    # once; write()s of a file come one at a time). The page's write (at 4096) is let by while
    # part 1 (8 MiB) is not yet under way, and held (the mount's test gate) until the first
    # writer has filled part 1 and S3 has it: its bytes land on a part already sent. Before, the
    # close completed the upload with that part's old bytes and called the file clean: the
    # page written was lost.
    gate = tmp_path / "gate"
    mount = mount_factory("debug", env={"S3FS_MOUNT_TEST_WRITE_GATE": "4096:%s" % gate}).start()
    path = os.path.join(mount.path, "big")
    data = bytearray(os.urandom(20 * MiB))
    with open(path, "wb") as first:
        first.write(data[: 4 * MiB])
        first.flush()
        with open(path, "r+b") as second, mmap.mmap(second.fileno(), 2 * mmap.PAGESIZE) as mapped:
            mapped[4096 + 100 : 4096 + 105] = b"PATCH"
            # The page goes to the mount as the kernel's writeback does (msync would hold the
            # file's lock meanwhile, and so keep the other writer out).
            assert _libc.sync_file_range(second.fileno(), 4096, 4096, SYNC_FILE_RANGE_WRITE) == 0
            held = "test gate: the write at 4096 waits"
            eventually(lambda: held in mount.log(), 120, "the page's write held")
            for at in range(4 * MiB, len(data), MiB):  # part 1 fills and goes up
                first.write(data[at : at + MiB])
            first.flush()
            (upload,) = boto.list_multipart_uploads(Bucket=bucket)["Uploads"]
            eventually(
                lambda: boto.list_parts(Bucket=bucket, Key="big", UploadId=upload["UploadId"]).get("Parts"),
                120,
                "part 1 in S3",
            )
            gate.touch()  # the page's bytes land on part 1, in S3 already
    data[4096 + 100 : 4096 + 105] = b"PATCH"
    assert s3_bytes(boto, bucket, "big") == bytes(data)
    assert "big: a write at 4096 landed on part(s) 1-1 already under way: sent again" in mount.log()


def put_with_checksum(boto, bucket: str, key: str, data: bytes, algorithm: str, part: int = 0,
                      kind: str = "COMPOSITE") -> None:
    """PUT ``data`` with an ``x-amz-checksum-*`` of ``algorithm``: in one request, or in parts."""
    if part:
        put_in_parts(boto, bucket, key, data, part, algorithm, kind)
    else:
        boto.put_object(Bucket=bucket, Key=key, Body=data, ChecksumAlgorithm=algorithm)


# CRC64NVME is what AWS keeps for every object written without a checksum of its own.
CRC_OBJECTS = [
    ("crc32c", "CRC32C", 0, ""),
    ("crc32c-parts", "CRC32C", 5 * MiB, "COMPOSITE"),
    ("crc32c-whole", "CRC32C", 5 * MiB, "FULL_OBJECT"),
    ("crc64", "CRC64NVME", 0, ""),
    ("crc64-whole", "CRC64NVME", 5 * MiB, "FULL_OBJECT"),
    ("crc32-whole", "CRC32", 5 * MiB, "FULL_OBJECT"),
]


def test_crc32c_and_crc64nvme_objects_read_back_verified(mount_factory, boto, bucket):
    objects = {key: os.urandom(12 * MiB + 11 if part else 300_000) for key, _, part, _ in CRC_OBJECTS}
    for key, algorithm, part, kind in CRC_OBJECTS:
        put_with_checksum(boto, bucket, key, objects[key], algorithm, part, kind)
    mount = mount_factory("debug").start()
    for key, algorithm, _, _ in CRC_OBJECTS:
        head = boto.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        stored = "%s:%s" % (algorithm, head["Checksum" + algorithm])
        path = os.path.join(mount.path, key)
        assert os.getxattr(path, "s3.checksum").decode() == stored
        with open(path, "rb") as f:
            assert f.read() == objects[key]
        assert "read of %s verified (%s)" % (key, stored) in mount.log(), key


@pytest.mark.parametrize("key", ["crc64", "crc32c-parts"])
def test_a_changed_body_of_a_crc64nvme_or_crc32c_object_is_eio(
    mount_factory, faultproxy, s3config, boto, bucket, tmp_path, key
):
    (algorithm, part, kind), = [spec[1:] for spec in CRC_OBJECTS if spec[0] == key]
    data = os.urandom(12 * MiB if part else 300_000)
    put_with_checksum(boto, bucket, key, data, algorithm, part, kind)
    mount = mount_factory(config=proxy_yaml(tmp_path, s3config, faultproxy)).start()
    assert_flipped_read_is_eio_then_right(mount, faultproxy, key, data)


def part_sizes(boto, bucket: str, key: str) -> list[int]:
    """The sizes of an object's parts, as S3 tells them (GetObjectAttributes, and a HEAD per part)."""
    parts = boto.get_object_attributes(Bucket=bucket, Key=key, ObjectAttributes=["ObjectParts"])
    sizes = [p["Size"] for p in parts["ObjectParts"]["Parts"]]
    count = parts["ObjectParts"]["TotalPartsCount"]
    heads = [
        boto.head_object(Bucket=bucket, Key=key, PartNumber=n)["ContentLength"] for n in range(1, count + 1)
    ]
    assert sizes == heads
    return heads


def test_a_streamed_upload_grows_its_parts_and_reads_back_verified(mount_factory, boto, bucket):
    # part_doubling=1: every part twice the one before (auto: after 1,089 parts of 8 MiB).
    mount = mount_factory("debug,part_size=5M,multipart_threshold=5M,part_doubling=1").start()
    data = os.urandom(38 * MiB + 3)
    with open(os.path.join(mount.path, "grown"), "wb") as f:
        for off in range(0, len(data), MiB):  # streamed: each part sent once the writer filled it
            f.write(data[off : off + MiB])
    assert part_sizes(boto, bucket, "grown") == [5 * MiB, 10 * MiB, 20 * MiB, 3 * MiB + 3]
    # An fsync mid-stream completes it; the writes after it stream on, the whole parts already
    # in S3 copied server-side a part a copy, the parts after them as large as the layout says;
    # unless the server's copied parts have ETags that are not their bytes' MD5 (SeaweedFS), which
    # no read could check (found by hand, round 32: every read of such a file was EIO once it had
    # left the cache): then the file goes up whole, in parts of one size.
    with open(os.path.join(mount.path, "synced"), "wb") as f:
        f.write(data[: 16 * MiB])
        os.fsync(f.fileno())
        assert part_sizes(boto, bucket, "synced") == [5 * MiB, 10 * MiB, 1 * MiB]
        f.write(data[16 * MiB :])
    if any("UploadPartCopy gives a copied part an ETag" in line for line in mount.log_lines()):
        assert part_sizes(boto, bucket, "synced") == [5 * MiB] * 7 + [3 * MiB + 3]
    else:
        assert part_sizes(boto, bucket, "synced") == [5 * MiB, 10 * MiB, 20 * MiB, 3 * MiB + 3]
    assert s3_bytes(boto, bucket, "synced") == data
    # Another client's object in doubling parts and no checksum: its ETag is what is checked.
    up = boto.create_multipart_upload(Bucket=bucket, Key="theirs")
    done = []
    spans = [(0, 5 * MiB), (5 * MiB, 10 * MiB), (15 * MiB, 20 * MiB), (35 * MiB, 3 * MiB + 3)]
    for n, (off, size) in enumerate(spans, 1):
        r = boto.upload_part(Bucket=bucket, Key="theirs", UploadId=up["UploadId"], PartNumber=n,
                             Body=data[off : off + size])
        done.append({"ETag": r["ETag"], "PartNumber": n})
    boto.complete_multipart_upload(Bucket=bucket, Key="theirs", UploadId=up["UploadId"],
                                   MultipartUpload={"Parts": done})
    mount.stop()
    again = mount_factory("debug").start()  # default part options: the layout is learnt from S3
    for key in ("grown", "theirs", "synced"):
        with open(os.path.join(again.path, key), "rb") as f:
            assert f.read() == data
    head = boto.head_object(Bucket=bucket, Key="grown", ChecksumMode="ENABLED")
    assert "read of grown verified (CRC32:%s)" % head["ChecksumCRC32"] in again.log()
    assert re.search(r"read of theirs verified \(MD5-of-parts:[0-9a-f]{32}-4\)", again.log())
