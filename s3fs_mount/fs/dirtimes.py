"""The background writer of directory times.

Creating, removing or renaming an entry sets its directory's mtime and ctime
in memory (:meth:`Namespace.entry_changed`); this thread stores them on the
directory's holder object once the directory has had no change for
:data:`QUIET` seconds, so a burst of creates in one directory costs one PUT,
not one per file. Each PUT follows one HEAD of the directory's holder (of its
marker, when the holder is one its ``mkdir`` left to this writer), whatever
the mount cached: another client's change of its metadata stands, and a
directory another client removed meanwhile is not made again.
"""

from __future__ import annotations

import logging
import threading

from s3fs_mount.fs.namespace import Namespace

log = logging.getLogger(__name__)

#: Seconds between rounds.
INTERVAL = 0.25
#: Seconds a directory must have gone unchanged before its times are stored.
QUIET = 0.5


class DirTimesWriter:
    """Calls :meth:`Namespace.store_dir_times` every ``interval`` seconds until :meth:`close`.

    :param namespace: whose pending directory times to store.
    :param interval: seconds between rounds.
    :param quiet: seconds a directory must have gone unchanged before its times are stored.
    """

    def __init__(self, namespace: Namespace, interval: float = INTERVAL, quiet: float = QUIET) -> None:
        self.namespace = namespace  # immutable after __init__ (as every field here)
        self.interval = interval
        self.quiet = quiet
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dir-times", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.store_due()
            except Exception:  # noqa: BLE001 - the thread must live on; the next round retries
                log.exception("storing directory times failed")

    def store_due(self) -> int:
        """One round: store the times of the directories unchanged for ``quiet`` s; how many."""
        return self.namespace.store_dir_times(older_than=self.quiet)

    def close(self) -> None:
        """Stop the thread and store every pending time now (at unmount)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.namespace.store_dir_times()
