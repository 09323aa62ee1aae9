"""The one place that talks to docker: the SDK to inspect and run, the CLI to build and import.

Builds go through the `docker buildx` CLI (the SDK has no BuildKit); `docker import` reads a
zstd tarball through a pipe (engine_rootfs.py, the other half). Everything else (containers,
exec, copying files in) uses the SDK. Both honour DOCKER_HOST, so a private daemon on another socket works the same.
"""

from __future__ import annotations

import io
import shlex
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from .errors import EdgefleetError

if TYPE_CHECKING:
    import docker

__all__ = [
    "EngineError", "ContainerSpec", "ContainerInfo", "client", "image_labels", "image_id",
    "image_platform", "remove_image", "build_image", "create_container", "put_files",
    "start",
    "remove", "exec_run", "containers", "logs", "usage", "Features", "features", "run_to_exit",
    "save_image", "load_image", "image_size", "image_layers", "has_buildx",
]


class EngineError(EdgefleetError, RuntimeError):
    """A docker operation failed; the message says which and why."""


@dataclass(frozen=True)
class ContainerSpec:
    """What a container is made from and how it runs."""

    name: str
    image: str
    labels: dict[str, str] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)
    tmpfs: dict[str, str] = field(default_factory=dict)
    binds: dict[str, dict] = field(default_factory=dict)  # host path -> {"bind", "mode"}
    cap_add: tuple[str, ...] = ()
    privileged: bool = False
    network_mode: str = "host"
    stop_timeout: int = 10
    platform: str | None = None
    command: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()  # empty: the image's
    init: bool = False  # docker-init as PID 1: signals and reaping (a crashing python as PID 1 hangs under qemu)
    user: str | None = None
    read_only: bool = False


@dataclass(frozen=True)
class ContainerInfo:
    """A container as docker reports it."""

    name: str
    status: str
    labels: dict[str, str]


_client = None


def _errors():
    """Return docker's exception module (the SDK is imported on first use: it would slow every task's start)."""
    from docker import errors
    return errors


def client() -> docker.DockerClient:
    """Return a docker client for the local engine (made once)."""
    global _client
    if _client is None:
        try:
            import docker

            _client = docker.from_env(timeout=120)
            _client.ping()
        except Exception as exc:  # noqa: BLE001 - any failure means the same to the user
            _client = None
            raise EngineError(f"docker engine not reachable ({exc}); run scripts/setup.sh") from exc
    return _client


def _run(argv: list[str], *, stdin=None, quiet: bool = False) -> str:
    """Run a docker CLI command; raise EngineError with its output on failure."""
    if not quiet:
        print("+ " + shlex.join(argv), flush=True)
    proc = subprocess.run(argv, stdin=stdin, capture_output=True, text=True)
    if proc.returncode != 0:
        raise EngineError(f"{shlex.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


def image_labels(tag: str) -> dict[str, str] | None:
    """Return the labels of a local image, or None when there is no such image."""
    try:
        image = client().images.get(tag)
    except _errors().ImageNotFound:
        return None
    return dict(image.labels or {})


def image_id(tag: str) -> str | None:
    """Return the local image's ID (`sha256:...`), or None when there is no such image."""
    try:
        return client().images.get(tag).id
    except _errors().ImageNotFound:
        return None


def image_platform(tag: str) -> str:
    """Return the os/arch a local image is recorded as (e.g. linux/arm64)."""
    attrs = client().images.get(tag).attrs
    return f"{attrs.get('Os')}/{attrs.get('Architecture')}"


def remove_image(tag: str) -> None:
    """Remove a local image tag."""
    client().images.remove(tag, force=True)


def _zstd_stream(tarball: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["zstd", "-dcq", str(tarball)], stdout=subprocess.PIPE)


def _pipe(stream: IO[bytes] | None) -> IO[bytes]:
    """Return a child's end of a pipe asked for with subprocess.PIPE (so never None)."""
    if stream is None:
        raise EngineError("a subprocess pipe was not opened")
    return stream


def has_buildx() -> bool:
    """Return True when the docker CLI has the buildx plugin."""
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "buildx", "version"], capture_output=True)
    return probe.returncode == 0


