"""rm through a real mount on SeaweedFS, checked with boto3: deletes go in DeleteObjects batches
(s3fs_mount/fs/deletes.py), in order with later writes, and survive kill -9 of the mount.
The same rules on the in-memory store: tests/test_deletes.py."""

from __future__ import annotations

import errno
import os
import subprocess
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import pytest
from faultproxy import FaultProxy, is_delete_objects
from mountrig import journal_records, proxied, sync_dir
from waiting import eventually

from s3fs_mount.fs.deletes import JOURNAL_NAME, PARALLEL

pytestmark = pytest.mark.fuse


def s3_keys(boto, bucket: str, prefix: str = "") -> list[str]:
    pages = boto.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for p in pages for o in p.get("Contents", []))


def deletes_heard(proxy: FaultProxy) -> tuple[int, list[str]]:
    """(DeleteObjects requests, keys of single DELETEs) the proxy saw."""
    batches = sum(1 for method, target in proxy.seen if is_delete_objects(method, target))
    singles = [
        urllib.parse.unquote(urllib.parse.urlsplit(target).path).split("/", 2)[2]
        for method, target in proxy.seen
        if method == "DELETE"
    ]
    return batches, singles


def put_tree(boto, bucket: str, keys: list[str]) -> None:
    for key in keys:
        boto.put_object(Bucket=bucket, Key=key, Body=key.encode())


def rm_rf_with_deletes_held(proxy: FaultProxy, cache: str, path: str, unlinks: int) -> None:
    """``rm -rf path`` with every DeleteObjects held until all ``unlinks`` of it are recorded
    (the journal: a kill -9 now loses none of them), then let go: each batch gathers what
    waits whatever rm's pace (at 10 unlinks a second, loaded, the 50 ms window gathered one
    or two keys, and a bound on the count of batches failed). The held batches (the
    background's first, at most PARALLEL, and rm's first rmdir's) are counted too."""
    proxy.hold_deletes()
    rm = subprocess.Popen(["rm", "-rf", path])
    try:
        eventually(lambda: journal_records(cache, JOURNAL_NAME) == unlinks, 300, what="every unlink recorded")
    finally:
        proxy.release(forward=True)
    assert rm.wait(300) == 0


def test_rm_rf_of_a_tree_sends_batches_and_leaves_nothing(mount_factory, tmp_path, s3config, faultproxy,
                                                          boto, bucket):
    files = ["t/%03d" % i for i in range(400)] + ["t/a/%02d" % i for i in range(50)] + ["t/a/b/c"]
    put_tree(boto, bucket, files + ["keep/x", "t_other"])
    cache = str(tmp_path / "cache")
    mount = proxied(mount_factory, tmp_path, s3config, faultproxy, cache_dir=cache).start()
    # rm walks t in its listing's order: its files, then a (whose rmdirs wait for the held
    # deletes under them): every unlink comes before the first rmdir.
    assert os.listdir(os.path.join(mount.path, "t"))[-1] == "a"
    faultproxy.seen.clear()
    rm_rf_with_deletes_held(faultproxy, cache, os.path.join(mount.path, "t"), len(files))
    assert s3_keys(boto, bucket) == ["keep/x", "t_other"]  # rm returned: all gone in S3
    assert not os.path.exists(os.path.join(mount.path, "t"))
    assert journal_records(cache, JOURNAL_NAME) == 0
    batches, singles = deletes_heard(faultproxy)
    # 451 files: DeleteObjects, no DELETE per file (the rmdir of a directory not listed a
    # moment ago deletes its own holder objects: they are all DELETEs sees). About 15 batches
    # (shares of what waits, 50 keys or more each, as slots free); the bound is 10 files a batch.
    assert 1 <= batches <= len(files) // 10, batches
    assert not [k for k in singles if not k.endswith(("/", "_$folder$"))], singles


