"""Every change of names and metadata in the mounted bucket, with the cache upkeep it implies.

Create, mkdir, rmdir, unlink, rename, symlink, mknod, a change of metadata,
an upload and recovery each happen here, in one method that sends the
requests (through the mounted :class:`~s3fs_mount.s3.bucket.Bucket`), moves
staged copies (:class:`~s3fs_mount.fs.staging.StagingCache`) and then tells
the :class:`~s3fs_mount.fs.namespace.Namespace` what changed, in that order.
:mod:`.operations` decides whether a FUSE call may go ahead (its errno) and
calls one of these; it sends no request itself.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import logging
import mimetypes
import stat
import threading
from collections.abc import Callable
from typing import Any

from s3fs_mount.clock import SYSTEM, Clock
from s3fs_mount.fs import attrs as A
from s3fs_mount.fs.deletes import DeleteQueue
from s3fs_mount.fs.errors import Conflict, FsError, Replaced, Stale, errno_for
from s3fs_mount.fs.namespace import DIRECTORY_CONTENT_TYPE, NEW_DIR_ETAG, Namespace
from s3fs_mount.fs.newdirs import NewDirectories
from s3fs_mount.fs.paths import NAME_MAX, KeyMap
from s3fs_mount.fs.prefetch import Prefetcher
from s3fs_mount.fs.renames import PendingRenames
from s3fs_mount.fs.staging import StagedFile, StagingCache
from s3fs_mount.fs.upload import CHECK_CONDITIONAL, Uploader, conflict_name
from s3fs_mount.s3.bucket import KEY_MAX_BYTES, Bucket
from s3fs_mount.s3.checksums import appended, same_bytes, whole_crc32
from s3fs_mount.s3.errors import RemoteStoreError, S3Error
from s3fs_mount.s3.store import MAX_SINGLE_COPY, MultipartUpload, ObjectInfo
from s3fs_mount.s3.xmlparse import ListEntry

log = logging.getLogger(__name__)

#: What a failed upload says as itself (a close, fsync or rename): the store's refusals that tell
#: the user what to do; anything else (a 5xx, a broken connection, retries spent) is EIO.
UPLOAD_ERRNOS = frozenset({errno.EACCES, errno.E2BIG, errno.EFBIG, errno.ENAMETOOLONG})

#: Self-copies a metadata change tries when another client's version lands between its HEAD and it.
METADATA_COPY_TRIES = 3
#: Copies of a file in a directory's rename, each of the version last seen (then a HEAD), before EIO.
RENAME_COPY_TRIES = 3

#: The most bytes another client's version may add to one a handle has read for the handle to go
#: on in it (they are fetched, to tell it is an append: see Mutations.holds_bytes_of).
APPEND_CHECK_MAX = 64 << 20

#: A metadata change: the current metadata (a copy to change) and attributes -> the new metadata.
Change = Callable[[dict[str, str], A.Attributes], dict[str, str]]


@dataclasses.dataclass(frozen=True)
class Moved:
    """What a file's move in S3 (:meth:`Mutations._move_object`) left."""

    #: The ETag of the object at its new key.
    etag: str
    #: Its metadata if the move stored a new ctime in it, else None (as it was).
    stamped: dict[str, str] | None
    #: Another client's version is at the old key now (put after the copy: kept there).
    theirs: bool = False


def staged_attributes(item: StagedFile, defaults: A.Defaults) -> A.Attributes:
    """A staged file's attributes: its pending metadata, local size and times, the times in the
    metadata too, as its upload stores them (a metadata left with the times it was made with
    put a file's creation time back as its mtime once an open adopted it: tar of a file just
    written said "file changed as we read it")."""
    view = item.view()
    metadata = {**view.metadata, **A.time_metadata(view.mtime, view.atime, view.ctime)}
    return A.attributes_from(
        metadata,
        view.size,
        view.mtime,
        defaults,
        "file",
        times=(view.mtime, view.atime, view.ctime),  # the item's own: not parsed back from metadata
        etag=view.etag,
        headers=dict(view.headers),
    )


