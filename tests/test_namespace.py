"""The namespace on its own, on the fake store and a fake clock: lookups, what is cached and for
how long, listings of every kind of directory, and what our own changes do to the caches."""

from __future__ import annotations

import errno
import stat
import threading

import pytest
from fakeclock import FakeClock
from fakestore import FakeStore
from waiting import eventually

import s3fs_mount.fs.namespace as namespace_module
from s3fs_mount.fs import attrs as A
from s3fs_mount.fs.dirtimes import DirTimesWriter
from s3fs_mount.fs.errors import FsError, Stale
from s3fs_mount.fs.namespace import RECHECK_AFTER, REMOVED_TTL, Namespace
from s3fs_mount.fs.paths import KeyMap
from s3fs_mount.s3.bucket import Bucket

DEFAULTS = A.Defaults(1000, 1000, 0o022)


def make(store: FakeStore | None = None, prefix: str = "", attr_ttl: float = 1.0, dir_ttl: float = 1.0,
         frozen: bool = False, **kwargs) -> tuple[Namespace, FakeStore, FakeClock]:
    store = store if store is not None else FakeStore()
    clock = FakeClock(frozen)
    bucket = Bucket(store, "bucket").under(prefix)
    ns = Namespace(bucket, KeyMap(), DEFAULTS, attr_ttl, dir_ttl, clock=clock, **kwargs)
    ns.configure_directories()
    return ns, store, clock


def listing(ns: Namespace, path: str = "/") -> dict[str, A.Attributes]:
    return dict(ns.iter_dir(path))


def pages_of(store: FakeStore, size: int) -> None:
    """The store lists ``size`` keys a page."""
    original = store.list

    def small_pages(*args, **kwargs):
        kwargs["max_keys"] = size
        return original(*args, **kwargs)

    store.list = small_pages


def missing(ns: Namespace, path: str) -> int:
    with pytest.raises(FsError) as exc:
        ns.lookup(path)
    return exc.value.errno


# -- lookups ------------------------------------------------------------------------------


def test_a_file_is_one_head_and_one_list_and_then_cached_for_attr_ttl():
    # The LIST (beside the HEAD) is for a directory of the same name, which would shadow the file.
    ns, store, clock = make(attr_ttl=2.0)
    store.put("f", b"abc", {A.META_PREFIX + "mode": str(stat.S_IFREG | 0o600)})
    a = ns.lookup("/f")
    assert (a.size, stat.S_IMODE(a.mode), a.complete) == (3, 0o600, True)
    assert store.calls["HEAD"] == 1 and store.calls["LIST"] == 1
    clock.advance(1.9)
    assert ns.lookup("/f").size == 3 and store.calls["HEAD"] == 1 and store.calls["LIST"] == 1
    clock.advance(0.2)
    store.put("f", b"abcdef")
    assert ns.lookup("/f").size == 6 and store.calls["HEAD"] == 2


@pytest.mark.parametrize("theirs", ["f/x", "f/", None])
def test_an_rm_or_rename_over_a_file_asks_for_a_directory_of_its_name_once_its_answer_is_1_s_old(theirs):
    """check_not_shadowed (before an rm of a file or a rename over one): an answer younger than
    RECHECK_AFTER asks nothing; an older one sends one LIST of ``f/``, and a directory another
    client made of the name is Stale (ESTALE), the name forgotten. (A frozen clock: at load ~35
    the real time between the lookup and the check at 0.9 s carried it past RECHECK_AFTER.)"""
    ns, store, clock = make(attr_ttl=600.0, frozen=True)
    store.put("f", b"abc")
    seen = ns.lookup("/f")
    asked = store.calls["LIST"], store.calls["HEAD"]
    store.remove("f")
    if theirs:
        store.put(theirs, b"")
    clock.advance(RECHECK_AFTER * 0.9)
    ns.check_not_shadowed("/f", seen)
    assert (store.calls["LIST"], store.calls["HEAD"]) == asked
    clock.advance(RECHECK_AFTER * 0.2)
    if theirs:
        with pytest.raises(Stale):
            ns.check_not_shadowed("/f", seen)
        assert (store.calls["LIST"], store.calls["HEAD"]) == (asked[0] + 1, asked[1])
        assert ns.cached("/f") is None and ns.lookup("/f").is_dir
    else:
        ns.check_not_shadowed("/f", seen)
        assert (store.calls["LIST"], store.calls["HEAD"]) == (asked[0] + 1, asked[1])
        assert ns.cached("/f") is not None  # a file it stays, for the rm's own delete to say


@pytest.mark.parametrize("check", ["check_not_shadowed", "held_in_s3"])
def test_a_key_this_mount_removed_is_no_entry_of_the_name_for_either_check_of_s3(check):
    """The two one-page LISTs of a directory's keys (check_not_shadowed before an rm of a file
    or a rename over one; held_in_s3 after an rmdir's deletes and before a directory's rename
    onto an empty one) follow one rule on a key this mount has removed and not yet deleted in S3
    (deletes go in batches, fs/deletes.py): its delete is sent first, and it is no entry. (The
    rename's and rmdir's callers sent them first; check_not_shadowed did not, and a file whose
    name held our removed key was taken for a directory another client made: ESTALE.)"""
    ns, store, clock = make(attr_ttl=600.0)
    store.put("f", b"abc")
    seen = ns.lookup("/f")
    store.put("f/x", b"ours")  # a key of ours under the name, removed here, its delete pending
    ns.deleting("/f/x")
    sent: list[str] = []

    def settle_deletes(prefix: str) -> None:
        if "f/x".startswith(prefix) and "f/x" in store.objects:
            sent.append(prefix)
            store.remove("f/x")
            ns.deleted("/f/x")

    ns.settle_deletes = settle_deletes
    clock.advance(RECHECK_AFTER * 1.1)
    if check == "check_not_shadowed":
        ns.check_not_shadowed("/f", seen)  # no Stale: nobody made a directory of it
        assert ns.cached("/f") is not None
    else:
        assert ns.held_in_s3("/f") is None
    assert sent == ["f/"] and "f/x" not in store.objects
    # Another client's key there still counts, for both.
    store.put("f/theirs", b"")
    if check == "check_not_shadowed":
        with pytest.raises(Stale):
            ns.check_not_shadowed("/f", seen)
    else:
        assert ns.held_in_s3("/f") == "f/theirs"


