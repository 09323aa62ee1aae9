"""The OpenSSH upload stream, with `sh -c` standing in for `ssh host`: what arrives, and how failures are named."""

import hashlib
import io
import os

import pytest

from edgefleet.deploy.transfer import UploadFailed, stream_upload

LOCAL = ["sh", "-c"]  # `ssh ... host` runs the remote command the same way


def obj(what: str, data: bytes, tmp_path=None):
    name = hashlib.sha256(data).hexdigest()
    if tmp_path is None:
        return (what, io.BytesIO(data), name, len(data))
    path = tmp_path / what.replace("/", "_")
    path.write_bytes(data)
    return (what, str(path), name, len(data))


def test_objects_arrive_whole_under_their_sha256(tmp_path):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    uploads = [obj("site.tar.gz", b"x" * 3_000_000, tmp_path), obj("runtime.yaml", b"log_level: info\n")]
    stream_upload(LOCAL, str(incoming), uploads)
    for what, _, name, size in uploads:
        data = (incoming / name).read_bytes()
        assert len(data) == size and hashlib.sha256(data).hexdigest() == name


def test_the_object_the_device_cannot_write_is_named(tmp_path):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    uploads = [obj("runtime.yaml", b"a: 1\n"), obj("bundle/model.onnx", b"graph" * 1000)]
    (incoming / uploads[1][2]).mkdir()  # tar cannot put a file where a (non-empty) directory is
    (incoming / uploads[1][2] / "x").write_text("x")
    with pytest.raises(UploadFailed) as failed:
        stream_upload(LOCAL, str(incoming), uploads)
    assert failed.value.what == "bundle/model.onnx" and "ssh exit" in failed.value.why


def test_a_lost_link_names_the_object_being_sent(tmp_path):
    uploads = [obj("site.tar.gz", b"y" * 4_000_000, tmp_path)]
    hang_up = ["sh", "-c", "head -c 1024 >/dev/null; exit 255", "--"]  # reads 1 kB, then the link is gone
    with pytest.raises(UploadFailed) as failed:
        stream_upload(hang_up, str(tmp_path), uploads)
    assert failed.value.what == "site.tar.gz" and "ssh exit 255" in failed.value.why


def test_a_local_file_that_shrank_is_reported_not_sent(tmp_path):
    uploads = [obj("bundle/model.onnx.data", b"w" * 100_000, tmp_path)]
    with open(uploads[0][1], "wb") as fh:
        fh.write(b"short")  # changed after its sha256 and size were taken
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    with pytest.raises(UploadFailed, match="reading it on this host"):
        stream_upload(LOCAL, str(incoming), uploads)


def _receiver(build: dict | None = None):
    import json
    import shlex
    import sys

    from edgefleet.deploy.remote import source as program_source
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(program_source('receiver'))}" + (
        f" {shlex.quote(json.dumps(build))}" if build else "")


def test_the_receiver_keeps_only_objects_whose_bytes_are_their_name(tmp_path):
    """With the device's Python, each object is hashed as it is written and kept only under its sha256."""
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    uploads = [obj("site.tar.zst", b"x" * 3_000_000, tmp_path), obj("runtime.yaml", b"log_level: info\n")]
    stream_upload(LOCAL, str(incoming), uploads, remote=_receiver())
    assert sorted(p.name for p in incoming.iterdir()) == sorted(u[2] for u in uploads)
    for _, _, name, _ in uploads:
        assert hashlib.sha256((incoming / name).read_bytes()).hexdigest() == name


def test_the_receiver_refuses_bytes_that_changed_on_the_way(tmp_path):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    good = obj("runtime.yaml", b"a: 1\n")
    what, path, name, size = obj("bundle/bundle.json", b'{"name": "v3"}', tmp_path)
    with open(path, "wb") as fh:
        fh.write(b'{"name": "v9"}')  # same size, other bytes than its sha256 says
    with pytest.raises(UploadFailed) as failed:
        stream_upload(LOCAL, str(incoming), [good, (what, path, name, size)], remote=_receiver())
    assert failed.value.code == 4 and name in failed.value.why
    assert [p.name for p in incoming.iterdir()] == [good[2]]  # the bad one is nowhere, not even as .part