class Mutations:
    """The changes a mount makes to its bucket's names and metadata.

    :param store: the mounted bucket.
    :param namespace: told of every change, so that lookups and listings show it at once.
    :param staging: the staged copies, which follow a file's renames and removal.
    :param uploader: puts staged files in S3.
    :param prefetcher: fetches what an unlinked but open file still needs.
    :param server_full: says why uploads fail when the server is full (else None): ENOSPC then.
    :param clock: gives new files, directories, links and changes their times.

    A removed file's key is deleted in a batch (:attr:`deletes`, a
    :class:`~s3fs_mount.fs.deletes.DeleteQueue` recorded beside the staged
    files): a key written again is settled first, and a directory's pending
    deletes are sent before S3 is asked whether it is empty or what it holds.
    """

    def __init__(
        self,
        store: Bucket,
        namespace: Namespace,
        staging: StagingCache,
        uploader: Uploader,
        prefetcher: Prefetcher,
        server_full: Callable[[], str | None] | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        self.clock = clock
        self.store = store
        self.namespace = namespace
        self.keymap: KeyMap = namespace.keymap
        self.defaults = namespace.defaults
        self.staging = staging
        self.uploader = uploader
        self.prefetcher = prefetcher
        self.server_full = server_full
        self.deletes = DeleteQueue(store, staging.root, self._deletes_answered)
        #: Renames under way, recorded so that the next mount finishes them (fs/renames.py); a
        #: RenameObject's ctime S3 would not store is tried again in the background.
        self.renames = PendingRenames(staging.root, self._store_owed_ctime)
        #: Other copies in parts under way, recorded so that the next mount aborts them (fs/copies.py):
        #: the uploader's journal, which records its own copies too.
        self.copies = uploader.copies
        #: What :meth:`recover` found a previous run left, and did (what -> how many), for
        #: ``s3fs-mount status``. Written before the mount serves, and by the background retries
        #: of the files it could not upload (:meth:`recover_file`); read with :meth:`recovered_counts`.
        self.recovered: dict[str, int] = {}  # GUARDED_BY(_recovered_lock)
        self._recovered_lock = threading.Lock()
        namespace.settle_deletes = self.deletes.flush
        #: Directories mkdir made whose objects go up in the background (fs/newdirs.py): a key
        #: goes under one, and S3 is asked about one, only once they are in S3.
        self.new_dirs = NewDirectories(
            staging.root,
            lambda path, meta, marked: namespace.write_dir(path, meta, new=not marked),
            namespace.dir_made,
        )
        namespace.settle_new_dirs = self.new_dirs.settle_in
        uploader.before_put = lambda key: self.new_dirs.settle(KeyMap.split(self.keymap.path(key))[0])
        #: A file is renamed by RenameObject (one atomic request), not a copy and a delete. Set
        #: once, at mount (:meth:`configure_renames`), before any FUSE call.
        self.server_renames = False
        #: mkdir claims its name in S3 before it returns (``-o exclusive_mkdir``, where the server
        #: honours ``If-None-Match: *``); else it returns at once. Set once, at mount.
        self.exclusive_mkdir = False

    def configure_renames(self, enabled: bool) -> None:
        """Find out (one probe) whether this server renames an object by RenameObject; log which is used."""
        if not enabled:
            log.info("renames copy, then delete (-o server_rename=off)")
            return
        try:
            self.server_renames = self.store.probe_rename_object()
        except Exception as exc:
            log.warning("could not probe RenameObject (%s): renames copy, then delete", exc)
            return
        if self.server_renames:
            log.info("renames: one RenameObject (the server moves the object)")

    def check_keys_fit(self, keys: list[str], holder: str | None = None) -> None:
        """Raise FsError(ENAMETOOLONG), saying which, if S3 would refuse one of these new keys as
        too long: a file created under such a name could never be uploaded (it stayed dirty).

        ``holder``: a directory's new ``_$folder$`` key. Where directory metadata is kept on
        those (SeaweedFS), its last segment may not pass NAME_MAX bytes either: that server
        refuses any longer segment, and a name of 247 to 255 bytes makes one.
        """
        too_long = self.store.too_long(keys + ([holder] if holder is not None else []))
        if too_long is not None:
            raise FsError(
                errno.ENAMETOOLONG,
                "the key %s... would be longer than S3 keeps (%d bytes)" % (too_long[:60], KEY_MAX_BYTES),
            )
        if holder is None or self.namespace.dir_meta_on_marker:
            return
        segment = len(holder.rpartition("/")[2].encode("utf-8", "surrogateescape"))
        if segment > NAME_MAX:
            raise FsError(
                errno.ENAMETOOLONG,
                "the directory's metadata would be on %s..., a segment of %d bytes: this server keeps "
                "at most %d" % (holder[:60], segment, NAME_MAX),
            )

    def _deletes_answered(self, deleted: list[str], failed: list[tuple[str, str]]) -> None:
        """S3 answered a batch of deletes: the deleted stay hidden; the others show again."""
        for key in deleted:
            self.namespace.deleted(self.keymap.path(key))
        for key, _ in failed:
            path = self.keymap.path(key)
            self.namespace.deleted(path, kept=True)
            self.namespace.entry_changed(KeyMap.split(path)[0])

    def sync_dir(self, path: str) -> None:
        """fsync of directory ``path``: its removals, and the directories made in it (or under
        it), are in S3 when this returns (S3Error, or FsError, if not; FsError EACCES, or EIO,
        when S3 refused a delete since the last fsync: the file is there again)."""
        self.new_dirs.settle_under(path)
        prefix = self.keymap.dir_prefix(path)
        self.deletes.flush(prefix)
        refused = self.deletes.refused(prefix)
        if refused:
            key, code = refused[0]
            raise FsError(
                errno.EACCES if code == "AccessDenied" else errno.EIO,
                "S3 refused to delete %s (%s)%s: it is there again"
                % (key, code, " and %d more" % (len(refused) - 1) if len(refused) > 1 else ""),
            )

    def close(self) -> list[str]:
        """At unmount: put the new directories and send the pending deletes; returns the keys
        of deletes left for the next mount."""
        self.new_dirs.close()
        self.renames.close()
        self.copies.close()
        return self.deletes.close()

    # -- uploads ---------------------------------------------------------------------------

    def upload(self, item: StagedFile) -> None:
        """Put ``item`` in S3 now; when that fails, FsError ENOSPC (the server is full), EACCES
        (S3 refused the mount's identity: read-only credentials), E2BIG (its user metadata is
        over S3's limit), else EIO, saying why (the FUSE call's one log line)."""
        try:
            self.uploader.flush(item)
        except Conflict as exc:
            self.conflicted(exc)
            raise
        except Exception as exc:
            full = self.server_full() if self.server_full is not None else None
            code = errno_for(exc)
            if full:
                code = errno.ENOSPC
            elif code not in UPLOAD_ERRNOS:
                code = errno.EIO
            raise FsError(code, "upload of %s failed, kept staged: %s" % (item.key, full or exc)) from exc

    def conflicted(self, exc: Conflict) -> None:
        """Another client's version stays at the path; ours now lives under the conflict name."""
        self.namespace.forget(self.keymap.path(exc.key))
        self.namespace.forget(KeyMap.split(self.keymap.path(exc.saved_as))[0])

    def follow_replaced(self, path: str, item: StagedFile) -> None:
        """A read or write found ``item``'s version replaced in S3 by another client: look the path up
        afresh and let a clean item follow the version S3 holds now (a dirty one keeps ours).

        :raises FsError: ENOENT when the object is gone meanwhile.
        """
        self.namespace.forget(path)
        a = self.namespace.lookup_full(path)
        if a.is_dir:
            raise FsError(errno.EISDIR, "%s is a directory now" % path)
        log.info("%s: replaced in S3 by another client since its lookup: following %s", path, a.etag)
        item.adopt(a.size, a.etag, a.metadata, a.headers, a.mtime, a.seen_at)

    def fetch_whole(self, item: StagedFile) -> None:
        """Before the first write to an object's copy, fetch all of it (crash safety). A version
        S3 no longer holds, but holds its bytes under a new ETag (:meth:`follow_same_bytes`),
        is followed; any other is :class:`Replaced` (EIO, unless the caller follows it)."""
        view = item.view()
        if view.dirty or view.remote_size <= 0:
            return
        try:
            self.prefetcher.ensure(item, 0, view.remote_size)
        except Replaced:
            if not self.follow_same_bytes(self.keymap.path(item.key), item, view.etag):
                raise
            self.prefetcher.ensure(item, 0, item.view().remote_size)

    def follow_same_bytes(self, path: str, item: StagedFile, etag: str, failing: str = "") -> bool:
        """A read of version ``etag`` of ``item`` was refused (412): if S3's version now holds
        the same bytes (:func:`~s3fs_mount.s3.checksums.same_bytes`: on AWS a CopyObject of an
        object uploaded in parts, another client's chmod, gives it a new ETag), the clean item
        follows it, keeping its bytes, and True. False (one HEAD) when the bytes are other, or
        not known to be the same: a warning says ``failing`` (what fails then), where given;
        else the caller says what it does (a write's fetch follows the new version, or fails),
        and this says, at INFO, only that the version was replaced (it said "this read fails"
        of a write that then followed it).
        """
        old = self.namespace.known_digest(path, etag)
        self.namespace.forget(path)
        try:
            current = self.namespace.lookup_now(path)
        except FsError:
            return False
        if current.is_dir or not same_bytes(item.view().remote_size, old, current.size, current.digest):
            log.log(logging.WARNING if failing else logging.INFO,
                    "%s: version %s was replaced in S3 by another client (now %s; %s)%s",
                    path, etag, current.etag, "the same size and digest not known" if not old
                    else "other bytes", ": " + failing if failing else "")
            return False
        if not item.followed_copy(etag, current.etag, current.metadata, current.headers):
            return False
        log.info("%s: version %s is now %s, with the same bytes (%d, %s): another client changed its "
                 "metadata only; reads go on", path, etag, current.etag, current.size, old)
        return True

    def holds_bytes_of(self, path: str, item: StagedFile, size: int, digest: str) -> bool:
        """``item`` follows another client's version now, not the one (``size`` bytes hashing to
        ``digest``) a handle of it has read bytes of: may that handle go on in it? Yes where the
        new version holds the old one's bytes: the same (a metadata copy: equal sizes and
        whole-object digests), or them followed by more (an append: the bytes past ``size``,
        up to :data:`APPEND_CHECK_MAX`, are fetched, and the old CRC32 goes on over them to
        the new one's). False when they are other bytes or nothing can tell: the reader's EIO."""
        view = item.view()
        if view.dirty or view.uploading or not view.etag:
            return False
        current = self.namespace.known_digest(path, view.etag)
        if same_bytes(size, digest, view.remote_size, current):
            log.info("%s: version %s holds the bytes a reader read, with the same bytes (%d, %s): another "
                     "client changed its metadata only; reads go on", path, view.etag, size, digest)
            return True
        added = view.remote_size - size
        if not 0 < added <= APPEND_CHECK_MAX or not (whole_crc32(digest) and whole_crc32(current)):
            return False
        try:
            blocks = self.store.get_range_blocks(item.key, size, added, 1 << 20, if_match=view.etag)
        except S3Error as exc:
            log.info("%s: could not fetch what version %s added (%s)", path, view.etag, exc)
            return False
        if not appended(digest, blocks, current):
            return False
        log.debug("%s: version %s is the %d bytes a reader read and %d more (an append): it goes on",
                  path, view.etag, size, added)
        return True

    def uploaded_in_background(self, item: StagedFile) -> None:
        """The writeback queue put ``item`` in S3 (:meth:`remember_uploaded` told): it may leave the cache."""
        self.staging.uploaded(item)

    def remember_uploaded(self, item: StagedFile) -> None:
        """What we uploaded is what S3 has: no HEAD needed to know it (but of a file removed
        meanwhile, or being removed: its upload may have stopped short, and its name is gone).
        The uploader tells, before the item stops counting as uploading (``on_stored``)."""
        if item.unlinked or self.uploader.being_removed(item):
            return
        a = staged_attributes(item, self.defaults)
        a.digest = self.uploader.stored_digest(item, a.etag)  # tells a metadata copy of it (AWS)
        self.namespace.remember(self.keymap.path(item.key), a)

    def recover(self, retry: Callable[[StagedFile], None] | None = None) -> list[str]:
        """Send the deletes and upload what a previous run left; returns the keys still staged.
        ``retry``: given each staged file it could not bring to S3 (S3 away, or refusing), to try
        again later (:meth:`recover_file`, the whole step each time).

        The deletes first: a key written again after its unlink had its delete sent before.
        """
        owed = self.deletes.owed_by_previous_run()
        deletes = self.deletes.recover()
        for key in deletes:  # not sent yet: hidden until it is
            self.namespace.deleting(self.keymap.path(key))
        self.note_recovered("deletes sent", owed - len(deletes))
        self.note_recovered("deletes not sent yet (retried)", len(deletes))
        # Then the directories mkdir recorded: the files staged in them go under them.
        self.note_recovered("new directories put in S3", self.new_dirs.recover())
        recovered = self.staging.recover()
        self.note_recovered("changed on disk, kept, not uploaded", len(self.staging.damaged))
        for key, upload_id in self.staging.orphan_uploads:
            self.store.abort_multipart(key, upload_id)
        self.note_recovered("copies in parts aborted", self.copies.recover(self.store.abort_multipart))
        renames = self.renames.recover()
        recovered = self._drop_replaced_by_renames(recovered, renames)
        for item in recovered:
            try:
                self.recover_file(item)
            except Exception as exc:
                log.error(
                    "recovered %s but could not upload it (%s); kept staged, tried again in the background",
                    item.key,
                    exc,
                )
                self.note_recovered("files kept staged (upload failed, tried again)")
                if retry is not None:
                    retry(item)
        self._recover_renames(renames)  # after the uploads: a directory's files are in S3 to be moved
        return [i.key for i in self.staging.pending()]

    def recover_file(self, item: StagedFile) -> bool:
        """Recovery's step for one staged file a previous run left dirty: go on with the upload
        its record names, or see what S3 holds (one HEAD: ours already, or another client's
        version, ours then going beside it), and upload it; noted in :attr:`recovered`. True
        once it is in S3; raises when S3 could not be asked or would not take it (the file stays
        staged: :meth:`recover`'s ``retry`` has it tried again, this whole step again)."""
        # Bytes the cache released are in the parts of the upload the record names: go on with it.
        resumed = self.uploader.resume(item)
        for upload_id in item.pending_uploads():
            if upload_id != resumed:
                self.uploader.abort_upload(item, upload_id)
        try:
            current = self.store.head(item.key)
        except S3Error as exc:
            if not exc.not_found:
                raise
            current = None
        if resumed:
            self._finish_resumed(item, current.etag if current is not None else "")
            self.note_recovered("streamed uploads finished")
            return True
        if current is not None and current.etag in self.uploader.etags_of(item):
            # Uploaded, then killed before its record said so: nothing to do.
            item.mark_clean(item.generation, current.etag, metadata=current.metadata)
            log.info("recovered %s: already in S3", item.key)
            self.note_recovered("files already in S3")
            return True
        if current is not None and current.etag != item.etag and item.sent_as(current.etag):
            # An earlier upload of ours landed, then the mount was killed before its record
            # said so: ours, not another client's; the file goes on from it.
            item.landed(current.etag, current.metadata)
            log.info("recovered %s: an earlier upload of it is in S3; the rest goes up", item.key)
        aside = current is not None and bool(item.etag) and current.etag != item.etag
        if aside:
            conflict = conflict_name(
                item.key, self.store.key_room(), taken=lambda name: self.staging.get(name) is not None
            )
            log.warning("%s changed in S3 while our copy was staged: ours goes to %s", item.key, conflict)
            self.staging.rekey(item.key, conflict)
            # A new name: nothing there to replace (conditional on the old version, its upload
            # was refused and went to a second conflict name, KEY.conflict-T.conflict-T).
            item.stored_as("")
        try:
            self.uploader.flush(item)
            log.info("recovered and uploaded %s", item.key)
            self.note_recovered("files uploaded beside a conflicting version" if aside else "files uploaded")
        except Conflict as exc:
            log.warning("recovered %s: %s", item.key, exc)
            self.note_recovered("files uploaded beside a conflicting version")
        return True

    def note_recovered(self, what: str, n: int = 1) -> None:
        """``n`` more of ``what`` in :attr:`recovered`."""
        if n:
            with self._recovered_lock:
                self.recovered[what] = self.recovered.get(what, 0) + n

    def recovered_counts(self) -> dict[str, int]:
        """A copy of :attr:`recovered`."""
        with self._recovered_lock:
            return dict(self.recovered)

    def _drop_replaced_by_renames(
        self, recovered: list[StagedFile], renames: dict[str, dict[str, str]]
    ) -> list[StagedFile]:
        """Of the staged files a killed run left, those a file's rename replaced (killed after
        its copy landed on their name, before the old key's delete): dropped, their uploads
        aborted, as the rename had done. Uploaded, they went to a conflict copy beside the moved
        file (S3 has another version there): a file the rename removed came back. The rest."""
        replaced: set[str] = set()
        for old, state in renames.items():
            item = self.staging.get(state["new"]) if not old.endswith("/") else None
            if item is None or item not in recovered:
                continue
            current = self.store.current_etag(state["new"])
            if current in (state["etag"], state.get("copied")) or (
                current
                and not state.get("upload")
                and self.store.current_etag(old) == state["etag"]
                and self._alike(old, state["etag"], state["new"], current)
            ):
                for upload_id in item.pending_uploads():
                    self.uploader.abort_upload(item, upload_id)
                self.staging.forget(item.key)
                replaced.add(item.key)
                log.warning("recovery: %s was replaced by the rename of %s to it (killed before "
                            "its end): its staged copy is dropped", item.key, old)
                self.note_recovered("files replaced by a rename, dropped")
        return [i for i in recovered if i.key not in replaced]

    def _recover_renames(self, renames: dict[str, dict[str, str]]) -> None:
        """Finish the renames a killed run left half done (fs/renames.py): ``renames``, as
        :meth:`PendingRenames.recover` gave them."""
        for old, state in sorted(renames.items()):
            try:
                if old.endswith("/"):
                    self.note_recovered(self._finish_dir_rename(old, state["new"], state.get("dirs", [])))
                elif state.get("moved"):
                    self.note_recovered(self._finish_moved(old, state))
                    self.renames.done(old)
                else:
                    self.note_recovered(self._finish_file_rename(old, state))
            except Exception as exc:
                if state.get("moved"):  # only its ctime is owed: kept, and tried again
                    log.error("recovery: could not store the ctime of %s, renamed from %s (%s): "
                              "tried again in the background", state.get("new"), old, exc)
                    self.note_recovered("renames' ctimes not stored yet (tried again)")
                    self.renames.retry_later(old)
                    continue
                # Kept for the next mount (S3 may be down at this one's start): dropped, the file
                # stayed under both names for good.
                log.error("recovery: could not finish the rename of %s to %s (%s): tried again at "
                          "the next mount", old, state.get("new"), exc)
                self.note_recovered("renames not finished yet (tried at the next mount)")

    def _finish_file_rename(self, old_key: str, state: dict[str, str]) -> str:
        """A file's copy, then delete, killed in between: its delete is sent if the copy is in S3
        (the new key has the copy's ETag, or the version's; a copy in parts' ETag is recorded
        before its completion), and only if the old key is still the version moved (a
        conditional delete). A copy in parts not completed is aborted. Returns what was done,
        as :attr:`recovered` counts it."""
        new_key = state["new"]
        old = self.store.current_etag(old_key)
        new = self.store.current_etag(new_key)
        copied = bool(new) and (
            new in (state["etag"], state.get("copied"))
            # a single copy of an object uploaded in parts has another ETag (AWS)
            or (old == state["etag"] and not state.get("upload") and self._alike(old_key, old, new_key, new))
        )
        if state.get("upload") and not copied:
            # Killed during the copy's parts or before its completion landed: its parts go.
            self.store.abort_multipart(new_key, state["upload"])
        if not old or old != state["etag"]:
            log.info("recovery: rename of %s to %s: the old key is gone or changed; nothing to do",
                     old_key, new_key)
            done = "renames found done, or the file changed since"
        elif copied:
            failed = self.store.delete_keys([old_key], etags={old_key: state["etag"]})
            if failed:
                log.warning("recovery: rename of %s to %s: the old key was not deleted (%s): it "
                            "changed since, or S3 refused", old_key, new_key, failed[0][1])
                if failed[0][1] != "PreconditionFailed":
                    raise RemoteStoreError("S3 refused the delete of %s: %s" % (old_key, failed[0][1]))
                done = "renames found done, or the file changed since"
            else:
                self.namespace.forget(self.keymap.path(old_key), gone=True)
                log.warning("recovery: finished the rename of %s to %s (copied, then killed before "
                            "the delete)", old_key, new_key)
                done = "renames finished"
        else:
            log.warning("recovery: rename of %s to %s was not copied: the file stays at %s",
                        old_key, new_key, old_key)
            done = "renames not made (killed before the copy)"
        self.renames.done(old_key)
        return done

    def _finish_moved(self, old_key: str, state: dict[str, str]) -> str:
        """A file's RenameObject whose new ctime is not stored yet (killed before the self-copy
        that stores it, or before the RenameObject landed; or S3 refused that copy): the ctime
        the rename recorded is stored now, if the new key holds the version moved, the old one
        no longer does, and its ctime is not that one or later already (else the rename never
        landed, or the file changed since: nothing to do). Returns what was done, as
        :attr:`recovered` counts it; raises if S3 would not store it (the record stays)."""
        new_key = state["new"]
        ctime = A.parse_time(state["ctime"]) or self.clock.time()
        try:
            info: ObjectInfo | None = self.store.head(new_key)
        except S3Error as exc:
            if not exc.not_found:
                raise
            info = None
        if self.store.current_etag(old_key) == state["etag"]:
            log.info("rename of %s to %s was not made: the file stays at %s", old_key, new_key, old_key)
            return "renames not made (killed before the copy)"
        if info is None or info.etag != state["etag"]:
            log.info("rename of %s to %s: %s changed since; its ctime is its own", old_key, new_key, new_key)
            return "renames found done, or the file changed since"
        if (A.parse_time(info.metadata.get(A.CTIME, "")) or 0.0) >= ctime:
            return "renames found done, or the file changed since"
        stored = self._stamp_ctime(new_key, info.etag, info, ctime)
        if stored is None:
            return "renames found done, or the file changed since"
        self._ctime_stored(new_key, info.etag, *stored)
        log.warning("stored the new ctime of %s, renamed from %s (S3 had not taken it, or the mount "
                    "was killed before it did)", new_key, old_key)
        return "renames finished"

    def _store_owed_ctime(self, old_key: str, state: dict[str, str]) -> None:
        """The background's retry of a RenameObject's ctime S3 would not store
        (:meth:`_finish_moved`; raises while it still will not)."""
        self._finish_moved(old_key, state)

    def _ctime_stored(self, key: str, moved: str, etag: str, stamped: dict[str, str]) -> None:
        """``key`` (version ``moved``) holds ``stamped``, its new ctime, as version ``etag`` now,
        some time after its rename: asked again at its next lookup, and a clean staged copy
        of it follows."""
        self.namespace.forget(self.keymap.path(key))
        item = self.staging.get(key)
        if item is not None and not item.dirty and item.view().etag == moved:
            item.metadata_stored(stamped, etag)

    def _finish_dir_rename(self, old_prefix: str, new_prefix: str, dirs: list[str]) -> str:
        """A directory's rename, killed or failed part way: what is still under the old name is
        moved, and the old directories (``dirs``, as the rename recorded them) deleted; returns
        what was done, as :attr:`recovered` counts it.

        Not if a file is under both names with other bytes: one of them changed since (a rename
        that failed said EIO, and the user went on with both directories, or another client did):
        moving the old one would overwrite it unseen. Both directories are then left as they are.
        """
        old, new = self.keymap.path(old_prefix), self.keymap.path(new_prefix)
        left = {e.key[len(old_prefix) :]: e for e in self.store.list_all(old_prefix)}
        differ = [
            e.key
            for e in (self.store.list_all(new_prefix) if left else ())
            if not e.key.endswith("/")
            and e.key[len(new_prefix) :] in left
            and not self._same_file(left[e.key[len(new_prefix) :]], e)
        ]
        if differ:
            log.error("recovery: the rename of directory %s to %s is left half done: %d files are "
                      "under both names with other bytes, e.g. %s (changed since): both are kept",
                      old, new, len(differ), differ[0])
            self.renames.done(old_prefix)
            return "renames left unfinished"
        if left:
            self._rename_dir(old, new, self.namespace.lookup_full(old))
        else:
            # Every file moved: what is left, if anything, is the emptied directories (a server
            # that keeps directories lists them until they are deleted).
            self.renames.done(old_prefix)
        failed = self.store.delete_keys(sorted(dirs))
        if failed:
            log.error("recovery: rename %s: could not delete %d old keys, e.g. %s", old, len(failed),
                      failed[0])
        self.namespace.forget(old, gone=True)
        self.namespace.forget_tree(old)
        log.warning("recovery: finished the rename of directory %s to %s (killed part way)", old, new)
        return "renames finished"

    def _same_file(self, old: ListEntry, new: ListEntry) -> bool:
        """Whether ``new`` (a directory rename's new name) may be the copy of ``old`` (its old
        name), not a file written there since; one of them gone is no conflict either."""
        if old.size != new.size:
            return False
        try:
            return self._alike(old.key, old.etag, new.key, new.etag)
        except S3Error as exc:
            if exc.not_found:
                return True
            raise

    def _alike(self, old_key: str, old_etag: str, new_key: str, new_etag: str) -> bool:
        """Whether the object at ``new_key`` may be a copy of the one at ``old_key``.

        Equal ETags say so. A copy's ETag is not its source's when either was made in parts (a
        copy over 5 GiB in parts; on AWS, a CopyObject of an object uploaded in parts gets the
        MD5 of its bytes) or is no MD5 (SSE-KMS, SSE-C): then their sizes and user metadata
        (its mtime: a write through a mount moves it) must be equal, one HEAD each, but for the
        ctime, which the rename's copy moves (round 38).
        """
        if old_etag == new_etag:
            return True
        if "-" not in old_etag + new_etag and self.store.etags_are_md5:
            return False  # two MD5s of the bytes: other bytes
        old, new = self.store.head(old_key), self.store.head(new_key)

        def kept(metadata: dict[str, str]) -> dict[str, str]:
            return {k: v for k, v in metadata.items() if k != A.CTIME}

        return old.size == new.size and kept(old.metadata) == kept(new.metadata)

    def _finish_resumed(self, item: StagedFile, current: str) -> None:
        """Recovery of a file whose upload holds bytes the cache released: complete that upload."""
        if current and self.uploader.resumed_already_done(item, current):
            item.mark_clean(item.generation, current)  # completed, then killed before its record said so
            log.info("recovered %s: already in S3", item.key)
            return
        try:
            self.uploader.flush(item)
            log.info("recovered %s: finished its upload", item.key)
        except Exception as exc:
            log.error(
                "recovered %s but could not finish its upload (%s): kept staged; bytes %s are in "
                "that upload's parts only",
                item.key,
                exc,
                ", ".join("%d-%d" % (s, e - 1) for s, e in item.released_ranges()),
            )
            raise

    # -- names -------------------------------------------------------------------------------

    def create(self, path: str, mode: int, uid: int, gid: int) -> StagedFile:
        """A new, empty regular file (staged, dirty: it is uploaded too); returns its item, acquired."""
        now = self.clock.time()
        meta = A.posix_metadata(mode, uid, gid, now)
        made = A.parse_time(meta[A.MTIME]) or now  # now as S3 will hold it (to the microsecond)
        content_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
        key = self.keymap.key(path)
        self.deletes.settle(key)
        headers = {"Content-Type": content_type}
        item, created = self.staging.acquire(key, lambda new: new.begin_new(meta, headers, made))
        try:
            if created:
                item.save()
            else:
                item.reset(0, "", meta, headers, now)
                item.set_metadata(meta)  # dirty: an empty new file is uploaded too
        except BaseException:
            # Not made (its record could not be written: the cache's disk is full): nothing of it
            # stays to be uploaded at unmount or at the next mount.
            self.staging.release(item)
            if created:
                self.staging.forget(key)
            raise
        attributes = A.attributes_from(meta, 0, now, self.defaults, "file", times=(made, made, made))
        self.namespace.remember(path, attributes)
        self.namespace.entry_changed(KeyMap.split(path)[0], now)
        return item

    def mkdir(self, path: str, mode: int, uid: int, gid: int) -> None:
        """A new directory. With :attr:`exclusive_mkdir` its marker is PUT before this returns,
        with ``If-None-Match: *``: another client's directory of the name, made since our lookup,
        is FsError EEXIST (``mkdir lock`` is a lock across mounts); a holder it needs beside
        (``dir_$folder$``) goes up in the background. Else the directory is recorded and all
        its objects go up in the background (fs/newdirs.py, round 35): what would see it in S3
        before they are there waits for them."""
        # A file of that name may be pending delete: some servers (SeaweedFS) keep a file and a
        # directory of one name apart no better than a disk does, so its delete goes first.
        self.deletes.settle(self.keymap.key(path))
        now = self.clock.time()
        meta = A.posix_metadata(mode, uid, gid, now)
        etag = NEW_DIR_ETAG
        if self.exclusive_mkdir and self.uploader.put_check == CHECK_CONDITIONAL:
            # Under a directory made here whose marker is still owed too: that parent goes up
            # first (anyone may look into it from then on). One whose holder only is owed (its
            # mode: PUT by the thread, before any file goes under it) is not waited for.
            self.new_dirs.settle_marked(KeyMap.split(path)[0])
            claimed, holder_owed = self.namespace.claim_dir(path, meta)
            if holder_owed:
                self.new_dirs.add(path, meta, marked=True)
            else:
                etag = claimed
        else:
            self.new_dirs.add(path, meta)
        made = A.attributes_from(meta, 0, now, self.defaults, "dir", etag=etag)
        made.nlink = 2  # empty: known, so its subdirectories are counted from here on
        self.namespace.remember(path, made)
        self.namespace.known_empty(path)
        self.namespace.entry_changed(KeyMap.split(path)[0], now)

    def is_empty_dir(self, path: str) -> bool:
        """Directory ``path`` has no entry: none in S3, and no file staged in it (not yet uploaded)."""
        return self.namespace.is_empty_dir(path) and not any(self.staging.under(self.keymap.dir_prefix(path)))

    def rmdir(self, path: str) -> None:
        """Remove directory ``path``; FsError ENOTEMPTY if it has entries (in S3 or staged), or
        if one of its own objects (marker, ``_$folder$``) holds bytes another client stored.

        A directory a listing a moment ago showed with only names we have removed since (``rm
        -r``, or one made here) goes in one DeleteObjects with its files' pending deletes, then
        one LIST says whether another client put something in it since that listing
        (:meth:`_remove_emptied`); any other is asked of S3 whether it is empty first (one
        LIST), and once more after its deletes (a file put in between: made again, ENOTEMPTY).

        A directory made here whose objects have not left yet (fs/newdirs.py) is withdrawn:
        neither PUT nor delete is sent, only the one LIST that says whether another client put
        a key in it meanwhile (then its objects are PUT after all, and ENOTEMPTY).
        """
        prefix = self.keymap.dir_prefix(path)
        if self._withdraw_new_dir(path, prefix):
            return
        self.new_dirs.settle_under(path)
        marker, folder = self.keymap.marker_key(path), self.keymap.folder_key(path)
        self.namespace.check_no_held_data(path)
        own = self.namespace.cached(path)
        if (
            own is not None
            and own.is_dir
            and own.complete
            and self.namespace.listed_empty(path)
            and not any(self.staging.under(prefix))
        ):
            self.namespace.remove_dir(path, lambda: self._remove_emptied(path, own, [marker, folder]))
        else:
            if not self.is_empty_dir(path):
                raise FsError(errno.ENOTEMPTY)
            mine = own if own is not None and own.is_dir else self.namespace.lookup(path)
            both = [lambda: self.store.remove(marker), lambda: self.store.remove(folder)]

            def remove() -> None:
                self.store.run_parallel(both)
                self._put_back_if_held(path, mine, "this mount found it empty")

            self.namespace.remove_dir(path, remove)
        self.namespace.entry_changed(KeyMap.split(path)[0])

    def _withdraw_new_dir(self, path: str, prefix: str) -> bool:
        """rmdir's shortcut for a new directory none of whose objects left (:meth:`rmdir`):
        True once it is gone; False if it is not such a one (or not known empty here)."""
        own = self.namespace.cached(path)
        if (
            own is None
            or not own.is_dir
            or own.etag != NEW_DIR_ETAG
            or not self.namespace.listed_empty(path)
            or any(self.staging.under(prefix))
            or not self.new_dirs.withdraw(path)
        ):
            return False
        self.namespace.remove_dir(path, lambda: self._put_back_if_held(path, own, "its mkdir here"))
        self.namespace.entry_changed(KeyMap.split(path)[0])
        return True

    def _remove_emptied(self, path: str, own: A.Attributes, objects: list[str]) -> None:
        """The directory's objects (marker, holder) and its files' pending deletes, in one
        DeleteObjects (fs/deletes.py: ``flush_with``). If S3 kept any of them, or lists a key
        in it after (another client's file, put since our listing: that listing was all the
        shortcut knew), the directory's objects are PUT again with the metadata it had (never a
        directory whose mode vanished while a file stays in it), and FsError says why:
        ENOTEMPTY when a file stays, else EIO.

        Deleted first, then asked (one LIST): asked first, a file put between the LIST and the
        delete would be left in a directory with no mode, as one put since the listing was.
        (An rmdir that asked S3 first, its listing not fresh, asks again after its deletes.)"""
        failed = self.deletes.flush_with(self.keymap.dir_prefix(path), objects)
        if not failed:
            self._put_back_if_held(path, own, "this mount listed the directory")
            return
        kept_files = [key for key, _ in failed if key not in objects]
        log.error(
            "rmdir %s: S3 did not delete %s: its directory objects are made again",
            path,
            ", ".join("%s (%s)" % pair for pair in failed),
        )
        self._make_again(path, own)
        raise FsError(errno.ENOTEMPTY if kept_files else errno.EIO, "S3 kept %s" % failed[0][0])

    def _put_back_if_held(self, path: str, own: A.Attributes, since: str) -> None:
        """After rmdir deleted directory ``path``'s objects: one LIST. A key in it (another
        client's file, put ``since`` ...) has them PUT again with the metadata it had (``own``),
        and FsError ENOTEMPTY: never a directory whose mode vanished while a file stays in it."""
        theirs = self.namespace.held_in_s3(path)
        if theirs is None:
            return
        log.warning("rmdir %s: S3 holds %s, put by another client since %s: not empty; its "
                    "directory objects are made again", path, theirs, since)
        self.namespace.forget_tree(path)  # its listing is out of date: asked again
        self._make_again(path, own)
        raise FsError(errno.ENOTEMPTY, "another client put %s" % theirs)

    def _make_again(self, path: str, own: A.Attributes) -> None:
        """rmdir deleted directory ``path``'s objects and must not have: PUT again with the
        metadata it had (``own``), recorded first (fs/newdirs.py), so that a PUT S3 refuses is
        owed still (logged, retried, put by the next mount after a ``kill -9``), not lost.
        (It was PUT unrecorded: a failure, then a kill, left a file in a directory whose mode
        was gone.) rmdir fails anyway; its errno says why the directory stays."""
        try:
            self.new_dirs.put_back(path, dict(own.metadata))
        except FsError as exc:
            log.error("rmdir %s: %s: kept, tried again", path, exc)

    def remove_file(self, path: str, etag: str | None = None) -> StagedFile | None:
        """Remove file ``path`` (its delete is sent in a batch, soon); its staged copy, if any,
        stays alive for open handles. ``etag``: the version the caller saw (its delete removes
        that version only; another client's newer one stays)."""
        key = self.keymap.key(path)
        item = self.staging.get(key)
        if item is None:
            self._remove_key(path, key, etag)
            return None
        if item.open_count > 0 and item.has_released():
            self.upload(item)  # bytes only its upload has: S3 has them for the open handles now
        with self.uploader.removing(item, "the file was removed"):  # no PUT of it lands after the delete
            if item.open_count > 0:  # open handles go on reading: keep every byte locally
                self.prefetcher.ensure(item, 0, item.remote_size)
            # A staged file's version is ours to name: S3 took the upload it knows of since the
            # caller looked, perhaps (clean: its ETag). One being written or uploaded may have a
            # PUT of ours land with no ETag known here (the one ``removing`` stopped): that delete
            # names no version, or it would miss our own bytes and the file come back.
            etag = None if item.dirty or item.uploading else (item.view().etag or None)
            self._remove_key(path, key, etag)
        return item

    def _remove_key(self, path: str, key: str, etag: str | None) -> None:
        """Queue the delete of file ``path`` (``key``), of version ``etag`` if given, and drop
        its staged copy."""
        # Hidden before its delete is queued: the batcher may send it, and S3 answer
        # (namespace.deleted), before add() returns.
        self.namespace.deleting(path)
        try:
            self.deletes.add(key, etag)
        except BaseException:
            # Not queued (its record could not be written: a full cache disk): the file stays,
            # and shows again (it stayed hidden while S3 kept it, and came back at the next mount).
            self.namespace.deleted(path, kept=True)
            raise
        self.staging.forget(key)
        self.namespace.entry_changed(KeyMap.split(path)[0])

    def rename(self, old: str, new: str, source: A.Attributes) -> None:
        """Move file or directory ``old`` (whose attributes are ``source``) to ``new``."""
        self.new_dirs.settle_under(old)  # what S3 has of it is what moves
        self.new_dirs.settle_under(new)
        if source.is_dir:
            self._check_still_empty(new)
            self._rename_dir(old, new, source)
        else:
            try:
                self._rename_file(old, new, source)
            except S3Error as exc:
                if not exc.not_found or exc.code == "NoSuchBucket":
                    raise
                # Another client removed the file since this mount looked it up (within
                # attr_ttl), or made the name a directory: S3's to say now. ESTALE has the
                # kernel look ``old`` up again (its entry is a file) and rename what it is now,
                # as rename(2) on NFS or a local disk would (it was ENOENT, the file shown still).
                self.namespace.forget(old)
                raise Stale(old, "removed from S3 by another client") from None
        now = self.clock.time()
        for parent in {KeyMap.split(old)[0], KeyMap.split(new)[0]}:
            self.namespace.entry_changed(parent, now)

    def _check_still_empty(self, new: str) -> None:
        """Before a directory's rename to ``new``: S3 is asked (one LIST) whether ``new`` holds a
        key; FsError ENOTEMPTY if it does, as a local disk says. The caller's check may have been
        a listing up to ``dir_ttl`` old (or a name missing from one), and another client's file
        put since would be copied over or mixed with ours, rename saying 0."""
        theirs = self.namespace.held_in_s3(new)  # (what we removed in it sent first: no entry)
        if theirs is None:
            return
        log.warning("rename to %s: S3 holds %s, put by another client since this mount looked: "
                    "not empty", new, theirs)
        self.namespace.forget_tree(new)  # its listing is out of date: asked again
        self.namespace.forget(new)
        raise FsError(errno.ENOTEMPTY, "another client put %s" % theirs)

    def _rename_file(self, old: str, new: str, source: A.Attributes) -> None:
        """Move (of the version looked up: ``source``, else of one HEAD just before): by
        RenameObject where the server has it, else a copy, then a delete."""
        old_key, new_key = self.keymap.key(old), self.keymap.key(new)
        self.deletes.settle(new_key)
        item = self.staging.get(old_key)
        replaced = self.staging.get(new_key)
        if replaced is None or replaced is item:
            self._move_file(old, new, source, item)
            return
        # An upload of the file replaced must not land after the move (it would put its bytes
        # back at the new name: with -o writeback, its PUT may still be under way).
        with self.uploader.removing(replaced, "replaced by a rename"):
            self._move_file(old, new, source, item)

    def _move_file(self, old: str, new: str, source: A.Attributes, item: StagedFile | None) -> None:
        """:meth:`_rename_file`'s move of file ``old`` (staged as ``item``, if it is) to ``new``."""
        old_key, new_key = self.keymap.key(old), self.keymap.key(new)
        now = self.clock.time()  # its new ctime, as ext4 moves it (find -cnewer, tar --newer)
        # The lookup just before this call saw a version: the move is of it, unless another
        # client replaced it since; then of the current one, as of a staged file.
        seen = self._move_looked_up(old_key, new_key, source, now) if item is None and source.etag else None
        moved, result = seen if seen is not None else self._move_current(old_key, new_key, item, now)
        stamped = result.stamped
        if stamped is not None:
            moved.metadata, moved.ctime = stamped, now
        self.staging.rekey(old_key, new_key)
        self.namespace.forget(old, gone=not result.theirs)  # theirs: shown at the next lookup
        self.namespace.remember(new, moved)
        item = self.staging.get(new_key)
        if item is not None:
            if stamped is not None and not item.dirty:
                item.metadata_stored(stamped, moved.etag)
            else:
                item.stored_as(moved.etag)

    def _move_looked_up(
        self, old_key: str, new_key: str, source: A.Attributes, now: float
    ) -> tuple[A.Attributes, Moved] | None:
        """The move of the version a lookup just saw (``source``), with ``now`` its ctime: its
        attributes at ``new_key`` and what the move left; None if another client replaced it
        since (412): nothing moved."""
        known = (
            ObjectInfo(old_key, source.size, source.etag, source.mtime, source.metadata, source.headers)
            if source.complete
            else None
        )
        try:
            result = self._move_object(
                old_key, new_key, source.etag, now, source_info=known, size=source.size
            )
        except S3Error as exc:
            if not exc.precondition_failed:
                raise
            log.info("rename %s: changed since it was looked up; moving its current version", old_key)
            return None
        return dataclasses.replace(source, etag=result.etag), result

    def _move_current(
        self, old_key: str, new_key: str, item: StagedFile | None, now: float
    ) -> tuple[A.Attributes, Moved]:
        """The move of the version S3 holds now (one HEAD; a staged file's ``item`` uploaded
        first, if dirty), with ``now`` its ctime: its attributes at ``new_key`` and what the
        move left."""
        if item is not None and item.dirty:
            self.upload(item)  # the object must be in S3 to be moved there
        info = self.store.head(old_key)
        # of the version just seen: not one another client put meanwhile
        result = self._move_object(old_key, new_key, info.etag, now, source_info=info)
        moved = self.namespace.from_info(info)
        moved.etag = result.etag
        return moved, result

    def _move_object(
        self,
        old_key: str,
        new_key: str,
        etag: str,
        ctime: float,
        source_info: ObjectInfo | None = None,
        size: int | None = None,
    ) -> Moved:
        """The object at ``old_key``, if its ETag is still ``etag`` (else S3Error 412), is at
        ``new_key`` and no longer at ``old_key``; returns its ETag there, its metadata if it
        carries ``ctime`` now (else None: as it was), and whether another client's version is
        at ``old_key`` now (put after the copy: kept, as on a local disk their write after our
        rename makes the name anew).

        RenameObject moves it at once (:meth:`_rename_object`). Else a copy, with ``ctime`` in
        its metadata, then a delete of the old key once the copy is complete in S3 (a crash in
        between leaves both), of the version copied only: unconditional, it deleted a version
        another client put between the two, never copied.
        """
        if self.server_renames:
            return self._rename_object(old_key, new_key, etag, ctime, source_info)
        if source_info is None:
            source_info = self.store.head(old_key)  # (another version: the copy's 412 says so)
        stamped = {**source_info.metadata, A.CTIME: A.format_time(ctime)}
        # Recorded: a mount killed between the copy and the delete sends the delete when it
        # starts again (fs/renames.py), and the file is not left under both names.
        state: dict[str, str] = {"new": new_key, "etag": etag}
        self.renames.begin(old_key, dict(state))

        def on_parts(mpu: MultipartUpload, copied: bool) -> None:
            # A copy in parts (over 5 GiB): its upload, so that the next mount aborts it if a
            # crash leaves it, then the ETag its completion makes, so that the next mount
            # recognises the copy if the completion lands and the crash comes before its answer.
            state["upload"] = mpu.upload_id
            if copied and (expected := mpu.expected_etag()):
                state["copied"] = expected
            self.renames.begin(old_key, dict(state))

        try:
            copied = self.store.copy_object(
                old_key,
                new_key,
                stamped,
                replace_metadata=True,
                if_match=etag,
                source_info=source_info,
                size=size,
                on_parts=on_parts,
            )
        except BaseException:
            self.renames.done(old_key)  # not copied (an upload of parts aborted): nothing to finish
            raise
        if copied and copied != etag:
            self.renames.begin(old_key, {"new": new_key, "etag": etag, "copied": copied})
        theirs = False
        try:  # if S3 refuses it, the record stays: the next mount sends it
            self.store.remove(old_key, if_match=etag)
        except S3Error as exc:
            if not exc.precondition_failed:
                raise
            log.warning("rename %s to %s: another client put a version at %s after this mount copied "
                        "it: theirs is kept there", old_key, new_key, old_key)
            theirs = True
        self.renames.done(old_key)
        return Moved(copied or etag, stamped, theirs)

    def _delete_copied(
        self, copied: dict[str, str], what: str, also: list[str] | None = None
    ) -> tuple[list[str], list[tuple[str, str]]]:
        """A rename's delete of the old keys it copied (key -> the ETag of the version copied),
        each only if it is still that version, and of ``also`` (directory markers), in
        DeleteObjects. Returns the keys at which another client put a version since the copy,
        kept (logged: deleted unconditionally, that version was lost, never copied), and
        ``[(key, error code)]`` of the deletes S3 refused."""
        failed = self.store.delete_keys([*copied, *(also or [])], etags=copied)
        theirs = [key for key, code in failed if code == "PreconditionFailed" and key in copied]
        if theirs:
            log.warning("%s: another client put %d of the old keys again after this mount copied "
                        "them, e.g. %s: theirs are kept at the old name", what, len(theirs), theirs[0])
        return theirs, [(key, code) for key, code in failed if key not in theirs]

    def _rename_object(
        self, old_key: str, new_key: str, etag: str, ctime: float, known: ObjectInfo | None
    ) -> Moved:
        """:meth:`_move_object` by RenameObject: the server moves the object at once (it cannot
        be lost: it keeps it under one name or the other), its metadata as it was; a self-copy
        then stores ``ctime`` (:meth:`_stamp_ctime`, of the metadata ``known`` holds, if given).

        Recorded from before the RenameObject until the ctime is stored: one S3 refused (a 500
        after the retry policy's attempts, S3 unreachable) is kept and tried again in the
        background, and by the next mount, as one a kill left (:meth:`_finish_moved`); the
        rename stands meanwhile, its ctime as it was. Not moved, nothing is owed.
        """
        state = {"new": new_key, "etag": etag, "moved": "1", "ctime": A.format_time(ctime)}
        self.renames.begin(old_key, state)
        try:
            self._send_rename_object(old_key, new_key, etag)
        except BaseException:
            self.renames.done(old_key)
            raise
        try:
            stored = self._stamp_ctime(new_key, etag, known, ctime)
        except Exception as exc:
            log.warning("rename to %s: S3 would not store its new ctime (%s): it stays as it was until "
                        "S3 does (tried again in the background)", new_key, exc)
            self.renames.retry_later(old_key)
            return Moved(etag, None)
        self.renames.done(old_key)
        return Moved(*stored) if stored is not None else Moved(etag, None)

    def _send_rename_object(self, old_key: str, new_key: str, etag: str) -> None:
        """RenameObject of version ``etag`` of ``old_key`` to ``new_key``. A retried request
        whose first attempt did land finds no source: the object is at the new name already,
        recognised by its ETag."""
        try:
            self.store.rename_object(old_key, new_key, if_match=etag)
        except S3Error as exc:
            if not exc.not_found or self.store.current_etag(new_key) != etag:
                raise
            log.info("rename %s: already at %s (a retried RenameObject)", old_key, new_key)

    def _stamp_ctime(
        self, key: str, etag: str, known: ObjectInfo | None, ctime: float
    ) -> tuple[str, dict[str, str]] | None:
        """After a RenameObject (which keeps the metadata): a self-copy of ``key`` (version
        ``etag``, whose metadata ``known`` holds, else one HEAD) that stores ``ctime``; returns
        its ETag and metadata. One request more a rename: on SeaweedFS such a copy changes the
        metadata only (20-70 ms for 100 MB, loaded; a copy to another key took 3-4 s), but a
        copy in parts (over 5 GiB) would copy the bytes: those keep their ctime, as does a
        version another client put meanwhile (its own): None then. Raises if S3 refused it
        otherwise (the caller keeps it owed)."""
        try:
            info = known if known is not None else self.store.head(key)
            if info.etag != etag or info.size > MAX_SINGLE_COPY:
                return None
            stamped = {**info.metadata, A.CTIME: A.format_time(ctime)}
            copied = self.store.copy_object(
                key, key, stamped, replace_metadata=True, if_match=etag, source_info=info
            )
        except S3Error as exc:
            if exc.precondition_failed or exc.not_found:
                return None
            raise
        return copied or etag, stamped

    def _rename_dir(self, old: str, new: str, source: A.Attributes) -> None:
        """Every key under the directory: its markers made anew, its files moved (RenameObject)
        or copied, in parallel; then what is left of the old keys deleted. Not atomic: a crash
        in the middle leaves each file under one name or the other (moved) or both (copied)."""
        old_prefix, new_prefix = self.keymap.dir_prefix(old), self.keymap.dir_prefix(new)
        now = self.clock.time()  # its new ctime, as ext4 moves it
        self.namespace.write_holders(old)  # holders not written yet (-o writeback) are copied too
        self.deletes.flush(old_prefix)  # what was removed in it is not copied
        self.deletes.flush(new_prefix)
        self.deletes.settle(self.keymap.key(new))  # a file of the new name (as in mkdir)
        for item in list(self.staging.under(old_prefix)):
            if item.dirty:
                self.upload(item)
        entries = list(self.store.list_all(old_prefix))
        folder = self.keymap.folder_key(old)
        if not entries and not self.store.current_etag(folder) and not self.store.current_etag(old_prefix):
            # Nothing of it in S3: another client removed or renamed it since our lookup. Made
            # anew here, it became an empty directory that was never there (two mounts' mv).
            log.warning("rename %s to %s: %s is not in S3 any more (another client removed or renamed it)",
                        old, new, old)
            self.namespace.forget_tree(old)
            self.namespace.forget(old, gone=True)
            raise FsError(errno.ENOENT, "%s is gone" % old)
        keys = [e.key for e in entries]
        # Every new name is checked before the first copy: S3 refusing one deep inside would
        # leave the tree half copied under the new name, with rename failing.
        new_keys = [new_prefix] + [new_prefix + k[len(old_prefix) :] for k in keys]
        self.check_keys_fit(new_keys, holder=self.keymap.folder_key(new))
        # The markers of it and of each directory in it too, where they had none: a server that
        # keeps directories (SeaweedFS) keeps the emptied ones, listed (an empty directory where
        # ls showed none) until they are deleted, deepest first (as delete_keys sends them).
        implicit = {k[: i + 1] for k in keys for i in range(len(old_prefix), len(k)) if k[i] == "/"}
        dirs = sorted({*implicit, *(k for k in keys if k.endswith("/")), old_prefix, folder})
        # Recorded before the first request: a mount killed part way finishes it when it starts
        # again (fs/renames.py), rather than leaving the files half under each name.
        self.renames.begin(old_prefix, {"new": new_prefix, "dirs": dirs})
        # Markers before what is in them, a level at a time: SeaweedFS, making a key's parent
        # directory while that directory's marker is PUT, can lose the marker (1 in ~150 here).
        markers: dict[int, list[ListEntry]] = {}
        for e in entries:
            if e.key.endswith("/"):
                markers.setdefault(e.key.count("/"), []).append(e)
        made = {new_prefix} | {new_prefix + e.key[len(old_prefix) :] for e in entries if e.key.endswith("/")}
        if self.namespace.cached(new) is not None:  # an empty directory it replaces: not ours to remove
            made.discard(new_prefix)
        files = [e for e in entries if not e.key.endswith("/")]
        left = keys  # what is still at the old names once the files are at the new ones
        if self.server_renames:
            left = [e.key for e in entries if e.key.endswith("/")]
        copied: dict[str, str] = {}  # old key -> the ETag of the version copied
        try:
            if old_prefix not in keys:  # an implicit or _$folder$ directory: give the new one a marker
                self.store.put(new_prefix, b"", {"Content-Type": DIRECTORY_CONTENT_TYPE})
            for level in sorted(markers):
                self._copy_keys(markers[level], old_prefix, new_prefix, ctime=now)
            if self.server_renames:
                self._move_keys(files, old_prefix, new_prefix)
            else:
                copied = self._copy_keys(files, old_prefix, new_prefix)
            try:  # a _$folder$ object (the holder of its metadata, on some servers) moves too
                info = self.store.head(folder)
                moved_meta = {**info.metadata, A.CTIME: A.format_time(now)}  # its ctime moves (ext4)
                self._copy(
                    folder, self.keymap.folder_key(new), moved_meta, replace_metadata=True, source_info=info
                )
            except S3Error as exc:
                if not exc.not_found:
                    raise
        except S3Error as exc:
            if not exc.not_found:
                self._rename_failed(old, new, exc)
                raise
            self._rename_lost(old, new, source, sorted(made), dirs)
            raise FsError(errno.ENOENT, "%s: moved or removed by another client" % old) from exc
        except BaseException as exc:
            self._rename_failed(old, new, exc)
            raise
        # Each file's old key only if it is still the version copied: one another client put
        # since stays, at the old name (it was deleted, never copied: lost).
        theirs, failed = self._delete_copied(
            copied, "rename %s to %s" % (old, new), sorted({*left, *dirs} - copied.keys())
        )
        if failed:
            # The record stays: the next mount deletes what is left of the old name.
            log.error("rename %s: could not delete %d old keys, e.g. %s; they are deleted at the "
                      "next mount", old, len(failed), failed[0])
        else:
            self.renames.done(old_prefix)
        for item in list(self.staging.under(old_prefix)):
            self.staging.rekey(item.key, new_prefix + item.key[len(old_prefix) :])
        self.namespace.forget(old, gone=not theirs)  # the parents' link counts follow
        self.namespace.forget_tree(old)
        self.namespace.forget_tree(new)
        # its holder's ETag is new: asked at next use; its ctime moved (stored on its holder)
        moved = dataclasses.replace(source, complete=False, ctime=now)
        self.namespace.remember(new, moved)

    def _move_keys(self, entries: list[ListEntry], old_prefix: str, new_prefix: str) -> None:
        """RenameObject of ``entries`` (keys under ``old_prefix``) to their names under
        ``new_prefix``, in parallel. One another client moved or removed meanwhile does not stop
        the others (S3Error not found once all are tried): each file ends under one name, ours
        or the other client's, none left behind at the old one."""
        gone: list[S3Error] = []

        def move(e: ListEntry) -> None:
            try:
                self.store.rename_object(e.key, new_prefix + e.key[len(old_prefix) :])
            except S3Error as exc:
                if not exc.not_found:
                    raise
                gone.append(exc)

        self.store.run_parallel((lambda e=e: move(e)) for e in entries)
        if gone:
            raise gone[0]

    def _rename_failed(self, old: str, new: str, exc: BaseException) -> None:
        """A directory's rename failed part way (S3 down, a refusal): both names are asked again."""
        self.namespace.forget_tree(old)  # some files moved (or were copied): both are asked again
        self.namespace.forget_tree(new)
        # Some files may be at the new name already (moved, or copied beside the old ones):
        # the record stays, and the next mount finishes the rename, as after a kill; dropped,
        # the directory stayed half under each name for good (S3 down part way).
        log.error("rename %s to %s failed part way (%s): it is finished at the next mount", old, new, exc)

    def _rename_lost(
        self, old: str, new: str, source: A.Attributes, made: list[str], dirs: list[str]
    ) -> None:
        """A directory's rename found keys of it gone part way: another client moved or removed
        them (two mounts' mv of one directory at once). Each file stays where it is now, under
        one name: a name that got files of it has its marker and holder (the mode); one that
        got none, none of the markers this rename made (``made``); the old directory's objects
        (``dirs``) go once no file is left under it. Nothing is left for the next mount to finish."""
        old_prefix, new_prefix = self.keymap.dir_prefix(old), self.keymap.dir_prefix(new)
        moved = [k for k in (e.key for e in self.store.list_all(new_prefix)) if not k.endswith("/")]
        stayed = [k for k in (e.key for e in self.store.list_all(old_prefix)) if not k.endswith("/")]
        if moved:
            self.namespace.write_dir(new, dict(source.metadata), new=True)
        else:
            self.store.delete_keys(made)
        if not stayed:
            self.store.delete_keys(dirs)
        self.renames.done(old_prefix)
        log.warning("rename %s to %s: another client moved or removed files of it meanwhile: %d files "
                    "are under %s, %d under %s, the others where that client put them", old, new,
                    len(moved), new, len(stayed), old)
        for path in (old, new):
            self.namespace.forget_tree(path)
            self.namespace.forget(path)
        if not stayed:
            self.namespace.forget(old, gone=True)

    def _copy_keys(
        self, entries: list[ListEntry], old_prefix: str, new_prefix: str, ctime: float | None = None
    ) -> dict[str, str]:
        """Copy ``entries`` (keys under ``old_prefix``) to their names under ``new_prefix``, in
        parallel, the marker ``old_prefix`` itself (the moved directory's) with ``ctime``;
        returns old key -> the ETag of the version copied, of each file that has one."""
        etags = [""] * len(entries)  # each job writes its own slot

        def copy(i: int, e: ListEntry) -> None:
            stamp = ctime if e.key == old_prefix else None
            etags[i] = self._copy_key(e.key, new_prefix + e.key[len(old_prefix) :], e.size, e.etag, stamp)

        self.store.run_parallel((lambda i=i, e=e: copy(i, e)) for i, e in enumerate(entries))
        return {e.key: etag for e, etag in zip(entries, etags, strict=True) if etag}

    def _copy(self, source: str, destination: str, *args: Any, **kwargs: Any) -> str:
        """``store.copy_object``, a copy in parts recorded while under way (fs/copies.py)."""
        return self.uploader.copy(source, destination, *args, **kwargs)

    def _copy_key(
        self, source: str, destination: str, size: int, etag: str = "", ctime: float | None = None
    ) -> str:
        """Server-side copy; a directory marker is re-made instead (some servers can't copy one),
        with ``ctime`` where it carries metadata and one is given. Returns the ETag of the
        version copied ("" for a marker, or if none is known).

        Of the listed version (``etag``, ``size``: no HEAD); one another client put since the
        listing (412) is looked up (one HEAD) and copied instead, so that the rename's delete
        after names the version it copied."""
        if source.endswith("/"):
            info = self.store.head(source)
            metadata = dict(info.metadata)
            if ctime is not None and metadata:
                metadata[A.CTIME] = A.format_time(ctime)
            self.store.put(destination, b"", {**info.headers, **metadata})
            return ""
        for _ in range(RENAME_COPY_TRIES):
            try:
                self._copy(source, destination, size=size, if_match=etag or None)
                return etag
            except S3Error as exc:
                if not exc.precondition_failed or not etag:
                    raise
            info = self.store.head(source)  # gone (404): the rename's "moved or removed" path
            etag, size = info.etag, info.size
        log.error("rename: %s changed in S3 at each of %d tries", source, RENAME_COPY_TRIES)
        raise FsError(errno.EIO, "%s changed in S3 at each try of its copy" % source)

    def symlink(self, target: str, source: str, mode: int, uid: int, gid: int) -> None:
        """Make ``target`` a link to ``source``: an object whose body is ``source``.

        Where the server honours ``If-None-Match: *`` (the mount's probe), the PUT carries it,
        at no cost: a name another client took since our lookup is EEXIST, as symlink(2) says,
        not replaced (``ln -s`` locks hold across mounts)."""
        now = self.clock.time()
        meta = A.posix_metadata(mode, uid, gid, now)
        body = source.encode("utf-8", "surrogateescape")
        key = self.keymap.key(target)
        self.new_dirs.settle(KeyMap.split(target)[0])
        self.deletes.settle(key)
        exclusive = self.uploader.put_check == CHECK_CONDITIONAL
        try:
            etag = self.store.put(key, body, meta, if_none_match=exclusive)
        except S3Error as exc:
            if not (exclusive and exc.precondition_failed):
                raise
            etag = self._own_link(key, body, meta)  # a retried PUT whose first attempt landed
            if not etag:
                self.namespace.forget(target)
                raise FsError(errno.EEXIST, "another client made %s meanwhile" % target) from None
        self.namespace.remember(
            target, A.attributes_from(meta, len(body), now, self.defaults, "file", etag=etag)
        )
        self.namespace.entry_changed(KeyMap.split(target)[0], now)

    def _own_link(self, key: str, body: bytes, meta: dict[str, str]) -> str:
        """The ETag of the object at ``key`` if it is the link just put (its body and mtime),
        else '' (one HEAD)."""
        try:
            info = self.store.head(key)
        except S3Error as exc:
            if not exc.not_found:
                raise
            return ""
        ours = info.etag == hashlib.md5(body).hexdigest() and info.metadata.get(A.MTIME) == meta.get(A.MTIME)
        return info.etag if ours else ""

    def mknod(self, path: str, mode: int, dev: int, uid: int, gid: int) -> None:
        """A FIFO, socket or device: an empty object whose mode (and rdev) say what, as s3fs-fuse does."""
        now = self.clock.time()
        meta = A.posix_metadata(mode, uid, gid, now)
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            meta[A.META_PREFIX + "rdev"] = str(dev)
        self.new_dirs.settle(KeyMap.split(path)[0])
        self.deletes.settle(self.keymap.key(path))
        etag = self.store.put(self.keymap.key(path), b"", meta)
        self.namespace.remember(path, A.attributes_from(meta, 0, now, self.defaults, "file", etag=etag))
        self.namespace.entry_changed(KeyMap.split(path)[0], now)

    # -- metadata ---------------------------------------------------------------------------

    def _copy_with_metadata(
        self, path: str, key: str, seen: str, stamped: Change
    ) -> tuple[A.Attributes, dict[str, str], str]:
        """The self-copy of a clean file with ``stamped`` applied to its metadata; returns (what S3
        had, the new metadata, the new ETag).

        Built on what S3 holds now (one HEAD), not on what we cached (``seen``: the ETag looked
        up): another client's chmod or setfattr since keeps the ETag, so the copy's condition
        would let ours replace it unseen. A version another client put since takes the change (a
        chmod is of the file the name holds, whatever its bytes), conditional on that version;
        one put between our HEAD and the copy makes us ask again (twice), then EIO.
        """
        tries = 0
        while True:
            tries += 1
            current = self.namespace.lookup_now(path)
            if current.is_dir:  # another client's a/x: the directory shadows the file (README)
                raise Stale(path, "a directory shadows this file now")
            if seen and current.etag != seen:
                log.info("%s: replaced in S3 by another client since its lookup: the change is made to %s",
                         path, current.etag)
            base = dict(current.metadata)
            if current.atime is not None and current.atime != A.parse_time(base.get(A.ATIME, "")):
                base[A.ATIME] = A.format_time(current.atime)  # moved by a read (relatime), not yet stored
            new = stamped(base, current)
            # With the POSIX keys the next upload of its content adds (another client's object may lack them).
            A.check_metadata_size({**A.posix_metadata_of(current), **new})
            info = ObjectInfo(
                key, current.size, current.etag, current.mtime, current.metadata, current.headers
            )
            try:
                etag = self._copy(
                    key, key, new, replace_metadata=True, if_match=current.etag or None, source_info=info
                )
            except S3Error as exc:
                if not exc.precondition_failed:
                    raise
                self.namespace.forget(path)
                if tries < METADATA_COPY_TRIES:
                    continue
                log.error("%s changed in S3 at each of %d tries; metadata change refused", path, tries)
                raise FsError(errno.EIO) from exc
            return current, new, etag

    def change_metadata(self, path: str, change: Change, hidden: StagedFile | None = None) -> None:
        """Apply ``change`` to the metadata of ``path``: pending upload, or a conditional self-copy.

        ``hidden``: the item of an unlinked, still open file that ``path`` names (a .fuse_hidden
        name): the change is kept with it, never stored.
        """

        def stamped(meta: dict[str, str], cur: A.Attributes) -> dict[str, str]:
            new = change(meta, cur)
            new[A.CTIME] = A.format_time(self.clock.time())  # every change of attributes is one
            return new

        if hidden is not None:  # fchmod and friends on an unlinked open file
            current = staged_attributes(hidden, self.defaults)
            hidden.set_metadata(stamped(dict(current.metadata), current))
            return
        key = self.keymap.key(path)
        item = self.staging.get(key) if path != "/" else None
        if item is not None and (item.dirty or item.uploading):
            current = staged_attributes(item, self.defaults)
            new = stamped(dict(item.view().metadata), current)
            A.check_metadata_size({**A.posix_metadata_of(current), **new})  # as its upload carries it
            item.set_metadata(new)
            return
        self.new_dirs.settle(path)  # built on what S3 holds (a staged file's change waits for nothing)
        seen = self.namespace.lookup(path)
        if seen.is_dir:  # its holder, written anew (some servers cannot copy an empty marker)
            self.namespace.change_dir(path, stamped)
            return
        current, new, etag = self._copy_with_metadata(path, key, seen.etag, stamped)
        updated = A.attributes_from(
            new,
            current.size,
            current.mtime,
            self.defaults,
            "file",
            etag=etag,
            headers=current.headers,
        )
        self.namespace.remember(path, updated)
        if item is not None and item.view().etag == current.etag:  # else its bytes are of an older version
            item.metadata_stored(new, etag)
