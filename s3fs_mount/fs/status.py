"""The attribute on a mount's root that ``s3fs-mount status`` and ``sync`` read.

Its own module so that reading it (s3fs_mount.control) needs no libfuse.

The kernel refuses an extended attribute's value over 64 KiB (``E2BIG``), so
the lists in the status are cut to fit (:func:`fitting`): the first files
waiting to upload, and their number and bytes in all (``pending_files``,
``pending_bytes``); the first new directories not in S3 yet and their number
(``new_dirs_count``). ``sync`` asks again as it goes, until none is left.
"""

from __future__ import annotations

import json
from typing import Any

#: On the mount's root: the mount's status as JSON (S3Operations.status).
STATUS_XATTR = "s3.status"
#: Bytes of JSON a list in the status may take: its three lists and the rest stay under the
#: kernel's 64 KiB for one attribute (a path may be 4 KiB long: 4 of them still fit).
LIST_BUDGET = 18 << 10


def fitting(entries: list[dict[str, Any]], budget: int = LIST_BUDGET) -> list[dict[str, Any]]:
    """The first of ``entries`` whose JSON takes at most ``budget`` bytes in all."""
    out = []
    used = 0
    for entry in entries:
        used += len(json.dumps(entry)) + 2
        if used > budget:
            break
        out.append(entry)
    return out
