"""The namespace: which paths exist, what they are, and their attributes.

Lookups HEAD the object and, failing that, list its would-be directory
prefix. Listings (ListObjectsV2 with a delimiter, no HEAD per entry) fill
the attribute cache with size and mtime; full attributes seen by a HEAD are
remembered by ETag, so a listing reuses them (modes, owners, symlinks)
while the object is unchanged. A listing alone does not say what a file is
(a symlink, a FIFO, mode 0600): its first lookup HEADs it, unless the mount
was told the bucket's objects carry no such metadata (``listing_attrs``).

Caches (fs/expiring.py's, and cachetools' LRUCache; none thread-safe, so all behind ``self._lock``):

* ``_attrs``: path -> Attributes, for ``attr_ttl`` seconds (entries of a large
  listing a little longer, 1 s + 5 ms per entry, so a walk of it finds them);
  at most ``attr_cache`` entries (LRU), so memory does not grow with a directory
  (an :class:`~s3fs_mount.fs.expiring.ExpiringLRU`: a walk sets one per entry);
* ``_walks``: directories listed a moment ago, too large to keep their names: a
  lookup there that the cache no longer answers lists one page from that name on
  (:meth:`Namespace._list_around`), not a HEAD per entry;
* ``_missing``: paths this mount removed, for ``attr_ttl`` seconds (a 404 is
  never cached: a name another client puts is seen at its next lookup);
* ``_listings``: directory path -> names, for ``dir_ttl`` seconds (directories of
  at most ``LISTED_NAMES`` entries), our own creates added; a path whose parent
  listing is known and lacks it is looked up with a HEAD only (no LIST for a
  directory of that name);
* ``_listed``: directory path -> :class:`Listed` (when its names were complete:
  a listing of it, or our mkdir of it), for ``dir_ttl`` seconds from then, our
  own changes not renewing it: a readdir then is answered from it (with our own
  changes, no LIST) while its entries' attributes are cached; a name missing from such a listing is ENOENT
  with no request (another client's new object shows once ``dir_ttl`` has
  passed; a create of that name meanwhile is caught by the upload's
  ``If-None-Match: *``). While names are being created there, a lookup of a
  new name once it expires lists the directory from that name on (one LIST page,
  not a HEAD per new name, nor the whole directory again): the names from there
  on are then known for ``dir_ttl`` (``Listed.tail``), which a burst of creates in
  name order (untar, ``cp -r``) asks about next;
* ``_misses``: directories where a lookup found no such name, or a directory, a moment ago
  (``MISS_BURST_TTL``), with no listing of theirs known: the next lookup there that
  the caches do not answer lists the directory (one page, :meth:`Namespace._list_burst`),
  whose names then answer as a readdir's would (``_listings``, ``_listed``), not a HEAD
  and a LIST or two per new name (``cp -r``, untar, ``git checkout`` into a directory
  not listed yet);
* ``_unlisted``: directories whose first page was not all of them (more than
  ``RELIST_NAMES`` entries), for ``LARGE_DIR_TTL``: their misses are asked name by name;
* ``_full``: path -> Attributes from a HEAD, LRU (``attr_cache``), checked against the ETag;
* ``_held_data``: directory path -> the key of one of its own objects (``d/``, ``d_$folder$``,
  a ``d`` whose mode says directory) that a HEAD or listing found holding bytes, LRU
  (``attr_cache``): data no name shows, which its rmdir would delete (ENOTEMPTY instead);
* ``_marked``: directories whose last lookup found their marker but no ``_$folder$`` (where
  metadata lives on those), LRU (``attr_cache``): looked up again by those two HEADs alone;
* ``_removed``: path we deleted -> when (monotonic) S3 answered the delete (or we
  forgot it), for ``REMOVED_TTL`` seconds: an answer to a request sent before then
  (a listing under way while we deleted) does not show it again; one sent after is
  S3's word (another client's new object of that name shows once ``attr_ttl``, or a
  listing's ``dir_ttl``, has passed, as anywhere).
* ``_deleting``: paths whose delete is recorded but not yet answered by S3
  (:mod:`s3fs_mount.fs.deletes`): absent to lookups and listings, however long
  that takes;
* ``_changed``: path -> when (time.monotonic) this mount last changed it.
  An answer from S3 to a request sent before that time is older than what
  we know, and is not cached (a HEAD racing our own upload would otherwise
  bring back the version the upload replaced, or a 404 from before a create).

Directories keep their metadata (mode, owner, times, ``user.*``) on one
object, the *holder*: the ``dir/`` marker, or ``dir_$folder$`` on servers
that drop metadata on keys ending in ``/`` (SeaweedFS), found out by a probe
at mount (:meth:`Namespace.configure_directories`). A directory's mtime and
ctime move on every entry created, removed or renamed in it
(:meth:`Namespace.entry_changed`): at once in memory, and in S3 by
:meth:`Namespace.store_dir_times`, which a background thread calls about once
a second, so an untar of 10,000 files into one directory costs a few PUTs
of its holder, not 10,000. Implicit directories (prefixes without a holder)
keep such times in memory only: the mount does not add objects nobody made.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import errno
import functools
import logging
import math
import operator
import stat
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from cachetools import LRUCache

from s3fs_mount.clock import SYSTEM, Clock
from s3fs_mount.fs import attrs as A
from s3fs_mount.fs.dirahead import DirAhead
from s3fs_mount.fs.errors import FsError, Stale
from s3fs_mount.fs.expiring import ExpiringLRU, own_ttl, ttl_cache
from s3fs_mount.fs.holders import PendingHolders
from s3fs_mount.fs.known import KnownVersions
from s3fs_mount.fs.listahead import WORKERS as LIST_AHEAD_WORKERS
from s3fs_mount.fs.listahead import ListAhead
from s3fs_mount.fs.paths import FOLDER_SUFFIX, NAME_MAX, KeyMap, is_valid_name, warn_skipped
from s3fs_mount.fs.statahead import WORKERS as STATAHEAD_WORKERS
from s3fs_mount.fs.statahead import StatAhead
from s3fs_mount.s3.bucket import Bucket
from s3fs_mount.s3.errors import RemoteStoreError, S3Error
from s3fs_mount.s3.parts import AnyLayout
from s3fs_mount.s3.retry import GiveUp, ahead_of_need, sent_ahead, within
from s3fs_mount.s3.store import NO_DIGEST, ObjectInfo
from s3fs_mount.s3.xmlparse import ListEntry, ListPage

log = logging.getLogger(__name__)

DIRECTORY_CONTENT_TYPE = "application/x-directory"
#: The ETag a directory mkdir made is known by until its objects are in S3 (fs/newdirs.py):
#: it has a holder, as an ETag says, only not yet.
NEW_DIR_ETAG = "new-directory"
REMOVED_TTL = 30.0
#: How long a change of ours outranks answers to requests sent before it (the retry policy's bound).
CHANGED_TTL = 120.0
#: Attributes kept in memory (each ~0.7 KB): a directory larger than this is walked in windows.
ATTR_CACHE_ENTRIES = 100_000
MIN_ATTR_CACHE = 100
#: A directory's names are kept (to answer "no such entry" without a LIST) up to this many.
LISTED_NAMES = 10_000
#: A directory where new names are being looked up is listed from the name looked up on
#: (instead of a HEAD per name) when its listing expires: one page of at most this many names.
RELIST_NAMES = 1000
#: Seconds after a lookup found no such name in a directory (no listing of it known) during
#: which another lookup there lists it (one page of ``RELIST_NAMES``): a burst of creates.
MISS_BURST_TTL = 10.0
#: Seconds a directory whose one page was not all of it is not listed again for a miss there.
LARGE_DIR_TTL = 60.0
#: Directories whose walk's names the stat-ahead may go by (as many as it follows at once, twice).
WALK_NAMES_DIRS = 16
#: Seconds after this mount removed a subdirectory of a directory during which a lookup of another
#: of its subdirectories begins that one's listing too (rm -r reads each directory it enters).
REMOVAL_WALK_TTL = 2.0
#: Names after a directory's that its rmdir looks through for the next subdirectory of its parent,
#: whose lookup it begins (_begin_next_subdir; rm -r unlinks the files between with no lookup).
NEXT_SUBDIR_SCAN = 64
#: Lookups whose LIST (for a directory of the name) goes beside their HEAD at once.
LOOKUP_LISTS = 8
#: Seconds a cached answer "file" is taken as it is for an ``rm`` of the name or a rename over
#: it (the default ``attr_ttl``); older, one LIST asks whether another client has made a
#: directory of the name since (:meth:`Namespace.check_not_shadowed`).
RECHECK_AFTER = 1.0
#: Names of a directory from a file's on that one LIST page asks about for that check: the
#: next such checks there (rm -rf past its first second) are answered by it for RECHECK_AFTER.
SHADOW_PAGE = 1000


class Listed:
    """A directory's names as of a moment: ``asked`` (monotonic) is when its listing was
    asked for (or it was made, empty); ``absent`` counts the names it answered "no such
    entry" for (a create burst: worth listing again when it expires). ``tail``: the names
    after ``tail[0]`` (in key order) up to ``tail[1]`` ('': to the end) were listed at
    ``tail[2]`` (a lookup in a create burst, :meth:`Namespace._list_tail`), or None.
    ``burst``: listed for a burst of lookups (:meth:`Namespace._take_names`), not a readdir.
    Guarded by Namespace._lock."""

    __slots__ = ("asked", "absent", "tail", "burst")

    def __init__(self, asked: float, burst: bool = False) -> None:
        self.asked = asked
        self.absent = 0
        self.tail: tuple[str, str, float] | None = None
        self.burst = burst

    def covers(self, name: str, now: float, ttl: float) -> bool:
        """Whether a listing less than ``ttl`` old at ``now`` says whether ``name`` is there."""
        if now - self.asked < ttl:
            return True
        if self.tail is None:
            return False
        after, last, asked = self.tail
        return now - asked < ttl and _in_page(name, after, last)


def _in_page(name: str, after: str, last: str) -> bool:
    """Whether a listing page after ``after`` up to ``last`` ('': to the end) says whether
    ``name`` is there (a directory lists as ``name/`` or ``name_$folder$``: both within it)."""
    return name > after and (not last or all(name + end <= last for end in ("/", FOLDER_SUFFIX)))


def _shown(prefix: str, key: str) -> bool:
    """Whether a listing of directory ``prefix`` shows ``key`` (a file's, a directory's, a
    ``_$folder$``) as a name of it: not one of another tool's that no file name can be (``a//b``)."""
    rest = key[len(prefix) :]
    rest = rest[:-1] if rest.endswith("/") else rest.removesuffix(FOLDER_SUFFIX)
    return is_valid_name(rest)


#: Seconds S3's Last-Modified of our own write may pass our clock's time of it: its whole
#: second, and the server's clock ahead of ours. Another client's metadata change within it of
#: our write is taken for our version by a listing.
WRITE_DATE_SLACK = 2.0


def _same_version(full: A.Attributes, etag: str, size: int, stored: float) -> bool:
    """Whether a listing's entry (``etag``, ``size``, Last-Modified ``stored``) is the version
    whose whole attributes are ``full`` (caller holds Namespace._lock). The ETag alone does not
    say: a metadata change (a self-copy, as another client's chmod) keeps it and moves
    Last-Modified. What we wrote ourselves has none known: its first listing tells it, unless
    that date is later than the write (by more than the clocks may differ): another client's
    chmod or setfattr since, whose attributes a HEAD must tell."""
    if full.etag != etag or full.size != size:
        return False
    if not full.stored:
        if full.written_by and stored > full.written_by + WRITE_DATE_SLACK:
            return False
        full.stored = stored
    return int(full.stored) == int(stored)  # HTTP dates have whole seconds