@pytest.mark.parametrize("directory", ["f/x", "f/", "f_$folder$"])
@pytest.mark.parametrize("first", ["lookup", "listing"])
def test_a_directory_shadows_a_file_of_its_name_whichever_is_asked_first(directory, first):
    ns, store, clock = make()
    store.put("f", b"file bytes")
    store.put(directory, b"")
    store.put("g", b"g")
    if first == "lookup":
        assert ns.lookup("/f").is_dir
    assert [(n, a.is_dir) for n, a in ns.iter_dir("/")] == [("f", True), ("g", False)]
    assert ns.lookup("/f").is_dir
    clock.advance(5.0)  # every TTL past
    assert ns.lookup("/f").is_dir
    assert [(n, a.is_dir) for n, a in ns.iter_dir("/")] == [("f", True), ("g", False)]


def test_a_file_is_found_where_the_list_beside_its_head_is_refused(monkeypatch):
    """The LIST for a directory of a file's name is not what the file's lookup needs: refused
    (a policy without s3:ListBucket), the file is what the HEAD found; a missing name's is."""
    from s3fs_mount.s3.errors import S3Error

    ns, store, clock = make()
    store.put("f", b"abc")

    def refused(*args, **kwargs):
        raise S3Error(403, "AccessDenied")

    monkeypatch.setattr(store, "list", refused)
    assert ns.lookup("/f").size == 3
    with pytest.raises(S3Error):
        ns.lookup("/g")


def test_a_file_looked_up_whole_is_shadowed_by_a_directory_a_listing_shows_later():
    ns, store, clock = make(attr_ttl=60.0)
    store.put("f", b"file bytes")
    assert not ns.lookup("/f").is_dir  # no directory yet
    store.put("f/x", b"")  # another client's
    clock.advance(2.0)  # dir_ttl past, attr_ttl not
    assert [(n, a.is_dir) for n, a in ns.iter_dir("/")] == [("f", True)]
    assert ns.lookup("/f").is_dir


def test_a_directory_whose_holder_was_seen_is_asked_again_by_its_holder_alone():
    ns, store, clock = make()
    ns.write_dir("/d", A.posix_metadata(stat.S_IFDIR | 0o700, 1000, 1000, 1.0), new=True)
    store.put("d/f", b"x")
    assert stat.S_IMODE(ns.lookup("/d").mode) == 0o700
    clock.advance(1.5)  # its attributes expired
    heads, lists = store.calls["HEAD"], store.calls["LIST"]
    assert stat.S_IMODE(ns.lookup("/d").mode) == 0o700
    assert (store.calls["HEAD"] - heads, store.calls["LIST"] - lists) == (1, 0)
    for key in [k for k in list(store.buckets["bucket"]) if not k.startswith("d/f")]:
        store.remove(key)  # another client removed its holder objects: an implicit directory now
    clock.advance(1.5)
    a = ns.lookup("/d")
    assert a.is_dir and not a.etag


def test_a_directory_without_holder_stays_after_we_removed_its_last_entry_until_its_rmdir():
    """A prefix leaves S3 with its last key: rm -r's rmdir of it, however long after, finds it."""
    ns, store, clock = make()
    store.put("d/e/f", b"x")
    assert ns.lookup("/d/e").is_dir
    ns.deleting("/d/e/f")
    store.remove("d/e/f")  # the batch sent
    ns.deleted("/d/e/f")
    clock.advance(10.0)  # every cache of /d/e expired; S3 has no key under d/ any more
    assert ns.lookup("/d/e").is_dir and ns.lookup("/d").is_dir is True
    ns.forget("/d/e", gone=True)  # its rmdir
    assert missing(ns, "/d/e") == errno.ENOENT
    clock.advance(REMOVED_TTL + 1)
    assert missing(ns, "/d") == errno.ENOENT  # nothing removed there for a while: S3 says


def test_a_directory_with_a_marker_alone_is_asked_again_by_its_objects_alone():
    """Where metadata lives on _$folder$ objects, a directory another tool made with a marker
    (and no _$folder$) is looked up again, once its attributes expired, by those two HEADs: not
    a HEAD of its name, a LIST and then those (stat of the files in it walks it)."""
    store = FakeStore(drops_marker_metadata=True)
    ns, _, clock = make(store)
    store.put("d/", b"")
    store.put("d/f", b"x")
    assert ns.lookup("/d").is_dir
    clock.advance(1.5)
    heads, lists = store.calls["HEAD"], store.calls["LIST"]
    assert ns.lookup("/d").is_dir
    assert (store.calls["HEAD"] - heads, store.calls["LIST"] - lists) == (2, 0)
    store.remove("d/")  # a prefix only now: found by a LIST, as a cold lookup finds it
    clock.advance(1.5)
    lists = store.calls["LIST"]
    assert ns.lookup("/d").is_dir and store.calls["LIST"] - lists == 1
    store.remove("d/f")
    clock.advance(1.5)
    assert missing(ns, "/d") == errno.ENOENT


def test_a_prefix_only_directory_is_looked_up_again_as_a_cold_one():
    """A directory with no object of its own is found by a LIST: looked up again, nothing is
    asked first of objects it had none of."""
    for drops in (False, True):
        ns, store, clock = make(FakeStore(drops_marker_metadata=drops))
        store.put("d/f", b"x")
        assert ns.lookup("/d").is_dir
        heads, lists = store.calls["HEAD"], store.calls["LIST"]
        clock.advance(1.5)
        assert ns.lookup("/d").is_dir
        holders = 2 if drops else 1  # _$folder$ and marker, or the marker
        # A lookup in / found a directory a moment ago, / not listed: this one lists / (one
        # page), which shows d: its holders are asked, not its name first (a HEAD and a LIST).
        assert (store.calls["HEAD"] - heads, store.calls["LIST"] - lists) == (holders, 1)


