"""The mount reaches S3 through one Bucket: every request names the mounted bucket.

The bug this guards (issue 16): with ``default_bucket: other`` in s3.yaml and a
mount of bucket ``mounted``, lookups went to ``mounted`` but listings to
``other``. The command line hid it (it sets default_bucket to the mounted
bucket); these tests do not.
"""

from __future__ import annotations

import errno
import inspect
import os
import stat
import urllib.parse

import pytest
import s3rig
from fakestore import FakeStore
from test_fs_unit import names, write_file

import s3fs_mount.fs.operations as operations_module
from s3fs_mount.config import load_settings
from s3fs_mount.fs.fuselib import FuseOSError
from s3fs_mount.fs.operations import S3Operations
from s3fs_mount.fs.options import MountOptions
from s3fs_mount.s3.bucket import Bucket, ObjectStore
from s3fs_mount.s3.connection import S3Connection
from s3fs_mount.s3.store import RemoteStore

MiB = 1 << 20


@pytest.fixture(autouse=True)
def _context(monkeypatch):
    monkeypatch.setattr(operations_module, "fuse_get_context", lambda: (1000, 1000, 1))


def every_kind_of_call(store: ObjectStore, bucket: str, tmp_path, prefix: str = "") -> None:
    """A mount's life on ``bucket`` (under ``prefix``): probes, recovery, lookups, listings, writes,
    renames, removals."""
    opts = MountOptions(cache_dir=str(tmp_path / "cache"), part_size=5 * MiB, multipart_threshold=5 * MiB)
    ops = S3Operations(Bucket(store, bucket), prefix, opts)
    ops.start()  # the probes of conditional writes, checksums and markers; recovery
    try:
        with pytest.raises(FuseOSError) as missing:
            ops.getattr("/nothing")
        assert missing.value.errno == errno.ENOENT
        ops.mkdir("/d", 0o755)
        write_file(ops, "/d/small", b"small")
        big = os.urandom(11 * MiB)
        write_file(ops, "/d/big", big)  # streamed in parts
        assert sorted(names(ops, "/d")) == ["big", "small"]
        fh = ops.open("/d/big", os.O_RDONLY)
        assert ops.read("/d/big", MiB, 5 * MiB, fh) == big[5 * MiB : 6 * MiB]
        ops.release("/d/big", fh)
        ops.chmod("/d/small", stat.S_IFREG | 0o600)
        ops.setxattr("/d/small", "user.k", b"v", 0)
        ops.symlink("/d/link", "small")
        assert ops.readlink("/d/link") == "small"
        ops.truncate("/d/small", 2)
        ops.rename("/d/small", "/d/moved")
        ops.rename("/d", "/e")
        ops.mkdir("/e/sub", 0o755)
        ops.rmdir("/e/sub")
        ops.unlink("/e/moved")
        assert sorted(names(ops, "/e")) == ["big", "link"]
        ops.chmod("/", stat.S_IFDIR | 0o750)  # the root's holder
        assert ops.namespace.store_dir_times() >= 0
    finally:
        ops.finish()
        ops.prefetcher.close()
        ops.uploader.close()
        ops.staging.close()


def test_a_fake_mount_of_another_bucket_than_the_default_names_only_it(tmp_path):
    store = FakeStore(bucket="mounted", default_bucket="other")
    store.create_bucket("other")  # it exists: a request sent there would succeed, silently
    every_kind_of_call(store, "mounted", tmp_path)
    assert set(store.requested) == {"mounted"}, store.requested
    assert store.buckets["other"] == {}
    assert sorted(store.objects) == ["_$folder$", "e/", "e/big", "e/link"]  # the root's holder too