def build_image(context: Path, tag: str, platform: str, build_args: dict[str, str],
                labels: dict[str, str], dockerfile: Path | None = None, no_cache: bool = False) -> None:
    """Build an image with the buildx CLI (plain `docker build` when buildx is missing).

    `platform` may list several (`linux/arm64,linux/amd64`); that needs buildx and an engine
    whose image store holds multi-platform images (see `features`). No network in the build.
    """
    if shutil.which("docker") is None:
        raise EngineError("docker CLI not found; run scripts/setup.sh")
    argv = ["docker", "buildx", "build", "--load"] if has_buildx() else ["docker", "build"]
    argv += ["--platform", platform, "--network", "none", "-t", tag]
    if dockerfile is not None:
        argv += ["-f", str(dockerfile)]
    if no_cache:
        argv.append("--no-cache")
    for key, value in build_args.items():
        argv += ["--build-arg", f"{key}={value}"]
    for key, value in labels.items():
        argv += ["--label", f"{key}={value}"]
    _run(argv + [str(context)])


@dataclass(frozen=True)
class Features:
    """What the engine can do that image builds care about."""

    server_version: str
    containerd_store: bool  # images kept by containerd's snapshotter (multi-platform capable)
    buildx: bool

    @property
    def multi_platform(self) -> bool:
        return self.containerd_store and self.buildx


def features() -> Features:
    """Ask the engine for its version and image store, and the CLI for buildx."""
    info = client().info()
    status = {key: value for key, value in (info.get("DriverStatus") or [])}
    store = status.get("driver-type") == "io.containerd.snapshotter.v1"
    return Features(str(info.get("ServerVersion", "?")), store, has_buildx())


def run_to_exit(spec: ContainerSpec, timeout: float) -> tuple[int | None, str, str]:
    """Run a container to its end; return (exit code or None on timeout, stdout, stderr).

    On timeout the container is killed. It is removed in every case.
    """
    create_container(spec)
    container = client().containers.get(spec.name)
    try:
        container.start()
        try:
            code = int(container.wait(timeout=timeout)["StatusCode"])
        except Exception:  # noqa: BLE001 - the SDK raises requests' timeout types
            container.kill()
            code = None
        out = container.logs(stdout=True, stderr=False).decode(errors="replace")
        err = container.logs(stdout=False, stderr=True).decode(errors="replace")
        return code, out, err
    finally:
        container.remove(force=True, v=True)


def save_image(tag: str, dest: Path) -> None:
    """Write `docker save TAG` (an uncompressed tar) to `dest`, atomically."""
    try:
        image = client().images.get(tag)
    except _errors().ImageNotFound:
        raise EngineError(f"no image {tag}; run `invoke image.build` first") from None
    print(f"+ docker save {shlex.quote(tag)} > {shlex.quote(str(dest))}", flush=True)
    tmp = dest.with_name(dest.name + ".part")
    with open(tmp, "wb") as out:
        for chunk in image.save(named=True):
            out.write(chunk)
    tmp.replace(dest)


def load_image(tarball: Path) -> str:
    """Load a zstd-compressed `docker save`/docker-archive tarball; return what docker said."""
    print(f"+ zstd -dc {shlex.quote(str(tarball))} | docker load", flush=True)
    with _zstd_stream(tarball) as unzstd:
        try:
            results = client().images.load(unzstd.stdout)
        except _errors().APIError as exc:
            raise EngineError(f"docker load of {tarball} failed: {exc.explanation or exc}") from exc
    if unzstd.returncode not in (0, None):
        raise EngineError(f"zstd -dc {tarball} failed ({unzstd.returncode})")
    return ", ".join(tag for image in results for tag in (image.tags or [image.id]))


def image_size(tag: str) -> int:
    """Return an image's uncompressed size in bytes as the engine reports it."""
    return int(client().images.get(tag).attrs.get("Size") or 0)


def image_layers(tag: str) -> list[tuple[str, int]]:
    """Return (instruction, size in bytes) per history entry, oldest first."""
    history = client().images.get(tag).history()
    return [(str(entry.get("CreatedBy") or ""), int(entry.get("Size") or 0))
            for entry in reversed(history)]


def _readonly_mounts(binds: dict[str, dict]) -> list[dict]:
    """Return the read-only binds as mounts that are read-only at the top only.

    dockerd >= 25 makes a `ro` bind recursively read-only for API >= 1.44 clients; 20.10 made
    only the top mount read-only. The lab relies on the latter (the cgroup hierarchies under a
    read-only /sys/fs/cgroup stay writable for systemd), so ask for it on every engine
    (ReadOnlyNonRecursive is ignored by engines that predate it, which behave that way anyway).
    """
    return [{"Type": "bind", "Source": src, "Target": b["bind"], "ReadOnly": True,
             "BindOptions": {"ReadOnlyNonRecursive": True}}
            for src, b in binds.items() if b.get("mode") == "ro"]


