"""Stat-ahead (fs/statahead.py): stats of a directory's files in name order find their HEADs sent
ahead, each file HEADed once; a lone stat costs one request; an answer fetched ahead is used only
as a cached HEAD would be (within attr_ttl, nothing changed by us since). Unit tests on the fake
store and clock, then a real mount on SeaweedFS counted by the fault proxy."""

from __future__ import annotations

import collections
import concurrent.futures
import errno
import os
import re
import stat
import subprocess
import threading

import pytest
import s3rig
from fakeclock import FakeClock
from fakestore import FakeStore
from test_listing import put_many, requests_of
from test_ttl import _context, make_ops  # noqa: F401 - _context: an autouse fixture
from waiting import eventually

from s3fs_mount.fs import statahead
from s3fs_mount.fs.fuselib import FuseOSError

MODE = stat.S_IFREG | 0o640


class CountingStore(FakeStore):
    """The fake store, with the key of every HEAD and the start-after of every LIST."""

    def __init__(self) -> None:
        super().__init__()
        self.heads: collections.Counter[str] = collections.Counter()
        self.lists: list[tuple[str, str | None]] = []

    def head(self, remote_name):
        self.heads[getattr(remote_name, "key", remote_name)] += 1
        return super().head(remote_name)

    def list(self, prefix="", delimiter="/", bucket=None, max_keys=1000, start_after=None):
        self.lists.append((prefix, start_after))
        return super().list(prefix, delimiter, bucket, max_keys=max_keys, start_after=start_after)


def files(store: FakeStore, count: int, prefix: str = "d/f") -> list[str]:
    names = ["%s%04d" % (prefix, i) for i in range(count)]
    for i, key in enumerate(names):
        store.put(key, b"x" * i, {"x-amz-meta-mode": str(MODE)})
    return names


def settled(ops) -> bool:
    """Nothing sent ahead is still under way."""
    sa = ops.namespace.statahead
    with sa._lock:
        return all(f.done() for run in sa._dirs.values() for f in run.ahead.values()) and not any(
            run.listing for run in sa._dirs.values()
        )


def looked_up(tmp_path, count: int, **options) -> tuple[CountingStore, FakeClock, list[str], object]:
    """A mount (on the fake store and clock) of ``count`` files in /d, /d looked up, nothing counted yet."""
    store, clock = CountingStore(), FakeClock()
    keys = files(store, count)
    ops = make_ops(tmp_path, store, clock, **options)
    ops.getattr("/d")
    store.heads.clear()
    del store.lists[:]
    return store, clock, keys, ops