_HELD_DATA = (
    "directory %s is not empty: its object %s holds %d bytes, which no name shows"
    " (another client's data: an rmdir would delete it)"
)


def _walk_ttl(entries: int) -> float:
    """How long what a listing of ``entries`` entries says is kept: long enough for a tool
    (ls -l, rm -r) to walk them."""
    return 1.0 + 0.005 * entries


class Namespace:
    """Paths of one mount over the keys of one bucket (and prefix).

    :param store: the mounted bucket.
    :param keymap: the path <-> key mapping.
    :param defaults: attributes for objects without metadata.
    :param clock: what the TTLs (and a directory's new times) are measured by.
    :param attr_cache: the most attributes kept in memory.
    :param statahead: threads sending HEADs ahead of a directory's stats (0: none; fs/statahead.py).
    :param known: what HEADs told of file versions, kept on disk across mounts (fs/known.py).
    :param listing_attrs: take files as listings show them (size, mtime, ETag) with the default
        mode and owner: no HEAD per file, for buckets whose objects carry no POSIX metadata.
    :param list_ahead: threads fetching a listing's next page while a readdir hands out the
        last (0: none; fs/listahead.py).
    :param holders: where a directory's holder waits to be written (fs/holders.py); with
        ``defer_holders`` (``-o writeback``) mkdir PUTs only the marker where the holder is a
        ``dir_$folder$``, and the times writer writes the holder (None: kept in memory only).

    Locks (``_lock`` is never held during a request):

    * GUARDED_BY(_lock): ``_attrs``, ``_missing``, ``_listings``, ``_full``, ``_walks``, ``_walk_names``,
      ``_sorted_names``, ``_relisting``, ``_misses``, ``_unlisted``,
      ``_removed``, ``_hidden``, ``_removal_walks``, ``_changed``, ``_dir_times``, ``_dir_times_kept``,
      ``_atimes``, ``root``.
    * ``_dir_write_lock``: one read-modify-write of a directory's holder at a time (taken
      before ``_lock``, held across its requests).
    * ``_conflicts_logged``: unguarded; a race logs a name clash twice, no more.
    * Immutable after __init__: ``store``, ``keymap``, ``defaults``, ``clock``, ``attr_ttl``,
      ``listed_names``, ``epoch``, ``listing_attrs``, ``known``, ``holders`` (its own lock, never
      taken while ``_lock`` is held), ``defer_holders``; ``dir_meta_on_marker`` is set once by
      :meth:`configure_directories`, before the mount serves.
    """

    def __init__(
        self,
        store: Bucket,
        keymap: KeyMap,
        defaults: A.Defaults,
        attr_ttl: float = 1.0,
        dir_ttl: float = 1.0,
        clock: Clock = SYSTEM,
        attr_cache: int = ATTR_CACHE_ENTRIES,
        statahead: int = STATAHEAD_WORKERS,
        listing_attrs: bool = False,
        known: KnownVersions | None = None,
        list_ahead: int = LIST_AHEAD_WORKERS,
        holders: PendingHolders | None = None,
        defer_holders: bool = False,
    ) -> None:
        self.clock = clock
        #: Directories whose holder is not written yet (``defer_holders``: made by mkdir).
        self.holders = holders if holders is not None else PendingHolders(None)
        self.defer_holders = defer_holders
        #: What HEADs told of file versions, kept across mounts (none: kept in memory only).
        self.known = known if known is not None else KnownVersions(None, defaults)
        #: True: a file a listing shows is taken as the listing says, with the default mode and
        #: owner (no HEAD); False: its first lookup HEADs it, for its stored mode, owner and type.
        self.listing_attrs = listing_attrs
        timer = clock.monotonic
        self.store = store
        self.keymap = keymap
        self.defaults = defaults
        self._lock = threading.Lock()
        self.attr_ttl = max(attr_ttl, 0.001)
        # Per-entry expiry: what a listing says stays valid long enough for a tool to walk it.
        self._attrs: ExpiringLRU[str, A.Attributes] = ExpiringLRU(attr_cache, self._expiry, timer)
        self._missing: ExpiringLRU[str, bool] = ttl_cache(20_000, max(attr_ttl, 0.001), timer)
        self._listings: ExpiringLRU[str, set[str]] = ttl_cache(2_000, max(dir_ttl, 0.001), timer)
        self.dir_ttl = max(dir_ttl, 0.001)
        #: Directory path -> when its names in _listings were complete (see the module docstring).
        self._listed: LRUCache[str, Listed] = LRUCache(2_000)
        #: Directories being listed again for a lookup (one at a time each).
        self._relisting: set[str] = set()
        #: Directories where a lookup missed, or found a directory, a moment ago, no listing
        #: known (_list_burst).
        self._misses: ExpiringLRU[str, bool] = ttl_cache(2_000, MISS_BURST_TTL, timer)
        #: Directories of more than one page, not listed for a miss (_list_burst).
        self._unlisted: ExpiringLRU[str, bool] = ttl_cache(2_000, LARGE_DIR_TTL, timer)
        self._full: LRUCache[str, A.Attributes] = LRUCache(attr_cache)
        self._marked: LRUCache[str, bool] = LRUCache(attr_cache)
        self._held_data: LRUCache[str, str] = LRUCache(attr_cache)
        #: Directories of more entries than this keep no names: lookups there go by _walks.
        self.listed_names = min(LISTED_NAMES, attr_cache)
        #: Entries a lookup during a walk lists (_list_around): no more than the cache holds, or
        #: the page pushes out the very name it was listed for.
        self.walk_page = min(1000, attr_cache)
        #: Directory path -> seconds its walk lasts (see _list_around).
        self._walks: ExpiringLRU[str, float] = ExpiringLRU(1_000, own_ttl, timer)
        #: Directory path -> (its names in order as its last listing (of at most ``listed_names``)
        #: found them so far, whether that listing reached its end), for as long as a walk of it
        #: lasts (``_walk_ttl``): where the stat-ahead's HEADs go next while a readdir is under way
        #: (ls -l stats each entry as it reads it) and once ``_listings`` (``dir_ttl``) no longer
        #: says (ls -l of 10,000 took a LIST page per 128 names). Names to ask about, never shown.
        self._walk_names: ExpiringLRU[str, tuple[list[str], bool]] = ExpiringLRU(
            WALK_NAMES_DIRS, lambda path, walk, now: now + _walk_ttl(len(walk[0])), timer
        )
        #: Directory path -> (its names in _listings, those names sorted): what an rmdir in it
        #: looks through for the next subdirectory once its walk's names are gone
        #: (_next_subdir), sorted once per listing, not per rmdir.
        self._sorted_names: LRUCache[str, tuple[set[str], list[str]]] = LRUCache(WALK_NAMES_DIRS)
        self._removed: ExpiringLRU[str, float] = ttl_cache(20_000, REMOVED_TTL, timer)
        #: Directories a listing of which left out keys no name can show, for dir_ttl: never
        #: taken for empty from that listing. Guarded by _lock.
        self._hidden: ExpiringLRU[str, bool] = ttl_cache(2_000, max(dir_ttl, 0.001), timer)
        self._changed: ExpiringLRU[str, float] = ttl_cache(50_000, CHANGED_TTL, timer)
        #: (when, path) of each change put in _changed, oldest first (as many as it holds): what
        #: changed since a moment is found from the newest back (_complete), not by going through
        #: all of _changed, which rm -r of a tree fills with every name it removes. Guarded by _lock.
        self._change_log: deque[tuple[float, str]] = deque(maxlen=50_000)
        #: Paths whose delete is pending (tombstones). Guarded by _lock.
        self._deleting: set[str] = set()
        #: Directories under which we removed something, for REMOVED_TTL: one without a holder (a
        #: mere prefix) leaves S3 with its last key, and must stay until its rmdir. Guarded by _lock.
        self._emptied: ExpiringLRU[str, bool] = ttl_cache(20_000, REMOVED_TTL, timer)
        #: Directories of which this mount removed a subdirectory a moment ago (rm -r under way):
        #: a lookup of another subdirectory there lists it beside its holder's HEAD (_begin_listing).
        self._removal_walks: ExpiringLRU[str, bool] = ttl_cache(1_000, REMOVAL_WALK_TTL, timer)
        #: Directory path -> (after, last, names of directories) of its last LIST page asked
        #: for check_not_shadowed, for RECHECK_AFTER: it says which names from after to last
        #: (as _in_page) were directories then. Guarded by _lock.
        self._shadow_pages: ExpiringLRU[str, tuple[str, str, frozenset[str]]] = ttl_cache(
            1_000, RECHECK_AFTER, timer
        )
        #: Sends the pending deletes of keys under a prefix and waits for them (set by Mutations):
        #: a directory's emptiness is asked of S3 only once they are done.
        self.settle_deletes: Callable[[str], None] = lambda prefix: None
        #: Before S3 is asked about a directory or lists it: it, the directories above it and
        #: its new subdirectories whose objects mkdir left to the background are in S3 (set by
        #: Mutations: fs/newdirs.py). Called outside ``_lock``; FsError EIO if they are not.
        self.settle_new_dirs: Callable[[str], None] = lambda directory: None
        self._conflicts_logged: set[str] = set()
        #: Directory path -> (mtime, ctime, when) set by entry changes, not yet in S3. Guarded by _lock.
        self._dir_times: dict[str, tuple[float, float, float]] = {}
        #: The same for implicit directories (no holder to store them on): kept in memory only.
        self._dir_times_kept: LRUCache[str, tuple[float, float, float]] = LRUCache(100_000)
        #: File path -> atime that reads moved (relatime), applied over what S3 answers: stored with the
        #: file's next metadata write, not by a request per read. Guarded by _lock.
        self._atimes: LRUCache[str, float] = LRUCache(100_000)
        #: Serializes read-modify-write of directory holders (chmod vs. the times writer).
        self._dir_write_lock = threading.Lock()
        #: True: a directory's metadata lives on its ``dir/`` marker; False: on ``dir_$folder$``.
        #: Set once, by configure_directories, before the mount serves.
        self.dir_meta_on_marker = True
        #: The time of directories that have none of their own (implicit prefixes): stable, not "now".
        self.epoch = clock.time()
        self.root = A.Attributes(mode=defaults.dir_mode, mtime=self.epoch, uid=defaults.uid, gid=defaults.gid)
        #: Lookups that miss in name order get their HEADs sent ahead (its lock never nests with _lock).
        ahead = lambda path: self._fetch(path, dirs=False)  # noqa: E731
        self.statahead = StatAhead(
            store,
            keymap,
            ahead,
            self._usable,
            clock,
            self.attr_ttl,
            statahead,
            self._unknown_files_after,
            self._first_listed,
            lambda path: store.head_ahead(keymap.key(path)),
            self._from_head_ahead,
        )
        self.list_ahead = ListAhead(list_ahead)
        #: rm -r's next subdirectory looked up while the walk removes the one before (remove_dir).
        self.dir_ahead = DirAhead()
        #: A lookup's LIST for a directory of the name it HEADs, sent beside the HEAD (_fetch).
        self._lookup_lists = concurrent.futures.ThreadPoolExecutor(LOOKUP_LISTS, "lookup-list")

    def close(self) -> None:
        """The mount is going away: nothing more is fetched ahead (stats, listing pages), and
        what HEADs told is written."""
        self.statahead.close()
        self.list_ahead.close()
        self.dir_ahead.close()
        self._lookup_lists.shutdown(wait=False, cancel_futures=True)
        self.known.close()

    # -- cache upkeep (our own changes show at once) ---------------------------------------

    def _expiry(self, path: str, attributes: A.Attributes, now: float) -> float:
        return now + max(self.attr_ttl, attributes.ttl)

    def remember(self, path: str, attributes: A.Attributes) -> None:
        """Our own change: ``path`` now has ``attributes``, newer than any answer under way."""
        parent, name = KeyMap.split(path)
        self.known.drop(path)  # kept again once listed (S3's date of this version known then)
        self.list_ahead.drop(parent)  # a listing begun before this change would not show it
        with self._lock:
            if path == "/":
                attributes.nlink = self.root.nlink
                self.root = attributes
                return
            old = self._attrs.get(path)
            if attributes.is_dir and (old is None or not old.is_dir):
                self._count_subdir(parent, +1)
            attributes.seen_at = self._changed_now(path)
            if not attributes.stored and not attributes.written_by:
                attributes.written_by = self.clock.time()
            self._attrs[path] = attributes
            self._missing.pop(path, None)
            self._removed.pop(path, None)
            if attributes.complete:
                self._full[path] = attributes
            names = self._listings.get(parent)
            if names is not None:
                names.add(name)
                self._listings[parent] = names  # we just changed it: known for dir_ttl more

    def _changed_now(self, path: str) -> float:
        """Our own change of ``path``, now: recorded (``_changed``, ``_change_log``); returns when.
        Caller holds ``_lock`` (so the log stays in time order)."""
        when = self._changed[path] = self.clock.monotonic()
        self._change_log.append((when, path))
        return when

    def _count_subdir(self, parent: str, delta: int) -> None:
        """A subdirectory of ``parent`` came or went: its nlink, where known (caller holds _lock)."""
        own = self.root if parent == "/" else self._attrs.get(parent)
        if own is not None and own.nlink:
            own.nlink = max(2, own.nlink + delta)

    def forget(self, path: str, gone: bool = False) -> None:
        """Drop cached facts of ``path``; with ``gone`` remember that it no longer exists."""
        parent, name = KeyMap.split(path)
        self.statahead.drop(path)
        self.dir_ahead.drop(path)
        self.known.drop(path)
        self.list_ahead.drop(path)
        self.list_ahead.drop(parent)
        with self._lock:
            old = self._attrs.get(path)
            if gone and old is not None and old.is_dir:
                self._count_subdir(parent, -1)
            self._changed_now(path)
            self._attrs.pop(path, None)
            self._full.pop(path, None)
            self._marked.pop(path, None)
            self._held_data.pop(path, None)
            self._listings.pop(path, None)
            self._listed.pop(path, None)
            self._walks.pop(path, None)
            self._walk_names.pop(path, None)
            if gone:
                self._missing[path] = True
                self._removed[path] = self._changed[path]
                self._emptied.pop(path, None)
                up = parent
                while up != "/":  # each prefix above may have held no other key
                    self._emptied[up] = True
                    up = KeyMap.split(up)[0]
                self._dir_times.pop(path, None)
                self._dir_times_kept.pop(path, None)
                names = self._listings.get(parent)
                if names is not None:
                    names.discard(name)
            else:
                self._missing.pop(path, None)
                self._unknown_in_listing(parent, name)
        if gone:
            self.holders.done(path)  # a removed directory gets no holder

    def _unknown_in_listing(self, parent: str, name: str) -> None:
        """Whether ``name`` is in ``parent`` is S3's to say now (a rename that failed midway, a
        conflict): a listing of ``parent`` known from before does not answer "no such entry" for
        it (its lookup asks S3; a readdir lists again). Caller holds ``_lock``."""
        names = self._listings.get(parent)
        if names is not None and name:
            names.add(name)

    def deleting(self, path: str) -> None:
        """File ``path`` is removed, its delete not yet sent: absent until :meth:`deleted`."""
        self.forget(path, gone=True)
        with self._lock:
            self._deleting.add(path)

    def deleted(self, path: str, kept: bool = False) -> None:
        """S3 answered the delete of ``path``: gone, or (``kept``) still there and shown again."""
        with self._lock:
            self._deleting.discard(path)
            if not kept:
                self._removed[path] = self.clock.monotonic()  # a listing sent before may show it
                return
            self._removed.pop(path, None)
        self.forget(path)

    def forget_tree(self, path: str) -> None:
        """Drop cached facts of everything under directory ``path`` (its own, but whether it exists)."""
        prefix = path.rstrip("/") + "/"
        self.statahead.drop(path)
        self.dir_ahead.drop(path, tree=True)
        self.known.drop(path, tree=True)
        self.list_ahead.drop(path, tree=True)
        parent, name = KeyMap.split(path)
        with self._lock:
            self._changed_now(path)
            if not self._missing.get(path):  # (removed by us: absent, as the listing says)
                self._unknown_in_listing(parent, name)
            for cache, with_own in (
                (self._attrs, True),
                (self._full, True),
                (self._marked, True),
                (self._held_data, True),
                (self._listings, True),
                (self._listed, True),
                (self._walks, True),
                (self._walk_names, True),
                (self._missing, False),
                (self._removed, False),
                (self._emptied, True),
            ):
                for p in [p for p in list(cache.keys()) if p.startswith(prefix) or (with_own and p == path)]:
                    cache.pop(p, None)

    def walked(self, path: str) -> bool:
        """Whether directory ``path`` was listed a moment ago and is too large to keep its names."""
        with self._lock:
            return path not in self._listings and self._walks.get(path) is not None

    # -- lookup --------------------------------------------------------------------------

    def lookup(self, path: str) -> A.Attributes:
        """The attributes of ``path``; FsError(ENOENT) if it does not exist."""
        if path == "/":
            return self.root
        parent, name = KeyMap.split(path)
        with self._lock:
            hit = self._attrs.get(path)
            walk = parent not in self._listings and self._walks.get(parent) is not None
            if hit is not None and walk:
                # A walk (du, ls -l) asks each name once, in the order it read them: this one is
                # done with, and goes first when room is needed, not the names it will ask next
                # (with plain LRU, each window _list_around cached pushed out the next one's).
                self._attrs.demote(path)
            walked = hit is None and walk
        if walked and is_valid_name(name):
            self._list_around(parent, name)
            with self._lock:
                hit = self._attrs.get(path)
        if hit is not None and (hit.complete or (self.listing_attrs and not hit.is_dir)):
            return hit
        if hit is not None and not hit.is_dir:
            return self._complete_file(path)
        if hit is not None:
            return self._listed_dir_attributes(parent, path)
        with self._lock:
            if self._missing.get(path) or path in self._deleting:
                raise FsError(errno.ENOENT)  # we removed it ourselves (for attr_ttl: then S3 says)
        if not is_valid_name(name):
            too_long = len(name.encode("utf-8", "surrogateescape")) > NAME_MAX
            raise FsError(errno.ENAMETOOLONG if too_long else errno.ENOENT)
        with self._lock:
            seen = self._full.get(path)
            marked = self._marked.get(path, False)
        if seen is not None and seen.is_dir and (seen.etag or marked):
            # A directory we have looked up (or made here) is asked again by its objects: its
            # holder (one HEAD), or, if it had only a marker, its _$folder$ and then its marker;
            # not a HEAD of the name, a LIST and then those. None there: as below.
            asked = self.clock.monotonic()
            found, held = self._held_dir_attributes(path)
            if held:
                found.seen_at = asked
                return self._cache_fetched(path, found)
        names = self._absent_from_listing(parent, name)
        if names is not None and name in names:
            with self._lock:
                listed = self._attrs.get(path)
            if listed is not None and listed.is_dir:  # the burst's listing showed a directory
                return self._listed_dir_attributes(parent, path)
        # A name missing from a listing of its parent that is no longer fresh is asked about
        # (one HEAD); the LIST for a directory of that name is spared all the same.
        found = self.statahead.lookup(path, lambda: self._fetch(path, dirs=names is None or name in names))
        if found is None:
            with self._lock:
                emptied = self._emptied.get(path)
            if not emptied:
                if names is None:
                    with self._lock:
                        self._misses[parent] = True  # a create burst's first: the next lists
                raise FsError(errno.ENOENT)  # not cached: the next lookup asks again
            found = self._listed_dir()  # a prefix whose last key we removed: there until its rmdir
            found.complete = True
        elif found.is_dir and names is None:
            with self._lock:
                self._misses[parent] = True  # cp -r into a tree that is there: the next lists it
        return self._cache_fetched(path, found)

    def _listed_dir_attributes(self, parent: str, path: str) -> A.Attributes:
        """A directory seen in a listing: its mode and owner are on its holder (one HEAD; not
        a HEAD of its name and a LIST)."""
        self._begin_listing(parent, path)
        found = self._dir_fetched_ahead(path)
        if found is None:
            found = self._fetch_dir_attributes(path)
        with self._lock:
            listed = self._listed.get(parent)
            if listed is not None and listed.burst and self._listings.get(path) is None:
                # Shown by a create burst's listing (cp -r into a tree that is there), it is
                # walked into next: its first lookup there that the caches miss lists it.
                self._misses[path] = True
        return self._cache_fetched(path, found)

    def _complete_file(self, path: str) -> A.Attributes:
        """A file a listing showed: its mode, owner and type (a symlink, a FIFO) are
        ``x-amz-meta-*``, which no listing carries, so one HEAD (sent ahead of a walk in name
        order by the stat-ahead); FsError(ENOENT) if it has gone since."""
        found = self.statahead.lookup(path, lambda: self._fetch(path, dirs=False))
        if found is None:
            with self._lock:
                self._attrs.pop(path, None)  # removed by another client: asked again next time
            raise FsError(errno.ENOENT)
        return self._cache_fetched(path, found)

    def fetched_ahead(self, path: str) -> A.Attributes | None:
        """A readdir is handing out file ``path`` as its listing showed it: its whole attributes
        if the stat-ahead sent a HEAD for it (a walk that stats as it reads: waited for if still
        out, cached as a lookup's answer), else None (no request is made here)."""
        found = self.statahead.listed(path)
        if found is None or found.is_dir:
            return None
        found = self._cache_fetched(path, found)
        return found if found.complete and not found.is_dir else None

    def _unknown_files_after(self, parent: str, after: str, count: int) -> tuple[list[str], bool] | None:
        """Up to ``count`` names after ``after`` (in name order) of files of ``parent`` not known
        whole, from a listing of it less than ``dir_ttl`` old, and whether that listing is whole
        (False: a readdir still under way, which has listed no further yet); None if there is
        none (the stat-ahead's names: the HEADs a walk after a readdir asks for next)."""
        with self._lock:
            names = self._listings.get(parent)
            listed = self._listed.get(parent)
            fresh = listed is not None and listed.covers(after, self.clock.monotonic(), self.dir_ttl)
            whole = True
            if names is not None and fresh:
                ordered: list[str] = sorted(n for n in names if n > after)
            else:  # a walk under way, or past dir_ttl: what its listing found (one it missed: asked alone)
                walk = self._walk_names.get(parent)
                if walk is None:
                    return None
                walked, whole = walk
                ordered = walked[bisect.bisect_right(walked, after) :]
            found: list[str] = []
            for name in ordered:
                known = self._attrs.get(KeyMap.join(parent, name))
                if known is None or not (known.is_dir or known.complete):
                    found.append(name)
                    if len(found) == count:
                        break
            # A listing still under way that has not come this far: the rest once it lists more
            # (iter_dir tells the stat-ahead), not a LIST page of the stat-ahead's own.
            return found, whole

    def _first_listed(self, parent: str) -> str | None:
        """The first name a readdir of ``parent`` listed, while its walk lasts (``_walk_names``),
        else None: where a walk that stats as it reads begins (the stat-ahead's cue)."""
        with self._lock:
            walk = self._walk_names.get(parent)
        return walk[0][0] if walk is not None and walk[0] else None

    def _absent_from_listing(self, parent: str, name: str) -> set[str] | None:
        """Raise FsError(ENOENT), with no request, if a listing of ``parent`` less than
        ``dir_ttl`` old lacks ``name`` (listing it again first if it expired during a burst of
        such lookups); else return the names known of ``parent`` (None: not known)."""
        now = self.clock.monotonic()
        with self._lock:
            names = self._listings.get(parent)
            listed = self._listed.get(parent)
            burst = (
                names is None
                and self._misses.get(parent) is not None
                and parent not in self._relisting
                and self._unlisted.get(parent) is None
                and self._walks.get(parent) is None
            )
            if burst:
                self._relisting.add(parent)
        if burst:
            self._list_burst(parent)
            with self._lock:
                names = self._listings.get(parent)
                listed = self._listed.get(parent)
        with self._lock:
            if names is None or name in names or listed is None:
                return names
            if listed.covers(name, now, self.dir_ttl):
                listed.absent += 1
                raise FsError(errno.ENOENT)  # the upload's If-None-Match catches a racing create
            relist = listed.absent > 0 and parent not in self._relisting
            if relist:
                self._relisting.add(parent)
        if not relist:
            return names
        try:
            self._list_tail(parent, name)
        except S3Error as exc:
            log.debug("listing %s from %s failed (%s): looked up alone", parent, name, exc)
        finally:
            with self._lock:
                self._relisting.discard(parent)
        with self._lock:
            names = self._listings.get(parent)
            listed = self._listed.get(parent)
            if names is not None and name not in names and listed is not None:
                if listed.covers(name, self.clock.monotonic(), self.dir_ttl):
                    listed.absent += 1
                    raise FsError(errno.ENOENT)
        return names

    def _list_burst(self, parent: str) -> None:
        """A lookup in a directory where one missed a moment ago, no listing of it known (a
        burst of creates: ``cp -r`` into a directory that is there already): one LIST page of
        it. If that is all of it, its names are known as a readdir's whole listing makes them
        (for ``dir_ttl``, with our own changes since), and a new name's lookup is answered from
        them (its entries' attributes are not cached: an existing name's lookup HEADs it); if
        not, it is not listed for a miss again for ``LARGE_DIR_TTL`` (its names are asked about
        one by one, as before). The caller has put ``parent`` in ``_relisting``."""
        prefix = self.keymap.dir_prefix(parent)
        asked = self.clock.monotonic()
        try:
            page = next(self._list(prefix, delimiter="/", max_keys=min(RELIST_NAMES, self.listed_names)))
        except S3Error as exc:
            log.debug("listing %s for a burst of lookups failed (%s): names looked up alone", parent, exc)
            return
        finally:
            with self._lock:
                self._relisting.discard(parent)
                self._misses.pop(parent, None)
        if page.truncated and page.continuation:
            log.debug("%s has more than a page of names: its new names are looked up alone", parent)
            with self._lock:
                self._unlisted[parent] = True
            return
        self._take_names(parent, prefix, page, asked)

    def _take_names(self, path: str, prefix: str, page: ListPage, asked: float) -> None:
        """``page`` (asked for at ``asked``) is the whole of directory ``path``: its names are
        known as a readdir's whole listing makes them, and its directories are directories to
        a lookup as after a readdir (their holders HEADed then; no HEAD of the name and LIST).

        Its files' names only: what it says of each is not cached (a lookup of one HEADs it, as
        before; a listing's Last-Modified has whole seconds, too coarse to tell another
        client's chmod in the second of our last HEAD from the version that HEAD saw)."""
        batch = self._page_batch(path, prefix, page)
        with self._lock:
            if self._stale(path, asked) or self._listings.get(path) is not None:
                return  # renamed, removed or listed meanwhile: that says, not this page
            names = set()
            for name, _ in batch:
                child = KeyMap.join(path, name)
                if not (self._removed_since(child, asked) or child in self._deleting):
                    names.add(name)  # (not one S3 answered our delete of after the listing was sent)
            self._complete(path, names, asked)
            self._listed[path].burst = True
        self._cache_listed(path, [(n, a) for n, a in batch if a.is_dir], asked, _walk_ttl(len(batch)))

    def _list_tail(self, parent: str, name: str) -> None:
        """A create burst's lookup of ``name``, missing from an expired listing of ``parent``:
        one LIST page from ``name`` on tells whether it, and the names after it, are there now
        (a burst in name order finds the page all but empty: the cost of a HEAD, not of
        listing the whole directory again). What it says joins the known names of ``parent``."""
        prefix = self.keymap.dir_prefix(parent)
        after = name[:-1]  # start_after is exclusive: the page starts at ``name`` (or just before)
        asked = self.clock.monotonic()
        page = next(self._list(prefix, delimiter="/", start_after=prefix + after, max_keys=RELIST_NAMES))
        batch = self._page_batch(parent, prefix, page)
        shown = {n for n, _ in self._cache_listed(parent, batch, asked, _walk_ttl(len(batch)))}
        truncated = page.truncated and bool(page.continuation)
        last = max([e.key for e in page.entries[-1:]] + page.prefixes[-1:], default="")[len(prefix) :]
        last = last if truncated else ""
        with self._lock:
            names, listed = self._listings.get(parent), self._listed.get(parent)
            if names is None or listed is None:
                return  # forgotten meanwhile (a rename, rmdir): looked up alone
            for gone in [n for n in names if n not in shown and _in_page(n, after, last)]:
                if not self._stale(KeyMap.join(parent, gone), asked):
                    names.discard(gone)  # removed by another client
            names.update(shown)
            listed.tail = (after, last, asked)
            self._listings[parent] = names

    def cached(self, path: str) -> A.Attributes | None:
        """The attributes of ``path`` if cached (no request), else None (not known)."""
        if path == "/":
            return self.root
        with self._lock:
            return self._attrs.get(path)

    def lookup_full(self, path: str) -> A.Attributes:
        """Like lookup, but with the object's complete metadata (a HEAD if need be)."""
        found = self.lookup(path)
        if found.complete or path == "/":
            return found
        return self._fetch_whole(path, dirs=True)

    def lookup_now(self, path: str) -> A.Attributes:
        """What S3 holds at ``path`` now (a HEAD and a LIST side by side, whatever is cached),
        cached as a lookup's answer; FsError(ENOENT), and the name forgotten, if nothing.

        For a change built on the object's metadata: another client's ``chmod`` or ``setfattr``
        keeps the ETag, so no condition on the version tells of it, and a cached view would undo it.
        For an open for writing (:meth:`lookup_to_write`): the file may be gone, or a directory
        another client made may shadow it now (its LIST tells), while the kernel's entry still
        says file. A name this mount removed is ENOENT with no request, as for :meth:`lookup`
        (its delete may not be sent).
        """
        with self._lock:
            if self._missing.get(path) or path in self._deleting:
                raise FsError(errno.ENOENT)
        return self._fetch_whole(path, dirs=True)

    def lookup_to_write(self, path: str) -> A.Attributes:
        """What an open for writing of cached ``path`` opens: :meth:`lookup_now`'s answer, for less.

        * The answer of a lookup's HEAD and LIST (:attr:`Attributes.looked`) less than
          :data:`~s3fs_mount.fs.attrs.FRESH_LOOK` old (the kernel's LOOKUP just before the
          OPEN: cp over a file that is there): taken as it is, no request.
        * A file's answer from a HEAD (:attr:`Attributes.headed`: the stat-ahead's, a lookup's
          longer ago): one LIST, as the lookup's beside its HEAD; if it shows the key at that
          ETag and no directory of the name, the answer stands, no HEAD.
        * Else, or where this mount changed ``path`` since: :meth:`lookup_now`.

        Its metadata may be older than S3's: the upload's HEAD merges another client's
        metadata-only change since this mount saw it, whenever that was (README "Metadata
        against data")."""
        with self._lock:
            if self._missing.get(path) or path in self._deleting:
                raise FsError(errno.ENOENT)
            hit = self._attrs.get(path)
            if hit is not None and not (
                hit.headed and hit.complete and not hit.is_dir and not self._stale(path, hit.seen_at)
            ):
                hit = None
        if hit is not None and hit.looked and self.clock.monotonic() - hit.seen_at < A.FRESH_LOOK:
            return hit
        if hit is not None:
            key = self.keymap.key(path)
            try:
                page = self._list_named(key)
                held = any(e.key == key and e.etag == hit.etag for e in page.entries)
                if held and not self._dir_shadows(path, key, page):
                    return hit
            except S3Error as exc:
                log.debug("open of %s: no LIST of its name (%s): asked whole", path, exc)
        return self.lookup_now(path)

    def _fetch_whole(self, path: str, dirs: bool) -> A.Attributes:
        """``path``'s attributes with its complete metadata, asked of S3 now and cached;
        FsError(ENOENT), and the name forgotten, if S3 has nothing there."""
        asked = self.clock.monotonic()
        fresh = self._fetch(path, dirs=dirs)
        if fresh is None:
            with self._lock:
                stale = self._stale(path, asked)
            if not stale:
                self.forget(path, gone=True)
            raise FsError(errno.ENOENT)
        return self._cache_fetched(path, fresh)

    def accessed(self, path: str, atime: float) -> None:
        """A read moved the atime of file ``path`` (relatime): kept in memory over what S3 says.

        No request: the next metadata write of the file (an upload, chmod, ...) stores it.
        """
        with self._lock:
            for cache in (self._attrs, self._full):
                a = cache.get(path)
                if a is not None:
                    a.atime = atime
            self._atimes[path] = atime

    def stored_digest(self, path: str) -> str:
        """What S3 says the bytes of file ``path`` hash to (ObjectInfo.digest): known, or one HEAD."""
        a = self.lookup_full(path)
        if a.digest or a.is_dir:
            return a.digest
        info = self.store.head(self.keymap.key(path))
        with self._lock:
            for cache in (self._full, self._attrs):
                known = cache.get(path)
                if known is not None and known.etag == info.etag:
                    known.digest = info.digest
        return info.digest

    def known_digest(self, path: str, etag: str) -> str:
        """The digest S3 told (a HEAD) for version ``etag`` of ``path``; '' if not known."""
        with self._lock:
            for cache in (self._full, self._attrs):
                a = cache.get(path)
                if a is not None and a.etag == etag and a.digest:
                    return a.digest
        return ""

    def expected_digest(self, key: str, etag: str) -> str:
        """What reads of version ``etag`` of ``key`` are checked against: the digest S3 told, else ''
        (the ETag will do) or NO_DIGEST when this mount's objects have ETags that are no MD5."""
        known = self.known_digest(self.keymap.path(key), etag)
        return known or ("" if self.store.etags_are_md5 else NO_DIGEST)

    def _keep_atime(self, path: str, found: A.Attributes) -> None:
        """An answer from S3 for ``path``: a later atime that reads set stays (caller holds _lock)."""
        kept = self._atimes.get(path)
        if kept is not None:
            if found.atime is not None and found.atime >= kept:
                self._atimes.pop(path, None)  # stored
            else:
                found.atime = kept

    def _usable(self, path: str, asked: float) -> bool:
        """May an answer for ``path`` asked at ``asked`` be used (we changed nothing since)?"""
        with self._lock:
            return not (
                self._stale(path, asked) or self._removed_since(path, asked) or path in self._deleting
            )

    def _removed_since(self, path: str, asked: float) -> bool:
        """Did S3 answer our delete of ``path`` after ``asked`` (caller holds ``_lock``)?"""
        removed = self._removed.get(path)
        return removed is not None and removed >= asked

    def _stale(self, path: str, asked: float) -> bool:
        """Was ``path`` changed by us after ``asked``? (Caller holds ``_lock``.)"""
        return self._changed.get(path, 0.0) >= asked

    def _cache_fetched(self, path: str, found: A.Attributes) -> A.Attributes:
        """Cache what S3 answered, unless we changed ``path`` since we asked; returns what holds now."""
        parent, name = KeyMap.split(path)
        with self._lock:
            if self._stale(path, found.seen_at):
                current = self._attrs.get(path)
                return current if current is not None else found
            self._keep_atime(path, found)
            self._attrs[path] = found
            self._missing.pop(path, None)
            self._removed.pop(path, None)
            if found.complete:
                self._full[path] = found
            names = self._listings.get(parent)
            if names is not None:
                names.add(name)
        self.known.record(path, found)
        return found

    def _fetch(self, path: str, dirs: bool = True) -> A.Attributes | None:
        """What S3 says of ``path`` now (``seen_at``: when we asked); ``dirs``: look for a directory too."""
        asked = self.clock.monotonic()
        found = self._fetch_uncached(path, dirs)
        if found is not None:
            found.seen_at = asked
        return found

    def _fetch_uncached(self, path: str, dirs: bool = True) -> A.Attributes | None:
        key = self.keymap.key(path)
        # With ``dirs``, the LIST for a directory of this name goes beside the HEAD (as
        # mountpoint-s3's lookup does): a file found has a directory of its name shadow it,
        # as readdir shows them, whichever is asked first; a name not found needs it anyway.
        # Once the HEAD failed, the lookup fails: its LIST is given up (not sent, not sent
        # again, not the probe of an outage), not left to retry for a lookup that is over.
        job = GiveUp(loud=False)
        beside = self._lookup_lists.submit(self._list_named, key, job, sent_ahead()) if dirs else None
        try:
            try:
                info = self.store.head(key)
            except S3Error as exc:
                if not exc.not_found:
                    raise
                info = None
        except BaseException as exc:
            job.fail(exc)
            if beside is not None:
                beside.cancel()
            raise
        if beside is None:
            return self._head_attributes(path, key, info)
        if info is not None and not self._is_directory_object(info):
            looked = False
            try:
                shadowed = beside is not None and self._dir_shadows(path, key, beside.result())
                looked = beside is not None and not shadowed
            except S3Error as exc:  # (a policy without s3:ListBucket): the file, as found
                log.debug("lookup of %s: no LIST for a directory of its name (%s)", path, exc)
                shadowed = False
            if not shadowed:
                found = self.from_info(info)
                found.headed, found.looked = True, looked
                return found
            self._log_conflict(key)
            return self._dir_attributes(path)
        page = beside.result() if beside is not None else None
        if info is not None or (page is not None and self._dir_exists(path, key, page)):
            found = self._dir_attributes(path)
            if info is not None:
                self._saw_dir_object(path, key, info.size)
            return found
        return None

    def _head_attributes(self, path: str, key: str, info: ObjectInfo | None) -> A.Attributes | None:
        """What the HEAD of ``key`` (``info``; None: 404) says of ``path``, where no LIST went
        beside it: a file, a directory (its object: a Content-Type or mode of a directory), or None."""
        if info is None:
            return None
        if not self._is_directory_object(info):
            found = self.from_info(info)
            found.headed, found.looked = True, False
            return found
        found = self._dir_attributes(path)
        self._saw_dir_object(path, key, info.size)
        return found

    def _from_head_ahead(self, path: str, info: ObjectInfo | None, asked: float) -> A.Attributes | None:
        """What a HEAD of file ``path`` sent ahead at ``asked`` (stat-ahead) says, as :meth:`_fetch`."""
        found = self._head_attributes(path, self.keymap.key(path), info)
        if found is not None:
            found.seen_at = asked
        return found

    def _list_named(self, key: str, job: GiveUp | None = None, ahead: bool = False) -> ListPage:
        """The first keys beginning with ``key`` (a marker ``key/`` shows as a prefix, a
        ``key_$folder$``); ``job``: its lookup's, given up once the lookup failed; ``ahead``:
        that lookup's is sent ahead of need (s3/retry.py ``ahead_of_need``), so is this."""
        pages = self._list(key, delimiter="/", max_keys=100)  # (new directories settled: not the job's)
        with within(job), ahead_of_need(ahead):
            return next(pages)

    def _dir_shadows(self, path: str, key: str, page: ListPage) -> bool:
        """Does a directory share the name of file ``key`` (``page``: :meth:`_list_named`'s)?
        The directory wins (README "Files and directories"), whichever of them is asked first."""
        if self._dir_in_page(path, key, page):
            return True
        if not page.truncated:
            return False
        # More than a page of names like ``key.1`` before ``key/``: is anything under ``key/``?
        inside = next(self._list(key + "/", delimiter="/", max_keys=1))
        return bool(inside.entries or inside.prefixes)

    @staticmethod
    def _is_directory_object(info: ObjectInfo) -> bool:
        mode = A.stored_mode(info.metadata)
        return info.headers.get("Content-Type", "").startswith(DIRECTORY_CONTENT_TYPE) or (
            mode is not None and stat.S_ISDIR(mode)
        )

    def _dir_in_page(self, path: str, key: str, page: ListPage) -> bool:
        """Does ``page`` (:meth:`_list_named`'s) show a directory ``key``: its marker's prefix
        ``key/``, or a ``key_$folder$`` (noted as the directory's object)?"""
        folder = [e for e in page.entries if e.key == key + FOLDER_SUFFIX]
        if folder:
            self._saw_dir_object(path, folder[0].key, folder[0].size)
        return key + "/" in page.prefixes or bool(folder)

    def _dir_exists(self, path: str, key: str, page: ListPage) -> bool:
        """Is there a marker, any key under ``key/``, or a ``key_$folder$``? ``page`` (the
        LIST of :meth:`_list_named`) says, usually.

        A server that keeps directories of its own (SeaweedFS: where a ``dir/`` marker drops
        its metadata) keeps one whose keys were all deleted: it lists it as a common prefix
        of its parent, as ``ls`` shows it, but a LIST of the keys beginning with its name does
        not. A LIST of what is in it finds it (its own ``dir/``): one more LIST there, for a
        name the first found no directory of, so that a lookup says what ``ls`` shows."""
        if self._dir_in_page(path, key, page):
            return True
        if page.truncated or not self.dir_meta_on_marker:
            asked = self.clock.monotonic()
            inside = min(RELIST_NAMES, self.listed_names)
            page = next(self._list(key + "/", delimiter="/", max_keys=inside))
            if not (page.entries or page.prefixes):
                return False
            if not page.truncated and len(page.entries) + len(page.prefixes) < inside:
                # All of it (fewer than asked for: SeaweedFS says "not truncated" of a page of
                # max-keys 1 that shows only the directory's own marker when files follow): a
                # directory another client emptied (SeaweedFS keeps it) is then known empty,
                # as after a readdir, and its first new name costs no HEAD and LIST.
                self._take_names(path, key + "/", page, asked)
            return True
        return False

    def _begin_listing(self, parent: str, path: str) -> None:
        """While this mount removes ``parent``'s subdirectories (rm -r), a lookup of another one
        begins its listing (one page, on a list-ahead thread) beside its holder's HEAD: the walk
        reads each directory it enters, and its readdir then finds the page fetched."""
        with self._lock:
            if not self._removal_walks.get(parent):
                return
        prefix = self.keymap.dir_prefix(path)
        self.list_ahead.begin(path, self._list(prefix, delimiter="/"), self.clock.monotonic())

    def _begin_next_subdir(self, path: str) -> None:
        """rmdir of ``path``: the lookup of the subdirectory of its parent after it (rm -r's next,
        if a listing a moment ago says which) begins, its holder's HEADs and its listing
        (fs/dirahead.py), beside this directory's DeleteObjects and emptiness check: the walk
        looks it up and reads it once this rmdir has returned."""
        parent, name = KeyMap.split(path)
        with self._lock:
            following = self._next_subdir(parent, name)
        if following is None:
            return
        prefix = self.keymap.dir_prefix(following)
        self.dir_ahead.begin(following, lambda: self._fetch_dir_attributes(following))
        # (Not _list: a guess sent ahead must not wait on, nor fail for, directories mkdir left to
        # the background; those made in it since it was asked are added by _complete.)
        self.list_ahead.begin(following, self.store.list(prefix, delimiter="/"), self.clock.monotonic())

    def _next_subdir(self, parent: str, name: str) -> str | None:
        """The path of the first subdirectory of ``parent`` after ``name`` in its listing's order
        (the order rm -r walks them) whose lookup would ask S3, if a listing a moment ago (its
        walk's names, else its names known for ``dir_ttl``) says which, and no more than
        :data:`NEXT_SUBDIR_SCAN` names on; else None. Caller holds ``_lock``.

        The walk's names last :func:`_walk_ttl` (about a second for a few entries); rm -r on a
        loaded machine took longer than that to empty the first subdirectory, and then no rmdir
        began the next lookup. The known names are sorted once per listing (``_sorted_names``;
        each rmdir sorted them all again): a name removed since is passed over, and one added
        since, not in that order, is not begun (a guess ahead only: looked up as any other)."""
        walk = self._walk_names.get(parent)
        names: set[str] | None = None
        if walk is not None:
            ordered = walk[0]
        else:
            names = self._listings.get(parent)
            if names is None:
                return None
            kept = self._sorted_names.get(parent)
            if kept is None or kept[0] is not names:
                kept = (names, sorted(names))
                self._sorted_names[parent] = kept
            ordered = kept[1]
        start = bisect.bisect_right(ordered, name)
        for following in ordered[start : start + NEXT_SUBDIR_SCAN]:
            if names is not None and following not in names:
                continue  # removed since it was sorted
            path = KeyMap.join(parent, following)
            listed = self._attrs.get(path)
            # (one whose attributes are known whole, made here, is looked up with no request)
            if listed is not None and listed.is_dir and not listed.complete and path not in self._deleting:
                return path
        return None

    def _fetch_dir_attributes(self, path: str) -> A.Attributes:
        """Directory ``path``'s attributes asked of S3 now (its holder's HEADs), ``seen_at`` set."""
        asked = self.clock.monotonic()
        found = self._dir_attributes(path)
        found.seen_at = asked
        return found

    def _dir_fetched_ahead(self, path: str) -> A.Attributes | None:
        """Directory ``path``'s attributes as fetched ahead of its lookup (rm -r's next one), if
        they were, within ``attr_ttl`` of when they were asked and with nothing this mount did to
        it since (else None: asked again), with its pending times as they are now."""
        found = self.dir_ahead.take(path)
        if found is None:
            return None
        if self.clock.monotonic() - found.seen_at >= self.attr_ttl or not self._usable(path, found.seen_at):
            return None
        return self._with_pending_times(path, found)

    def _dir_attributes(self, path: str) -> A.Attributes:
        """A directory's attributes from its holder (``etag`` empty: it has none), with pending times."""
        return self._held_dir_attributes(path)[0]

    def _held_dir_attributes(self, path: str) -> tuple[A.Attributes, bool]:
        """Like :meth:`_dir_attributes`, and whether S3 has any object of the directory (its
        holder, or its marker where the holder is a ``_$folder$``)."""
        self.settle_new_dirs(path)
        holders = self._holders(path)  # a marker after a _$folder$: made by another tool, its time at least
        answers: list[ObjectInfo | None] = []
        for view, key in holders:  # one after the other: the first found is the one that counts
            try:
                answers.append(view.head(key))
            except S3Error as exc:
                if not exc.not_found:
                    raise
                answers.append(None)
            if answers[-1] is not None:
                break
        found = A.attributes_from({}, 0, self.epoch, self.defaults, "dir", etag="")
        for (_, key), info in zip(holders, answers, strict=False):
            if info is not None:
                self._saw_dir_object(path, key, info.size)
        for index, info in enumerate(answers):
            if info is None:
                continue
            found = A.attributes_from(info.metadata, 0, info.mtime, self.defaults, "dir", etag=info.etag)
            if index:
                unheld = self.holders.get(path)
                if unheld is not None:  # made here, its holder not written yet: what mkdir gave it
                    found = A.attributes_from(unheld, 0, info.mtime, self.defaults, "dir", etag=info.etag)
                else:
                    found.etag = ""  # no holder yet
            break
        with self._lock:
            if answers[0] is None and any(answers[1:]):
                self._marked[path] = True
            else:
                self._marked.pop(path, None)
        return self._with_pending_times(path, found), any(info is not None for info in answers)

    def _with_pending_times(self, path: str, found: A.Attributes) -> A.Attributes:
        """``found`` (directory ``path``'s, as S3 holds it) with the times of entry changes not
        yet in S3."""
        with self._lock:
            pending = self._dir_times.get(path) or self._dir_times_kept.get(path)
        if pending is not None:
            found.mtime, found.ctime = pending[0], pending[1]
        return found

    # -- directory holders and times -------------------------------------------------------

    def configure_directories(self) -> None:
        """Find out (one probe) whether ``dir/`` markers keep metadata here; log where it is kept."""
        try:
            self.dir_meta_on_marker = self.store.probe_marker_metadata()
        except Exception as exc:
            log.warning("could not probe directory markers (%s): directory metadata goes on dir/", exc)
            return
        if self.dir_meta_on_marker:
            log.info("directory metadata: on the dir/ marker objects")
        else:
            log.info(
                "directory metadata: this server drops metadata on keys ending in '/': kept on "
                "dir_$folder$ objects beside the dir/ markers"
            )

    def configure_names(self) -> None:
        """Find out (one probe) whether this server keeps a '\\' in a key; if not, new names with
        one are refused (EINVAL), since they would show as another path."""
        try:
            self.keymap.backslash_is_slash = not self.store.probe_backslash_keys()
        except Exception as exc:
            log.warning("could not probe keys with '\\' (%s): names with one are allowed", exc)
            return
        if self.keymap.backslash_is_slash:
            log.info("this server stores '\\' in a key as '/': new names with '\\' are refused")

    def _holders(self, path: str) -> list[tuple[Bucket, str]]:
        """Where directory ``path`` keeps its metadata, as (view, key): its holder first, then, where
        the holder is its ``_$folder$``, its marker.

        The root of a whole-bucket mount has no marker: its holder is ``_$folder$``. The root of
        ``bucket:/top`` has the marker ``top/`` (the view's key ''), and its ``_$folder$`` is
        ``top_$folder$``, beside the prefix: the one object a mount reaches outside its prefix.
        """
        if path == "/" and self.store.prefix:
            marker = [(self.store, "")]
            folder = [(self.store.whole(), self.store.prefix.rstrip("/") + FOLDER_SUFFIX)]
        else:
            key = self.keymap.marker_key(path)
            marker = [(self.store, key)] if key else []
            folder = [(self.store, self.keymap.folder_key(path))]
        return marker if self.dir_meta_on_marker and marker else folder + marker

    def load_root(self) -> None:
        """At mount: the root's mode, owner and times from its holder, if it has one (one or two HEADs)."""
        found = self._dir_attributes("/")
        with self._lock:
            found.nlink = self.root.nlink
            self.root = found

    def write_dir(self, path: str, metadata: dict[str, str], new: bool = False) -> str:
        """Store a directory's metadata on its holder (``new``: make its marker too); returns the ETag
        (with ``defer_holders``, of a new directory's marker: its holder is written later)."""
        headers = {"Content-Type": DIRECTORY_CONTENT_TYPE, **metadata}
        holders = self._holders(path)
        if new and len(holders) > 1:
            # (a name whose holder the server would refuse never gets here: mkdir checks first)
            if self.defer_holders:
                return self._make_marker(path, metadata, holders[-1], headers)
            return self._make_holders(holders, headers)
        view, key = holders[0]
        etag = view.put(key, b"", headers)
        self.holders.done(path)
        return etag

    def claim_dir(self, path: str, metadata: dict[str, str]) -> tuple[str, bool]:
        """mkdir's making of directory ``path`` where other clients can see its parent: its
        marker PUT now with ``If-None-Match: *`` (the caller knows the server honours it), so
        that of two clients' mkdirs of one name one only succeeds: FsError EEXIST for the
        other (a lock directory holds across mounts). Returns (the marker's ETag, whether its
        holder is owed still: a ``dir_$folder$`` the caller has PUT, fs/newdirs.py). With
        ``defer_holders`` that holder is recorded here and left to the times writer.

        A 412 whose marker carries our metadata is our own PUT, retried after its first attempt
        landed unanswered; where markers keep no metadata (SeaweedFS) that cannot be told, and
        it is EEXIST too."""
        headers = {"Content-Type": DIRECTORY_CONTENT_TYPE, **metadata}
        holders = self._holders(path)
        marker = holders[-1]
        if len(holders) > 1 and self.defer_holders:
            return self._make_marker(path, metadata, marker, headers, exclusive=True), False
        return self._put_marker_exclusive(path, marker, headers), len(holders) > 1

    def _put_marker_exclusive(self, path: str, marker: tuple[Bucket, str], headers: dict[str, str]) -> str:
        """:meth:`claim_dir`'s PUT; its ETag, or FsError EEXIST (the name is taken in S3)."""
        view, key = marker
        try:
            return view.put(key, b"", headers, if_none_match=True)
        except S3Error as exc:
            if not exc.precondition_failed:
                raise
        if self.dir_meta_on_marker:
            try:
                info = view.head(key)
            except S3Error as exc:
                if not exc.not_found:
                    raise
            else:
                if all(info.metadata.get(k) == headers.get(k) for k in (A.MTIME, A.CTIME)):
                    return info.etag  # ours: a retried PUT whose first attempt landed
        self.forget(path)  # S3's to say what it is now
        raise FsError(errno.EEXIST, "another client made %s meanwhile" % path)

    def _make_marker(
        self,
        path: str,
        metadata: dict[str, str],
        marker: tuple[Bucket, str],
        headers: dict[str, str],
        exclusive: bool = False,
    ) -> str:
        """A new directory's marker, PUT now (``exclusive``: as :meth:`claim_dir` does); its holder
        is recorded (fs/holders.py) and left to :meth:`store_dir_times`, as the times of a
        directory just changed are. Returns the marker's ETag."""
        self.holders.add(path, metadata)  # recorded before the marker: a killed mount writes it later
        view, key = marker
        try:
            if exclusive:
                etag = self._put_marker_exclusive(path, marker, headers)
            else:
                etag = view.put(key, b"", headers)
        except BaseException:
            self.holders.done(path)
            raise
        mtime = A.parse_time(metadata.get(A.MTIME, "")) or self.clock.time()
        ctime = A.parse_time(metadata.get(A.CTIME, "")) or mtime
        with self._lock:
            self._dir_times[path] = (mtime, ctime, self.clock.monotonic())
        return etag

    def remove_dir(self, path: str, remove: Callable[[], object]) -> None:
        """rmdir: ``remove()`` deletes the directory's objects while no holder of it is being
        written (the times writer, right after, would make it again); then it is gone here too.
        The next subdirectory of its parent is looked up meanwhile (:meth:`_begin_next_subdir`)."""
        self._begin_next_subdir(path)
        with self._dir_write_lock:
            remove()
            self.forget(path, gone=True)
        with self._lock:
            self._removal_walks[KeyMap.split(path)[0]] = True

    def recover_holders(self) -> int:
        """At mount: the holders a previous run recorded and did not write are written by the
        next round of :meth:`store_dir_times` (of a directory still there); returns how many."""
        left = self.holders.recover()
        with self._lock:
            for path, meta in left.items():
                mtime = A.parse_time(meta.get(A.MTIME, "")) or self.epoch
                # due at once (changed long ago): the first round writes it
                self._dir_times.setdefault(
                    path, (mtime, A.parse_time(meta.get(A.CTIME, "")) or mtime, -math.inf)
                )
        return len(left)

    def write_holders(self, path: str) -> None:
        """Write the pending holders of directory ``path`` and of those under it now (before a
        rename copies what S3 has of them)."""
        for inner in self.holders.under(path):
            self.change_dir(inner, lambda meta, cur: meta, make_again=False)

    def _make_holders(self, holders: list[tuple[Bucket, str]], headers: dict[str, str]) -> str:
        """A new directory's holder and marker, PUT side by side; returns the holder's ETag.

        If either fails (a name too long for the server, a refusal), the one made is removed
        and the error raised: a directory is not left half made (a removal that fails too is
        logged with the key left behind).
        """
        made: dict[int, str] = {}  # index in holders -> ETag; each job writes its own index

        def put(index: int) -> None:
            view, key = holders[index]
            made[index] = view.put(key, b"", headers)

        try:
            self.store.run_parallel([functools.partial(put, i) for i in range(len(holders))])
        except BaseException:
            for index in made:
                view, key = holders[index]
                try:
                    view.remove(key)
                except S3Error as exc:
                    log.error("mkdir failed half way: %r was made and could not be removed (%s)", key, exc)
            raise
        return made[0]

    def change_dir(
        self,
        path: str,
        change: Callable[[dict[str, str], A.Attributes], dict[str, str]],
        make_again: bool = True,
    ) -> A.Attributes | None:
        """Apply ``change`` to a directory's metadata and store it (with its current times).

        Built on the holder S3 has now (another client's ``chmod`` or ``setfattr`` stands). With
        ``make_again`` False (the background writes of times and holders) a directory none of
        whose objects is in S3 any more, removed by another client since we saw it, is not made
        again: returns None, its pending times and holder dropped.
        """
        self.settle_new_dirs(path)  # built on what S3 holds: its objects are there first
        with self._dir_write_lock:
            current = self.lookup_full(path)
            meta = dict(current.metadata)
            if path != "/":
                held, there = self._dir_now(path)
                if held is not None:
                    meta = dict(held.metadata)
                if not there and current.etag and not make_again:
                    log.info("directory %s was removed from S3 by another client: not made again", path)
                    with self._lock:
                        self._dir_times.pop(path, None)
                    self.holders.done(path)
                    self.forget(path)
                    return None
            with self._lock:
                pending = self._dir_times.pop(path, None)
            if pending is not None:
                meta.update(A.time_metadata(pending[0], current.atime, pending[1]))
            new = change(meta, current)
            A.check_metadata_size(new)
            try:
                etag = self.write_dir(path, new)
            except BaseException:
                if pending is not None:
                    with self._lock:
                        self._dir_times.setdefault(path, pending)
                raise
            updated = A.attributes_from(new, 0, current.mtime, self.defaults, "dir", etag=etag)
            updated.nlink = current.nlink
            with self._lock:
                later = self._dir_times.get(path)  # an entry changed while we wrote: its time is newer
            if later is not None:
                updated.mtime, updated.ctime = later[0], later[1]
            self.remember(path, updated)
            return updated

    def _dir_now(self, path: str) -> tuple[A.Attributes | None, bool]:
        """What S3 holds of directory ``path`` now: its holder's attributes (None: none, or ours
        not written yet), and whether any object of it (holder or marker) is there. A holder
        this mount has yet to write costs one HEAD (its marker), not two."""
        if self.holders.get(path) is not None:
            view, key = self._holders(path)[-1]
            return None, bool(view.current_etag(key))
        held, there = self._held_dir_attributes(path)
        return (held if held.etag else None), there

    def entry_changed(self, parent: str, now: float | None = None) -> None:
        """An entry of directory ``parent`` was created, removed or renamed: its mtime and ctime are now.

        In memory at once; :meth:`store_dir_times` stores it later (no request here).
        """
        now = self.clock.time() if now is None else now
        now = A.parse_time(A.format_time(now)) or now  # exactly what S3 will hold, to the nanosecond
        with self._lock:
            own = self.root if parent == "/" else self._attrs.get(parent)
            if own is not None:
                own.mtime = own.ctime = now
            if parent != "/" or self.root.etag:  # the root: stored only where it has a holder
                self._dir_times[parent] = (now, now, self.clock.monotonic())
                self._dir_times_kept.pop(parent, None)

    def store_dir_times(self, older_than: float = 0.0) -> int:
        """Store directory times set by :meth:`entry_changed` at least ``older_than`` s ago; returns how many.

        A directory without a holder keeps its times in memory only; one that is gone is skipped.
        """
        cutoff = self.clock.monotonic() - older_than
        with self._lock:
            due = [p for p, (_, _, when) in self._dir_times.items() if when <= cutoff]
        stored = 0
        for path in due:
            try:
                current = self.lookup_full(path)
            except FsError:
                with self._lock:
                    self._dir_times.pop(path, None)
                self.holders.done(path)  # gone: no holder to write
                continue
            except RemoteStoreError as exc:  # S3 away or refusing: kept pending, as a failed store
                log.warning("could not store the times of directory %s: %s", path, exc)
                continue
            if not current.etag:  # implicit: kept in memory
                with self._lock:
                    times = self._dir_times.pop(path, None)
                    if times is not None:
                        self._dir_times_kept[path] = times
                continue
            try:
                if self.change_dir(path, lambda meta, cur: meta, make_again=False) is not None:
                    stored += 1
            except Exception as exc:  # noqa: BLE001 - kept pending; the next round tries again
                log.warning("could not store the times of directory %s: %s", path, exc)
        return stored

    def from_info(self, info: ObjectInfo) -> A.Attributes:
        """Attributes of a file (or symlink) from a HEAD."""
        return A.attributes_from(
            info.metadata,
            info.size,
            info.mtime,
            self.defaults,
            "file",
            etag=info.etag,
            headers=info.headers,
            storage_class=info.storage_class,
            version_id=info.version_id,
            digest=info.digest,
            stored=info.mtime,
        )

    def _log_conflict(self, key: str) -> None:
        if key not in self._conflicts_logged:
            self._conflicts_logged.add(key)
            log.warning("object %r and directory %r/ share a name: the directory is shown", key, key)

    # -- directories -----------------------------------------------------------------

    def iter_dir(self, path: str) -> Iterator[tuple[str, A.Attributes]]:
        """The entries of a directory as its listing arrives, page by page (no HEAD per entry),
        the next page fetched while this one is handed out (fs/listahead.py).

        Each page's entries are cached as they are handed out; nothing is kept per entry
        but the (bounded) attribute cache. A file and a directory of one name show once,
        as the directory: S3 lists ``name`` before ``name/`` and ``name_$folder$``, so such
        a file waits until the listing is past those (a few names, never the directory).
        """
        known = self._known_entries(path)
        if known is not None:
            self.list_ahead.drop(path)
            yield from known
            return
        prefix = self.keymap.dir_prefix(path)
        asked = self.clock.monotonic()
        begun = self.list_ahead.resume(path, asked - self.dir_ttl)  # begun by its lookup
        if begun is not None:
            asked, listing = begun
        else:
            listing = self._list(prefix, delimiter="/")
        shown_dirs: set[str] = set()  # a directory's subdirectories are few next to its files
        waiting: dict[str, A.Attributes] = {}  # files that a directory of their name may yet hide
        names: set[str] | None = set()
        ordered: list[str] = []  # names in order as they come, for the stat-ahead (_walk_names)
        count = subdirs = 0
        for page in self.list_ahead.pages(listing):
            files, dirs = self._page_entries(path, prefix, page)
            batch: list[tuple[str, A.Attributes]] = []
            for name, attributes in files:
                if name in shown_dirs:
                    self._log_conflict(prefix + name)
                else:
                    waiting[name] = attributes
            for name in dirs:
                if name in shown_dirs:
                    continue
                shown_dirs.add(name)
                if waiting.pop(name, None) is not None:
                    self._log_conflict(prefix + name)
                batch.append((name, self._listed_dir()))
            last = max([e.key for e in page.entries[-1:]] + page.prefixes[-1:], default="")[len(prefix) :]
            done = not page.truncated or not page.continuation
            for name in [n for n in waiting if done or n + FOLDER_SUFFIX < last]:
                batch.append((name, waiting.pop(name)))
            batch.sort(key=operator.itemgetter(0))
            shown = self._cache_listed(path, batch, asked, _walk_ttl(count + len(batch)))
            count += len(shown)
            subdirs += sum(1 for _, a in shown if a.is_dir)
            if names is not None:
                names.update(name for name, _ in shown)
                if len(names) > self.listed_names:
                    names = None  # too many to keep: lookups there go by _walks
            if names is None:  # a walk under way (du stats entries while it reads on) counts too
                with self._lock:
                    self._walks[path] = _walk_ttl(count)
                    self._walk_names.pop(path, None)
            elif shown:
                with self._lock:  # a batch after a name held back (a file a directory may hide) is rare
                    resort = bool(ordered) and shown[0][0] < ordered[-1]
                    ordered.extend(name for name, _ in shown)
                    if resort:
                        ordered.sort()
                    self._walk_names[path] = (ordered, False)
                self.statahead.more_listed(path)  # a walk's HEADs of this page go before its entries
            if done:
                # Known before the last page is handed out: a reader that stops early (rm -r's
                # first readdir reads one buffer, then reads the directory again) leaves it known.
                self._listed_whole(path, names, asked, count, subdirs)
            yield from shown

    def _listed_whole(
        self, path: str, names: set[str] | None, asked: float, count: int, subdirs: int
    ) -> None:
        """A listing of ``path`` sent at ``asked`` reached its end: ``count`` entries, ``subdirs``
        of them directories, ``names`` (None: too many to keep)."""
        with self._lock:
            if names is not None:
                walk = self._walk_names.get(path)
                self._walk_names[path] = (walk[0] if walk is not None else sorted(names), True)
                self._complete(path, names, asked)
            else:
                self._walk_names.pop(path, None)
                self._listings.pop(path, None)
                self._listed.pop(path, None)
                self._walks[path] = _walk_ttl(count)
            own = self.root if path == "/" else self._attrs.get(path)
            if own is not None:  # POSIX: a directory's links are its entry, "." and each child's ".."
                own.nlink = 2 + subdirs

    def _known_entries(self, path: str) -> list[tuple[str, A.Attributes]] | None:
        """The entries of ``path`` from a complete listing less than ``dir_ttl`` old, with our
        own creates and removes since, if every entry's attributes are still cached (``rm -r``
        reads each directory twice, a moment apart); None: list it."""
        with self._lock:
            names, listed = self._listings.get(path), self._listed.get(path)
            if names is None or listed is None or self.clock.monotonic() - listed.asked >= self.dir_ttl:
                return None
            out = []
            for name in sorted(names):
                child = KeyMap.join(path, name)
                attributes = self._attrs.get(child)
                if attributes is None or child in self._removed or child in self._deleting:
                    return None
                out.append((name, attributes))
        return out

    def _complete(self, path: str, names: set[str], asked: float) -> None:
        """``names`` are what a listing of ``path`` asked for at ``asked`` found: with the
        entries we made there since, they are its names as of ``asked`` (caller holds _lock)."""
        prefix = "/" if path == "/" else path + "/"
        for when, child in reversed(self._change_log):  # newest first: those since ``asked``
            if when < asked:
                break
            if not child.startswith(prefix) or "/" in child[len(prefix) :]:
                continue
            removed = self._missing.get(child) or child in self._removed
            if self._changed.get(child, 0.0) >= asked and not removed:
                names.add(child[len(prefix) :])
        self._listings[path] = names
        self._listed[path] = Listed(asked)

    def _page_entries(
        self, path: str, prefix: str, page: ListPage
    ) -> tuple[list[tuple[str, A.Attributes]], list[str]]:
        """The files (with what the listing says of them) and the directory names on one page."""
        files: list[tuple[str, A.Attributes]] = []
        dirs: list[str] = []
        named: list[tuple[str, ListEntry]] = []
        cut = len(prefix)
        for entry in page.entries:
            rest = entry.key[cut:]
            if not rest:
                self._saw_dir_object(path, entry.key, entry.size)  # the directory's own marker
                continue
            if rest.endswith(FOLDER_SUFFIX):
                if is_valid_name(rest[: -len(FOLDER_SUFFIX)]):  # not the root's own _$folder$
                    dirs.append(rest[: -len(FOLDER_SUFFIX)])
                    self._saw_dir_object(KeyMap.join(path, dirs[-1]), entry.key, entry.size)
                continue
            if not is_valid_name(rest):
                warn_skipped(entry.key, "not a valid file name")
                self._holds_hidden(path)
                continue
            named.append((rest, entry))
        defaults = self.defaults
        dated: list[tuple[str, A.Attributes]] = []  # ours, S3's date of which the listing tells
        unknown: list[tuple[int, str, ListEntry]] = []  # (index in files, path, entry): no HEAD seen
        with self._lock:  # once a page: what HEADs said of its files, where the version is the same
            full = self._full
            for rest, e in named:
                child = KeyMap.join(path, rest)
                known = full.get(child) if full else None
                if known is not None:
                    undated = not known.stored
                    if _same_version(known, e.etag, e.size, e.mtime):
                        files.append((rest, known))
                        if undated:
                            dated.append((child, known))
                        continue
                files.append((rest, A.listed_file(defaults, e.size, e.mtime, e.etag, e.storage_class)))
                unknown.append((len(files) - 1, child, e))
        for child, known in dated:
            self.known.record(child, known)  # kept from now on
        if unknown:  # what a HEAD of this or an earlier mount told of the same versions
            kept = self.known.find([child for _, child, _ in unknown])
            if kept:
                with self._lock:
                    for index, child, e in unknown:
                        known = kept.get(child)
                        if known is not None and _same_version(known, e.etag, e.size, e.mtime):
                            files[index] = (files[index][0], known)
                            self._full[child] = known
        for p in page.prefixes:
            rest = p[len(prefix) :].rstrip("/")
            if p[len(prefix) :] != rest + "/" or not is_valid_name(rest):
                warn_skipped(p, "not a valid directory name")
                self._holds_hidden(path)
                continue
            dirs.append(rest)
        return files, dirs

    def _cache_listed(
        self, path: str, batch: list[tuple[str, A.Attributes]], asked: float, ttl: float
    ) -> list[tuple[str, A.Attributes]]:
        """Cache what a listing (sent at ``asked``) says of entries of ``path``; the entries to show."""
        out = []
        cached, deleting = self._attrs, self._deleting
        with self._lock:
            # The caches of our own changes are empty through most walks: asked only when not.
            removed, missing = self._removed or None, self._missing or None
            changed, atimes = bool(self._changed), bool(self._atimes)
            for name, attributes in batch:
                child = KeyMap.join(path, name)
                if (removed is not None and self._removed_since(child, asked)) or child in deleting:
                    continue  # sent before S3 answered our delete of it
                if attributes.is_dir:
                    known = cached.get(child)
                    if known is not None and known.is_dir:
                        attributes = known
                attributes.ttl = ttl
                out.append((name, attributes))
                if changed and self._stale(child, asked):
                    continue  # we changed it while the listing was under way
                attributes.seen_at = asked
                if atimes:
                    self._keep_atime(child, attributes)
                old = cached.get(child)
                if (
                    old is None
                    or old.is_dir != attributes.is_dir  # a directory of a file's name shadows it
                    or not old.complete
                    or attributes.complete
                    or not (  # another version since
                        attributes.is_dir
                        or _same_version(old, attributes.etag, attributes.size, attributes.stored)
                    )
                ):
                    cached[child] = attributes
                if missing is not None:
                    missing.pop(child, None)
        return out

    def _list_around(self, parent: str, name: str) -> None:
        """A lookup in a directory walked a moment ago that the cache no longer answers (it
        holds ``attr_cache`` entries): one LIST page from ``name`` on caches it and the names
        after it, which a walk (ls -l, du) asks for next, instead of a HEAD each."""
        prefix = self.keymap.dir_prefix(parent)
        key = prefix + name
        asked = self.clock.monotonic()
        with self._lock:
            ttl = self._walks.get(parent) or _walk_ttl(0)
        try:
            page = next(self._list(prefix, delimiter="/", start_after=key[:-1], max_keys=self.walk_page))
        except S3Error as exc:
            log.debug("listing %s from %s failed (%s): looked up alone", parent, name, exc)
            return
        self._cache_listed(parent, self._page_batch(parent, prefix, page), asked, ttl)

    def _page_batch(self, path: str, prefix: str, page: ListPage) -> list[tuple[str, A.Attributes]]:
        """The entries of one page listed from a name on (a directory wins over a file of its name)."""
        files, dirs = self._page_entries(path, prefix, page)
        dir_names = set(dirs)
        return [(n, a) for n, a in files if n not in dir_names] + [(n, self._listed_dir()) for n in dir_names]

    def _list(self, prefix: str, **kwargs: Any) -> Iterator[ListPage]:
        """The namespace's every LIST: of a directory whose new subdirectories, or itself, may
        still be on their way to S3 (fs/newdirs.py), once they are there."""
        self.settle_new_dirs(self.keymap.path(prefix))
        return self.store.list(prefix, **kwargs)

    def dir_made(self, path: str, etag: str) -> None:
        """The objects of directory ``path``, which mkdir left to the background, are in S3
        with ``etag``: what is cached of it says so."""
        with self._lock:
            for cache in (self._attrs, self._full):
                a = cache.get(path)
                if a is not None and a.is_dir and a.etag == NEW_DIR_ETAG:
                    a.etag = etag

    def _listed_dir(self) -> A.Attributes:
        """What a listing says of a directory: that it is one (its mode and owner: on its holder)."""
        return A.attributes_from({}, 0, self.epoch, self.defaults, "dir", complete=False)

    def is_empty_dir(self, path: str) -> bool:
        """Whether directory ``path`` has no entries in S3 (its pending deletes sent first).

        A listing of it less than ``dir_ttl`` old whose every name we have removed since answers
        with no LIST (``rm -r``: the readdir a moment ago), as a name missing from it would.
        """
        prefix = self.keymap.dir_prefix(path)
        self.settle_deletes(prefix)
        if self.listed_empty(path):
            return True
        held, page = self._first_held(prefix)
        if held and not any(_shown(prefix, key) for key in held):
            log.warning("directory %s is not empty: it holds %s, which no name can show", path, held[0])
        marker = [e for e in page.entries if e.key == prefix and e.size]
        if marker and not held:
            self._saw_dir_object(path, prefix, marker[0].size)
            log.warning(_HELD_DATA, path, prefix, marker[0].size)
        return not held and not marker

    def _first_held(self, prefix: str) -> tuple[list[str], ListPage]:
        """One LIST (max-keys 2) of directory ``prefix``: the keys and subdirectories it holds
        (its marker aside), and the page. What this mount removed under it and has not yet
        deleted in S3 (fs/deletes.py batches deletes) is sent first: no entry of anyone's."""
        self.settle_deletes(prefix)
        page = next(self._list(prefix, delimiter="/", max_keys=2))
        return page.prefixes + [e.key for e in page.entries if e.key != prefix], page

    def held_in_s3(self, path: str, marker: bool = False) -> str | None:
        """A key or subdirectory S3 lists in directory ``path`` now (one LIST), else None; with
        ``marker``, its marker ``path/`` counts too. Keys this mount removed do not
        (:meth:`_first_held`).

        Asked once rmdir's shortcut (a listing a moment ago, every name in it removed since)
        has deleted the directory's objects: another client's file put since that listing is
        seen, and the directory made again (:meth:`Mutations._remove_emptied`); before a
        directory's rename onto an empty one; and for a file, whether another client has made
        a directory of its name (:meth:`check_not_shadowed`: an empty one, its marker alone, is
        one)."""
        prefix = self.keymap.dir_prefix(path)
        held, page = self._first_held(prefix)
        if held:
            return held[0]
        if marker and any(e.key == prefix for e in page.entries):
            return prefix
        return None

    def check_not_shadowed(self, path: str, seen: A.Attributes) -> None:
        """Before an ``rm`` of file ``path`` or a rename over it, which this mount knows as
        ``seen`` (cached up to ``attr_ttl``): another client may have made a directory of the
        name since (deleted the file, put ``path/x``). The delete of the file, or the object the
        rename puts at its key, would then change nothing anyone sees, or hide a key under the
        directory, and the call return 0. An answer older than :data:`RECHECK_AFTER` is checked
        (one LIST of ``path/``, :meth:`held_in_s3`: keys this mount removed there are deleted
        first, and are none); a key there forgets the name and raises :class:`Stale`: the
        kernel looks the name up again, finds the directory and says EISDIR, as a local disk.
        A younger answer is taken as it is (an ``rm -r`` just after its listing asks nothing).

        The LIST is one page of the directory from the name on (SHADOW_PAGE names, delimited):
        the names after it that an ``rm -rf`` slower than a second checks next are answered by
        it (:meth:`_may_be_shadowed`), not a LIST each (round 39: a LIST per unlink)."""
        if seen.is_dir or self.clock.monotonic() - seen.seen_at < RECHECK_AFTER:
            return
        if not self._may_be_shadowed(path):
            return
        log.info("%s: another client made a directory of this name since it was looked up", path)
        self.forget(path)
        raise Stale(path, "a directory another client made shadows this file now")

    def _may_be_shadowed(self, path: str) -> bool:
        """Whether S3 holds a directory of file ``path``'s name (a key under ``path/``, or its
        marker), as :meth:`held_in_s3` would say.

        Asked of a LIST page of its directory from the name on, kept RECHECK_AFTER for the
        names after it. A directory the page shows is checked by :meth:`held_in_s3` (its keys
        this mount removed deleted first) unless the page was listed just now with none of
        them pending; an older page's is always (it may have shown a key of ours deleted since)."""
        parent, name = KeyMap.split(path)
        with self._lock:
            known = self._shadow_pages.get(parent)
        if known is not None and _in_page(name, known[0], known[1]):
            return name in known[2] and self.held_in_s3(path, marker=True) is not None
        prefix = self.keymap.dir_prefix(parent)
        after = name[:-1]  # start_after is exclusive: the page starts at ``name`` (or just before)
        page = next(self._list(prefix, delimiter="/", start_after=prefix + after, max_keys=SHADOW_PAGE))
        dirs = frozenset(p[len(prefix) : -1] for p in page.prefixes if p.startswith(prefix))
        truncated = page.truncated and bool(page.continuation)
        last = max([e.key for e in page.entries[-1:]] + page.prefixes[-1:], default="")[len(prefix) :]
        inside = path.rstrip("/") + "/"
        with self._lock:
            self._shadow_pages[parent] = (after, last if truncated else "", dirs)
            ours = name in dirs and any(p.startswith(inside) for p in self._deleting)
        if name not in dirs:
            return False
        return not ours or self.held_in_s3(path, marker=True) is not None

    def _saw_dir_object(self, path: str, key: str, size: int) -> None:
        """A HEAD or listing found directory ``path``'s own object ``key`` of ``size`` bytes."""
        with self._lock:
            if size:
                self._held_data[path] = key
            elif self._held_data.get(path) == key:
                self._held_data.pop(path, None)

    def check_no_held_data(self, path: str) -> None:
        """Before an rmdir: FsError ENOTEMPTY, with a line naming the key, when one of directory
        ``path``'s own objects holds bytes (another client's data, which no name shows and the
        rmdir would delete). Asked of S3 (one HEAD) only when a HEAD or listing found one so."""
        with self._lock:
            key = self._held_data.get(path)
        if key is None:
            return
        try:
            info = self.store.head(key)
            size = 0 if self._file_answers_for_marker(key, info) else info.size
        except S3Error as exc:
            if not exc.not_found:
                raise
            size = 0
        self._saw_dir_object(path, key, size)
        if size:
            log.warning(_HELD_DATA, path, key, size)
            raise FsError(errno.ENOTEMPTY, "%s holds %d bytes" % (key, size))

    def _file_answers_for_marker(self, key: str, info: ObjectInfo) -> bool:
        """Is ``info``, a HEAD's answer for marker ``key`` (``d/``), the file ``d`` that the
        directory shadows? SeaweedFS answers a HEAD of ``d/`` with the file ``d`` where both are
        there (another tool's ``d`` and ``d/x``): no bytes of the directory's (one HEAD more)."""
        if not key.endswith("/") or self._is_directory_object(info):
            return False
        try:
            file = self.store.head(key[:-1])
        except S3Error as exc:
            if not exc.not_found:
                raise
            return False
        return file.etag == info.etag and file.size == info.size

    def _holds_hidden(self, path: str) -> None:
        """A listing of directory ``path`` left out keys no name can show (another tool's ``a//b``)."""
        with self._lock:
            self._hidden[path] = True

    def listed_empty(self, path: str) -> bool:
        """Whether a listing of directory ``path`` less than ``dir_ttl`` old had only names we
        have removed since (their deletes may be pending yet): empty, asked of S3 no more than
        a name missing from that listing would be (README "Consistency"). Not if it left out
        keys no name can show: S3 says whether they are there still."""
        with self._lock:
            names, listed = self._listings.get(path), self._listed.get(path)
            if names is None or names or listed is None or self._hidden.get(path):
                return False
            return self.clock.monotonic() - listed.asked < self.dir_ttl

    def known_empty(self, path: str) -> None:
        """A directory we just made: its listing is known (empty)."""
        with self._lock:
            self._listings[path] = set()
            self._listed[path] = Listed(self.clock.monotonic())

    # -- object contents the namespace hands out ----------------------------------------------

    def link_target(self, path: str, size: int) -> str:
        """What symlink ``path`` (of ``size`` bytes) points to: its object's body."""
        data = self.store.get_range(self.keymap.key(path), 0, size)
        return data.decode("utf-8", "surrogateescape")

    def part_layout_of(self, key: str, size: int, parts: int, every: bool = False) -> AnyLayout | None:
        """Where a multipart object's ``parts`` begin and end, for the check of its reads (HEADs:
        the first and the last part's, or with ``every`` each part's; None: unknown)."""
        try:
            return self.store.part_layout(key, size, parts, every)
        except S3Error as exc:
            log.debug("part sizes of %s unknown: %s", key, exc)
            return None