def test_a_missing_name_is_never_cached():
    """A 404 is asked again at the next lookup: a name another client puts shows at once."""
    ns, store, _ = make()
    assert missing(ns, "/f") == errno.ENOENT
    heads = store.calls["HEAD"]
    store.put("f", b"1")
    assert ns.lookup("/f").size == 1
    assert store.calls["HEAD"] == heads + 1


def test_a_name_missing_from_a_fresh_listing_costs_a_head_but_no_list():
    ns, store, clock = make(dir_ttl=5.0)
    store.put("a", b"1")
    assert sorted(listing(ns)) == ["a"]
    lists = store.calls["LIST"]
    assert missing(ns, "/b") == errno.ENOENT
    assert store.calls["LIST"] == lists  # the listing would have shown a directory b
    clock.advance(5.1)
    assert missing(ns, "/b") == errno.ENOENT
    assert store.calls["LIST"] == lists + 1  # stale: a directory b/ is looked for again


def test_names_that_cannot_be_files_are_refused_without_a_request():
    ns, store, _ = make()
    assert missing(ns, "/" + "n" * 256) == errno.ENAMETOOLONG
    assert sum(store.calls.values()) == 0


@pytest.mark.parametrize("keys", [["d/"], ["d/inner"], ["d_$folder$"]], ids=["marker", "implicit", "folder"])
def test_each_kind_of_directory_is_found_by_a_cold_lookup(keys):
    ns, store, _ = make()
    for key in keys:
        store.put(key, b"")
    assert ns.lookup("/d").is_dir


@pytest.mark.parametrize("marker", [False, True], ids=["implicit", "marker_in_key_order"])
def test_a_directory_another_client_emptied_where_the_server_keeps_it_is_one_to_a_lookup(marker):
    """SeaweedFS keeps a directory whose keys another client deleted: its parent's listing shows
    it, and a cold lookup says so too (one LIST more: a LIST of the keys beginning with its
    name leaves it out); it is empty, and once its rmdir deletes its dir/ it is gone."""
    store = FakeStore(drops_marker_metadata=True, keeps_directories=True)
    ns, _, clock = make(store)
    keys = ["d/e/", "d/e/f"] if marker else ["d/e/f"]
    for key in keys:
        store.put(key, b"")
    assert sorted(listing(ns, "/d")) == ["e"]
    for key in keys:
        store.remove(key)
    clock.advance(1.5)
    assert ns.lookup("/d/e").is_dir  # cold: before any listing
    clock.advance(1.5)
    assert [(n, a.is_dir) for n, a in listing(ns, "/d").items()] == [("e", True)]
    assert ns.lookup("/d/e").is_dir and listing(ns, "/d/e") == {} and ns.is_empty_dir("/d/e")
    store.remove("d/e/")  # what rmdir deletes (with its _$folder$)
    ns.forget("/d/e", gone=True)
    clock.advance(REMOVED_TTL + 1)
    assert missing(ns, "/d/e") == errno.ENOENT and listing(ns, "/d") == {}
    assert ns.lookup("/d").is_dir  # emptied in turn: kept, as the server keeps it


def test_where_markers_keep_their_metadata_a_missing_name_costs_one_list():
    """The LIST of what is in a name is asked only of servers that keep directories of their own."""
    ns, store, _ = make()
    assert missing(ns, "/nothing") == errno.ENOENT
    assert (store.calls["HEAD"], store.calls["LIST"]) == (1, 1)
    ns, store, _ = make(FakeStore(drops_marker_metadata=True))
    assert missing(ns, "/nothing") == errno.ENOENT
    assert (store.calls["HEAD"], store.calls["LIST"]) == (1, 2)


def test_a_directory_holding_only_keys_no_name_can_show_is_not_empty_and_says_why(caplog):
    """Another tool's ``a//b`` is left out of a's listing, but a is not empty: rmdir would
    delete its marker and leave the key (or remove what nobody sees); it says what holds it."""
    ns, store, _ = make()
    store.put("a/", b"")
    store.put("a//b", b"1")
    assert ns.lookup("/a").is_dir and listing(ns, "/a") == {}
    assert not ns.is_empty_dir("/a")
    assert "directory /a is not empty: it holds a//, which no name can show" in caplog.text
    caplog.clear()
    store.put("a/.c", b"1")
    assert not ns.is_empty_dir("/a") and "no name can show" not in caplog.text  # .c is shown


def test_a_directory_object_by_content_type_or_mode_is_a_directory():
    ns, store, _ = make()
    store.put("typed", b"", {"Content-Type": "application/x-directory"})
    store.put("moded", b"", {A.META_PREFIX + "mode": str(stat.S_IFDIR | 0o750)})
    assert ns.lookup("/typed").is_dir
    assert ns.lookup("/moded").is_dir


def test_a_prefix_mount_sees_only_under_its_prefix():
    ns, store, _ = make(prefix="top")
    store.put("top/a", b"1")
    store.put("top/d/x", b"22")
    store.put("other", b"333")
    assert sorted(listing(ns)) == ["a", "d"]
    assert ns.lookup("/d/x").size == 2
    assert missing(ns, "/other") == errno.ENOENT


# -- listings -----------------------------------------------------------------------------------


def test_a_listing_merges_markers_implicit_prefixes_and_folder_objects():
    ns, store, _ = make()
    for key in ("marker/", "implicit/f", "old_$folder$", "both", "both/inner", "file", "_$folder$"):
        store.put(key, b"")
    entries = listing(ns)
    assert sorted(entries) == ["both", "file", "implicit", "marker", "old"]  # the root's holder: no entry
    assert [n for n, a in entries.items() if a.is_dir] == ["both", "implicit", "marker", "old"]
    assert not any(a.complete for a in entries.values() if a.is_dir)  # modes live on holders: asked later


