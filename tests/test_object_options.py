"""How objects are stored: storage class, SSE-S3/KMS, SSE-C, requester pays and ACLs on every request.

The headers are checked as they travel (a FaultProxy hears every request) and on the objects
themselves: moto keeps storage class, SSE-KMS and ACLs; SeaweedFS keeps SSE-C for real (an SSE-C
object cannot be read without its key). The mounts run the real command.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import subprocess
import urllib.parse

import pytest
import requests
import s3rig
from fakestore import FakeStore
from faultproxy import FaultProxy

import s3fs_mount.fs.operations as operations_module
from s3fs_mount.fs.operations import S3Operations
from s3fs_mount.fs.options import MountOptions
from s3fs_mount.s3 import RemoteStore, RetryPolicy, S3Connection, S3Error, S3Name
from s3fs_mount.s3.bucket import Bucket
from s3fs_mount.s3.checksums import plan
from s3fs_mount.s3.errors import ConfigError
from s3fs_mount.s3.objectopts import CustomerKey, ObjectOptions, operation_of
from s3fs_mount.s3.store import NO_DIGEST, ObjectInfo

MiB = 1 << 20
KEY = bytes(range(32))
KEY_B64 = base64.b64encode(KEY).decode()
KEY_MD5 = base64.b64encode(hashlib.md5(KEY).digest()).decode()
SSE_C = "x-amz-server-side-encryption-customer-"
COPY_SSE_C = "x-amz-copy-source-server-side-encryption-customer-"
#: The requests a write of small and multipart files, a rename and a setfattr make.
WRITES = {"PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload", "CopyObject"}


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "sse-c.key"
    path.write_text(KEY_B64 + "\n")
    path.chmod(0o600)
    return str(path)


# -- the settings, checked in one place -------------------------------------------------------


def test_good_settings_give_the_headers_of_each_operation(key_file):
    kms = ObjectOptions.parse(
        storage_class="STANDARD_IA", sse="aws:kms:arn:aws:kms:eu-west-1:1:key/ab", acl="private"
    )
    assert kms.headers("PutObject") == {
        "x-amz-storage-class": "STANDARD_IA",
        "x-amz-server-side-encryption": "aws:kms",
        "x-amz-server-side-encryption-aws-kms-key-id": "arn:aws:kms:eu-west-1:1:key/ab",
        "x-amz-acl": "private",
    }
    assert kms.headers("CreateMultipartUpload") == kms.headers("CopyObject") == kms.headers("PutObject")
    for op in (
        "UploadPart",
        "UploadPartCopy",
        "CompleteMultipartUpload",
        "GetObject",
        "HeadObject",
        "Bucket",
    ):
        assert kms.headers(op) == {}, op
    assert not kms.etags_are_md5
    assert ObjectOptions.parse(sse="AES256").headers("PutObject") == {
        "x-amz-server-side-encryption": "AES256"
    }
    assert ObjectOptions.parse(sse="AES256").etags_are_md5

    ssec = ObjectOptions.parse(sse_c_key_file=key_file, requester_pays=True)
    keyed = {SSE_C + "algorithm": "AES256", SSE_C + "key": KEY_B64, SSE_C + "key-md5": KEY_MD5}
    source = {
        COPY_SSE_C + "algorithm": "AES256",
        COPY_SSE_C + "key": KEY_B64,
        COPY_SSE_C + "key-md5": KEY_MD5,
    }
    payer = {"x-amz-request-payer": "requester"}
    for op in (
        "PutObject",
        "CreateMultipartUpload",
        "UploadPart",
        "CompleteMultipartUpload",
        "GetObject",
        "HeadObject",
    ):
        assert ssec.headers(op) == {**keyed, **payer}, op
    assert ssec.headers("CopyObject") == ssec.headers("UploadPartCopy") == {**keyed, **source, **payer}
    assert ssec.headers("DeleteObject") == ssec.headers("Bucket") == payer


def test_requests_are_told_apart():
    copy = {"x-amz-copy-source": "/b/k"}
    assert operation_of("PUT", "k", {}, {}) == "PutObject"
    assert operation_of("PUT", "k", {}, copy) == "CopyObject"
    assert operation_of("PUT", "k", {"partNumber": "1", "uploadId": "u"}, {}) == "UploadPart"
    assert operation_of("PUT", "k", {"partNumber": "1", "uploadId": "u"}, copy) == "UploadPartCopy"
    assert operation_of("POST", "k", {"uploads": ""}, {}) == "CreateMultipartUpload"
    assert operation_of("POST", "k", {"uploadId": "u"}, {}) == "CompleteMultipartUpload"
    assert operation_of("DELETE", "k", {"uploadId": "u"}, {}) == "AbortMultipartUpload"
    assert operation_of("HEAD", "k", {"partNumber": "1"}, {}) == "HeadObject"
    assert operation_of("GET", "", {"list-type": "2"}, {}) == "Bucket"
    assert operation_of("POST", "", {"delete": ""}, {}) == "Bucket"
    assert operation_of("PUT", "k", {"renameObject": ""}, {"x-amz-rename-source": "/b/j"}) == "RenameObject"


def test_a_rename_object_carries_no_write_options_and_such_mounts_copy_instead(key_file):
    """RenameObject moves the object as it is: it cannot give it a class, encryption or an ACL,
    so a store whose writes get those never uses it (no probe, no request: it copies)."""
    options = ObjectOptions.parse(storage_class="STANDARD_IA", acl="private", requester_pays=True)
    assert options.headers("RenameObject") == {"x-amz-request-payer": "requester"}
    assert not ObjectOptions.parse(requester_pays=True).given_by_writes
    for settings in ({"storage_class": "STANDARD_IA"}, {"sse": "AES256"}, {"acl": "private"},
                     {"sse_c_key_file": key_file}):
        conn = S3Connection(endpoint="127.0.0.1:1", tls=False, **settings)  # nothing listens there
        store = RemoteStore(conn)
        try:
            assert store.probe_rename_object("bucket") is False
            assert conn.stats.requests == {}
        finally:
            store.close()


@pytest.mark.parametrize(
    "settings, says",
    [
        ({"storage_class": "COLD"}, "storage_class=COLD: not a storage class (one of STANDARD,"),
        ({"sse": "aes"}, "sse=aes: expected AES256, aws:kms or aws:kms:KEYID"),
        ({"sse": "aws:kms:"}, "sse=aws:kms: with a colon, a KMS key id must follow"),
        ({"acl": "everyone"}, "acl=everyone: not a canned ACL (one of private,"),
        ({"requester_pays": "yes"}, "requester_pays must be true or false, not 'yes'"),
        (
            {"sse_c_key_file": "/nonexistent/key"},
            "sse_c_key_file /nonexistent/key: No such file or directory",
        ),
    ],
)
def test_a_bad_setting_is_one_line_naming_it(settings, says):
    with pytest.raises(ConfigError) as caught:
        S3Connection(endpoint="127.0.0.1:1", tls=False, **settings)
    assert str(caught.value).startswith(says)
    assert "\n" not in str(caught.value)


def test_sse_and_sse_c_exclude_each_other(key_file):
    with pytest.raises(ConfigError, match="an object has one encryption, not both"):
        ObjectOptions.parse(sse="AES256", sse_c_key_file=key_file)


@pytest.mark.parametrize("content", [KEY, KEY.hex().encode() + b"\n", KEY_B64.encode()])
def test_the_key_file_holds_the_key_raw_hex_or_base64(tmp_path, content):
    path = tmp_path / "k"
    path.write_bytes(content)
    assert CustomerKey.read(str(path)).key == KEY


@pytest.mark.parametrize("content", [b"short", b"x" * 33, base64.b64encode(b"y" * 16)])
def test_a_key_file_without_a_256_bit_key_is_refused_without_showing_it(tmp_path, content):
    path = tmp_path / "k"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        CustomerKey.read(str(path))
    assert "not a 256-bit key" in str(caught.value)
    assert content.decode() not in str(caught.value)


def test_the_key_is_never_shown(key_file, caplog):
    caplog.set_level(logging.DEBUG)
    options = ObjectOptions.parse(sse_c_key_file=key_file)
    shown = repr(options) + str(options) + options.describe()
    assert KEY_B64 not in shown and repr(KEY) not in shown
    assert options.describe() == "SSE-C (key from %s)" % key_file


def test_a_key_file_others_can_read_is_warned_of(tmp_path, caplog):
    path = tmp_path / "k"
    path.write_text(KEY_B64)
    path.chmod(0o644)
    CustomerKey.read(str(path))
    assert "readable by group/others (mode 644): run chmod 600" in caplog.text


def test_s3yaml_takes_the_settings_and_the_command_line_beats_it(tmp_path, s3config, capsys, cli_main):
    config = s3rig.write_s3yaml(
        tmp_path / "s3.yaml", dict(s3config, storage_class="ONEZONE_IA", sse="AES256")
    )
    (tmp_path / "mnt").mkdir()
    code = cli_main(
        ["-c", str(config), "-o", "sse=aws:kms:", str(s3config["default_bucket"]), str(tmp_path / "mnt")]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert err == "s3fs-mount: sse=aws:kms: with a colon, a KMS key id must follow (aws:kms:KEYID)\n"
    bad = s3rig.write_s3yaml(tmp_path / "bad.yaml", dict(s3config, storage_class="COLD"))
    assert cli_main(["-c", str(bad), str(s3config["default_bucket"]), str(tmp_path / "mnt")]) == 1
    assert capsys.readouterr().err.startswith("s3fs-mount: storage_class=COLD: not a storage class")


# -- on the wire and on the objects ---------------------------------------------------------


def _key_of(target: str, bucket: str) -> str:
    path = urllib.parse.urlsplit(target).path
    prefix = "/%s/" % bucket
    return urllib.parse.unquote(path[len(prefix) :]) if path.startswith(prefix) else ""


def _requests_of(proxy: FaultProxy, bucket: str) -> list[tuple[str, str, str, dict[str, str]]]:
    """(operation, key, target, headers) of every object request the proxy heard."""
    out = []
    for method, target, headers in proxy.heard:
        key = _key_of(target, bucket)
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(target).query, keep_blank_values=True))
        if key:
            out.append((operation_of(method, key, query, headers), key, target, headers))
    return out


@pytest.fixture
def moto_bucket(moto_server, bucket):
    client = s3rig.make_boto_client(moto_server.endpoint, moto_server.access_key, moto_server.secret_key)
    client.create_bucket(Bucket=bucket)
    yield client
    s3rig.empty_and_delete_bucket(client, bucket)


@pytest.fixture
def moto_proxy(moto_server):
    host, port = moto_server.endpoint.rsplit(":", 1)
    with FaultProxy(host, int(port)) as proxy:
        yield proxy


def _moto_settings(moto_server, bucket, endpoint):
    return {
        "access_key_id": moto_server.access_key,
        "secret_access_key": moto_server.secret_key,
        "default_bucket": bucket,
        "endpoint": endpoint,
        "tls": False,
    }


KMS_OPTIONS = {
    "storage_class": "STANDARD_IA",
    "sse": "aws:kms:alias/mount-key",
    "acl": "public-read",
    "requester_pays": True,
}


def _assert_stored_as_asked(client, bucket, key):
    head = client.head_object(Bucket=bucket, Key=key)
    assert head.get("StorageClass") == "STANDARD_IA", key
    assert (head.get("ServerSideEncryption"), head.get("SSEKMSKeyId")) == ("aws:kms", "alias/mount-key"), key
    grants = client.get_object_acl(Bucket=bucket, Key=key)["Grants"]
    assert {
        "Grantee": {"Type": "Group", "URI": "http://acs.amazonaws.com/groups/global/AllUsers"},
        "Permission": "READ",
    } in grants, key


def test_every_write_copy_and_part_carries_the_options_on_moto(
    moto_server, moto_bucket, moto_proxy, bucket, tmp_path
):
    conn = S3Connection(**_moto_settings(moto_server, bucket, moto_proxy.endpoint), **KMS_OPTIONS)
    store = RemoteStore(conn, part_size=5 * MiB, multipart_threshold=5 * MiB)
    try:
        big = tmp_path / "big"
        big.write_bytes(os.urandom(11 * MiB))
        store.put("small", b"small", {"x-amz-meta-a": "1"})
        store.upload_file(str(big), "big")
        store.copy_object("small", "copied")
        assert store.update_metadata("copied", {"x-amz-meta-b": "2"})
        mpu = store.start_multipart("parts", checksum=False)
        mpu.copy_part(1, "/%s/big" % bucket, 0, 5 * MiB - 1)
        mpu.copy_part(2, "/%s/small" % bucket, 0, 4)
        mpu.complete()
        assert store.get_range("parts", 5 * MiB, 5) == b"small"
        assert store.head("big").size == 11 * MiB
    finally:
        store.close()
    for key in ("small", "big", "copied", "parts"):
        _assert_stored_as_asked(moto_bucket, bucket, key)
    assert moto_bucket.head_object(Bucket=bucket, Key="copied")["Metadata"] == {"b": "2"}
    heard = _requests_of(moto_proxy, bucket)
    kinds = {op for op, *_ in heard}
    assert {
        "PutObject",
        "CreateMultipartUpload",
        "UploadPart",
        "UploadPartCopy",
        "CompleteMultipartUpload",
        "CopyObject",
        "HeadObject",
        "GetObject",
    } <= kinds
    for op, _key, target, headers in heard:
        assert headers.get("x-amz-request-payer") == "requester", target
        if op in ("PutObject", "CopyObject", "CreateMultipartUpload"):
            assert headers.get("x-amz-storage-class") == "STANDARD_IA", target
            assert headers.get("x-amz-server-side-encryption") == "aws:kms", target
            assert headers.get("x-amz-server-side-encryption-aws-kms-key-id") == "alias/mount-key", target
            assert headers.get("x-amz-acl") == "public-read", target
        else:
            assert "x-amz-storage-class" not in headers and "x-amz-acl" not in headers, target


def _ssec_store(s3config, endpoint, key_file, **kw):
    conn = S3Connection(
        **dict(
            s3config,
            endpoint=endpoint,
            sse_c_key_file=key_file,
            storage_class="STANDARD_IA",
            retry=RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05),
        )
    )
    return RemoteStore(conn, part_size=5 * MiB, multipart_threshold=5 * MiB, **kw)


def _assert_keyed(proxy, bucket):
    heard = _requests_of(proxy, bucket)
    assert heard
    for op, _key, target, headers in heard:
        if op in ("DeleteObject", "AbortMultipartUpload"):
            continue
        assert headers.get(SSE_C + "key") == KEY_B64, (op, target)
        assert headers.get(SSE_C + "key-md5") == KEY_MD5, (op, target)
        if op in ("CopyObject", "UploadPartCopy"):
            assert headers.get(COPY_SSE_C + "key") == KEY_B64, (op, target)
    return {op for op, *_ in heard}


def test_sse_c_objects_are_written_read_and_copied_with_the_key(
    s3config, faultproxy, boto, bucket, key_file, tmp_path, caplog
):
    caplog.set_level(logging.DEBUG)
    store = _ssec_store(s3config, faultproxy.endpoint, key_file)
    try:
        big = tmp_path / "big"
        big.write_bytes(os.urandom(11 * MiB))
        store.put("small", b"small secret", {"x-amz-meta-a": "1"})
        store.upload_file(str(big), "big")
        store.copy_object("small", "copied", if_match=store.head("small").etag)
        assert store.update_metadata("copied", {"x-amz-meta-b": "2"})
        assert store.get_range("copied", 0, 100) == b"small secret"
        assert store.read("big", str(tmp_path / "back"))[0]
        assert (tmp_path / "back").read_bytes() == big.read_bytes()
        assert store.head("copied").metadata == {"x-amz-meta-b": "2"}
    finally:
        store.close()
    kinds = _assert_keyed(faultproxy, bucket)
    assert WRITES | {"HeadObject", "GetObject"} <= kinds
    for key in ("small", "big", "copied"):
        with pytest.raises(boto.exceptions.ClientError):
            boto.get_object(Bucket=bucket, Key=key)  # without the key: refused
    got = boto.get_object(Bucket=bucket, Key="copied", SSECustomerAlgorithm="AES256", SSECustomerKey=KEY)
    assert got["Body"].read() == b"small secret"
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("s3fs_mount")]
    assert ours and not [line for line in ours if KEY_B64 in line]


def test_a_store_without_the_key_cannot_read_an_sse_c_object(s3config, boto, bucket, key_file):
    boto.put_object(Bucket=bucket, Key="locked", Body=b"x", SSECustomerAlgorithm="AES256", SSECustomerKey=KEY)
    plain = RemoteStore(S3Connection(**s3config))
    try:
        with pytest.raises(S3Error) as caught:
            plain.get_range("locked", 0, 1)
        assert caught.value.status == 400
    finally:
        plain.close()
    keyed = _ssec_store(s3config, s3config["endpoint"], key_file)
    try:
        assert keyed.get_range(S3Name("locked"), 0, 1) == b"x"
    finally:
        keyed.close()


# -- through a mount ------------------------------------------------------------------------


def _xattr(path, name):
    return subprocess.run(
        ["getfattr", "--only-values", "-n", name, path], capture_output=True, text=True
    ).stdout


def _write_rename_setfattr(root):
    with open(os.path.join(root, "a.txt"), "wb") as f:
        f.write(b"written through the mount")
    data = os.urandom(20 * MiB)  # past the multipart threshold: parts
    with open(os.path.join(root, "big.bin"), "wb") as f:
        f.write(data)
    subprocess.run(["setfattr", "-n", "user.colour", "-v", "blue", os.path.join(root, "a.txt")], check=True)
    os.rename(os.path.join(root, "a.txt"), os.path.join(root, "b.txt"))
    subprocess.run(["setfattr", "-n", "user.shape", "-v", "round", os.path.join(root, "b.txt")], check=True)
    os.mkdir(os.path.join(root, "dir"))
    os.rename(os.path.join(root, "big.bin"), os.path.join(root, "dir", "big.bin"))
    return data


@pytest.mark.fuse
def test_a_mount_keeps_sse_c_and_the_storage_class_across_rename_and_setxattr(
    mount_factory, s3config, faultproxy, boto, bucket, key_file, tmp_path
):
    config = s3rig.write_s3yaml(tmp_path / "proxied.yaml", dict(s3config, endpoint=faultproxy.endpoint))
    m = mount_factory(
        "sse_c_key_file=%s,storage_class=STANDARD_IA,debug" % key_file, config=str(config)
    ).start()
    data = _write_rename_setfattr(m.path)
    assert m.stop() == 0
    kinds = _assert_keyed(faultproxy, bucket)
    assert WRITES <= kinds
    for op, _key, target, headers in _requests_of(faultproxy, bucket):
        if op in ("PutObject", "CopyObject", "CreateMultipartUpload"):
            assert headers.get("x-amz-storage-class") == "STANDARD_IA", target
    keyed = {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": KEY}
    for key in ("b.txt", "dir/big.bin"):
        with pytest.raises(boto.exceptions.ClientError):
            boto.head_object(Bucket=bucket, Key=key)
        assert boto.head_object(Bucket=bucket, Key=key, **keyed)["StorageClass"] == "STANDARD_IA"
    head = boto.head_object(Bucket=bucket, Key="b.txt", **keyed)
    assert (head["Metadata"].get("colour"), head["Metadata"].get("shape")) == ("blue", "round")
    assert boto.get_object(Bucket=bucket, Key="b.txt", **keyed)["Body"].read() == b"written through the mount"
    assert KEY_B64 not in open(m.log_path, errors="replace").read()
    # A fresh mount (empty cache) reads them back with the key.
    again = mount_factory("sse_c_key_file=%s" % key_file).start()
    with open(os.path.join(again.path, "dir", "big.bin"), "rb") as f:
        assert f.read() == data
    with open(os.path.join(again.path, "b.txt"), "rb") as f:
        assert f.read() == b"written through the mount"
    assert _xattr(os.path.join(again.path, "b.txt"), "user.shape") == "round"
    assert _xattr(os.path.join(again.path, "b.txt"), "user.colour") == "blue"


@pytest.mark.fuse
def test_a_mount_on_moto_stores_class_kms_and_acl_across_rename_and_setxattr(
    mount_factory, moto_server, moto_bucket, moto_proxy, bucket, tmp_path
):
    config = s3rig.write_s3yaml(
        tmp_path / "moto.yaml", _moto_settings(moto_server, bucket, moto_proxy.endpoint)
    )
    options = "storage_class=STANDARD_IA,sse=aws:kms:alias/mount-key,acl=public-read,requester_pays"
    m = mount_factory(options, config=str(config)).start()
    _write_rename_setfattr(m.path)
    assert m.stop() == 0
    for key in ("b.txt", "dir/big.bin", "dir/"):
        _assert_stored_as_asked(moto_bucket, bucket, key)
    assert moto_bucket.head_object(Bucket=bucket, Key="b.txt")["Metadata"].get("shape") == "round"
    for _op, _key, target, headers in _requests_of(moto_proxy, bucket):
        assert headers.get("x-amz-request-payer") == "requester", target


def test_an_sse_kms_or_sse_c_etag_is_no_digest():
    def info(**headers):
        resp = requests.Response()
        resp.headers.update({"ETag": '"5d41402abc4b2a76b9719d911017c592"', "Content-Length": "5", **headers})
        return ObjectInfo.from_response("k", resp)

    assert info().digest == "MD5:5d41402abc4b2a76b9719d911017c592"
    assert info(**{"x-amz-server-side-encryption": "AES256"}).digest.startswith("MD5:")
    assert info(**{"x-amz-server-side-encryption": "aws:kms"}).digest == NO_DIGEST  # not the ETag
    assert info(**{SSE_C + "algorithm": "AES256"}).digest == NO_DIGEST
    assert plan(NO_DIGEST) is None  # what readers check with: nothing
    assert (
        info(**{SSE_C + "algorithm": "AES256", "x-amz-checksum-crc32": "NhCmhg=="}).digest == "CRC32:NhCmhg=="
    )


class KmsStore(FakeStore):
    """Objects as a bucket with default SSE-KMS keeps them: ETags that are no MD5 of the bytes, and
    HEADs that say aws:kms (listings say nothing of it)."""

    def put(self, remote_name, data, headers=None, if_match=None, if_none_match=False):
        super().put(remote_name, data, headers, if_match, if_none_match)
        o = self._get(remote_name)
        o.etag = os.urandom(16).hex()
        return o.etag

    def head(self, remote_name):
        info = super().head(remote_name)
        info.etag_is_md5 = False
        return info


@pytest.mark.parametrize("size", [3 * MiB + 5, 20 * MiB + 3])  # one GET whole; random ranges
def test_an_sse_kms_object_is_read_without_taking_its_etag_for_an_md5(tmp_path, monkeypatch, size):
    monkeypatch.setattr(operations_module, "fuse_get_context", lambda: (1000, 1000, 1))
    store = KmsStore()
    data = os.urandom(size)
    store.put("f", data)
    ops = S3Operations(Bucket(store, "bucket"), "", MountOptions(cache_dir=str(tmp_path / "cache")))
    ops.namespace.load_root()
    fh = ops.open("/f", os.O_RDONLY)
    try:
        got = {off: ops.read("/f", 1 * MiB, off, fh) for off in reversed(range(0, size, 1 * MiB))}
    finally:
        ops.release("/f", fh)
    assert b"".join(got[off] for off in sorted(got)) == data  # no EIO: nothing claimed to mismatch