def test_rm_rf_of_a_directory_sends_its_files_in_few_full_batches(
    mount_factory, tmp_path, s3config, faultproxy, boto, bucket
):
    """rm -rf of 1,000 files: DeleteObjects of shares of what waits (at least 50 keys each
    when cut), not a DELETE per file nor a request per few files."""
    files = ["many/f%04d" % i for i in range(1000)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: boto.put_object(Bucket=bucket, Key=key, Body=b"x"), files))
    boto.put_object(Bucket=bucket, Key="many_kept", Body=b"k")
    cache = str(tmp_path / "cache")
    mount = proxied(mount_factory, tmp_path, s3config, faultproxy, cache_dir=cache).start()
    faultproxy.seen.clear()
    rm_rf_with_deletes_held(faultproxy, cache, os.path.join(mount.path, "many"), len(files))
    assert s3_keys(boto, bucket) == ["many_kept"]  # rm returned: all gone in S3
    assert not os.path.exists(os.path.join(mount.path, "many"))
    batches, singles = deletes_heard(faultproxy)
    # The background's first (held, PARALLEL at most), then shares of the 1,000 that waited as
    # slots free, and the rmdir's: about 15 (the rule itself is test_deletes'); the bound is
    # 20 files a batch.
    assert 1 <= batches <= len(files) // 20, batches
    assert not [k for k in singles if not k.endswith(("/", "_$folder$"))], singles


def test_rm_rf_of_a_directory_has_its_deletes_under_way_side_by_side(
    mount_factory, tmp_path, s3config, faultproxy, boto, bucket
):
    """rm -rf of 1,000 files with every DeleteObjects held: four are under way at once (the
    background's shares while rm unlinks, or rmdir's), not one while the rest wait for it
    (round 32's rule, 0.75 s against 0.39 s quiet); once they are answered, S3 is empty."""
    files = ["many/f%04d" % i for i in range(1000)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: boto.put_object(Bucket=bucket, Key=key, Body=b"x"), files))
    cache = str(tmp_path / "cache")
    mount = proxied(mount_factory, tmp_path, s3config, faultproxy, cache_dir=cache).start()
    faultproxy.hold_deletes()
    rm = subprocess.Popen(["rm", "-rf", os.path.join(mount.path, "many")])
    try:
        eventually(
            lambda: journal_records(cache, JOURNAL_NAME) == 1000 and faultproxy.holding >= PARALLEL, 120
        )
    finally:
        faultproxy.release(forward=True)
    assert rm.wait(120) == 0
    assert s3_keys(boto, bucket) == []
    assert not os.path.exists(os.path.join(mount.path, "many"))


def test_rm_r_lists_each_directory_once_and_asks_one_short_listing_for_each_rmdir(
    mount_factory, tmp_path, s3config, faultproxy, boto, bucket
):
    """rm -r reads each directory twice: the second readdir is answered from the first (a
    listing less than dir_ttl old, with what we removed since); rmdir of a directory that rm -r
    has just read and emptied removes its holder objects, then asks one LIST of max-keys 2
    (another client's file put since the listing keeps the directory: test_shared)."""
    dirs = ["r/d%d/e%d" % (i, j) for i in range(3) for j in range(3)]
    put_tree(boto, bucket, ["%s/f%d" % (d, k) for d in dirs for k in range(3)] + ["r/top"])
    # TTLs that outlast the walk however loaded the machine: what is checked is how often it lists
    mount = proxied(mount_factory, tmp_path, s3config, faultproxy, options="attr_ttl=30,dir_ttl=30").start()
    os.mkdir(os.path.join(mount.path, "r", "made"))  # with holder objects (marker, _$folder$)
    faultproxy.seen.clear()
    subprocess.run(["rm", "-r", os.path.join(mount.path, "r")], check=True)
    assert s3_keys(boto, bucket, "r") == []
    queries = [
        urllib.parse.parse_qs(urllib.parse.urlsplit(target).query)
        for method, target in faultproxy.seen
        if method == "GET" and "list-type=2" in target
    ]
    walked = ["r/"] + ["r/d%d/" % i for i in range(3)] + [d + "/" for d in dirs]
    listed = sorted(q["prefix"][0] for q in queries if q["max-keys"] == ["1000"])
    if "r/" not in listed:  # listed by the mkdir's lookups (a miss, then another: a burst's listing)
        walked.remove("r/")
    # Once each (r/made/, made here and empty, not at all), ...
    assert listed == sorted(walked)
    # ... and one emptiness check of each directory removed, r/made/ too
    checked = sorted(q["prefix"][0] for q in queries if q["max-keys"] != ["1000"])
    assert checked == sorted(["r/", "r/made/"] + ["r/d%d/" % i for i in range(3)] + [d + "/" for d in dirs])