def test_a_marker_and_its_folder_object_are_one_directory():
    ns, store, _ = make()
    store.put("d/", b"")
    store.put("d_$folder$", b"")
    store.put("d/f", b"1")
    assert list(listing(ns)) == ["d"]
    assert list(listing(ns, "/d")) == ["f"]  # its own marker is no entry


def test_a_listing_makes_no_head_and_feeds_lookups_of_a_bucket_without_metadata():
    ns, store, _ = make(listing_attrs=True)
    for i in range(30):
        store.put("f%02d" % i, b"x" * i)
    assert len(listing(ns)) == 30
    assert all(ns.lookup("/f%02d" % i).size == i for i in range(30))
    assert store.calls["HEAD"] == 0


def test_listed_files_share_what_every_entry_has_alike_and_none_can_change_it():
    ns, store, _ = make(listing_attrs=True)
    for i in range(3):
        store.put("f%d" % i, b"x" * i, headers={"Content-Type": "text/plain"})
    listed = listing(ns)
    a, b, c = (listed["f%d" % i] for i in range(3))
    assert (a.size, b.size, c.size) == (0, 1, 2) and ns.lookup("/f1") is b and store.calls["HEAD"] == 0
    # One read-only empty mapping for their metadata and headers (a listing carries neither),
    # one mode, one storage class: a large directory keeps up to attr_cache of these.
    assert a.metadata is b.metadata is a.headers is c.headers and not a.metadata
    with pytest.raises(TypeError):
        a.metadata["mode"] = "0"  # type: ignore[index]
    assert a.mode is b.mode and a.storage_class is b.storage_class
    # What a HEAD tells is the file's own (looked up whole, or changed: copies).
    full = ns.lookup_full("/f1")
    assert full.headers.get("Content-Type") == "text/plain" and full.headers is not a.headers


def test_a_listed_file_is_looked_up_whole_once():
    ns, store, clock = make()
    store.put("link", b"target", {A.META_PREFIX + "mode": str(stat.S_IFLNK | 0o777)})
    assert listing(ns)["link"].mode == DEFAULTS.file_mode  # all a listing can say
    assert stat.S_ISLNK(ns.lookup("/link").mode) and store.calls["HEAD"] == 1
    assert stat.S_ISLNK(ns.lookup("/link").mode) and store.calls["HEAD"] == 1
    store.put("link", b"target2", {A.META_PREFIX + "mode": str(stat.S_IFLNK | 0o777)})  # another client
    clock.advance(2.0)
    assert listing(ns)["link"].size == 7  # a new version: what was known of the old one is not used
    assert stat.S_ISLNK(ns.lookup("/link").mode) and store.calls["HEAD"] == 2
    store.put("gone", b"1")
    clock.advance(2.0)
    assert listing(ns)["gone"].size == 1
    store.remove("gone")  # between the listing and the lookup
    with pytest.raises(FsError) as gone:
        ns.lookup("/gone")
    assert gone.value.errno == errno.ENOENT


def test_a_listing_reuses_modes_a_head_saw_while_the_etag_holds():
    ns, store, clock = make()
    store.put("f", b"1", {A.META_PREFIX + "mode": str(stat.S_IFREG | 0o600)})
    ns.lookup_full("/f")
    clock.advance(2.0)
    assert stat.S_IMODE(listing(ns)["f"].mode) == 0o600
    store.put("f", b"2", {A.META_PREFIX + "mode": str(stat.S_IFREG | 0o640)})  # another client
    clock.advance(2.0)
    assert listing(ns)["f"].mode == DEFAULTS.file_mode  # another version: a HEAD must tell
    assert stat.S_IMODE(ns.lookup_full("/f").mode) == 0o640


def test_a_listing_does_not_reuse_modes_of_a_version_whose_metadata_changed_since():
    """Another client's chmod is a self-copy: the ETag (the bytes' MD5) stays, Last-Modified moves."""
    ns, store, clock = make()
    store.put("f", b"1", {A.META_PREFIX + "mode": str(stat.S_IFREG | 0o600)})
    assert stat.S_IMODE(ns.lookup("/f").mode) == 0o600
    store.copy_object("f", "f", {A.META_PREFIX + "mode": str(stat.S_IFREG | 0o640)}, replace_metadata=True)
    store.objects["f"].mtime += 5  # a later second
    clock.advance(2.0)
    assert not listing(ns)["f"].complete  # the same ETag, not the same version
    heads = store.calls["HEAD"]
    assert stat.S_IMODE(ns.lookup("/f").mode) == 0o640 and store.calls["HEAD"] == heads + 1
    clock.advance(2.0)
    assert stat.S_IMODE(listing(ns)["f"].mode) == 0o640  # this version's, known now


def test_a_listing_in_pages_shows_every_entry_once():
    ns, store, _ = make()
    for i in range(25):
        store.put("d/f%02d" % i, b"")
        store.put("d/s%02d/x" % i, b"")
    pages_of(store, 7)
    names = [n for n, _ in ns.iter_dir("/d")]
    assert len(names) == len(set(names))
    assert sorted(names) == sorted(["f%02d" % i for i in range(25)] + ["s%02d" % i for i in range(25)])
    assert store.calls["LIST"] >= 7


def test_a_listing_read_in_part_is_known_once_its_last_page_came():
    """rm -r reads a directory's first buffer, closes it and reads it again: the second read
    is answered from the first listing, whose one page had come whole (no second LIST).

    The fake clock runs on with real time too: the TTLs are long enough for a loaded machine's
    300 puts and listing (1.4 s in a run at load 30 took it past a 1 s dir_ttl, and it listed
    again); the moment between the two reads is the clock's."""
    ns, store, clock = make(attr_ttl=60.0, dir_ttl=60.0)
    for i in range(300):
        store.put("d/f%03d" % i, b"x")
    first = ns.iter_dir("/d")
    assert [next(first)[0] for _ in range(3)] == ["f000", "f001", "f002"]
    first.close()  # the reader stopped early
    assert store.calls["LIST"] == 1
    clock.advance(0.5)
    ns.deleting("/d/f001")  # what we removed since is left out
    assert [n for n, _ in ns.iter_dir("/d")] == ["f%03d" % i for i in range(300) if i != 1]
    assert store.calls["LIST"] == 1
    with pytest.raises(FsError):
        ns.lookup("/d/f999")  # and no such name, without a request
    assert store.calls["LIST"] == 1 and store.calls["HEAD"] == 0