def test_a_mount_from_an_s3_yaml_whose_default_bucket_is_another_sends_every_request_to_it(
    tmp_path, s3server, boto, faultproxy, monkeypatch
):
    mounted, other = s3rig.unique_bucket_name("mounted"), s3rig.unique_bucket_name("other")
    for name in (mounted, other):
        boto.create_bucket(Bucket=name)
    try:
        config = dict(s3rig.s3_config(s3server, other), endpoint=faultproxy.endpoint)
        path = s3rig.write_s3yaml(tmp_path / "s3.yaml", config)
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
            monkeypatch.delenv(name, raising=False)
        settings = load_settings(str(path))
        assert settings["default_bucket"] == other
        store = RemoteStore(S3Connection(**settings), part_size=5 * MiB, multipart_threshold=5 * MiB)
        try:
            every_kind_of_call(store, mounted, tmp_path)
        finally:
            store.close()
        buckets = {urllib.parse.urlsplit(target).path.split("/")[1] for _, target in faultproxy.seen}
        assert buckets == {mounted}, faultproxy.seen
        assert boto.list_objects_v2(Bucket=other).get("KeyCount", 0) == 0
        keys = [o["Key"] for o in boto.list_objects_v2(Bucket=mounted)["Contents"]]
        assert "e/big" in keys and "e/link" in keys
    finally:
        s3rig.empty_and_delete_bucket(boto, mounted)
        s3rig.empty_and_delete_bucket(boto, other)


class KeyRecordingStore(FakeStore):
    """A fake that notes the key (or listing prefix) of every request."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.keys: set[str] = set()

    def _at(self, name):
        objects, key = super()._at(name)
        self.keys.add(key)
        return objects, key

    def list(self, prefix="", delimiter="/", bucket=None, max_keys=1000, start_after=None):
        self.keys.add(prefix)
        return super().list(prefix, delimiter, bucket, max_keys, start_after)


@pytest.mark.parametrize("drops", [False, True], ids=["markers keep metadata", "markers drop it"])
def test_a_prefix_mount_reaches_only_its_prefix_through_its_view(tmp_path, drops):
    """The view fixes bucket and prefix once; the one key beside the prefix is the root's
    ``top_$folder$``, where a server that drops metadata on ``top/`` keeps the root's."""
    store = KeyRecordingStore(bucket="mounted", drops_marker_metadata=drops)
    every_kind_of_call(store, "mounted", tmp_path, prefix="/top/")
    assert set(store.requested) == {"mounted"}
    outside = {k for k in store.keys if not k.startswith("top/")}
    assert outside == ({"top_$folder$"} if drops else set()), outside
    stored = {k for k in store.objects if not k.startswith("top/")}
    assert stored == ({"top_$folder$"} if drops else set())
    assert {"top/e/", "top/e/big", "top/e/link"} <= set(store.objects)
    assert os.path.isdir(tmp_path / "cache" / "mounted%2Ftop")  # the cache dir is named as before


def test_a_view_under_a_prefix():
    store = FakeStore()
    whole = Bucket(store, "bucket")
    top = whole.under("/top/")
    assert (top.prefix, top.under("a/b").prefix, whole.under("").prefix) == ("top/", "top/a/b/", "")
    assert top.whole().prefix == "" and whole.whole() is whole
    top.put("f", b"1")
    assert list(store.objects) == ["top/f"]
    assert [e.key for e in top.list_all()] == ["f"]


@pytest.mark.parametrize("store_class", [RemoteStore, FakeStore])
def test_the_connector_and_the_fake_both_are_object_stores(store_class):
    """Every method of the ObjectStore protocol, with the protocol's parameters by name and default."""
    members = [n for n in dir(ObjectStore) if not n.startswith("_") and callable(getattr(ObjectStore, n))]
    assert "list" in members and "copy_object" in members
    for name in members:
        want = inspect.signature(getattr(ObjectStore, name)).parameters
        got = inspect.signature(getattr(store_class, name)).parameters
        assert [(p.name, p.default) for p in got.values()] == [
            (p.name, p.default) for p in want.values()
        ], name
    for attribute in ("checksums", "checksum_algorithm"):
        assert attribute in ObjectStore.__annotations__
    assert isinstance(FakeStore(), ObjectStore)
