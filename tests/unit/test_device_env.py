"""Device packages: the tarball is byte-for-byte reproducible, platforms are per arch."""

from __future__ import annotations

import os
import tarfile

import pytest

from edgefleet.device_env import EnvError, _deterministic_tar, pip_platforms
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


def test_host_compiled_pyc_is_shipped_and_used_as_is(tmp_path):
    """.pyc compiled on the host (same Python) load on the device from a tarball with mtime 0."""
    import subprocess
    import sys

    from edgefleet.device_env import PYC_MARK, _compile

    src = tmp_path / "site"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "__init__.py").write_text("VALUE = 41 + 1\n")
    _compile(src)
    assert (src / PYC_MARK).is_file()
    _deterministic_tar(src, tmp_path / "env.tar.gz")
    with tarfile.open(tmp_path / "env.tar.gz") as tar:
        names = tar.getnames()
        assert PYC_MARK in names and any(n.startswith("pkg/__pycache__/__init__.") for n in names)
        tar.extractall(tmp_path / "device", filter="tar")
    device = tmp_path / "device"
    pyc = next((device / "pkg" / "__pycache__").iterdir())
    before = pyc.read_bytes()
    assert int.from_bytes(before[4:8], "little") & 0b01  # hash-based: no source mtime needed
    # the device imports the shipped .pyc (it would rewrite it, were it stale) and gets the value
    out = subprocess.run([sys.executable, "-c", "import pkg; print(pkg.VALUE, pkg.__file__)"],
                         cwd=device, capture_output=True, text=True, check=True).stdout.split()
    assert out == ["42", str(device / "pkg" / "__init__.py")]
    assert pyc.read_bytes() == before and (device / "pkg" / "__init__.py").stat().st_mtime == 0


def test_zstd_copy_holds_the_same_tar(tmp_path):
    """The zstd tarball unpacks to the very tar the gzip one holds (same env, fewer bytes); made once."""
    import gzip
    import shutil
    import subprocess

    from edgefleet.device_env import DeviceEnv, _with_zst

    if shutil.which("zstd") is None:
        pytest.fail("zstd is missing: scripts/setup.sh installs it")
    src = tmp_path / "site"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "__init__.py").write_text("VALUE = 1\n" * 1000)
    _deterministic_tar(src, tmp_path / "site.tar.gz")
    env = _with_zst(DeviceEnv("amd64", "3.11", tmp_path / "site.tar.gz", sha256_file(tmp_path / "site.tar.gz")))
    assert env.zst == tmp_path / "site.tar.zst" and env.zst_sha256 == sha256_file(env.zst)
    tar = subprocess.run(["zstd", "-dc", str(env.zst)], capture_output=True, check=True).stdout
    assert tar == gzip.decompress((tmp_path / "site.tar.gz").read_bytes())
    made = env.zst.stat().st_mtime_ns
    assert _with_zst(env).zst.stat().st_mtime_ns == made  # cached beside the gzip one
