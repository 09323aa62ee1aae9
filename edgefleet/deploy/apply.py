"""Carry out a deploy plan on one device over a Fabric connection `c`.

Every command is built from quoted parts. Uploads land in an incoming dir and enter
objects/ only after `sha256sum -c` passed on the device; nothing is activated before that.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import re
import shlex
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timezone

from ..device_env import PYC_MARK
from ..errors import EdgefleetError
from ..inventory import Target
from ..openssh import OpenSSHError
from ..render import TUNING_SCRIPT_PATH, TUNING_UNIT, UNIT_NAME
from ..ssh import OpenSSHConnection, SSHError
from .plan import DeployPlan, docker_argv
from .release import Release, ReleaseFile

__all__ = ["Device", "DeployError", "IMAGE_ENV", "apply_plan", "load_image", "switch_current", "restart_service", "record_state", "now"]

q = shlex.quote
_STEP_MARK = "edgefleet-step"  # Device.systems: each command of a batch reports its exit code
IMAGE_ENV = "image.env"  # in an image release: EDGEFLEET_IMAGE and EDGEFLEET_RELEASE for the unit


class DeployError(EdgefleetError):
    """A step failed on the device; the message names the target and the step."""


@dataclass
class Device:
    """A target plus its connection: runs commands, privileged ones through sudo when asked.

    Two kinds of privilege: writing the device root (`run(..., privileged=True)`), which needs
    no sudo when the login user owns the root (`owns_root`, from the facts), and root-only
    system steps (`system`: units, useradd), each one plain `sudo -n` argv with no shell, so a
    sudoers list can name exactly what a deploy runs.
    """

    c: object
    target: Target
    owns_root: bool = False

    @property
    def root(self) -> str:
        return self.target.settings.root

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def run(self, command: str, step: str, privileged: bool = True, warn: bool = False, text: str | None = None):
        """Run `command` (`text`: its standard input)."""
        return self._exec(self.file_command(command) if privileged else command, step, warn, text)

    def system(self, argv: list[str], step: str, warn: bool = False):
        """Run one root-only command, through `sudo -n` when the target uses sudo."""
        return self._exec(self.system_command(argv), step, warn)

    def file_command(self, command: str) -> str:
        """Return `command` as it runs to write the device root (through sudo unless the login user owns it)."""
        if self.target.settings.sudo and not self.owns_root:
            return "sudo -n sh -c " + q(command)
        return command

    def system_command(self, argv: list[str]) -> str:
        """Return a root-only argv as it runs: one plain `sudo -n` argv when the target uses sudo."""
        return ("sudo -n " if self.target.settings.sudo else "") + " ".join(q(a) for a in argv)

    def system_steps(self, steps: list[tuple[list[str], str, bool]]) -> list[tuple[str, str, bool]]:
        """Return root-only steps (argv, step, warn) as `batch` takes them."""
        return [(self.system_command(argv), step, warn) for argv, step, warn in steps]

    def systems(self, steps: list[tuple[list[str], str, bool]]) -> list[int]:
        """Run root-only commands (argv, step, warn) in order in one session; return their exit codes."""
        return self.batch(self.system_steps(steps))

    def batch(self, steps: list[tuple[str, str, bool]]) -> list[int]:
        """Run commands (`file_command`/`system_command` strings, step, warn) in order in one
        session; return their exit codes.

        A root-only one is the same `sudo -n` argv `system` runs (one a line, so a sudoers list
        still names each); the first that fails and is not `warn` ends the batch and raises,
        naming its step. One session instead of one each: a session costs a fork and an exec on
        the device (and ~0.1-0.2 s under qemu-user).
        """
        lines = []
        for i, (command, _, warn) in enumerate(steps):
            end = "" if warn else ' [ "$rc" = 0 ] || exit "$rc"'
            lines.append(f'{command}; rc=$?; echo "{_STEP_MARK} {i} $rc" >&2;{end}')
        result = self._exec("\n".join(lines), steps[0][1], warn=True)
        codes, failed, detail, seen = [0] * len(steps), None, [], -1
        for line in (result.stderr or "").splitlines():
            mark = re.fullmatch(rf"{_STEP_MARK} (\d+) (\d+)", line.strip())
            if not mark:
                detail.append(line)
                continue
            seen, codes[seen] = int(mark.group(1)), int(mark.group(2))
            if codes[seen] != 0 and not steps[seen][2]:
                failed = seen
                break
            detail = []
        if failed is None and result.exited != 0:  # the session ended before reporting a failure
            failed = min(seen + 1, len(steps) - 1)
        if failed is not None:
            text = "\n".join(detail).strip()[-800:] or (result.stdout or "").strip()[-800:]
            raise DeployError(f"{self.target.name}: {steps[failed][1]} failed (exit {codes[failed] or result.exited}): "
                              f"{text}")
        return codes

    def _exec(self, command: str, step: str, warn: bool, text: str | None = None):
        try:
            result = self.c.run(command, hide=True, warn=True, in_stream=io.StringIO(text) if text is not None else False)
        except OpenSSHError as exc:  # the link, not the command (Fabric raises paramiko's errors here)
            raise SSHError(f"{self.target.name}: {step}: SSH failed: {str(exc)[-500:]}") from None
        if result.exited != 0 and not warn:
            detail = (result.stderr or result.stdout).strip()[-800:]
            raise DeployError(f"{self.target.name}: {step} failed (exit {result.exited}): {detail}")
        return result


def _incoming(dev: Device) -> str:
    """Return where uploads are staged: under the device root, never in a shared directory.

    A fixed name in a world-writable directory (/var/tmp) could be taken by any local account
    between our `rm` and `mkdir`, which could then rename its own bytes over a verified object.
    Inside the root only the root's owner (or root) can create or rename anything.
    """
    if dev.owns_root or not dev.target.settings.sudo:
        return dev.path("objects", ".incoming")
    return dev.path(f".incoming-{dev.c.user}")  # made by root for the login user, 0700


def _clear_incoming_command(dev: Device, incoming: str) -> str:
    """Return the command that makes `incoming` anew, empty, private to the login user."""
    if dev.owns_root or not dev.target.settings.sudo:
        return f"rm -rf {q(incoming)} && mkdir -m 0700 {q(incoming)}"
    return dev.file_command(f"rm -rf {q(incoming)} && mkdir -m 0700 {q(incoming)} && "
                            f"chown {q(dev.c.user)} {q(incoming)}")


def _discard_partial(dev: Device, incoming: str) -> None:
    try:  # a full disk: leave no partial file behind (a dead link: the next deploy clears it)
        dev.run(f"rm -rf {q(incoming)}", "discard a partial upload", warn=True)
    except Exception:
        pass


def _recheck_command(dev: Device, names: list[str]) -> str:
    """Return the command that hashes objects again where they now are (before any `sudo install`)."""
    lines = "".join(f"{n}  {n}\\n" for n in names)
    return f"cd {q(dev.path('objects'))} && printf {q(lines)} | sha256sum --check --quiet --strict -"


class UploadFailed(Exception):
    """The OpenSSH stream broke: `what` is the object the device could not take (or the one being sent)."""

    def __init__(self, what: str, why: str, code: int | None = None):
        super().__init__(f"{what}: {why}")
        self.what, self.why, self.code = what, why, code


# How a venv release is built on the device, by its Python in one process: hard links into
# objects/ (the host's .pyc files among them when it could compile them), the link to the
# packages, else the payload byte-compiled here, then renamed into place (26 `ln` processes and a
# compileall before: each a fork + exec, ~0.05 s apiece under qemu-user; the compileall alone
# ~40 ms of a lab device's CPU). Run by BUILDER, or by RECEIVER right after the upload.
_BUILD = """\
def build(spec):
    import shutil
    tmp = spec["tmp"]
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for sha, rel in spec["links"]:
        dest = os.path.join(tmp, rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        os.link(os.path.join(spec["objects"], sha), dest)
    os.symlink(spec["site"], os.path.join(tmp, "site"))
    if spec["compile"]:
        import compileall
        compileall.compile_dir(os.path.join(tmp, "payload"), quiet=1, stripdir=tmp, prependdir=spec["final"])
    os.rename(tmp, spec["final"])
"""
BUILDER = "import json, os, sys\n" + _BUILD + "build(json.loads(sys.argv[1]))\n"

# The receiving end of an upload when the device has Python: it writes each object of the tar
# stream as `.<name>.part`, hashing as it writes, and renames it to its name only when the
# bytes' sha256 is that name. One pass over the bytes instead of tar, then `sha256sum -c`
# (which reads them all again, without the CPU's SHA instructions: 0.2 s of CPU for 51 MB here).
# Given a build spec (argv[1]; only where the login user writes the root itself), it then moves
# the verified objects into objects/ and builds the release, in the same process and session.
# It first widens its stdin pipe from 64 KiB to 1 MiB (the most an unprivileged process may ask):
# sshd then hands over the stream in large writes instead of holding up to a channel window
# (2 MiB) in buffers it grows, copies and page-faults afresh on every new connection. A first
# upload of 24 MB on a fresh connection cost a lab device ~220 ms of CPU with 64 KiB, ~80 with 1 MiB.
RECEIVER = """\
import fcntl, hashlib, os, sys, tarfile
try:
    fcntl.fcntl(0, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
except OSError:
    pass  # not a pipe, or a lower pipe-max-size: only slower
bad, got = [], []
with tarfile.open(fileobj=sys.stdin.buffer, mode="r|", bufsize=1 << 20) as tar:
    for m in tar:
        n = m.name
        if not m.isreg() or "/" in n or n.startswith("."):
            bad.append(n)
            continue
        src, digest, part = tar.extractfile(m), hashlib.sha256(), "." + n + ".part"
        try:
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with open(fd, "wb") as out:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    digest.update(chunk)
                    out.write(chunk)
        except OSError as e:
            sys.stderr.write("%s: %s\\n" % (n, e))
            sys.exit(3)
        if digest.hexdigest() != n:
            os.unlink(part)
            bad.append(n)
            continue
        os.chmod(part, 0o644)
        os.rename(part, n)
        got.append(n)
if bad:
    sys.stderr.write("sha256 mismatch: %s\\n" % " ".join(bad))
    sys.exit(4)
""" + _BUILD + """\
if len(sys.argv) > 1:
    import json
    spec = json.loads(sys.argv[1])
    try:
        for n in got:
            os.rename(n, os.path.join(spec["objects"], n))
        build(spec)
    except OSError as e:
        sys.stderr.write("build: %s\\n" % e)
        sys.exit(5)
"""
_MISMATCH = 4  # RECEIVER's exit status when an object's bytes are not its sha256
_BUILD_FAILED = 5  # RECEIVER's, when the verified objects could not be moved in or the release built


def stream_upload(via, incoming: str, uploads: list, remote: str | None = None) -> None:
    """Send `uploads` (what, local path or file object, name, size) as one tar stream to a remote
    command that unpacks it into `incoming` (`remote`: another command that reads the stream
    there, e.g. RECEIVER's); raise UploadFailed.

    `via`: how the remote command starts: `via(command, stderr)` returns a process whose `stdin`
    we write into (OpenSSHConnection.stream: the device's master reads our pipe itself), or an
    argv (the OpenSSH client up to the host, one `ssh` process a device). The device unpacks the
    stream as it arrives. The bytes are the ones the SFTP path sends, and they are verified on
    the device the same way. A file's bytes go from the page cache into the pipe with
    sendfile(2): no copy through Python, and the GIL is free for the other devices' threads.
    """
    import subprocess
    import tarfile
    import tempfile

    remote = f"cd {q(incoming)} && exec {remote or 'tar -xf -'}"
    writing, local_error = None, None
    with tempfile.TemporaryFile() as err:
        try:
            proc = via(remote, err) if callable(via) else subprocess.Popen(
                [*via, remote], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
        except OSError as exc:  # OpenSSHError among them: the link, before any byte went
            raise UploadFailed("the stream", str(exc).strip()[-400:] or type(exc).__name__) from None
        pipe = proc.stdin.fileno()
        try:
            for what, local, name, size in uploads:
                writing = what
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = size, 0o600, 0
                _write_all(pipe, info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape"))
                if isinstance(local, str):
                    with open(local, "rb") as fh:
                        _send_file(pipe, fh, size)
                else:
                    data = local.read(size)
                    if len(data) != size:
                        raise OSError(f"{what}: {len(data)} bytes, not {size}")
                    _write_all(pipe, data)
                _write_all(pipe, bytes(-size % tarfile.BLOCKSIZE))
            _write_all(pipe, bytes(2 * tarfile.BLOCKSIZE))  # the end-of-archive marker
            writing = None
        except (BrokenPipeError, ConnectionResetError):
            pass  # the far end went away: ssh's exit status and stderr say why
        except OSError as exc:  # a local file went missing or shrank since its sha256 was taken
            local_error = exc
            proc.kill()
        finally:
            try:
                proc.stdin.close()
            except OSError:
                pass
            try:
                code = proc.wait()
            except OSError as exc:  # the master broke off (OpenSSHError): as `ssh` would, 255
                code = 255
                err.write(f"\n{exc}".encode())
        err.seek(0)
        detail = err.read().decode(errors="replace").strip()
    if local_error is not None:
        raise UploadFailed(writing or "the stream", f"reading it on this host: {local_error}")
    if code == 0 and writing is None:
        return
    # name the object the device could not write (tar names it by its sha256), else the one being sent
    names = {name: what for what, _, name, _ in uploads}
    failed = next((names[m] for m in re.findall(r"[0-9a-f]{64}|SHA256SUMS", detail) if m in names), writing)
    raise UploadFailed(failed or "the stream", f"ssh exit {code}: {detail[-400:] or 'connection lost'}", code)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _send_file(fd: int, fh, size: int) -> None:
    """Send `size` bytes of `fh` into `fd` (a pipe) with sendfile(2); a file now shorter raises OSError."""
    offset = 0
    while offset < size:
        sent = os.sendfile(fd, fh.fileno(), offset, min(size - offset, 1 << 24))
        if sent == 0:
            raise OSError(f"{fh.name}: {offset} bytes, not {size} (it changed since its sha256 was taken)")
        offset += sent


def _layout_command(dev: Device) -> str:
    return (f"mkdir -p {q(dev.path('objects'))} {q(dev.path('releases'))} {q(dev.path('envs'))} "
            f"&& chmod 0755 {q(dev.root)}")


def upload_objects(dev: Device, plan: DeployPlan, log, verify_on_arrival: bool = False,
                   build: dict | None = None) -> tuple[str | None, bool]:
    """Upload the missing objects and verify their sha256 on the device; return the command that
    moves them into objects/ (the caller runs it in its next batch; None when nothing went up or
    they are in already), and whether the release was built (`build`).

    `verify_on_arrival`: the device has our Python (a venv release): RECEIVER checks each object
    as it is written; else tar unpacks the stream and `sha256sum -c` checks it afterwards.
    `build`: a venv release's build spec, for RECEIVER to move the verified objects in and build
    the release right after them, in the same process (only where the login user writes the root).
    """
    if not plan.upload:
        dev.run(_layout_command(dev), "create the device layout")
        return None, False
    incoming = _incoming(dev)
    # we hold the lock: anything in incoming is left over from a deploy that died mid-upload
    dev.batch([(dev.file_command(_layout_command(dev)), "create the device layout", False),
               (_clear_incoming_command(dev, incoming), "clear the incoming dir", False)])
    t0 = time.monotonic()
    sums = "".join(f"{o.sha256}  {o.sha256}\n" for o in plan.upload).encode()
    uploads = [(o.path, str(o.source) if o.source is not None else io.BytesIO(o.data), o.sha256, o.size)
               for o in plan.upload]
    # one tar stream through the OpenSSH client, over the device's master; SFTP through Fabric
    via = dev.c.stream if isinstance(dev.c, OpenSSHConnection) else None
    checked = via is not None and verify_on_arrival
    build = build if checked else None
    if not checked:
        uploads.append(("SHA256SUMS", io.BytesIO(sums), "SHA256SUMS", len(sums)))
    how_sent = "OpenSSH" if via else "SFTP"
    names = " ".join(q(o.sha256) for o in plan.upload)
    if via is not None:
        try:
            receiver = f"python3 -c {q(RECEIVER)}" + (f" {q(json.dumps(build))}" if build else "")
            stream_upload(via, incoming, uploads, remote=receiver if checked else None)
        except UploadFailed as exc:
            _discard_partial(dev, incoming)
            if build and exc.code == _BUILD_FAILED:  # verified and moved in (or some of them): nothing activated
                raise DeployError(f"{dev.target.name}: build {posixpath.relpath(build['final'], dev.root)} failed: "
                                  f"{exc.why}") from None
            if checked and exc.code == _MISMATCH:
                raise DeployError(f"{dev.target.name}: uploaded files failed sha256 verification; nothing was "
                                  f"activated: {exc.why}") from None
            raise DeployError(f"{dev.target.name}: upload of {exc.what} failed, nothing was activated: "
                              f"{exc.why}") from None
    else:
        import paramiko

        for what, local, name, _ in uploads:
            try:
                dev.c.put(local, remote=posixpath.join(incoming, name))
            except (OSError, EOFError, paramiko.SSHException) as exc:
                _discard_partial(dev, incoming)
                raise DeployError(f"{dev.target.name}: upload of {what} failed, nothing was activated: "
                                  f"{exc or type(exc).__name__}") from None
    sent = sum(o.size for o in plan.upload)
    if not checked:
        verify = dev.run(f"cd {q(incoming)} && sha256sum --check --quiet --strict SHA256SUMS",
                         "verify uploads", privileged=False, warn=True)
        if verify.exited != 0:
            dev.run(f"cd {q(incoming)} && rm -f -- {names} SHA256SUMS", "discard bad uploads", privileged=False,
                    warn=True)
            raise DeployError(f"{dev.target.name}: uploaded files failed sha256 verification; nothing was "
                              f"activated: {(verify.stdout + verify.stderr).strip()[-400:]}")
    secs = time.monotonic() - t0
    how = "sha256 verified as written" if checked else "sha256 verified"
    log(f"  uploaded {len(plan.upload)} objects, {sent / 1e6:.1f} MB in {secs:.1f} s ({how_sent}), {how}")
    if build:
        return None, True
    move_in = (f"cd {q(incoming)} && chmod 0644 -- {names} && mv -f -- {names} {q(dev.path('objects'))}/ "
               f"&& rm -f SHA256SUMS")
    if dev.target.settings.sudo:  # objects may reach `sudo install`: hashed again where they now are
        move_in += " && " + _recheck_command(dev, [o.sha256 for o in plan.upload])
    return move_in, False


def _build_spec(dev: Device, release: Release) -> dict:
    """Return what `build` (BUILDER, RECEIVER) needs to build a venv release on the device."""
    return {"tmp": dev.path("releases", f"{release.release_id}.tmp"), "final": dev.path("releases", release.release_id),
            "objects": dev.path("objects"), "site": dev.path("envs", release.env.sha256),
            "links": [[f.sha256, f.path] for f in (*release.files, *release.compiled, release.manifest)],
            "compile": not release.compiled}


def _build_release_script(dev: Device, release: Release) -> str:
    if release.env is not None:
        return f"python3 -c {q(BUILDER)} {q(json.dumps(_build_spec(dev, release)))}"
    objects = dev.path("objects")
    tmp = dev.path("releases", f"{release.release_id}.tmp")
    final = dev.path("releases", release.release_id)
    lines = [f"rm -rf {q(tmp)}", f"mkdir -p {q(tmp)}"]
    dirs = sorted({posixpath.dirname(f.path) for f in release.files if posixpath.dirname(f.path)})
    if dirs:
        lines.append("cd " + q(tmp) + " && mkdir -p " + " ".join(q(d) for d in dirs))
    for f in (*release.files, release.manifest):
        lines.append(f"ln -f {q(posixpath.join(objects, f.sha256))} {q(posixpath.join(tmp, f.path))}")
    # what the unit's EnvironmentFile reads: the image to run and where its bundle is
    lines.append(f"printf 'EDGEFLEET_IMAGE=%s\\nEDGEFLEET_RELEASE=%s\\n' {q(release.image.image_id)} "
                 f"{q(release.release_id)} > {q(posixpath.join(tmp, IMAGE_ENV))}")
    lines.append(f"chmod -R a+rX {q(tmp)} && mv -T {q(tmp)} {q(final)}")
    return " && ".join(lines)


def _install_env_script(dev: Device, release: Release, tarball: ReleaseFile, big_records: bool = False) -> str:
    """Unpack the verified packages' tarball (gzip or zstd) into envs/<sha256>/, then drop the tarball.

    `big_records`: GNU tar reads the pipe in 1 MiB records instead of 10 KiB (0.24 vs 0.34 s for
    the 93 MB env on a lab device).
    """
    env_dir = dev.path("envs", release.env.sha256)
    tmp = env_dir + ".tmp"
    obj = dev.path("objects", tarball.sha256)
    records = "-b 2048 -B " if big_records else ""
    if tarball.path.endswith(".zst"):  # no pipefail in every sh: a failed zstd leaves a mark
        unpack = (f"{{ zstd -dcq {q(obj)} || touch {q(tmp + '.failed')}; }} | tar {records}-xf - -C {q(tmp)} "
                  f"&& [ ! -e {q(tmp + '.failed')} ]")
    else:
        unpack = f"tar {records}-xzf {q(obj)} -C {q(tmp)}"
    return " && ".join([
        f"rm -rf {q(tmp)} {q(tmp + '.failed')}",
        f"mkdir -p {q(tmp)}",
        unpack,
        # compiled on the host already (the mark), or here; a missing .pyc only costs start-up
        # time, so a file compileall rejects is not fatal
        f"{{ [ -e {q(posixpath.join(tmp, PYC_MARK))} ] || python3 -m compileall -q -j 0 -s {q(tmp)} "
        f"-p {q(env_dir)} {q(tmp)} >/dev/null 2>&1 || true; }}",
        f"mv -T {q(tmp)} {q(env_dir)}",
        f"rm -f {q(obj)}",  # unpacked: the tarball is not needed again (a new env comes as a new one)
    ])


def _switch_command(dev: Device, release_id: str) -> str:
    new = dev.path("current.new")
    return f"ln -sfn {q(posixpath.join('releases', release_id))} {q(new)} && mv -Tf {q(new)} {q(dev.path('current'))}"


def switch_current(dev: Device, release_id: str) -> None:
    """Point `current` at `release_id` atomically (rename of a symlink)."""
    dev.run(_switch_command(dev, release_id), f"switch current to {release_id}")


def _restart_steps() -> list[tuple[list[str], str, bool]]:
    # forget an earlier crash loop (systemd's start limit) first; enabling needs no reload of its
    # own (a replaced unit was reloaded after installing it, a new one is read when first named)
    return [(["systemctl", "reset-failed", UNIT_NAME], "reset the service's failed state", True),
            (["systemctl", "enable", "--quiet", "--no-reload", UNIT_NAME], "enable the service", False),
            (["systemctl", "restart", UNIT_NAME], "restart the service", False)]


def restart_service(dev: Device) -> None:
    """Enable and restart the service; forget an earlier crash loop (systemd's start limit) first."""
    dev.systems(_restart_steps())


def apply_plan(dev: Device, plan: DeployPlan, release: Release, log) -> None:
    """Run every step of `plan` up to and including the restart (not the health gate).

    In few sessions (each costs the device a fork and an exec): the layout, the upload (whose
    receiver builds a venv release as well, where the login user writes the root), the image's
    load, then one batch: the file steps (move the verified objects in, unpack the packages,
    build the release), the root-only steps (service user, units, tuning), and last the switch
    with the restart. The batch stops at the first failing step and names it.
    """
    s = dev.target.settings
    # a venv release is built by the upload's receiver when the login user writes the root itself
    # (its incoming dir is inside objects/): one process and session fewer
    in_upload = plan.build_release and release.env is not None and not s.sudo
    move_in, built = upload_objects(dev, plan, log, verify_on_arrival=release.env is not None,
                                    build=_build_spec(dev, release) if in_upload else None)
    if built:
        log(f"  built releases/{release.release_id} ({len(release.files)} files, hard links into objects/) "
            f"as the upload arrived")
    done = []  # what the batch below did, said once it has run
    batch: list[tuple[str, str, bool]] = []
    if move_in:
        batch.append((dev.file_command(move_in), "move verified objects in", False))
    if plan.load_image:  # the image loads from its verified tarball before the release is built
        if batch:
            dev.batch(batch)
            batch = []
        load_image(dev, release, log)
    if plan.install_env:  # a venv release only: an image release has no packages
        tarball = plan.env_tarball or release.env_tarball(zstd=False)
        batch.append((dev.file_command(_install_env_script(dev, release, tarball, plan.big_records)),
                      "unpack the Python packages", False))
        done.append(f"unpacked Python packages ({tarball.path}) into envs/{release.env.sha256[:12]}")
    if plan.build_release and not built:
        batch.append((dev.file_command(_build_release_script(dev, release)), f"build releases/{release.release_id}",
                      False))
        done.append(f"built releases/{release.release_id} ({len(release.files)} files, hard links into objects/)")
    # the service user, the units and tuning (a daemon-reload only when replacing a unit)
    steps = []
    if plan.create_user:
        steps.append((["useradd", "--system", "--no-create-home", "--home-dir", "/", "--shell", "/usr/sbin/nologin",
                       s.service_user], "create the service user", False))
        done.append(f"created service user {s.service_user}")
    if plan.install_unit:
        unit_obj = dev.path("objects", release.unit.sha256)
        steps.append((["install", "-m", "0644", unit_obj, "/etc/systemd/system/" + UNIT_NAME],
                      f"install {UNIT_NAME}", False))
        done.append(f"installed {UNIT_NAME}")
    if plan.install_tuning:
        steps += _tuning_install_steps(dev, release)
    if plan.reload_units:  # ~0.15 s of systemd's CPU: only when an installed unit is replaced
        steps.append((["systemctl", "daemon-reload"], "reload systemd", False))
    if plan.install_tuning:
        steps += _tuning_start_steps()
    batch += dev.system_steps(steps)
    tuning_step = len(batch) - 1
    # the switch and the restart together: current never points at a release the service was not asked to run
    if plan.activate:
        batch.append((dev.file_command(_switch_command(dev, release.release_id)),
                      f"switch current to {release.release_id}", False))
        done.append(f"current -> releases/{release.release_id}")
    if plan.restart:
        batch += dev.system_steps(_restart_steps())
        done.append(f"restarted {UNIT_NAME}")
    t0 = time.monotonic()
    codes = dev.batch(batch) if batch else []
    for line in done:
        log(f"  {line}")
    if plan.install_tuning:
        _log_tuning(codes[tuning_step], log)
    if batch:
        log(f"  ({len(batch)} steps in one session, {time.monotonic() - t0:.1f} s)")


def load_image(dev: Device, release: Release, log) -> None:
    """Load the release's image from its verified tarball into docker, check the ID, drop the tarball.

    The tarball went through `sha256sum -c` on the way into objects/; the engine then names the
    image by the sha256 of its config, which must be the ID the release records, or nothing is
    activated. Docker 20.10 (Debian bookworm) does not take zstd itself: zstd unpacks in a pipe.
    """
    image = release.image
    tarball = dev.path("objects", image.sha256)
    t0 = time.monotonic()
    load = " ".join(q(a) for a in docker_argv(dev.target, "load", "--quiet"))
    # pipefail is not in every sh: a failed unpack is caught by the ID check below
    res = dev.run(f"zstd -dc --long=27 {q(tarball)} | {load}", "load the runtime image", privileged=False, warn=True)
    listing = " ".join(q(a) for a in docker_argv(dev.target, "image", "ls", "--quiet", "--no-trunc"))
    ids = set(dev.run(listing, "list images", privileged=False).stdout.split())
    if image.image_id not in ids:
        raise DeployError(f"{dev.target.name}: the runtime image did not load as {image.image_id} (docker said: "
                          f"{(res.stdout + res.stderr).strip()[-400:] or f'exit {res.exited}'}); nothing was activated")
    dev.run(f"rm -f {q(tarball)}", "remove the loaded image's tarball")
    log(f"  loaded image {image.image_id[:19]} into docker in {time.monotonic() - t0:.1f} s (ID checked)")


def _tuning_install_steps(dev: Device, release: Release) -> list[tuple[list[str], str, bool]]:
    unit, script = release.tuning
    step = f"install {TUNING_UNIT}"
    return [(["install", "-D", "-m", "0755", dev.path("objects", script.sha256), TUNING_SCRIPT_PATH], step, False),
            (["install", "-m", "0644", dev.path("objects", unit.sha256), "/etc/systemd/system/" + TUNING_UNIT],
             step, False)]


def _tuning_start_steps() -> list[tuple[list[str], str, bool]]:
    # enable (no reload: done), then (re)start it: stop reverts, start applies; best effort
    return [(["systemctl", "enable", "--quiet", "--no-reload", TUNING_UNIT], f"enable {TUNING_UNIT}", False),
            (["systemctl", "restart", TUNING_UNIT], f"start {TUNING_UNIT}", True)]


def _log_tuning(code: int, log) -> None:
    if code == 0:
        log(f"  installed, enabled and started {TUNING_UNIT}")
    else:  # tuning is best effort: the runtime works untuned, and status reports the drift
        log(f"  warning: {TUNING_UNIT} failed to start (see journalctl -u {TUNING_UNIT}); continuing")


def now() -> str:
    """Return the time for state.json and lock records (UTC, ISO 8601, seconds)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def record_state(dev: Device, entry: dict, keep: int = 50) -> None:
    """Append `entry` to the device's state.json history (atomic replace)."""
    path = dev.path("state.json")
    res = dev.run(f"cat {q(path)} 2>/dev/null || true", "read state.json", privileged=False, warn=True)
    try:
        state = json.loads(res.stdout or "{}")
    except ValueError:
        state = {}
    history = (state.get("history") or [])[-(keep - 1):] + [entry]
    # "current" is the last release that passed its gate: an unhealthy one never becomes it
    state = {"current": entry.get("active") if entry.get("healthy") else state.get("current"), "history": history}
    tmp = dev.path(".state.json.tmp")
    # written beside it under the root (never in a shared directory), created anew (noclobber:
    # O_EXCL, so no link planted there is followed), then renamed into place
    dev.run(f"rm -f {q(tmp)} && set -C && cat > {q(tmp)} && chmod 0644 {q(tmp)} && mv -f {q(tmp)} {q(path)}",
            "write state.json", text=json.dumps(state, indent=2) + "\n")
