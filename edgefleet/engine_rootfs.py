"""The engine's rootfs side: a zstd rootfs tarball into a local image, streamed through a pipe.

`import_image` is `docker import`; `load_rootfs` writes a one-layer image archive for
`docker load` (the same bytes, with the arch recorded as asked). The other half of engine.py:
it runs docker through engine's own helpers (`_run`, `_zstd_stream`, `_pipe`).
"""

from __future__ import annotations

import hashlib
import io
import json
import shlex
import subprocess
import tarfile
from pathlib import Path

from edgefleet import engine
from edgefleet.engine import EngineError

__all__ = ["import_image", "load_rootfs"]


def import_image(tarball: Path, tag: str, platform: str, changes: list[str]) -> None:
    """Import a zstd-compressed rootfs tarball as an image (`docker import`)."""
    argv = ["docker", "import", "--platform", platform]
    for change in changes:
        argv += ["--change", change]
    argv += ["-", tag]
    print("+ zstd -dc " + shlex.quote(str(tarball)) + " | " + shlex.join(argv), flush=True)
    with engine._zstd_stream(tarball) as unzstd:
        try:
            engine._run(argv, stdin=engine._pipe(unzstd.stdout), quiet=True)
        finally:
            engine._pipe(unzstd.stdout).close()
    if unzstd.returncode != 0:
        raise EngineError(f"zstd -dc {tarball} failed ({unzstd.returncode})")


def load_rootfs(tarball: Path, tag: str, arch: str, labels: dict[str, str]) -> None:
    """Load a zstd rootfs tarball as a one-layer image recorded with the right arch.

    `docker import --platform` on dockerd 20.10 records the host's arch, and BuildKit then
    looks for the base in a registry; `docker load` of an image archive keeps what its
    config says.
    """
    digest, size = hashlib.sha256(), 0
    with engine._zstd_stream(tarball) as unzstd:
        unzstd_out = engine._pipe(unzstd.stdout)
        for chunk in iter(lambda: unzstd_out.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    config = json.dumps({
        "architecture": arch, "os": "linux", **({"variant": "v8"} if arch == "arm64" else {}),
        "config": {"Labels": labels,
                   "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{digest.hexdigest()}"]},
        "history": [{"created_by": f"edgefleet rootfs {tarball.name}"}],
    }).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [tag],
                            "Layers": ["layer.tar"]}]).encode()
    print(f"+ docker load  # {tarball.name} as {tag} (linux/{arch})", flush=True)
    loader = subprocess.Popen(["docker", "load", "-q"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with tarfile.open(fileobj=engine._pipe(loader.stdin), mode="w|") as archive:
        for name, content in ((config_name, config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
        info = tarfile.TarInfo("layer.tar")
        info.size = size
        with engine._zstd_stream(tarball) as unzstd:
            archive.addfile(info, engine._pipe(unzstd.stdout))
    engine._pipe(loader.stdin).close()
    err = engine._pipe(loader.stderr).read()
    engine._pipe(loader.stdout).read()
    if loader.wait() != 0:
        raise EngineError(f"docker load of {tarball} failed: {err.decode()[-2000:]}")