def test_stats_in_name_order_head_each_file_once_with_its_full_attributes(tmp_path):
    # attr_ttl 30: no answer fetched ahead gets too old to use, however slowly a loaded machine goes
    store, clock, keys, ops = looked_up(tmp_path, 300, attr_ttl=30.0)
    for i, key in enumerate(keys):
        st = ops.getattr("/" + key)
        assert (st["st_size"], st["st_mode"]) == (i, MODE)  # the mode is x-amz-meta-mode: a HEAD's
    assert set(store.heads) == set(keys) and max(store.heads.values()) == 1  # each file once
    pages = [after for prefix, after in store.lists if prefix == "d/"]
    assert 1 <= len(pages) <= -(-300 // statahead.PAGE)  # a page at a time, as the window needed


def test_stats_after_a_readdir_take_their_names_from_its_listing(tmp_path):
    """ls -l, du, rm -r: a readdir, then a stat of each file in name order. The files' HEADs go
    ahead with the names the readdir listed: no LIST page of the stat-ahead's own."""
    store, clock = CountingStore(), FakeClock()
    keys = files(store, 300)
    ops = make_ops(tmp_path, store, clock, attr_ttl=30.0, dir_ttl=30.0)
    listed = [e[0] for e in ops.readdir("/d", 0) if not isinstance(e, str)]
    assert listed == [k[2:] for k in keys]
    store.heads.clear()  # the directory's own lookup
    lists = len(store.lists)
    for key in keys:
        assert ops.getattr("/" + key)["st_mode"] == MODE
    assert set(store.heads) == set(keys) and max(store.heads.values()) == 1
    assert len(store.lists) == lists
    assert sum(store.heads.values()) == 300


def test_stats_of_a_walk_longer_than_dir_ttl_still_take_their_names_from_its_listing(tmp_path):
    """ls -l of 10,000 files takes longer than dir_ttl: past it, the readdir's names are no longer
    what says which names exist, but they still say where the HEADs go next (no LIST page of
    the stat-ahead's own per 128 names), for as long as such a walk lasts. (A frozen clock: the
    walk lasts 2.5 s, and at load ~30 the 300 stats took more than the 1 s of real time that
    stepping 1.5 s left them, and listed again.)"""
    store, clock = CountingStore(), FakeClock(frozen=True)
    keys = files(store, 300)
    ops = make_ops(tmp_path, store, clock, attr_ttl=30.0, dir_ttl=1.0)
    assert len([e for e in ops.readdir("/d", 0) if not isinstance(e, str)]) == 300
    store.heads.clear()
    lists = len(store.lists)
    for i, key in enumerate(keys):
        if i == 20:
            clock.advance(1.5)  # past dir_ttl, within the walk's time (1 s + 5 ms an entry)
        assert ops.getattr("/" + key)["st_mode"] == MODE
    assert set(store.heads) == set(keys) and max(store.heads.values()) == 1
    assert len(store.lists) == lists


def test_stats_while_the_readdir_is_under_way_take_their_names_from_what_it_listed_so_far(tmp_path):
    """GNU ls -l stats each entry as it reads it: the readdir's listing is not whole while the
    stats go on, and the names its pages brought so far say where the HEADs go next; only where
    the stats come near the end of what was listed does the stat-ahead list a page itself."""
    store, clock = CountingStore(), FakeClock()
    keys = files(store, 2500)  # three pages of the readdir's listing
    ops = make_ops(tmp_path, store, clock, attr_ttl=30.0, dir_ttl=30.0)
    ops.getattr("/d")
    del store.lists[:]
    store.heads.clear()
    read = 0
    for entry in ops.readdir("/d", 0):
        if isinstance(entry, str):
            continue
        assert ops.getattr("/d/" + entry[0])["st_mode"] == MODE
        read += 1
    assert read == 2500
    assert set(store.heads) == set(keys) and max(store.heads.values()) == 1
    own = [after for prefix, after in store.lists if prefix == "d/" and after]
    assert len(own) <= 3, own  # without the names read so far: a page per 128 stats (about 20)


def test_a_readdir_hands_out_whole_the_files_whose_heads_went_ahead_of_its_stats(tmp_path):
    """GNU ls -l stats each entry as it reads it: once its stats in name order have the
    stat-ahead's HEADs going, the entries the readdir hands out next come with their whole
    attributes (stored mode, owner, size: readdirplus fills the kernel's cache, and ls asks
    nothing more of them), each file still HEADed once. A readdir alone sends no HEAD."""
    store, clock = CountingStore(), FakeClock()
    keys = files(store, 600)
    store.put("d/zlink", b"d/f0001", {"x-amz-meta-mode": str(stat.S_IFLNK | 0o777), "x-amz-meta-uid": "42"})
    ops = make_ops(tmp_path, store, clock, attr_ttl=30.0, dir_ttl=30.0)
    ops.getattr("/d")
    store.heads.clear()
    plain = [e for e in ops.readdir("/d", 0) if not isinstance(e, str)]
    assert len(plain) == 601 and not any(type(e[1]) is dict for e in plain)  # noqa: E721 - none whole
    assert sum(store.heads.values()) == 0
    clock.advance(31.0)  # that listing and anything cached from it expire
    whole = 0
    for entry in ops.readdir("/d", 0):
        if isinstance(entry, str):
            continue
        name, attrs, _ = entry
        if type(attrs) is dict:  # noqa: E721 - not TypeOnly or Unsettled: whole attributes
            whole += 1
            if name == "zlink":
                assert (attrs["st_mode"], attrs["st_uid"]) == (stat.S_IFLNK | 0o777, 42)
            else:
                assert (attrs["st_mode"], attrs["st_size"]) == (MODE, int(name[1:]))
            assert ops.getattr("/d/" + name) == attrs and store.heads["d/" + name] == 1  # asked no more
        else:
            st = ops.getattr("/d/" + name)  # the stat of an entry handed out without its mode
            assert st["st_mode"] == (stat.S_IFLNK | 0o777 if name == "zlink" else MODE)
    # All but the first: its stat (of the first name the readdir listed) starts the run; the names
    # after come from the readdir's listing at once (not queued behind the HEADs: none passed early).
    assert whole == 601 - 1, whole
    heads = {k: n for k, n in store.heads.items() if k not in ("d", "d/")}  # /d's own lookup, expired
    assert set(heads) == set(keys) | {"d/zlink"} and max(heads.values()) == 1


class PagedStore(CountingStore):
    """A store that lists :data:`PAGED` keys a page: a directory's readdir comes in several pages."""

    def list(self, prefix="", delimiter="/", bucket=None, max_keys=1000, start_after=None):
        return super().list(prefix, delimiter, bucket, max_keys=min(max_keys, PAGED), start_after=start_after)


PAGED = 100


def ls_l(ops, path: str) -> tuple[int, int]:
    """GNU ls -l: each entry stat'ed as the readdir hands it out (a getattr unless it came whole):
    (entries that came whole, getattr calls)."""
    whole = stats = 0
    for entry in ops.readdir(path, 0):
        if isinstance(entry, str):
            continue
        name, attrs, _ = entry
        if type(attrs) is dict:  # noqa: E721 - not TypeOnly or Unsettled: whole attributes
            whole += 1
        else:
            stats += 1
            assert ops.getattr(path + "/" + name)["st_mode"] == MODE
    return whole, stats


def test_a_readdir_over_several_listing_pages_hands_out_whole_all_but_the_first_files(tmp_path):
    """ls -l of a directory listed in several pages: past the first entry (whose stat starts the
    run), each page's HEADs are sent as the readdir gets the page, before it hands out the
    page's entries, so every entry goes out whole: no getattr for it, and no LIST page of the
    stat-ahead's own (it used to run out of names at each page's end, list a page of its own
    queued behind the HEADs, and the readdir passed names meanwhile: ~50 getattr a page)."""
    store, clock = PagedStore(), FakeClock()
    keys = files(store, 4 * PAGED + 50)
    ops = make_ops(tmp_path, store, clock, attr_ttl=30.0, dir_ttl=30.0)
    ops.getattr("/d")
    store.heads.clear()
    del store.lists[:]
    whole, stats = ls_l(ops, "/d")
    assert (whole, stats) == (len(keys) - 1, 1)
    assert [after for _, after in store.lists if after is not None] == []  # the readdir's pages only
    assert set(store.heads) == set(keys) and max(store.heads.values()) == 1


def test_a_stat_of_the_first_name_a_readdir_listed_sends_the_walks_next_heads_at_once(tmp_path):
    """GNU ls -l reads the first readdir reply (16 entries handed out without their mode) and
    stats each before it reads on. The stat of the first name sends the HEADs of the next WORKERS
    names beside its own (they used to wait for a second stat's round trip, and
    then went 2, 4, 8 at a time); each file is still HEADed once, and a stat of any other name
    first sends nothing ahead (test_a_lone_stat_sends_one_head_and_nothing_ahead)."""
    store, clock = CountingStore(), FakeClock()
    keys = files(store, 100)
    ops = make_ops(tmp_path, store, clock, attr_ttl=30.0, dir_ttl=30.0)
    ops.getattr("/d")
    entries = ops.readdir("/d", 0)
    first = [next(entries) for _ in range(2 + 16)][2:]  # ".", "..", then the first reply's files
    assert [e[0] for e in first] == [k[2:] for k in keys[:16]]
    store.heads.clear()
    assert ops.getattr("/" + keys[0])["st_mode"] == MODE
    eventually(lambda: settled(ops), what="the HEADs sent ahead answered")
    assert set(store.heads) == set(keys[: 1 + statahead.WORKERS])  # the first's, and the next 16
    for key in keys[1:16]:  # the rest of the first reply: each answered from what went ahead
        assert ops.getattr("/" + key)["st_mode"] == MODE
    rest = [e for e in entries if not isinstance(e, str)]
    assert len(rest) == 100 - 16 and all(type(e[1]) is dict for e in rest)  # noqa: E721 - all whole
    assert set(store.heads) == set(keys) and max(store.heads.values()) == 1


def test_a_stat_of_another_name_than_a_readdirs_first_sends_nothing_ahead(tmp_path):
    """cat of one file of a directory just listed (not its first): one HEAD, nothing ahead."""
    store, clock = CountingStore(), FakeClock()
    keys = files(store, 100)
    ops = make_ops(tmp_path, store, clock, attr_ttl=30.0, dir_ttl=30.0)
    ops.getattr("/d")
    assert len([e for e in ops.readdir("/d", 0) if not isinstance(e, str)]) == 100
    store.heads.clear()
    assert ops.getattr("/" + keys[5])["st_mode"] == MODE
    eventually(lambda: settled(ops), what="nothing under way")
    assert dict(store.heads) == {keys[5]: 1}


def test_a_walk_keeps_every_stat_ahead_worker_busy(tmp_path):
    """ls -l of a large directory: once the window has grown, it holds enough names that all
    WORKERS threads send a HEAD at once (a loaded server answers each more slowly, not fewer at a
    time), and no file is HEADed twice. The HEADs past the 200th wait until WORKERS of them are
    under way together (then none waits again; a bound of 60 s only keeps a failure from hanging)."""
    store, clock = PagedStore(), FakeClock()
    keys = files(store, 500)
    lock = threading.Condition()
    under_way = [0, 0]  # now, most at once
    opened = threading.Event()
    plain_head = store.head

    def head(remote_name):
        key = getattr(remote_name, "key", remote_name)
        if opened.is_set() or key < "d/f0200":
            return plain_head(remote_name)
        with lock:
            under_way[0] += 1
            under_way[1] = max(under_way)
            if under_way[0] >= statahead.WORKERS:
                opened.set()
                lock.notify_all()
            lock.wait_for(opened.is_set, timeout=60)
            under_way[0] -= 1
        return plain_head(remote_name)

    store.head = head
    ops = make_ops(tmp_path, store, clock, attr_ttl=300.0, dir_ttl=300.0)
    ops.getattr("/d")
    store.heads.clear()
    whole, stats = ls_l(ops, "/d")
    assert under_way[1] == statahead.WORKERS and statahead.MAX_WINDOW >= statahead.WORKERS
    assert statahead.WORKERS == 20  # as many HEADs at once as s3fs-fuse's ls -l (its multireq_max)
    assert whole + stats == len(keys)
    assert set(store.heads) == set(keys) and max(store.heads.values()) == 1


def test_stats_past_what_a_readdir_that_stopped_listed_still_have_their_heads_sent_ahead(tmp_path):
    """A readdir that stops after its first page lists no more: stats of the files after it
    (their names not listed by it) get them from LIST pages of the stat-ahead's own, as before."""
    store, clock = PagedStore(), FakeClock()
    keys = files(store, 3 * PAGED)
    ops = make_ops(tmp_path, store, clock, attr_ttl=30.0, dir_ttl=30.0)
    ops.getattr("/d")
    entries = ops.readdir("/d", 0)
    for _ in range(PAGED // 2):  # part of the first page, then the reader stops
        next(entries)
    entries.close()
    store.heads.clear()
    del store.lists[:]
    for i, key in enumerate(keys):
        st = ops.getattr("/" + key)
        assert (st["st_size"], st["st_mode"]) == (i, MODE)
    assert set(store.heads) == set(keys) and max(store.heads.values()) == 1
    assert [after for _, after in store.lists if after is not None]  # listed on by the stat-ahead


def test_a_listing_page_queued_for_a_directory_dropped_meanwhile_is_not_sent(tmp_path):
    """rm -r: a page the stat-ahead queued for a directory that is removed (dropped) before a
    worker takes it up lists nothing (it listed the removed directory, after its rmdir)."""
    store, clock, keys, ops = looked_up(tmp_path, 300, attr_ttl=30.0)
    ops.getattr("/" + keys[0])
    ops.getattr("/" + keys[1])
    sa = ops.namespace.statahead
    eventually(lambda: settled(ops))
    with sa._lock:
        run = sa._dirs["/d"]
    sa.drop("/d")
    del store.lists[:]
    sa._list_page("/d", run, keys[1][2:])  # as a worker would, late
    assert store.lists == []


def test_a_lone_stat_sends_one_head_and_nothing_ahead(tmp_path):
    store, clock, keys, ops = looked_up(tmp_path, 50)
    ops.getattr("/" + keys[10])
    clock.advance(2.0)  # its answer expired: asked again, still alone
    ops.getattr("/" + keys[10])
    assert settled(ops)
    # (each lookup's own LIST, beside its HEAD, is of a directory of the name: none of the directory)
    assert store.heads == {keys[10]: 2} and store.lists == [(keys[10], None)] * 2


def test_stats_against_name_order_send_nothing_ahead(tmp_path):
    store, clock, keys, ops = looked_up(tmp_path, 40)
    for key in reversed(keys):
        ops.getattr("/" + key)
    assert sorted(store.lists) == [(key, None) for key in keys] and sum(store.heads.values()) == 40


def test_an_answer_fetched_ahead_yields_to_our_change_and_to_attr_ttl(tmp_path):
    store, clock = CountingStore(), FakeClock()
    keys = files(store, 40)
    ops = make_ops(tmp_path, store, clock, attr_ttl=5.0)
    ops.getattr("/d")
    for key in keys[:4]:
        ops.getattr("/" + key)
    eventually(lambda: settled(ops) and store.heads[keys[5]] == 1, what="the stat-ahead of f0005")
    store.put(keys[4], b"new", {"x-amz-meta-mode": str(MODE)})  # another client's, after its HEAD ahead
    assert ops.getattr("/" + keys[4])["st_size"] == 4  # within attr_ttl: what was asked (as a cache hit)
    ops.namespace.forget("/" + keys[5])  # what our own change of it does: the answer ahead goes
    assert ops.getattr("/" + keys[5])["st_size"] == 5 and store.heads[keys[5]] == 2
    st6 = ops.getattr("/" + keys[6])  # the run goes on past the change
    assert st6["st_size"] == 6
    eventually(lambda: settled(ops) and store.heads[keys[8]] >= 1, what="the stat-ahead of f0008")
    store.put(keys[8], b"changed", {"x-amz-meta-mode": str(stat.S_IFREG | 0o604)})
    heads = store.heads[keys[8]]
    ops.getattr("/" + keys[7])
    clock.advance(6.0)  # past attr_ttl: what was fetched ahead is too old to use
    st8 = ops.getattr("/" + keys[8])
    assert (st8["st_size"], st8["st_mode"]) == (7, stat.S_IFREG | 0o604)
    assert store.heads[keys[8]] == heads + 1


def test_an_answer_asked_before_our_change_is_not_used(tmp_path):
    store, clock = CountingStore(), FakeClock()
    keys = files(store, 2)
    ops = make_ops(tmp_path, store, clock)
    ns = ops.namespace
    answer = ns._fetch("/" + keys[1], dirs=False)  # a HEAD ahead, answered ...
    ns.remember("/" + keys[1], answer)  # ... and our upload of it, done after it was asked
    future = concurrent.futures.Future()
    future.set_result(answer)
    assert ns.statahead._settled("/" + keys[1], future) is None
    future = concurrent.futures.Future()
    future.set_result(ns._fetch("/" + keys[0], dirs=False))
    assert ns.statahead._settled("/" + keys[0], future) is not None  # nothing changed since


def test_a_file_removed_after_the_listing_is_enoent(tmp_path):
    store, clock = CountingStore(), FakeClock()
    keys = files(store, 20)
    ops = make_ops(tmp_path, store, clock)
    ops.getattr("/d")
    for key in keys[:3]:
        ops.getattr("/" + key)
    eventually(lambda: settled(ops) and store.heads[keys[4]] == 1, what="the stat-ahead of f0004")
    ops.unlink("/" + keys[4])  # ours: absent at once, whatever was fetched ahead
    store.remove(keys[5])  # another client's, after our listing (its HEAD ahead may say either)
    ops.getattr("/" + keys[3])
    for key in keys[4:6]:
        with pytest.raises(FuseOSError) as exc:
            ops.getattr("/" + key)
        assert exc.value.errno == errno.ENOENT
    assert ops.getattr("/" + keys[6])["st_size"] == 6


def test_followed_directories_are_bounded(tmp_path):
    store, clock = CountingStore(), FakeClock()
    for d in range(statahead.MAX_DIRS + 4):
        files(store, 3, prefix="d%02d/f" % d)
    ops = make_ops(tmp_path, store, clock)
    for d in range(statahead.MAX_DIRS + 4):
        for i in range(3):
            ops.getattr("/d%02d/f%04d" % (d, i))
    assert len(ops.namespace.statahead.followed()) <= statahead.MAX_DIRS


@pytest.mark.fuse
def test_stats_in_listing_order_through_a_mount_send_one_list_and_a_head_per_file(
    mount_factory, faultproxy, s3config, boto, bucket, tmp_path
):
    count = 100  # one stat-ahead listing page
    keys = ["sa/f%04d" % i for i in range(count)]
    put_many(boto, bucket, keys)
    boto.put_object(Bucket=bucket, Key=keys[7], Body=b"seven", Metadata={"mode": str(stat.S_IFREG | 0o600)})
    config = str(s3rig.write_s3yaml(tmp_path / "proxy.yaml", dict(s3config, endpoint=faultproxy.endpoint)))
    mount = mount_factory("attr_ttl=30", config=config).start()  # nothing fetched ahead gets too old
    top = os.path.join(mount.path, "sa")
    assert os.path.isdir(top)
    mark = len(faultproxy.seen)
    os.stat(os.path.join(top, "f0050"))  # a lone stat: its HEAD, and the LIST for a directory
    lone = requests_of(faultproxy, mark)  # of its name beside it (a directory shadows a file)
    assert sorted(m for m, _, _ in lone) == ["GET", "HEAD"]
    assert [q["prefix"][0] for m, _, q in lone if m == "GET"][0].startswith("sa/f0050")
    mark = len(faultproxy.seen)
    sizes = {}
    for i in range(count):
        st = os.stat(os.path.join(top, "f%04d" % i))
        sizes[i] = (st.st_size, stat.S_IMODE(st.st_mode))
    seen = requests_of(faultproxy, mark)
    heads = collections.Counter(p for m, p, _ in seen if m == "HEAD")
    lists = [q for m, _, q in seen if m == "GET" and q.get("list-type")]
    assert set(heads) <= {"/%s/%s" % (bucket, k) for k in keys} and max(heads.values()) == 1
    # One listing of the directory; and the LISTs for a directory of the name that the first
    # stats, before the stat-ahead has begun, send beside their HEADs (a few, never one a file).
    assert len(heads) <= count and [q["prefix"] for q in lists].count(["sa/"]) == 1
    beside = [q["prefix"][0] for q in lists if q["prefix"] != ["sa/"]]
    assert all(p.startswith("sa/f") for p in beside) and len(beside) <= 8, beside
    assert sizes[7] == (5, 0o600)  # full attributes: the mode from x-amz-meta-mode
    assert all(sizes[i][0] == len(b"%d" % len(keys[i])) for i in range(count) if i != 7)
    mount.stop()


@pytest.mark.fuse
def test_ls_l_of_a_directory_of_several_listing_pages_sends_no_getattr_past_its_first_entries(
    mount_factory, faultproxy, s3config, boto, bucket, tmp_path
):
    """ls -l of 2,100 files (three LIST pages): each page's HEADs go out as the readdir gets the
    page, so its entries go out whole; the kernel asks getattr of the first reply's files alone
    (operations.FIRST_READDIR_REPLY, stat'ed before the run began), the stat-ahead lists no page
    of its own (a LIST with start-after: one a page's end before), each file is HEADed once, and
    ls shows what was stored."""
    from test_operability import _scrape

    from s3fs_mount.localserver import free_ports

    count = 2100
    keys = ["sc/f%04d" % i for i in range(count)]
    put_many(boto, bucket, keys)
    boto.put_object(Bucket=bucket, Key=keys[1500], Body=b"mode", Metadata={"mode": str(stat.S_IFREG | 0o600)})
    config = str(s3rig.write_s3yaml(tmp_path / "proxy.yaml", dict(s3config, endpoint=faultproxy.endpoint)))
    port = free_ports(1)[0]
    mount = mount_factory("attr_ttl=30,metrics=127.0.0.1:%d" % port, config=config).start()
    top = os.path.join(mount.path, "sc")
    assert os.path.isdir(top)
    before = _scrape(port).get('s3fs_fuse_operations_total{operation="getattr",result="ok"}', 0)
    mark = len(faultproxy.seen)
    env = dict(os.environ, LC_ALL="C")
    out = subprocess.run(["ls", "-l", top], check=True, capture_output=True, text=True, env=env).stdout
    lines = {line.split()[-1]: line for line in out.splitlines()[1:]}
    assert len(lines) == count
    assert lines["f1500"].startswith("-rw------- ") and lines["f0007"].startswith("-rw-r--r-- ")
    stats = _scrape(port).get('s3fs_fuse_operations_total{operation="getattr",result="ok"}', 0) - before
    seen = requests_of(faultproxy, mark)
    heads = collections.Counter(p for m, p, _ in seen if m == "HEAD")
    lists = [q for m, _, q in seen if m == "GET" and q.get("list-type")]
    assert set(heads) == {"/%s/%s" % (bucket, k) for k in keys} and max(heads.values()) == 1
    assert [q for q in lists if "start-after" in q] == []  # the readdir's pages alone
    assert stats <= 2 * 16, stats  # ~16: the first reply's files (not ~50 more at each page's end)
    mount.stop()


@pytest.mark.fuse
def test_ls_l_through_a_mount_sends_a_head_per_file_from_one_thread_and_shows_each_files_attributes(
    mount_factory, faultproxy, s3config, boto, bucket, tmp_path
):
    """ls -l of 300 files, each of its own size, mode, owner and mtime (s3fs-fuse's headers):
    one LIST, one HEAD a file, most sent ahead by the connector's request pipeline (one thread
    over many sockets, as ``s3fs-mount status`` says), and every line shows what was stored."""
    from test_newdirs import run_cli

    count = 300
    keys = ["sl/f%04d" % i for i in range(count)]

    def put(i: int) -> None:
        meta = {"mode": str(stat.S_IFREG | (0o600 + 0o10 * (i % 8))), "uid": str(1000 + i % 5),
                "gid": str(2000 + i % 3), "mtime": str(1_600_000_000 + 3600 * i)}
        boto.put_object(Bucket=bucket, Key=keys[i], Body=b"y" * (i % 37), Metadata=meta)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(count)))
    config = str(s3rig.write_s3yaml(tmp_path / "proxy.yaml", dict(s3config, endpoint=faultproxy.endpoint)))
    mount = mount_factory("attr_ttl=30", config=config).start()  # nothing fetched ahead gets too old
    top = os.path.join(mount.path, "sl")
    assert os.path.isdir(top)
    mark = len(faultproxy.seen)
    env = dict(os.environ, LC_ALL="C")
    out = subprocess.run(
        ["ls", "-ln", "--time-style=+%s", top], check=True, capture_output=True, text=True, env=env
    ).stdout
    lines = [line.split() for line in out.splitlines()[1:]]
    assert [line[-1] for line in lines] == ["f%04d" % i for i in range(count)]
    for i, (mode, _links, uid, gid, size, mtime, _name) in enumerate(lines):
        assert mode == stat.filemode(stat.S_IFREG | (0o600 + 0o10 * (i % 8))), (i, mode)
        assert (int(uid), int(gid), int(size), int(mtime)) == (
            1000 + i % 5, 2000 + i % 3, i % 37, 1_600_000_000 + 3600 * i
        ), i
    seen = requests_of(faultproxy, mark)
    heads = collections.Counter(p for m, p, _ in seen if m == "HEAD")
    assert set(heads) == {"/%s/%s" % (bucket, k) for k in keys} and max(heads.values()) == 1
    st = run_cli("status", mount.path)
    ahead = re.search(r", (\d+) sent ahead by one thread", st.stdout)
    assert ahead and count // 2 <= int(ahead[1]) <= count, st.stdout  # (a lookup or two HEADs its own)
    mount.stop()