def create_container(spec: ContainerSpec) -> None:
    """Create (not start) a container from a spec."""
    api = client().api
    host_config = api.create_host_config(
        network_mode=spec.network_mode, tmpfs=dict(spec.tmpfs),
        binds={src: b for src, b in spec.binds.items() if b.get("mode") != "ro"},
        mounts=_readonly_mounts(spec.binds) or None,
        cap_add=list(spec.cap_add) or None, privileged=spec.privileged,
        init=spec.init or None, read_only=spec.read_only or None,
    )
    try:
        api.create_container(
            spec.image, name=spec.name, labels=dict(spec.labels), command=list(spec.command) or None,
            entrypoint=list(spec.entrypoint) or None,
            environment=dict(spec.environment), host_config=host_config, user=spec.user,
            stop_timeout=spec.stop_timeout, platform=spec.platform,
        )
    except _errors().APIError as exc:
        raise EngineError(f"creating container {spec.name}: {exc.explanation or exc}") from exc


def put_files(name: str, files: dict[str, tuple[bytes, int]]) -> None:
    """Copy files (absolute path -> (content, mode)) into a container, owned by root."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, (content, mode) in sorted(files.items()):
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode, info.uid, info.gid = len(content), mode, 0, 0
            tar.addfile(info, io.BytesIO(content))
    if not client().api.put_archive(name, "/", buf.getvalue()):
        raise EngineError(f"copying files into {name} failed")


def start(name: str) -> None:
    """Start a created or stopped container."""
    client().api.start(name)


def remove(name: str, timeout: int = 10) -> bool:
    """Stop (bounded) and remove a container; return False when it did not exist."""
    try:
        container = client().containers.get(name)
    except _errors().NotFound:
        return False
    try:
        container.stop(timeout=timeout)
    except _errors().APIError:
        pass  # already stopped or dying; the forced remove below settles it
    container.remove(force=True, v=True)
    return True


def exec_run(name: str, argv: list[str]) -> tuple[int, str]:
    """Run a command in a running container; return (exit code, combined output)."""
    docker_errors = _errors()
    try:
        code, output = client().containers.get(name).exec_run(argv)
    except docker_errors.NotFound:
        raise EngineError(f"no container {name} (is it up?)") from None
    except docker_errors.APIError as exc:  # e.g. 409: the container is not running
        raise EngineError(f"{name}: {exc.explanation or exc}") from None
    return code, output.decode(errors="replace")


def containers(label: str) -> list[ContainerInfo]:
    """List containers (running or not) carrying a label, sorted by name."""
    found = client().containers.list(all=True, filters={"label": label})
    infos = [ContainerInfo(c.name, c.status, dict(c.labels)) for c in found]
    return sorted(infos, key=lambda info: info.name)


def logs(name: str, tail: int = 40) -> str:
    """Return the last lines a container wrote (empty when it does not exist)."""
    try:
        return client().containers.get(name).logs(tail=tail).decode(errors="replace")
    except _errors().NotFound:
        return ""


_CGROUP_V1 = Path("/sys/fs/cgroup")


def _cgroup_int(path: Path, key: str | None = None) -> int:
    text = path.read_text()
    if key is None:
        return int(text.strip())
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return 0


def usage(name: str) -> dict[str, float]:
    """Return a running container's memory (MiB: rss now, all now, peak; page cache included) and CPU time (s).

    Read from its cgroup-v1 files (`docker stats` gives nothing for these systemd containers
    on this host's dockerd 20.10); zeros where the host has no cgroup v1 docker hierarchy.
    """
    try:
        container_id = client().containers.get(name).id
    except _errors().NotFound:
        raise EngineError(f"no container {name}") from None
    memory = _CGROUP_V1 / "memory" / "docker" / container_id
    cpu = _CGROUP_V1 / "cpuacct" / "docker" / container_id
    if not memory.is_dir():
        return {"rss_mib": 0.0, "memory_mib": 0.0, "peak_mib": 0.0, "cpu_s": 0.0}
    return {"rss_mib": _cgroup_int(memory / "memory.stat", "total_rss") / 2**20,
            "memory_mib": _cgroup_int(memory / "memory.usage_in_bytes") / 2**20,
            "peak_mib": _cgroup_int(memory / "memory.max_usage_in_bytes") / 2**20,
            "cpu_s": _cgroup_int(cpu / "cpuacct.usage") / 1e9 if cpu.is_dir() else 0.0}