def test_a_listing_left_before_its_last_page_is_not_known():
    ns, store, _ = make()
    for i in range(30):
        store.put("d/f%02d" % i, b"x")
    pages_of(store, 10)
    first = ns.iter_dir("/d")
    next(first)
    first.close()
    lists = store.calls["LIST"]
    assert len([n for n, _ in ns.iter_dir("/d")]) == 30
    assert store.calls["LIST"] > lists  # listed again: the first never reached its end


def test_a_file_and_a_directory_of_one_name_show_as_the_directory():
    ns, store, _ = make()
    store.put("x", b"file")
    store.put("x/inner", b"")
    entries = listing(ns)
    assert list(entries) == ["x"] and entries["x"].is_dir


def test_nlink_of_a_listed_directory_counts_its_subdirectories():
    ns, store, _ = make()
    for key in ("d/a/", "d/b/x", "d/c_$folder$", "d/f"):
        store.put(key, b"")
    ns.lookup("/d")
    listing(ns, "/d")
    assert ns.lookup("/d").stat()["st_nlink"] == 5


# -- our own changes -------------------------------------------------------------------------


def test_what_we_remember_shows_at_once_and_in_a_fresh_listing():
    ns, store, _ = make(dir_ttl=10.0)
    store.put("a", b"1")
    assert sorted(listing(ns)) == ["a"]
    ns.remember("/b", A.attributes_from({}, 5, 0.0, DEFAULTS, "file"))
    assert ns.lookup("/b").size == 5
    assert store.calls["HEAD"] == 0


def test_forget_gone_hides_a_name_from_listings_asked_until_then_only():
    ns, store, clock = make()
    store.put("gone", b"1")
    assert sorted(listing(ns)) == ["gone"]
    ns.forget("/gone", gone=True)  # we removed it (a listing asked until then does not show it)
    assert missing(ns, "/gone") == errno.ENOENT
    assert store.calls["HEAD"] == 0
    assert listing(ns) == {}
    clock.advance(1.1)  # dir_ttl: that listing is asked again
    assert sorted(listing(ns)) == ["gone"]  # asked after: S3's word (another client made it again)


def test_forget_drops_what_is_cached_so_the_next_lookup_asks():
    ns, store, _ = make(attr_ttl=60.0)
    store.put("f", b"1")
    assert ns.lookup("/f").size == 1
    store.put("f", b"22")
    assert ns.lookup("/f").size == 1  # cached
    ns.forget("/f")
    assert ns.lookup("/f").size == 2


def test_forget_tree_drops_everything_under_a_directory():
    ns, store, _ = make(attr_ttl=60.0, dir_ttl=60.0)
    store.put("d/a", b"1")
    store.put("d/s/b", b"1")
    listing(ns, "/d")
    ns.lookup("/d/s/b")
    store.remove("d/a")
    store.remove("d/s/b")
    ns.forget_tree("/d")
    assert missing(ns, "/d/a") == errno.ENOENT
    assert missing(ns, "/d/s/b") == errno.ENOENT
    assert listing(ns, "/d") == {}


def test_an_answer_sent_before_our_change_is_not_cached():
    """A HEAD that raced our own upload names the version it replaced: what we know wins."""
    ns, store, clock = make()
    store.put("f", b"old")
    asked = clock.monotonic()
    found = ns._fetch("/f")
    clock.advance(0.1)
    ns.remember("/f", A.attributes_from({}, 7, 0.0, DEFAULTS, "file"))
    found.seen_at = asked
    assert ns._cache_fetched("/f", found).size == 7
    assert ns.lookup("/f").size == 7


def test_a_new_directory_is_known_empty_without_a_listing():
    ns, store, _ = make()
    ns.remember("/d", A.attributes_from({}, 0, 0.0, DEFAULTS, "dir"))
    ns.known_empty("/d")
    assert missing(ns, "/d/x") == errno.ENOENT
    assert store.calls["LIST"] == 0  # a HEAD only: no directory x/ to look for


def test_entry_changes_move_a_directorys_times_in_memory_then_in_s3():
    ns, store, clock = make()
    store.put("d/", b"", {"Content-Type": "application/x-directory"})
    before = ns.lookup("/d").mtime
    clock.advance(10.0)
    ns.entry_changed("/d")
    moved = ns.lookup("/d").mtime
    assert moved > before
    puts = store.calls["PUT"]
    assert ns.store_dir_times(older_than=5.0) == 0  # not due yet
    clock.advance(6.0)
    assert ns.store_dir_times(older_than=5.0) == 1
    assert store.calls["PUT"] == puts + 1
    assert A.parse_time(store.objects["d/"].metadata[A.MTIME]) == moved


def test_the_times_of_a_directory_another_client_removed_do_not_make_it_again():
    """Another client removed d (its marker and files) after this mount made d and changed an
    entry in it, before the times writer ran: the writer drops d's times, writes nothing."""
    ns, store, clock = make()
    meta = A.posix_metadata(stat.S_IFDIR | 0o755, 1000, 1000, clock.time())
    made = A.attributes_from(meta, 0, clock.time(), DEFAULTS, "dir", etag=ns.write_dir("/d", meta, new=True))
    ns.remember("/d", made)
    ns.entry_changed("/d")
    del store.objects["d/"]
    clock.advance(0.6)
    assert DirTimesWriter(ns).store_due() == 0
    assert sorted(store.objects) == []
    assert ns.store_dir_times() == 0  # nothing pending any more


