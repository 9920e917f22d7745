"""Uploading staged files: whole, in parallel parts, or streamed while written.

A file written from its start (a new file, or one opened with O_TRUNC) that
grows past the multipart threshold starts a multipart upload at once; each
part is sent, in the background, as soon as the writer has filled it, so
close waits only for the tail. A write behind what was already sent, or a
truncate, abandons the stream and the close uploads the file whole.

Multipart upload ids are recorded in the item's record, so uploads a crash
interrupted are aborted at the next mount.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from s3fs_mount.fs.attrs import META_PREFIX
from s3fs_mount.fs.staging import StagedFile
from s3fs_mount.s3.names import S3Name
from s3fs_mount.s3.store import MultipartUpload, RemoteStore, part_size_for

log = logging.getLogger(__name__)

MTIME = META_PREFIX + "mtime"
#: Tests set this to kill the mount right after an upload, before its record is cleared.
CRASH_AFTER_UPLOAD = os.environ.get("S3FS_MOUNT_TEST_CRASH_AFTER_UPLOAD") == "1"
#: ``item.stream`` when streaming failed to start: upload whole at close, don't try again.
STREAM_OFF = "off"


@dataclass
class StreamingUpload:
    """A multipart upload fed part by part. Guarded by its item's cond."""

    mpu: MultipartUpload
    part_size: int
    headers: dict[str, str]
    next_part: int = 1  # the first part not yet submitted
    futures: list[concurrent.futures.Future[str]] = field(default_factory=list)

    @property
    def sent_until(self) -> int:
        return (self.next_part - 1) * self.part_size