def test_rm_r_lists_each_directory_beside_its_holders_head_once_a_sibling_is_removed(
    mount_factory, tmp_path, s3config, faultproxy, boto, bucket
):
    """rm -r looks each directory up (a HEAD of its holder: its stored mode) and then reads it
    (a LIST): once it has removed one directory of a parent, the lookup of the next begins its
    listing too, so the two requests go side by side. The proxy holds each such HEAD until the
    LIST of its directory has come: with the two one after the other, it would wait its limit."""
    dirs = ["r/d%d" % i for i in range(4)]
    put_tree(boto, bucket, ["%s/f%d" % (d, k) for d in dirs for k in range(3)])
    # The directories are prefixes only: their lookup asks r/dN_$folder$ first all the same.

    def held(method: str, target: str) -> str | None:  # the HEAD of r/d1.._$folder$
        path = urllib.parse.unquote(urllib.parse.urlsplit(target).path)
        for d in dirs[1:]:
            if method == "HEAD" and path.endswith("/" + d + "_$folder$"):
                return d + "/"
        return None

    def freed(method: str, target: str) -> str | None:  # the LIST of r/dN/
        if method != "GET" or "list-type=2" not in target:
            return None
        return urllib.parse.parse_qs(urllib.parse.urlsplit(target).query).get("prefix", [None])[0]

    mount = proxied(mount_factory, tmp_path, s3config, faultproxy, options="attr_ttl=30,dir_ttl=30").start()
    faultproxy.hold_until(held, freed, limit=30)
    subprocess.run(["rm", "-r", os.path.join(mount.path, "r")], check=True)
    assert s3_keys(boto, bucket, "r") == []
    assert sorted(faultproxy.held_outcomes) == [(d + "/", "request") for d in dirs[1:]]
    listed = [
        q.get("prefix", [""])[0]
        for q in (urllib.parse.parse_qs(urllib.parse.urlsplit(t).query) for m, t in faultproxy.seen
                  if m == "GET" and "list-type=2" in t)
        if q.get("max-keys") != ["2"]  # (each rmdir's check, after its DeleteObjects)
    ]
    # Each directory read once, no more (the lookup of r, a prefix only, lists "r" itself).
    assert sorted(n for n in listed if n.endswith("/")) == sorted(["r/"] + [d + "/" for d in dirs])


def test_rm_r_looks_the_next_directory_up_while_it_removes_one(
    mount_factory, tmp_path, s3config, faultproxy, boto, bucket
):
    """The rmdir of a directory begins the lookup of the next directory of its parent (its
    holder's HEADs, its listing), beside its own DeleteObjects and emptiness check: rm -r's
    lstat of that one then waits for no request. The proxy holds the emptiness check of r/dN/
    (the LIST after its DeleteObjects, which the rmdir waits for) until the HEAD of r/dN+1's
    holder has come: sent only by the walk's lstat after that rmdir returned, it would wait
    its limit."""
    dirs = ["r/d%d" % i for i in range(4)]
    put_tree(boto, bucket, ["%s/f%d" % (d, k) for d in dirs for k in range(3)])

    def held(method: str, target: str) -> str | None:  # the check of r/d0/, r/d1/, r/d2/
        if method != "GET" or "list-type=2" not in target:
            return None
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query)
        prefix = query.get("prefix", [""])[0]
        if query.get("max-keys") == ["2"] and prefix in ("r/d0/", "r/d1/", "r/d2/"):
            return "r/d%d" % (int(prefix[3]) + 1)
        return None

    def freed(method: str, target: str) -> str | None:  # the HEAD of r/dN_$folder$
        path = urllib.parse.unquote(urllib.parse.urlsplit(target).path)
        for d in dirs:
            if method == "HEAD" and path.endswith("/" + d + "_$folder$"):
                return d
        return None

    mount = proxied(mount_factory, tmp_path, s3config, faultproxy, options="attr_ttl=30,dir_ttl=30").start()
    faultproxy.seen.clear()
    faultproxy.hold_until(held, freed, limit=20)
    subprocess.run(["rm", "-r", os.path.join(mount.path, "r")], check=True)
    assert s3_keys(boto, bucket, "r") == []
    assert sorted(faultproxy.held_outcomes) == [("r/d%d" % i, "request") for i in (1, 2, 3)]
    heads = [urllib.parse.unquote(urllib.parse.urlsplit(t).path) for m, t in faultproxy.seen if m == "HEAD"]
    for d in dirs:  # each asked about once: by the lookup ahead, or by the walk's own
        assert sum(1 for h in heads if h.endswith("/" + d + "_$folder$")) == 1, heads


