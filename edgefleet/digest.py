"""Content hashes: everything edgefleet ships is named and verified by sha256."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

__all__ = ["sha256_file", "sha256_bytes"]

# (device, inode, size, mtime, ctime) -> sha256, for files that were already old when hashed
_known: dict[tuple[int, int, int, int, int], str] = {}
_lock = threading.Lock()
# a file modified this recently may change again within the clock's granularity without its
# stat changing (git's "racy" rule): such a file is hashed every time
_SETTLED_S = 2.0


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file's bytes.

    Remembered per process while the file's stat is unchanged: a rollout to N devices hashes
    the same 23 MB model once, not N times. The device checks every upload against these
    sums, so a stale one could only fail a deploy, never slip bytes through.
    """
    st = os.stat(path)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    with _lock:
        known = _known.get(key)
    if known is not None:
        return known
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    result = digest.hexdigest()
    if time.time() - max(st.st_mtime_ns, st.st_ctime_ns) / 1e9 > _SETTLED_S:
        with _lock:
            _known[key] = result
    return result


def sha256_bytes(data: bytes) -> str:
    """Return the hex sha256 of `data`."""
    return hashlib.sha256(data).hexdigest()