class Uploader:
    """Puts staged files into S3.

    :param store: the connector.
    :param bucket: the bucket of every item.
    :param part_size: bytes per part (grown when a file would need > 10,000).
    :param threshold: files of at least this size upload in parts.
    :param workers: parts in flight at once, over all files.
    """

    def __init__(
        self, store: RemoteStore, bucket: str, part_size: int, threshold: int, workers: int = 8
    ) -> None:
        self.store = store
        self.bucket = bucket
        self.part_size = part_size
        self.threshold = max(threshold, part_size)
        self.pool = concurrent.futures.ThreadPoolExecutor(workers, "s3-upload")
        self._slots = threading.BoundedSemaphore(workers * 2)  # parts queued: back-pressure

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    def name(self, item: StagedFile) -> S3Name:
        return S3Name(item.key, self.bucket)

    def headers(self, item: StagedFile, with_mtime: bool = True) -> dict[str, str]:
        """The headers an upload of ``item`` carries: content headers and metadata."""
        with item.cond:
            out = dict(item.headers)
            out.update(item.metadata)
            if with_mtime:
                out[MTIME] = "%d" % int(item.mtime)
            else:
                out.pop(MTIME, None)
        return out

    def etags_of(self, item: StagedFile) -> set[str]:
        """The ETags S3 would give the item's content: single PUT, or our multipart layouts."""
        size = os.fstat(item.fd).st_size
        whole = hashlib.md5()
        etags = set()
        for part in {part_size_for(size, self.part_size), part_size_for(max(size, 1 << 30), self.part_size)}:
            digests = []
            for off in range(0, size, part):
                digest = hashlib.md5()
                for sub in range(off, min(off + part, size), 1 << 20):
                    digest.update(os.pread(item.fd, min(1 << 20, off + part - sub, size - sub), sub))
                digests.append(digest.digest())
            etags.add("%s-%d" % (hashlib.md5(b"".join(digests)).hexdigest(), len(digests)))
        for off in range(0, size, 1 << 20):
            whole.update(os.pread(item.fd, 1 << 20, off))
        etags.add(whole.hexdigest())
        return etags

    # -- streaming while written ----------------------------------------------------

    def before_write(self, item: StagedFile, offset: int) -> None:
        """A write is coming at ``offset``: abandon a stream it would contradict."""
        stream = item.stream
        if isinstance(stream, StreamingUpload) and offset < stream.sent_until:
            log.debug("%s: write behind the streamed parts, uploading whole at close", item.key)
            self.abandon(item)

    def after_write(self, item: StagedFile) -> None:
        """Send any part the writer has now filled, if the file is being written from scratch."""
        with item.cond:
            if item.remote_size or item.size < self.threshold or item.uploading:
                return
            stream = item.stream
        if stream is STREAM_OFF:
            return
        if stream is None:
            try:
                stream = self._start_stream(item)
            except Exception as exc:  # the bytes are staged: close uploads them whole
                log.warning("%s: could not start a streamed upload (%s); uploading at close", item.key, exc)
                with item.cond:
                    item.stream = STREAM_OFF
                return
        assert isinstance(stream, StreamingUpload)
        while True:
            with item.cond:
                if item.stream is not stream:
                    return
                start = stream.sent_until
                end = start + stream.part_size
                if end > item.size or not item.present.covers(start, end):
                    return
                number = stream.next_part
                stream.next_part += 1
            self._slots.acquire()  # back-pressure: the writer waits for the network
            fut = self.pool.submit(self._send_part, item, stream.mpu, number, start, stream.part_size)
            with item.cond:
                stream.futures.append(fut)

    def _start_stream(self, item: StagedFile) -> StreamingUpload:
        part = part_size_for(max(item.size, 1 << 30), self.part_size)
        headers = self.headers(item, with_mtime=False)
        stream = StreamingUpload(self._begin_multipart(item, headers), part, headers)
        with item.cond:
            item.stream = stream
        return stream

    def _begin_multipart(self, item: StagedFile, headers: dict[str, str]) -> MultipartUpload:
        """Start a multipart upload, recorded so that a crash leaves no dangling parts."""
        mpu = self.store.start_multipart(self.name(item), headers)
        with item.cond:
            item.upload_ids.append(mpu.upload_id)
        item.save()
        return mpu

    def abort_upload(self, item: StagedFile, upload_id: str) -> None:
        """Abort one of the item's multipart uploads; one whose abort fails stays recorded,
        to be tried again after the next upload or at recovery."""
        if self.store.abort_multipart(item.key, upload_id, bucket=self.bucket):
            item.forget_upload(upload_id)

    def _send_part(
        self, item: StagedFile, mpu: MultipartUpload, number: int, offset: int, size: int, slot: bool = True
    ) -> str:
        try:
            data = os.pread(item.fd, size, offset)
            etag = mpu.upload_part(number, data)
            with item.cond:
                item.uploaded_bytes += len(data)
            return etag
        finally:
            if slot:
                self._slots.release()

    def abandon(self, item: StagedFile) -> None:
        """Abort the item's stream, if any."""
        with item.cond:
            stream, item.stream = item.stream, None
        if isinstance(stream, StreamingUpload):
            concurrent.futures.wait(stream.futures)
            self.abort_upload(item, stream.mpu.upload_id)

    # -- flush ---------------------------------------------------------------------------

    def flush(self, item: StagedFile) -> bool:
        """Upload ``item`` if it is dirty; True when S3 has its latest content.

        Raises the connector's exception when the upload fails; the item
        stays dirty (and staged) for the next try.
        """
        with item.upload_lock:
            with item.cond:
                if not item.dirty:
                    return True
                generation = item.generation
                item.uploading = True
                if not isinstance(item.stream, StreamingUpload):
                    item.uploaded_bytes = 0
            started = time.monotonic()
            try:
                etag = self._upload(item)
                self._abort_leftovers(item)
            except BaseException as exc:
                with item.cond:
                    item.upload_error = str(exc)
                raise
            finally:
                with item.cond:
                    item.uploading = False
            if CRASH_AFTER_UPLOAD:  # test hook: die in the window between upload and bookkeeping
                os.kill(os.getpid(), signal.SIGKILL)
            clean = item.mark_clean(generation, etag)
            log.debug("uploaded %s (%d bytes) in %.2fs", item.key, item.size, time.monotonic() - started)
            return clean

    def _abort_leftovers(self, item: StagedFile) -> None:
        """Abort the item's multipart uploads an earlier abort failed on (S3 answers again now)."""
        with item.cond:
            live = item.stream.mpu.upload_id if isinstance(item.stream, StreamingUpload) else None
            leftovers = [u for u in item.upload_ids if u != live]
        for upload_id in leftovers:
            self.abort_upload(item, upload_id)

    def _upload(self, item: StagedFile) -> str:
        stream = item.stream
        if isinstance(stream, StreamingUpload):
            try:
                return self._finish_stream(item, stream)
            except Exception as exc:
                log.warning("%s: streamed upload failed (%s); uploading whole", item.key, exc)
                self.abandon(item)
        with item.cond:
            size = item.size
        if size < self.threshold:
            data = os.pread(item.fd, size, 0)
            return self.store.put(self.name(item), data, self.headers(item))
        part = part_size_for(size, self.part_size)
        mpu = self._begin_multipart(item, self.headers(item))
        try:
            self.store.run_parallel(
                (lambda n=n, off=off: self._send_part(item, mpu, n, off, min(part, size - off), False))
                for n, off in enumerate(range(0, size, part), start=1)
            )
            etag = mpu.complete()
        except BaseException:
            self.abort_upload(item, mpu.upload_id)
            raise
        item.forget_upload(mpu.upload_id)
        return etag

    def _finish_stream(self, item: StagedFile, stream: StreamingUpload) -> str:
        with item.cond:
            size = item.size
            start = stream.sent_until
            first = stream.next_part
            stream.next_part = first + max(0, -(-(size - start) // stream.part_size))
        tail = [
            self.pool.submit(
                self._send_part, item, stream.mpu, n, off, min(stream.part_size, size - off), False
            )
            for n, off in enumerate(range(start, size, stream.part_size), start=first)
        ]
        for fut in list(stream.futures) + tail:
            fut.result()
        etag = stream.mpu.complete()
        with item.cond:
            item.stream = None
        item.forget_upload(stream.mpu.upload_id)
        if self.headers(item, with_mtime=False) != stream.headers:
            # Metadata changed while the parts were going up: one self-copy sets it.
            etag = self.store.copy_object(
                self.name(item), self.name(item), self.headers(item), replace_metadata=True
            )
        return etag


class WritebackQueue:
    """With ``-o writeback``: uploads run here, so close returns at once.

    Bounded: ``submit`` blocks when ``limit`` files are already waiting.
    """

    def __init__(
        self,
        uploader: Uploader,
        workers: int = 4,
        limit: int = 256,
        on_uploaded: Callable[[StagedFile], None] | None = None,
    ) -> None:
        self.uploader = uploader
        self.on_uploaded = on_uploaded  # told of each file uploaded
        self._queue: queue.Queue[StagedFile | None] = queue.Queue(limit)
        self._idle = threading.Condition()
        self._busy = 0
        self._threads = [
            threading.Thread(target=self._run, name="writeback-%d" % i, daemon=True) for i in range(workers)
        ]
        for t in self._threads:
            t.start()

    def submit(self, item: StagedFile) -> None:
        with self._idle:
            self._busy += 1
        self._queue.put(item)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                if self.uploader.flush(item) and self.on_uploaded is not None:
                    self.on_uploaded(item)
            except Exception as exc:
                log.error("background upload of %s failed, kept staged: %s", item.key, exc)
            finally:
                with self._idle:
                    self._busy -= 1
                    self._idle.notify_all()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until the queue is empty; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)

    def stop(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join()
