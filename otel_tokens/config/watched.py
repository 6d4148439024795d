"""Files the operator edits while the app runs (prices, quotas, the directory): when one has changed, and when an
edit may be read. A file written in place (not written then renamed) can be read half-written and still parse, so
an edit is read only once the same stamp has stood still for a settle time."""

from __future__ import annotations

import time
from pathlib import Path

Stamp = tuple[int, int, int]


def file_stamp(path: Path) -> Stamp | None:
    """(mtime ns, size, inode): a rename over the file is a new inode; None when it cannot be read."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


class SettleGate:
    """Says when a changed stamp has stood still for `settle` seconds (the monotonic clock, not the file's mtime,
    which may lie in the future: skew, tar, touch)."""

    def __init__(self, settle: float) -> None:
        self.settle = settle
        self._seen: tuple[Stamp, float] | None = None  # the changed stamp, and when it was first seen

    def ready(self, stamp: Stamp) -> bool:
        now = time.monotonic()
        if self._seen is None or self._seen[0] != stamp:
            self._seen = (stamp, now)
            return False
        if now - self._seen[1] < self.settle:
            return False
        self._seen = None
        return True