def test_a_directory_filled_in_a_moment_has_its_times_stored_with_one_head():
    """The times writer stores a directory's times once it has gone QUIET (0.5 s) unchanged,
    not a second: one made and filled in a moment (cp -r). Its holder is PUT after one HEAD of
    it, whatever this mount cached: another client may have removed the directory meanwhile
    (it is not made again) or changed its metadata (that stands)."""
    ns, store, clock = make()
    meta = A.posix_metadata(stat.S_IFDIR | 0o755, 1000, 1000, clock.time())
    made = A.attributes_from(meta, 0, clock.time(), DEFAULTS, "dir", etag=ns.write_dir("/d", meta, new=True))
    ns.remember("/d", made)  # as mkdir does
    clock.advance(0.05)
    ns.entry_changed("/d")
    moved = ns.lookup("/d").mtime
    writer = DirTimesWriter(ns)
    assert writer.store_due() == 0  # changed a moment ago: more may come
    clock.advance(0.55)  # 0.6 s after the mkdir: its attributes are fresh
    heads, puts = store.calls["HEAD"], store.calls["PUT"]
    assert writer.store_due() == 1
    assert (store.calls["HEAD"], store.calls["PUT"]) == (heads + 1, puts + 1)
    assert A.parse_time(store.objects["d/"].metadata[A.MTIME]) == moved


def test_an_implicit_directory_keeps_its_times_in_memory_only():
    ns, store, _ = make()
    store.put("imp/f", b"")
    ns.lookup("/imp")
    ns.entry_changed("/imp")
    keys = set(store.objects)
    assert ns.store_dir_times() == 0
    assert set(store.objects) == keys
    assert ns.lookup("/imp").mtime > ns.epoch



def test_the_attribute_cache_is_bounded_and_a_walk_lists_around_a_name():
    """A directory larger than the cache: a lookup during the walk lists a page from that name,
    not a HEAD per entry."""
    ns, store, _ = make(attr_cache=100, listing_attrs=True)
    for i in range(300):
        store.put("d/f%03d" % i, b"x")
    assert len(listing(ns, "/d")) == 300
    heads, lists = store.calls["HEAD"], store.calls["LIST"]
    assert all(ns.lookup("/d/f%03d" % i).size == 1 for i in range(300))
    assert store.calls["HEAD"] == heads
    assert store.calls["LIST"] - lists < 10


def listed_by(store: FakeStore) -> list[tuple[str, str]]:
    """(prefix, thread name) of each listing page the store gives, as it gives it."""
    seen: list[tuple[str, str]] = []
    original = store.list

    def recorded(prefix="", *args, **kwargs):
        for page in original(prefix, *args, **kwargs):
            seen.append((prefix, threading.current_thread().name))
            yield page

    store.list = recorded
    return seen


def test_while_rm_r_removes_a_parents_directories_a_lookup_of_another_begins_its_listing():
    """rm -r: lookup (the holder's HEAD) and then readdir (a LIST) of each directory. Once this
    mount removed a directory of a parent, the lookup of another begins its listing on a
    list-ahead thread, and the readdir after it takes that page: one LIST, sent beside the HEAD.
    (The next one, b, was begun by a's rmdir: test_rmdir_begins_the_lookup_of_the_next_...)"""
    store = FakeStore(drops_marker_metadata=True)
    ns, _, _ = make(store)
    for d in ("a", "b", "c"):
        store.put("r/%s/f" % d, b"1")
        store.put("r/%s_$folder$" % d, b"", {"x-amz-meta-mode": str(0o40750)})
    seen = listed_by(store)
    assert sorted(listing(ns, "/r")) == ["a", "b", "c"]
    assert ns.lookup("/r/a").mode == 0o40750  # no directory of /r removed yet: its HEAD alone
    assert [p for p, _ in seen] == ["r/"]
    assert sorted(listing(ns, "/r/a")) == ["f"]
    ns.remove_dir("/r/a", lambda: store.delete_keys(["r/a/f", "r/a_$folder$"]))
    eventually(lambda: "r/b/" in [p for p, _ in seen], what="b's listing, begun by a's rmdir")
    del seen[:]
    assert ns.lookup("/r/c").mode == 0o40750  # its stored mode, as before
    assert sorted(listing(ns, "/r/c")) == ["f"]
    assert len(seen) == 1 and seen[0][0] == "r/c/" and seen[0][1].startswith("list-ahead"), seen
    # A stat of a directory elsewhere (no removal there) lists nothing.
    store.put("s/x/f", b"1")
    assert sorted(listing(ns, "/s")) == ["x"]
    del seen[:]
    assert ns.lookup("/s/x").is_dir and seen == []
    ns.close()


def test_a_name_made_while_its_directory_was_being_listed_is_in_what_the_listing_leaves_known():
    """A listing that is under way when this mount makes a name in its directory ends up with
    that name among the directory's known names (``_complete``: our changes since it was asked),
    so the next readdir, answered from it, shows it; changes elsewhere and before it, however
    many (rm -r fills the record of changes with every name it removes), are not its own."""
    store = FakeStore()
    ns, _, clock = make(store, dir_ttl=30)
    for i in range(3):
        store.put("d/f%d" % i, b"1")
    for i in range(300):  # older changes, elsewhere
        ns.forget("/other/x%03d" % i, gone=True)
    clock.advance(0.01)
    pages_of(store, 1)
    reading = ns.iter_dir("/d")
    assert next(reading)[0] == "f0"  # the listing was asked for: its first page came
    clock.advance(0.01)
    ns.remember("/d/new", A.Attributes(mode=0o100644, size=0, mtime=clock.time()))
    ns.forget("/e/elsewhere", gone=True)
    assert [name for name, _ in reading] == ["f1", "f2"]  # (its pages, as S3 had them)
    lists = store.calls["LIST"]
    assert sorted(listing(ns, "/d")) == ["f0", "f1", "f2", "new"]
    assert store.calls["LIST"] == lists  # answered from what the listing left known
    ns.close()


def heads_by(store: FakeStore) -> list[tuple[str, str]]:
    """(key, thread name) of each HEAD the store answers."""
    seen: list[tuple[str, str]] = []
    original = store.head

    def recorded(name, *args, **kwargs):
        seen.append((getattr(name, "key", name), threading.current_thread().name))
        return original(name, *args, **kwargs)

    store.head = recorded
    return seen


