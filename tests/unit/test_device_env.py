"""Device packages: the tarball is byte-for-byte reproducible, platforms are per arch."""

from __future__ import annotations

import os
import tarfile

import pytest

from edgefleet.deploy.env import EnvError, _deterministic_tar, pip_platforms
from edgefleet.digest import sha256_file


def test_tarball_ignores_mtimes_and_pycache(tmp_path):
    src = tmp_path / "site"
    (src / "pkg" / "__pycache__").mkdir(parents=True)
    (src / "pkg" / "__init__.py").write_text("x = 1\n")
    (src / "pkg" / "__pycache__" / "m.pyc").write_bytes(b"junk")
    _deterministic_tar(src, tmp_path / "a.tar.gz")
    os.utime(src / "pkg" / "__init__.py", (1, 1))
    (src / "pkg" / "__pycache__" / "n.pyc").write_bytes(b"more junk")
    _deterministic_tar(src, tmp_path / "b.tar.gz")
    assert sha256_file(tmp_path / "a.tar.gz") == sha256_file(tmp_path / "b.tar.gz")
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        assert tar.getnames() == ["pkg", "pkg/__init__.py"]


@pytest.mark.parametrize("arch, suffix", [("arm64", "aarch64"), ("amd64", "x86_64")])
def test_platforms(arch, suffix):
    assert all(p.endswith(suffix) for p in pip_platforms(arch))


def test_unknown_arch():
    with pytest.raises(EnvError, match="riscv64"):
        pip_platforms("riscv64")
