"""File helpers for model artifacts: content hashes and atomic directory writes."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edgefleet.digest import sha256_file

__all__ = ["sha256_file", "file_record", "atomic_dir", "inputs_digest"]


def file_record(path: Path) -> dict:
    """Return {"sha256": ..., "bytes": ...} for a file."""
    return {"sha256": sha256_file(path), "bytes": Path(path).stat().st_size}


def inputs_digest(files: list[Path], settings: dict) -> str:
    """Hash input file contents plus settings, the cache key for a build step."""
    digest = hashlib.sha256(repr(sorted(settings.items())).encode())
    for path in files:
        digest.update(Path(path).name.encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temp dir next to target; on success replace target with it by rename."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            target.rename(old / target.name)
        tmp.rename(target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