def test_rm_r_of_a_directory_larger_than_one_readdir_buffer_lists_it_once(
    mount_factory, tmp_path, s3config, faultproxy, boto, bucket
):
    """rm -r reads the first buffer of a directory, closes it and reads it whole again: the
    second read is answered from the first listing (its one page had come), not listed anew."""
    keys = ["big/f%04d" % i for i in range(400)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: boto.put_object(Bucket=bucket, Key=k, Body=b"x"), keys))
    mount = proxied(mount_factory, tmp_path, s3config, faultproxy, options="attr_ttl=30,dir_ttl=30").start()
    faultproxy.seen.clear()
    subprocess.run(["rm", "-r", os.path.join(mount.path, "big")], check=True)
    assert s3_keys(boto, bucket, "big") == []
    listed = [
        q.get("prefix", [""])[0]
        for q in (urllib.parse.parse_qs(urllib.parse.urlsplit(t).query) for m, t in faultproxy.seen
                  if m == "GET" and "list-type=2" in t)
        if q.get("max-keys") != ["2"]  # (the rmdir's check, after its DeleteObjects)
    ]
    assert listed.count("big/") == 1, listed


def test_rmdir_after_unlinking_its_files(mount, boto, bucket):
    d = os.path.join(mount.path, "d")
    os.mkdir(d)
    for i in range(20):
        with open(os.path.join(d, str(i)), "w") as f:
            f.write("x")
    for i in range(20):
        os.unlink(os.path.join(d, str(i)))
    assert os.listdir(d) == []
    os.rmdir(d)  # its pending deletes go first: S3 has it empty
    assert s3_keys(boto, bucket, "d") == []
    assert not os.path.exists(d)


def test_a_name_made_again_after_its_unlink_keeps_the_new_object_or_directory(mount, boto, bucket):
    for i in range(10):
        path = os.path.join(mount.path, "f%d" % i)
        with open(path, "w") as f:
            f.write("old")
        os.unlink(path)  # pending: the next create sends it first
        with open(path, "w") as f:
            f.write("new")
    src = os.path.join(mount.path, "src")
    with open(src, "w") as f:
        f.write("moved")
    with open(os.path.join(mount.path, "dst"), "w") as f:
        f.write("old")
    os.unlink(os.path.join(mount.path, "dst"))
    os.rename(src, os.path.join(mount.path, "dst"))
    with open(os.path.join(mount.path, "x"), "w") as f:
        f.write("a file")
    os.unlink(os.path.join(mount.path, "x"))
    os.mkdir(os.path.join(mount.path, "x"))  # SeaweedFS: the file must be gone before x/ is made
    sync_dir(mount.path)
    assert mount.stop() == 0  # every pending delete sent
    for i in range(10):
        assert boto.get_object(Bucket=bucket, Key="f%d" % i)["Body"].read() == b"new"
    assert boto.get_object(Bucket=bucket, Key="dst")["Body"].read() == b"moved"
    keys = s3_keys(boto, bucket)
    assert [k for k in keys if not k.startswith("x")] == ["dst"] + ["f%d" % i for i in range(10)]
    assert "x/" in keys and "x" not in keys


