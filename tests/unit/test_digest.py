"""sha256_file: remembered while a settled file's stat is unchanged, hashed again otherwise."""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from edgefleet import digest


@pytest.mark.parametrize("age_s, cached", [(3600, True), (0, False)])
def test_settled_files_are_hashed_once(tmp_path, monkeypatch, age_s, cached):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"a" * 1000)
    old = time.time() - age_s
    os.utime(path, (old, old))
    if age_s:  # ctime cannot be set back: pretend the clock moved on instead
        monkeypatch.setattr(digest.time, "time", lambda: os.stat(path).st_ctime_ns / 1e9 + age_s)
    assert digest.sha256_file(path) == hashlib.sha256(b"a" * 1000).hexdigest()
    reads = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda *a, **k: reads.append(a) or real_open(*a, **k))
    assert digest.sha256_file(path) == hashlib.sha256(b"a" * 1000).hexdigest()
    assert (not reads) == cached


def test_a_changed_file_is_hashed_again(tmp_path):
    path = tmp_path / "runtime.yaml"
    path.write_bytes(b"threads: 4\n")
    first = digest.sha256_file(path)
    path.write_bytes(b"threads: 2\n")  # same size; the stat (ctime, mtime) changes, or the file is not settled
    assert digest.sha256_file(path) != first == hashlib.sha256(b"threads: 4\n").hexdigest()