def test_rmdir_begins_the_lookup_of_the_next_directory_of_its_parent():
    """rm -r looks up, reads, empties and removes one directory after the other. The rmdir of
    one begins the lookup of the next directory of its parent (in listing order, past files):
    its holder's HEAD on a dir-ahead thread, its listing on a list-ahead one. The walk's lookup
    of it then sends nothing (its stored mode as the HEAD ahead found it), nor does its readdir;
    an answer older than attr_ttl by then is asked again."""
    store = FakeStore(drops_marker_metadata=True)
    ns, _, clock = make(store, attr_ttl=0.5, dir_ttl=30)
    modes = {"a": 0o40750, "b": 0o40700, "c": 0o40705, "d": 0o40755}
    for d, mode in modes.items():
        store.put("r/%s/f" % d, b"1")
        store.put("r/%s_$folder$" % d, b"", {"x-amz-meta-mode": str(mode)})
    store.put("r/b0", b"a file between b and c")
    assert sorted(listing(ns, "/r")) == ["a", "b", "b0", "c", "d"]
    heads, lists = heads_by(store), listed_by(store)

    def removed(d: str) -> None:
        assert sorted(listing(ns, "/r/" + d)) == ["f"]
        ns.remove_dir("/r/" + d, lambda: store.delete_keys(["r/%s/f" % d, "r/%s_$folder$" % d]))

    assert ns.lookup("/r/a").mode == modes["a"]  # nothing removed yet: asked here
    assert heads == [("r/a_$folder$", threading.current_thread().name)]
    assert sorted(listing(ns, "/r/a")) == ["f"]
    del heads[:], lists[:]
    removed("a")  # (read again from its listing: no request)
    eventually(lambda: len(heads) == 1 and len(lists) == 1, what="b's HEAD and listing, begun")
    assert heads[0][0] == "r/b_$folder$" and heads[0][1].startswith("dir-ahead"), heads
    assert lists[0][0] == "r/b/" and lists[0][1].startswith("list-ahead"), lists
    assert ns.lookup("/r/b").mode == modes["b"]  # as the HEAD ahead found it: no request here
    removed("b")  # read from the listing begun ahead; c's lookup begun (past the file b0)
    eventually(lambda: len(heads) == 2 and len(lists) == 2, what="c's HEAD and listing, begun")
    assert heads[1][0] == "r/c_$folder$" and heads[1][1].startswith("dir-ahead"), heads
    assert [p for p, _ in lists] == ["r/b/", "r/c/"], lists
    assert ns.lookup("/r/c").mode == modes["c"]
    removed("c")
    eventually(lambda: len(heads) == 3, what="d's HEAD, begun")
    assert heads[2][0] == "r/d_$folder$" and heads[2][1].startswith("dir-ahead"), heads
    clock.advance(0.6)  # d's answer is older than attr_ttl by its lookup: asked again
    store.put("r/d_$folder$", b"", {"x-amz-meta-mode": str(0o40770)})
    assert ns.lookup("/r/d").mode == 0o40770
    assert heads[3] == ("r/d_$folder$", threading.current_thread().name), heads
    assert [k for k, _ in heads] == ["r/b_$folder$", "r/c_$folder$", "r/d_$folder$", "r/d_$folder$"]
    ns.close()


def test_rmdir_begins_the_next_lookup_after_the_walk_names_expired_from_the_listing_still_known():
    """The next directory is found in the parent's listing, known for dir_ttl, once the walk's
    names (kept ``_walk_ttl``: about a second for a few entries) are gone: rm -r on a loaded
    machine took longer than that to empty r/d0, and no rmdir began the next lookup (test_rm's
    look-ahead test held each emptiness check its whole 20 s limit)."""
    store = FakeStore(drops_marker_metadata=True)
    ns, _, clock = make(store, attr_ttl=30, dir_ttl=30)
    for d in ("a", "b"):
        store.put("r/%s/f" % d, b"1")
        store.put("r/%s_$folder$" % d, b"", {"x-amz-meta-mode": str(0o40750)})
    assert sorted(listing(ns, "/r")) == ["a", "b"]
    heads = heads_by(store)
    clock.advance(5.0)  # the walk's names are gone; the listing is within dir_ttl
    ns.remove_dir("/r/a", lambda: store.delete_keys(["r/a/f", "r/a_$folder$"]))
    eventually(lambda: heads, what="b's HEAD, begun by a's rmdir")
    assert heads == [("r/b_$folder$", heads[0][1])] and heads[0][1].startswith("dir-ahead"), heads
    assert ns.lookup("/r/b").mode == 0o40750 and len(heads) == 1  # as fetched ahead
    ns.close()


def test_rmdirs_after_the_walk_names_expired_sort_the_parents_names_once(monkeypatch):
    """Each rmdir in a directory whose walk's names had expired sorted all of its known names
    again to find the next subdirectory (bounded, but O(n log n) an rmdir: rm -r of 2,000
    subdirectories sorted 2,000 names 2,000 times). Now they are sorted once per listing; each
    rmdir still begins the lookup of the next one, past a file removed since and one shown
    by no listing."""
    store = FakeStore(drops_marker_metadata=True)
    ns, _, clock = make(store, attr_ttl=30, dir_ttl=30)
    dirs = ["d%02d" % i for i in range(12)]
    for d in dirs:
        store.put("r/%s/f" % d, b"1")
        store.put("r/%s_$folder$" % d, b"", {"x-amz-meta-mode": str(0o40750)})
    store.put("r/d05x", b"a file between d05 and d06")
    assert sorted(listing(ns, "/r")) == sorted(dirs + ["d05x"])
    heads = heads_by(store)
    clock.advance(5.0)  # the walk's names are gone; the listing is within dir_ttl
    sorts: list[int] = []

    def counted(names, *args, **kwargs):
        sorts.append(len(names))
        return sorted(names, *args, **kwargs)

    monkeypatch.setattr(namespace_module, "sorted", counted, raising=False)
    for i, d in enumerate(dirs[:-1]):
        if d == "d05":
            ns.forget("/r/d05x", gone=True)  # removed since the names were sorted: passed over
        ns.remove_dir("/r/" + d, lambda d=d: store.delete_keys(["r/%s/f" % d, "r/%s_$folder$" % d]))
        eventually(lambda i=i: len(heads) == i + 1, what="the next directory's HEAD, begun")
        assert heads[i][0] == "r/%s_$folder$" % dirs[i + 1], heads
    assert [n for n in sorts if n > 1] == [len(dirs) + 1]  # once, at the first rmdir
    ns.close()