@pytest.mark.fuse
def test_stats_ahead_see_another_clients_changes_made_before_their_head(
    mount_factory, faultproxy, s3config, boto, bucket, tmp_path
):
    count = 90
    keys = ["sb/f%04d" % i for i in range(count)]
    put_many(boto, bucket, keys)
    config = str(s3rig.write_s3yaml(tmp_path / "proxy.yaml", dict(s3config, endpoint=faultproxy.endpoint)))
    mount = mount_factory(config=config).start()
    top = os.path.join(mount.path, "sb")
    for i in range(10):
        os.stat(os.path.join(top, "f%04d" % i))  # the run is listed and sent ahead by now
    gone, changed = 10 + statahead.MAX_WINDOW + 5, 10 + statahead.MAX_WINDOW + 10  # listed, not yet HEADed
    boto.delete_object(Bucket=bucket, Key=keys[gone])
    mode = {"mode": str(stat.S_IFREG | 0o600)}
    boto.put_object(Bucket=bucket, Key=keys[changed], Body=b"bigger now", Metadata=mode)
    for i in range(10, count):
        path = os.path.join(top, "f%04d" % i)
        if i == gone:
            with pytest.raises(FileNotFoundError):
                os.stat(path)
            continue
        st = os.stat(path)
        if i == changed:
            assert (st.st_size, stat.S_IMODE(st.st_mode)) == (10, 0o600)
        else:
            assert st.st_size == len(b"%d" % len(keys[i]))
    mount.stop()


