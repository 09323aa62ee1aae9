"""Cut one platform out of a `docker save` archive, as a plain docker-archive with raw layers.

`docker save` of a multi-platform image (containerd store) writes an OCI layout with every
platform and a manifest.json naming only one of them, which `docker load` on an older engine
would take whatever the device is. A device needs exactly its platform: this writes
manifest.json + config + uncompressed layers for it (any engine loads that; zstd compresses
raw layers better than the gzip blobs). An archive from a graph-driver engine (no index.json)
is rewritten the same way after checking its config's platform.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

from ..errors import EdgefleetError

__all__ = ["ArchiveError", "find_manifest", "platform_archive", "compress", "layer_sizes"]

_INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
                "application/vnd.docker.distribution.manifest.list.v2+json")


class ArchiveError(EdgefleetError):
    """The archive does not hold the wanted platform, or is not a docker/OCI archive."""


def read_member(tar: tarfile.TarFile, name: str, src: Path) -> bytes:
    """Return the bytes of regular file `name` in `tar` (opened from `src`), or raise ArchiveError naming it."""
    try:
        member = tar.extractfile(name)
    except KeyError:
        member = None
    if member is None:
        raise ArchiveError(f"{src}: missing {name}")
    return member.read()


def _blob(digest: str) -> str:
    return "blobs/sha256/" + digest.split(":", 1)[1]


def find_manifest(read_json, index: dict, platform: str) -> dict:
    """Return the image manifest for `platform` under an OCI index (nested indexes followed)."""
    os_name, arch = platform.split("/")[:2]
    seen = []
    for entry in index.get("manifests", []):
        media = entry.get("mediaType", "")
        if media in _INDEX_TYPES:
            try:
                return find_manifest(read_json, read_json(_blob(entry["digest"])), platform)
            except ArchiveError as exc:
                seen.append(str(exc))
                continue
        found = entry.get("platform") or {}
        seen.append(f"{found.get('os')}/{found.get('architecture')}")
        if found.get("os") == os_name and found.get("architecture") == arch:
            return read_json(_blob(entry["digest"]))
    raise ArchiveError(f"no {platform} image in the archive (found: {', '.join(seen) or 'none'})")


def _raw_layer(data: bytes) -> bytes:
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:4] == b"\x28\xb5\x2f\xfd":
        raise ArchiveError("zstd-compressed layers are not supported")
    return data


def platform_archive(src: Path, dest: Path, platform: str, repo_tag: str) -> None:
    """Write `dest`: a docker-archive of `platform` from the `docker save` output `src`."""
    with tarfile.open(src) as tar:
        names = set(tar.getnames())

        def read(name: str) -> bytes:
            return read_member(tar, name, src)

        def read_json(name: str) -> dict:
            return json.loads(read(name))

        if "index.json" in names:
            manifest = find_manifest(read_json, read_json("index.json"), platform)
            config_name = _blob(manifest["config"]["digest"])
            layer_names = [_blob(layer["digest"]) for layer in manifest["layers"]]
        else:
            entries = read_json("manifest.json")
            if len(entries) != 1:
                raise ArchiveError(f"{src}: expected one image, found {len(entries)}")
            config_name, layer_names = entries[0]["Config"], entries[0]["Layers"]
        config_bytes = read(config_name)
        config = json.loads(config_bytes)
        found = f"{config.get('os')}/{config.get('architecture')}"
        if found != "/".join(platform.split("/")[:2]):
            raise ArchiveError(f"{src}: image is {found}, not {platform}")
        diff_ids = config["rootfs"]["diff_ids"]
        if len(diff_ids) != len(layer_names):
            raise ArchiveError(f"{src}: {len(layer_names)} layers but {len(diff_ids)} diff_ids")
        tmp = dest.with_name(dest.name + ".part")
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as out:
            def add(name: str, data: bytes) -> None:
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o644
                out.addfile(info, io.BytesIO(data))

            config_out = f"{hashlib.sha256(config_bytes).hexdigest()}.json"
            add(config_out, config_bytes)
            layers_out = []
            for name, diff_id in zip(layer_names, diff_ids, strict=True):
                raw = _raw_layer(read(name))
                if "sha256:" + hashlib.sha256(raw).hexdigest() != diff_id:
                    raise ArchiveError(f"{src}: layer {name} does not match diff_id {diff_id}")
                layer_out = f"{diff_id.split(':', 1)[1]}/layer.tar"
                add(layer_out, raw)
                layers_out.append(layer_out)
            add("manifest.json", json.dumps(
                [{"Config": config_out, "RepoTags": [repo_tag], "Layers": layers_out}]).encode())
    tmp.replace(dest)


def compress(src: Path, dest: Path, level: int = 19) -> None:
    """Write `src` compressed with zstd to `dest` (atomically; multi-threaded, long window)."""
    tmp = dest.with_name(dest.name + ".part")
    proc = subprocess.run(["zstd", "-q", "-f", f"-{level}", "-T0", "--long=27", str(src), "-o", str(tmp)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise ArchiveError(f"zstd failed writing {dest}: {proc.stderr.strip()}")
    tmp.replace(dest)


def layer_sizes(docker_archive: Path) -> list[tuple[str, int]]:
    """Return (instruction that made it, uncompressed bytes) per layer of a docker-archive."""
    with tarfile.open(docker_archive) as tar:
        entry = json.loads(read_member(tar, "manifest.json", docker_archive))[0]
        config = json.loads(read_member(tar, entry["Config"], docker_archive))
        steps = [h.get("created_by", "") for h in config.get("history", []) if not h.get("empty_layer")]
        sizes = [tar.getmember(name).size for name in entry["Layers"]]
    if len(steps) != len(sizes):
        steps = [""] * len(sizes)
    return list(zip(steps, sizes, strict=True))