def test_a_listing_begun_by_a_lookup_shows_what_this_mount_made_there_since():
    """The begun page is as of the rmdir before; a file this mount made in the directory between the
    lookup and the readdir shows all the same: the begun page is dropped, the readdir lists."""
    store = FakeStore(drops_marker_metadata=True)
    ns, _, clock = make(store)
    for d in ("a", "b"):
        store.put("r/%s/f" % d, b"1")
        store.put("r/%s_$folder$" % d, b"", {"x-amz-meta-mode": str(0o40750)})
    assert sorted(listing(ns, "/r")) == ["a", "b"]
    seen = listed_by(store)
    ns.remove_dir("/r/a", lambda: store.delete_keys(["r/a/f", "r/a_$folder$"]))  # b's begun
    ns.lookup("/r/b")
    eventually(lambda: seen, what="the listing begun by a's rmdir")  # fetched: "new" not in it
    store.put("r/b/new", b"2")
    ns.remember("/r/b/new", A.Attributes(mode=0o100644, size=1, mtime=clock.time()))
    assert sorted(listing(ns, "/r/b")) == ["f", "new"]
    assert [p for p, _ in seen] == ["r/b/", "r/b/"]  # listed again by the readdir
    ns.close()


def test_an_open_for_writing_takes_a_lookup_a_moment_old_and_a_heads_answer_with_one_list():
    """lookup_to_write (an open for writing of a cached name): a lookup's HEAD and LIST less than
    FRESH_LOOK old stand as they are (the kernel's LOOKUP just before its OPEN); an older HEAD's
    answer stands if one LIST shows the key at that ETag and no directory of the name; another
    version, a removal or a directory made since is asked whole (a HEAD and a LIST), as before."""
    ns, store, clock = make(attr_ttl=600)
    store.put("f", b"abc")
    ns.lookup("/f")
    asked = store.calls["HEAD"], store.calls["LIST"]
    assert ns.lookup_to_write("/f").size == 3
    assert (store.calls["HEAD"], store.calls["LIST"]) == asked  # a moment ago: no request
    clock.advance(A.FRESH_LOOK)
    assert ns.lookup_to_write("/f").size == 3
    assert (store.calls["HEAD"], store.calls["LIST"]) == (asked[0], asked[1] + 1)  # the LIST alone
    store.put("f", b"abcdef")  # another client's version: the LIST shows another ETag
    assert ns.lookup_to_write("/f").size == 6
    assert store.calls["HEAD"] == asked[0] + 1
    clock.advance(A.FRESH_LOOK)
    del store.objects["f"]  # another client removed it
    with pytest.raises(FsError) as exc:
        ns.lookup_to_write("/f")
    assert exc.value.errno == errno.ENOENT
    store.put("g", b"x")
    ns.lookup("/g")
    clock.advance(A.FRESH_LOOK)
    store.put("g/x", b"theirs")  # a directory of the name shadows the file now
    assert ns.lookup_to_write("/g").is_dir


def test_checks_for_directories_of_the_names_of_a_directory_ask_one_listing_page():
    """check_not_shadowed of many names of one directory (rm -rf past its first second): one
    LIST page of the directory from the first name on answers the names after it (a directory
    another client made of one of them is Stale, as before), not a LIST each (round 39)."""
    ns, store, clock = make(attr_ttl=600.0, frozen=True)
    for i in range(50):
        store.put("d/f%02d" % i, b"x")
    seen = listing(ns, "/d")
    store.remove("d/f30")
    store.put("d/f30/theirs", b"")  # another client's directory of that name since
    clock.advance(RECHECK_AFTER * 1.1)
    lists, heads = store.calls["LIST"], store.calls["HEAD"]
    for i in range(50):
        name = "f%02d" % i
        if i == 30:
            with pytest.raises(Stale):
                ns.check_not_shadowed("/d/" + name, seen[name])
        else:
            ns.check_not_shadowed("/d/" + name, seen[name])
    # One page, and for the name it shows a directory of (the page kept from the first check),
    # one LIST of that name's keys: a key of ours there, deleted since, would no longer count.
    assert (store.calls["LIST"], store.calls["HEAD"]) == (lists + 2, heads)
    clock.advance(RECHECK_AFTER * 1.1)  # the page is too old now: asked again
    ns.check_not_shadowed("/d/f40", seen["f40"])
    assert store.calls["LIST"] == lists + 3


def test_keymap_split_is_posixpaths_split_without_trailing_slashes():
    """KeyMap.split slices (round 40: ~10 a small file written) and must say what posixpath
    says of the path without its trailing slashes, for every path, odd ones too."""
    import posixpath
    import random

    def expected(path: str) -> tuple[str, str]:
        parent, name = posixpath.split(path.rstrip("/") or "/")
        return parent or "/", name

    rng = random.Random(40)
    paths = ["", "/", "//", "/a", "/a/", "/a/b", "//a//b//", "a", "a/b", "///a", "/a//b", "a//", "/d/f.txt"]
    paths += ["".join(rng.choice("/ab.") for _ in range(rng.randint(0, 9))) for _ in range(20000)]
    assert [KeyMap.split(p) for p in paths] == [expected(p) for p in paths]
    assert KeyMap.split("/a/b/c") == ("/a/b", "c") and KeyMap.split("/a") == ("/", "a")
