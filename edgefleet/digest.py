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


_PERSIST_BYTES = 1 << 20  # files at least this big (model weights, package tarballs) are remembered on disk too


def _store() -> Path:
    """Return where big files' digests are remembered between runs (EDGEFLEET_DIGEST_CACHE, else ~/.cache)."""
    base = os.environ.get("EDGEFLEET_DIGEST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edgefleet", "sha256")
    return Path(base)


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file's bytes.

    Remembered while the file's stat (device, inode, size, mtime, ctime) is unchanged: per
    process (a rollout to N devices hashes the same 23 MB model once, not N times) and, for
    files of 1 MiB and more, on disk between runs (a no-op re-run hashes nothing). The
    device checks every upload against these sums, so a stale one could only fail a deploy,
    never slip bytes through.
    """
    st = os.stat(path)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    with _lock:
        known = _known.get(key)
    if known is not None:
        return known
    settled = time.time() - max(st.st_mtime_ns, st.st_ctime_ns) / 1e9 > _SETTLED_S
    record = _store() / hashlib.sha256(os.fsencode(os.path.abspath(path))).hexdigest()[:32] \
        if st.st_size >= _PERSIST_BYTES else None
    stamp = " ".join(map(str, key))
    if record is not None and settled:
        try:
            saved_stamp, _, saved = record.read_text().partition("\n")
        except OSError:
            saved_stamp, saved = "", ""
        if saved_stamp == stamp and len(saved.strip()) == 64:
            with _lock:
                _known[key] = saved.strip()
            return saved.strip()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    result = digest.hexdigest()
    if settled:
        with _lock:
            _known[key] = result
        if record is not None:
            _remember(record, f"{stamp}\n{result}\n")
    return result


def _remember(record: Path, text: str) -> None:
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_name(f".{record.name}.{os.getpid()}.{threading.get_ident()}")
        tmp.write_text(text)
        tmp.replace(record)
    except OSError:
        pass  # a cache: without it the next run hashes again


def sha256_bytes(data: bytes) -> str:
    """Return the hex sha256 of `data`."""
    return hashlib.sha256(data).hexdigest()
