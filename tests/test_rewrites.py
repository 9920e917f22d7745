"""Writing over files that exist (``cp -r`` or ``rsync`` over a tree that is there, a program
rewriting its files): what each costs in requests, and that another client's version is never
replaced unseen, through a real mount checked with boto3."""

from __future__ import annotations

import errno
import os
import subprocess
from collections import Counter

import pytest
import s3rig
from mountrig import sync_dir
from test_listing import put_many, requests_of


def _kinds(seen, bucket: str, prefix: str) -> Counter:
    """Requests by kind (HEAD, LIST, GET, PUT...) of keys under ``prefix`` (a LIST: of a prefix
    under it, or above it)."""
    out: Counter = Counter()
    for method, path, query in seen:
        if "list-type" in query:
            listed = query.get("prefix", [""])[0]
            if listed.startswith(prefix) or prefix.startswith(listed):
                out["LIST"] += 1
        elif path.startswith("/%s/%s" % (bucket, prefix)):
            out[method] += 1
    return out


def _s3_bytes(boto, bucket: str, key: str) -> bytes:
    return boto.get_object(Bucket=bucket, Key=key)["Body"].read()


def _s3_objects(boto, bucket: str, prefix: str) -> dict[str, bytes]:
    keys = [o["Key"] for o in boto.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
            if not o["Key"].endswith(("/", "_$folder$"))]  # (directories' objects)
    return {k: _s3_bytes(boto, bucket, k) for k in keys}


def _proxied_mount(mount_factory, faultproxy, s3config, tmp_path, options: str = ""):
    config = str(s3rig.write_s3yaml(tmp_path / "proxy.yaml", dict(s3config, endpoint=faultproxy.endpoint)))
    return mount_factory(options, config=config).start()


@pytest.mark.fuse
def test_rewriting_files_that_exist_sends_no_look_of_its_own_at_the_open(
    mount_factory, faultproxy, s3config, boto, bucket, tmp_path
):
    """50 files that exist, written again through a fresh mount (open "wb", write, close: the
    kernel's LOOKUP, then an OPEN with O_TRUNC). Round 38 counted 152-166 HEADs and 54-65 LISTs
    for them (here 151 and 54): the lookup's HEAD and LIST (or the stat-ahead's HEAD), the open
    for writing's own HEAD and LIST a moment later, and the upload's HEAD just before its PUT.
    The open now takes the lookup's answer asked a moment before (FRESH_LOOK), or a HEAD's
    (the stat-ahead's) with one LIST: two HEADs a file, the lookup's and the upload's."""
    count = 50
    put_many(boto, bucket, ["d/f%02d" % i for i in range(count)])
    mount = _proxied_mount(mount_factory, faultproxy, s3config, tmp_path)
    mark = len(faultproxy.seen)
    for i in range(count):
        with open(os.path.join(mount.path, "d", "f%02d" % i), "wb") as f:
            f.write(b"new %02d" % i)
    kinds = _kinds(requests_of(faultproxy, mark), bucket, "d/")
    print("rewriting %d files: %s" % (count, dict(kinds)))
    assert kinds["PUT"] == count and kinds["GET"] == 0
    # (and a few the stat-ahead sends past the last name; an open more than FRESH_LOOK after its
    # lookup sends a LIST more, not a HEAD)
    assert kinds["HEAD"] <= count * 2 + 10, kinds
    assert kinds["LIST"] <= count * 2, kinds
    for i in range(count):
        assert _s3_bytes(boto, bucket, "d/f%02d" % i) == b"new %02d" % i
    mount.stop()


def _tree(root, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


@pytest.mark.fuse
@pytest.mark.parametrize("tool", ["cp", "rsync"])
def test_copying_a_tree_over_itself_again_asks_no_more_at_the_open(mount_factory, faultproxy, s3config, boto,
                                                              bucket, tmp_path, tool):
    """``cp -r`` (``rsync -a``) of a tree into the mount, then again, each file changed, through a
    fresh mount: every file of the second run is in S3 (boto3). cp opens each file that is there
    for writing (O_TRUNC) just after its lookup: that open asks S3 nothing more (its HEAD and LIST
    were a HEAD a file more). rsync writes a temporary name and renames it over the file (no open
    of the file for writing: counted, not bounded here)."""
    rels = ["a/f%d" % i for i in range(12)] + ["a/b/g%d" % i for i in range(12)]
    src = tmp_path / "src"
    _tree(src, {rel: b"first " + rel.encode() for rel in rels})
    command = {"cp": ["cp", "-rT"], "rsync": ["rsync", "-a"]}[tool]
    slash = "/" if tool == "rsync" else ""
    first = _proxied_mount(mount_factory, faultproxy, s3config, tmp_path)
    subprocess.run(command + [str(src) + slash, os.path.join(first.path, "t")], check=True)
    first.stop()
    _tree(src, {rel: b"second, longer " + rel.encode() for rel in rels})
    mount = _proxied_mount(mount_factory, faultproxy, s3config, tmp_path)
    mark = len(faultproxy.seen)
    subprocess.run(command + [str(src) + slash, os.path.join(mount.path, "t")], check=True)
    sync_dir(os.path.join(mount.path, "t", "a"))
    sync_dir(os.path.join(mount.path, "t", "a", "b"))
    seen = requests_of(faultproxy, mark)
    kinds = _kinds(seen, bucket, "t/")
    print("%s over the tree of %d files: %s" % (tool, len(rels), dict(kinds)))
    if tool == "cp":  # the lookup's HEAD and the upload's (and the stat-ahead's past the last
        # name, where cp's order is not the names': f10 after f9); was 82 here (three a file)
        assert kinds["HEAD"] <= len(rels) * 2.75, kinds
    want = {"t/" + rel: b"second, longer " + rel.encode() for rel in rels}
    assert _s3_objects(boto, bucket, "t/a/") == want
    mount.stop()


@pytest.mark.fuse
def test_another_clients_version_put_between_a_lookup_and_a_rewrite_is_not_replaced_unseen(
    mount_factory, boto, bucket
):
    """The open for writing and its upload take a lookup's answer asked a moment before
    (FRESH_LOOK): another client's version put in that moment is told by the upload's
    ``If-Match`` (412), and kept (ours in a conflict copy, the close ESTALE), never replaced
    unseen. Where the open asked again (a slow machine), ours replaces theirs, seen."""
    boto.put_object(Bucket=bucket, Key="f", Body=b"first")
    mount = mount_factory().start()
    path = os.path.join(mount.path, "f")
    assert os.stat(path).st_size == 5  # the lookup: a HEAD and a LIST
    boto.put_object(Bucket=bucket, Key="f", Body=b"theirs")
    try:
        with open(path, "wb") as f:
            f.write(b"ours")
        closed = True
    except OSError as exc:
        assert exc.errno == errno.ESTALE, exc
        closed = False
    sync_dir(mount.path)
    held = _s3_objects(boto, bucket, "f")
    if closed:  # the open saw theirs (asked S3 again: a slow machine) and replaced it, seen
        assert held == {"f": b"ours"}, held
    else:
        assert held["f"] == b"theirs", held
        assert sorted(held.values()) == [b"ours", b"theirs"], held
    mount.stop()
