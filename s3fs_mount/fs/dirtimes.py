"""The background writer of directory times.

Creating, removing or renaming an entry sets its directory's mtime and ctime
in memory (:meth:`Namespace.entry_changed`); this thread stores them on the
directory's holder object about once a second, so a burst of creates in one
directory costs one PUT per second, not one per file.
"""

from __future__ import annotations

import logging
import threading

from s3fs_mount.fs.namespace import Namespace

log = logging.getLogger(__name__)

#: Seconds between rounds, and how old a change must be before it is stored.
INTERVAL = 1.0


class DirTimesWriter:
    """Calls :meth:`Namespace.store_dir_times` every ``interval`` seconds until :meth:`close`.

    :param namespace: whose pending directory times to store.
    """

    def __init__(self, namespace: Namespace, interval: float = INTERVAL) -> None:
        self.namespace = namespace  # immutable after __init__ (as every field here)
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dir-times", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.namespace.store_dir_times(older_than=self.interval)
            except Exception:  # noqa: BLE001 - the thread must live on; the next round retries
                log.exception("storing directory times failed")

    def close(self) -> None:
        """Stop the thread and store every pending time now (at unmount)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.namespace.store_dir_times()
