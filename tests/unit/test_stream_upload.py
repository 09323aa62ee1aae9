"""The OpenSSH upload stream, with `sh -c` standing in for `ssh host`: what arrives, and how failures are named."""

import hashlib
import io

import pytest

from edgefleet.deploy.apply import UploadFailed, stream_upload

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


def _receiver():
    import shlex
    import sys

    from edgefleet.deploy.apply import RECEIVER
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(RECEIVER)}"


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
