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


def _settled(path, monkeypatch, age_s=3600):
    monkeypatch.setattr(digest.time, "time", lambda: os.stat(path).st_ctime_ns / 1e9 + age_s)


def test_big_settled_files_are_remembered_between_runs(tmp_path, monkeypatch):
    """A new process (the next rollout) takes a big file's digest from disk while its stat holds."""
    monkeypatch.setenv("EDGEFLEET_DIGEST_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "model.onnx.data"
    path.write_bytes(b"w" * (2 << 20))
    _settled(path, monkeypatch)
    want = hashlib.sha256(b"w" * (2 << 20)).hexdigest()
    assert digest.sha256_file(path) == want
    digest._known.clear()  # as a new process starts
    reads = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda *a, **k: reads.append(str(a[0])) or real_open(*a, **k))
    assert digest.sha256_file(path) == want and str(path) not in reads
    monkeypatch.setattr("builtins.open", real_open)
    path.write_bytes(b"v" * (2 << 20))  # same size, new content: the stat moved, the record is not used
    digest._known.clear()
    _settled(path, monkeypatch)
    assert digest.sha256_file(path) == hashlib.sha256(b"v" * (2 << 20)).hexdigest()


def test_a_file_still_being_written_is_not_remembered(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEFLEET_DIGEST_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "site.tar.zst"
    path.write_bytes(b"z" * (2 << 20))
    digest.sha256_file(path)  # modified just now: not settled
    assert not (tmp_path / "cache").exists()