def test_the_workers_answers_are_futures_of_one_lock():
    workers = statahead._Workers(2, "test-workers")
    gate = threading.Event()
    calls: list[int] = []
    entered: list[int] = []

    def held(n: int) -> int:
        entered.append(n)
        gate.wait(10)
        calls.append(n)
        return n * 10

    def failing() -> None:
        raise OSError("no")

    first, second = workers.submit(held, 1), workers.submit(held, 2)
    queued = workers.submit(held, 3)
    assert queued.cancel() and queued.done()  # not begun: never run
    failed = workers.submit(failing)
    gate.set()
    assert (first.result(), second.result()) == (10, 20)
    with pytest.raises(concurrent.futures.CancelledError):
        queued.result()
    with pytest.raises(OSError, match="no"):
        failed.result()
    assert sorted(calls) == [1, 2]

    gate.clear()
    busy = [workers.submit(held, n) for n in (4, 5)]
    eventually(lambda: 4 in entered and 5 in entered, what="both threads to be held")
    waiting = workers.submit(held, 6)
    workers.shutdown()  # what is queued is let go, not run
    with pytest.raises(concurrent.futures.CancelledError):
        waiting.result()
    gate.set()
    assert [b.result() for b in busy] == [40, 50]
    late = workers.submit(held, 7)
    assert late.done()
    with pytest.raises(concurrent.futures.CancelledError):
        late.result()
    assert 6 not in calls and 7 not in calls


def test_an_answer_is_run_or_cancelled_never_both():
    # run() and cancel() decide under the answer's own lock which came first: a cancel once a
    # worker has begun says False and the call's value is delivered; one before says True and
    # the call never runs; a finished answer is not cancelled after the fact.
    gate, began = threading.Event(), threading.Event()
    calls: list[str] = []

    def held() -> str:
        began.set()
        gate.wait(10)
        calls.append("held")
        return "value"

    running = statahead._Answer(held)
    worker = threading.Thread(target=running.run)
    worker.start()
    assert began.wait(10)
    assert not running.cancel() and not running.done()
    gate.set()
    assert running.result() == "value" and running.done()
    worker.join(10)

    before = statahead._Answer(lambda: calls.append("never"))
    assert before.cancel() and before.done()
    before.run()  # a worker reaching it later runs nothing, and lets the waiters go
    with pytest.raises(concurrent.futures.CancelledError):
        before.result()

    finished = statahead._Answer(lambda: "done")
    finished.run()
    assert not finished.cancel() and finished.result() == "done"
    assert calls == ["held"]