def test_an_unlink_s3_refuses_shows_the_file_again_and_says_why(mount_factory, tmp_path, s3config,
                                                               faultproxy, boto, bucket):
    put_tree(boto, bucket, ["locked"])
    mount = proxied(mount_factory, tmp_path, s3config, faultproxy).start()
    path = os.path.join(mount.path, "locked")
    faultproxy.delete_errors(1, "AccessDenied")
    os.unlink(path)
    with pytest.raises(PermissionError):  # the fsync of its directory says so, once
        sync_dir(mount.path)
    sync_dir(mount.path)
    assert os.path.exists(path)
    assert s3_keys(boto, bucket) == ["locked"]
    assert "could not delete locked (AccessDenied): it is there again" in mount.log()


def test_deletes_pending_when_the_mount_is_killed_are_sent_by_the_next(mount_factory, tmp_path, s3config,
                                                                      faultproxy, boto, bucket):
    doomed = ["big/%03d" % i for i in range(300)]
    kept = ["keep/%03d" % i for i in range(20)] + ["big_sibling"]
    put_tree(boto, bucket, doomed + kept)
    cache = str(tmp_path / "cache")
    mount = proxied(mount_factory, tmp_path, s3config, faultproxy, cache_dir=cache).start()
    faultproxy.hold_deletes()  # every DeleteObjects waits: the deletes stay pending
    rm = subprocess.Popen(["rm", "-rf", os.path.join(mount.path, "big")], stderr=subprocess.DEVNULL)
    # Every unlink returned (recorded), and rmdir waits for the held batch.
    eventually(lambda: journal_records(cache, JOURNAL_NAME) == 300 and faultproxy.holding >= 1, 120)
    mount.kill()
    rm.wait(60)
    faultproxy.release()  # the held requests never reach S3
    assert s3_keys(boto, bucket, "big/") == doomed  # nothing was deleted
    again = mount_factory(cache_dir=cache).start()  # no proxy now
    assert s3_keys(boto, bucket, "big/") == []  # sent at the start, before the mount served
    assert s3_keys(boto, bucket) == sorted(kept)
    assert "recovery: sending 300 deletes a previous run left pending" in again.log()
    assert journal_records(cache, JOURNAL_NAME) == 0
    big = os.path.join(again.path, "big")  # SeaweedFS may list an emptied prefix a while yet
    assert not os.path.exists(big) or os.listdir(big) == []
    assert len(os.listdir(os.path.join(again.path, "keep"))) == 20


def test_rm_rf_of_listed_files_sends_no_head_for_those_whose_type_is_certain(
    mount_factory, tmp_path, s3config, faultproxy, boto, bucket
):
    """readdir hands the kernel each file too big to be a link as its dentry (fuselib.Unsettled,
    every reply asked with attributes), so rm -rf's unlinkat makes no lookup, and the unlink
    asks nothing but what the listing said (no HEAD for a mode it does not show). A small object
    may be a link: it is still looked up (one HEAD) before its unlink."""
    big = ["many/f%04d" % i for i in range(600)]  # several readdir replies
    small = ["many/s%d" % i for i in range(5)]
    meta = {"mode": str(0o100600), "uid": "42", "gid": "43"}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: boto.put_object(Bucket=bucket, Key=k, Body=b"x" * 5000, Metadata=meta), big))
    for key in small:
        boto.put_object(Bucket=bucket, Key=key, Body=b"x", Metadata=meta)
    mount = proxied(mount_factory, tmp_path, s3config, faultproxy).start()
    faultproxy.seen.clear()
    subprocess.run(["rm", "-rf", os.path.join(mount.path, "many")], check=True)
    assert s3_keys(boto, bucket, "many") == []
    headed = [
        urllib.parse.unquote(urllib.parse.urlsplit(target).path).split("/", 2)[2]
        for method, target in faultproxy.seen
        if method == "HEAD"
    ]
    assert [k for k in headed if k in big] == []
    assert sorted(k for k in headed if k in small) == small