def test_the_receiver_widens_its_pipe_before_reading(tmp_path):
    """sshd writes into the receiver's stdin pipe: at 1 MiB instead of 64 KiB it no longer holds
    (and grows, on every new connection) a channel window's worth of buffers on the device."""
    import fcntl
    import subprocess
    import tarfile
    import time

    get_size = getattr(fcntl, "F_GETPIPE_SZ", 1032)
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(["sh", "-c", _receiver()], stdin=read_end, cwd=tmp_path)
    os.close(read_end)
    try:
        assert fcntl.fcntl(write_end, get_size) == 64 * 1024  # what a new pipe gets
        data = b"z" * 1000
        info = tarfile.TarInfo(hashlib.sha256(data).hexdigest())
        info.size = len(data)
        os.write(write_end, info.tobuf(tarfile.USTAR_FORMAT))  # a header, no body yet: it waits on us
        deadline = time.monotonic() + 30
        while fcntl.fcntl(write_end, get_size) != 1 << 20 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert fcntl.fcntl(write_end, get_size) == 1 << 20
        os.write(write_end, data + bytes(-len(data) % 512) + bytes(1024))
    finally:
        os.close(write_end)
        assert proc.wait(30) == 0
    assert (tmp_path / info.name).read_bytes() == data


def _release_spec(root, uploads, final="r-1"):
    return {"tmp": str(root / "releases" / f"{final}.tmp"), "final": str(root / "releases" / final),
            "objects": str(root / "objects"), "site": str(root / "envs" / "e1"),
            "links": [[name, what] for what, _, name, _ in uploads], "compile": False}


def test_the_receiver_moves_the_objects_in_and_builds_the_release(tmp_path):
    """Where the login user writes the root: the verified objects go into objects/ and the release
    is built from them by the same process, in the upload's session."""
    incoming = tmp_path / "objects" / ".incoming"
    incoming.mkdir(parents=True)
    (tmp_path / "releases").mkdir()
    uploads = [obj("bundle/model.onnx", b"m" * 2_000_000, tmp_path), obj("runtime.yaml", b"log_level: info\n"),
               obj("payload/edge_runtime/__init__.py", b"X = 1\n")]
    stream_upload(LOCAL, str(incoming), uploads, remote=_receiver(_release_spec(tmp_path, uploads)))
    assert list(incoming.iterdir()) == []
    final = tmp_path / "releases" / "r-1"
    for what, _, name, _ in uploads:
        assert (final / what).stat().st_ino == (tmp_path / "objects" / name).stat().st_ino
    assert os.readlink(final / "site") == str(tmp_path / "envs" / "e1")


def test_the_receiver_builds_nothing_from_bytes_that_changed_on_the_way(tmp_path):
    incoming = tmp_path / "objects" / ".incoming"
    incoming.mkdir(parents=True)
    (tmp_path / "releases").mkdir()
    what, path, name, size = obj("bundle/bundle.json", b'{"name": "v3"}', tmp_path)
    with open(path, "wb") as fh:
        fh.write(b'{"name": "v9"}')
    uploads = [obj("runtime.yaml", b"a: 1\n"), (what, path, name, size)]
    with pytest.raises(UploadFailed) as failed:
        stream_upload(LOCAL, str(incoming), uploads, remote=_receiver(_release_spec(tmp_path, uploads)))
    assert failed.value.code == 4
    assert list((tmp_path / "releases").iterdir()) == [] and sorted(os.listdir(tmp_path / "objects")) == [".incoming"]


def test_a_release_the_receiver_cannot_build_says_so(tmp_path):
    incoming = tmp_path / "objects" / ".incoming"
    incoming.mkdir(parents=True)
    uploads = [obj("runtime.yaml", b"a: 1\n")]
    spec = _release_spec(tmp_path, uploads)
    spec["links"].append(["0" * 64, "bundle/model.onnx"])  # an object the device does not have
    with pytest.raises(UploadFailed) as failed:
        stream_upload(LOCAL, str(incoming), uploads, remote=_receiver(spec))
    assert failed.value.code == 5 and "build:" in failed.value.why and "0" * 64 in failed.value.why
    assert not (tmp_path / "releases" / "r-1").exists()  # nothing half-built in place
    assert (tmp_path / "objects" / uploads[0][2]).is_file()  # verified and kept: the next deploy needs no re-upload


def test_a_device_that_stops_reading_fails_the_upload_within_its_timeout(tmp_path):
    """#19: every device step is bounded, the upload stream too (a stalled link once hung it forever)."""
    import time

    uploads = [obj("site.tar.gz", b"z" * 4_000_000, tmp_path)]
    stalled = ["sh", "-c", "exec sleep 120"]  # takes the stream, never reads it: the pipe fills, the write blocks
    started = time.monotonic()
    with pytest.raises(UploadFailed) as failed:
        stream_upload(stalled, str(tmp_path), uploads, timeout=1.0)
    assert time.monotonic() - started < 30
    assert failed.value.what == "site.tar.gz" and "timed out after 1 s" in failed.value.why