def test_rm_r_removes_each_directory_with_its_files_in_one_batch_and_leaves_no_prefix(
    mount_factory, tmp_path, s3config, faultproxy, boto, bucket
):
    """rmdir of a directory rm -r has just emptied sends its files' pending deletes, its marker
    and its holder in one DeleteObjects: no DELETE at all, and SeaweedFS lists nothing of the
    tree afterwards (not even an emptied prefix)."""
    put_tree(
        boto, bucket, ["t/d%d/e%d/f%d" % (i, j, k) for i in range(2) for j in range(3) for k in range(3)]
    )
    mount = proxied(mount_factory, tmp_path, s3config, faultproxy, options="attr_ttl=30,dir_ttl=30").start()
    made = os.path.join(mount.path, "t", "made")
    os.mkdir(made, 0o750)  # its marker and holder, made here
    for k in range(3):
        with open(os.path.join(made, "f%d" % k), "w") as f:
            f.write("x")
    assert "t/made/" in s3_keys(boto, bucket, "t/")
    faultproxy.seen.clear()
    subprocess.run(["rm", "-r", os.path.join(mount.path, "t")], check=True)
    assert s3_keys(boto, bucket) == []
    batches, singles = deletes_heard(faultproxy)
    assert singles == []
    # 10 directories, 21 files: one batch a directory, and under load the background's flush
    # (50 ms) may split one directory's unlinks; a DeleteObjects per file would be 31 or more.
    assert 1 <= batches <= 2 * (1 + 2 + 6 + 1), batches
    top = boto.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert top.get("CommonPrefixes", []) == [] and top.get("KeyCount") == 0
    assert not os.path.exists(os.path.join(mount.path, "t"))


def test_rmdir_of_a_directory_another_client_wrote_in_says_enotempty_and_keeps_its_mode(
    mount_factory, boto, bucket
):
    mount = mount_factory(options="dir_ttl=0").start()  # no listing of it outlives a lookup
    d = os.path.join(mount.path, "d")
    os.mkdir(d, 0o750)
    boto.put_object(Bucket=bucket, Key="d/theirs", Body=b"x")
    with pytest.raises(OSError) as info:
        os.rmdir(d)
    assert info.value.errno == errno.ENOTEMPTY
    keys = s3_keys(boto, bucket)
    assert {"d/", "d/theirs"} <= set(keys)
    holder = "d_$folder$" if "d_$folder$" in keys else "d/"
    assert boto.head_object(Bucket=bucket, Key=holder)["Metadata"]["mode"] == str(0o40750)
    assert os.listdir(d) == ["theirs"]


def test_rm_r_killed_in_an_rmdir_loses_no_directory_and_sends_its_files_deletes_later(
    mount_factory, tmp_path, s3config, faultproxy, boto, bucket
):
    """kill -9 while rmdir's one DeleteObjects (its files, marker and holder) is under way: the
    files' deletes were recorded and are sent by the next mount; the directory, whose rmdir never
    returned, is still there with its mode."""
    cache = str(tmp_path / "cache")
    mount = proxied(mount_factory, tmp_path, s3config, faultproxy, cache_dir=cache).start()
    d = os.path.join(mount.path, "dir")
    os.mkdir(d, 0o750)
    for k in range(20):
        with open(os.path.join(d, "f%02d" % k), "w") as f:
            f.write("x")
    faultproxy.hold_deletes()
    rm = subprocess.Popen(["rm", "-r", d], stderr=subprocess.DEVNULL)
    eventually(lambda: journal_records(cache, JOURNAL_NAME) == 20 and faultproxy.holding >= 1, 120)
    mount.kill()
    rm.wait(60)
    faultproxy.release()  # nothing held reaches S3
    assert len(s3_keys(boto, bucket, "dir/")) == 21  # the marker and the 20 files
    again = mount_factory(cache_dir=cache).start()
    keys = s3_keys(boto, bucket)
    assert not [k for k in keys if k.startswith("dir/f")]  # sent at the start
    assert "dir/" in keys
    assert os.stat(os.path.join(again.path, "dir")).st_mode == 0o40750
    assert os.listdir(os.path.join(again.path, "dir")) == []
