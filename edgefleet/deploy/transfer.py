"""Upload a plan's missing objects to the device, verified by sha256 before they enter objects/.

Over OpenSSH (the STREAM capability) the objects go as one tar stream into the device's
receiver (`remote/receiver.py`), which hashes each as it writes it; else through SFTP (the PUT
capability) and `sha256sum -c`. Uploads are staged under the device root, never in a shared
directory, and hashed again where they land before anything is installed through sudo.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import re
import threading
import time
from shlex import quote

from ..transport import STREAM
from .converge import stamp_command
from .device import DeployError, Device
from .plan import DeployPlan
from .remote import receiver as receiver_program
from .remote import source

__all__ = ["upload_objects", "stream_upload", "layout_command", "UploadFailed"]

def _incoming(dev: Device) -> str:
    """Return where uploads are staged: under the device root, never in a shared directory.

    A fixed name in a world-writable directory (/var/tmp) could be taken by any local account
    between our `rm` and `mkdir`, which could then rename its own bytes over a verified object.
    Inside the root only the root's owner (or root) can create or rename anything.
    """
    if dev.owns_root or not dev.target.settings.sudo:
        return dev.path("objects", ".incoming")
    return dev.path(f".incoming-{dev.transport.user}")  # made by root for the login user, 0700


def _clear_incoming_command(dev: Device, incoming: str) -> str:
    """Return the command that makes `incoming` anew, empty, private to the login user (made by root
    where the root is root's; the chown is then the login user's own, a no-op, where it writes the root)."""
    return dev.file_command(f"rm -rf {quote(incoming)} && mkdir -m 0700 {quote(incoming)} && "
                            f"chown {quote(dev.transport.user)} {quote(incoming)}")


def _discard_partial(dev: Device, incoming: str) -> None:
    try:  # a full disk: leave no partial file behind (a dead link: the next deploy clears it)
        dev.run(f"rm -rf {quote(incoming)}", "discard a partial upload", warn=True)
    except Exception:
        pass


def _recheck_command(dev: Device, names: list[str]) -> str:
    """Return the command that hashes objects again where they now are (before any `sudo install`)."""
    lines = "".join(f"{n}  {n}\\n" for n in names)
    return f"cd {quote(dev.path('objects'))} && printf {quote(lines)} | sha256sum --check --quiet --strict -"


class UploadFailed(Exception):
    """The OpenSSH stream broke: `what` is the object the device could not take (or the one being sent)."""

    def __init__(self, what: str, why: str, code: int | None = None):
        super().__init__(f"{what}: {why}")
        self.what, self.why, self.code = what, why, code


def stream_upload(via, incoming: str, uploads: list, remote: str | None = None, timeout: float | None = None) -> None:
    """Send `uploads` (what, local path or file object, name, size) as one tar stream to a remote
    command that unpacks it into `incoming` (`remote`: another command that reads the stream
    there, e.g. RECEIVER's); raise UploadFailed. `timeout`: the longest the whole stream may take;
    then the carrier is ended (`terminate()`: ssh gets SIGTERM, a mux session lets go of its
    channel), which breaks our pipe, and the upload fails naming the object being sent.

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

    remote = f"cd {quote(incoming)} && exec {remote or 'tar -xf -'}"
    writing, local_error = None, None
    with tempfile.TemporaryFile() as err:
        try:
            proc = via(remote, err) if callable(via) else subprocess.Popen(
                [*via, remote], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
        except OSError as exc:  # OpenSSHError among them: the link, before any byte went
            raise UploadFailed("the stream", str(exc).strip()[-400:] or type(exc).__name__) from None
        stdin = proc.stdin
        assert stdin is not None  # both carriers start with a pipe to write into
        pipe = stdin.fileno()
        expired = threading.Event()

        def expire() -> None:  # never closes our pipe's fd: the writing thread may still use its number
            expired.set()
            proc.terminate()

        watchdog = threading.Timer(timeout, expire) if timeout else None
        if watchdog is not None:
            watchdog.daemon = True
            watchdog.start()
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
                stdin.close()
            except OSError:
                pass
            try:
                code = proc.wait()
            except OSError as exc:  # the master broke off (OpenSSHError): as `ssh` would, 255
                code = 255
                err.write(f"\n{exc}".encode())
            if watchdog is not None:
                watchdog.cancel()
        err.seek(0)
        detail = err.read().decode(errors="replace").strip()
    if expired.is_set():
        raise UploadFailed(writing or "the stream", f"timed out after {timeout:.0f} s (deploy.command_timeout_s)")
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


def layout_command(dev: Device) -> str:
    return (f"mkdir -p {quote(dev.path('objects'))} {quote(dev.path('releases'))} {quote(dev.path('envs'))} "
            f"&& chmod 0755 {quote(dev.root)} && {stamp_command(quote(dev.root))}")


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
        dev.run(layout_command(dev), "create the device layout")
        return None, False
    incoming = _incoming(dev)
    # we hold the lock: anything in incoming is left over from a deploy that died mid-upload
    dev.batch([(dev.file_command(layout_command(dev)), "create the device layout", False),
               (_clear_incoming_command(dev, incoming), "clear the incoming dir", False)])
    t0 = time.monotonic()
    sums = "".join(f"{o.sha256}  {o.sha256}\n" for o in plan.upload).encode()
    uploads = [(o.path, str(o.source) if o.source is not None else io.BytesIO(o.read()), o.sha256, o.size)
               for o in plan.upload]
    # one tar stream through the OpenSSH client, over the device's master; SFTP through Fabric
    via = dev.transport.stream if STREAM in dev.transport.capabilities else None
    checked = via is not None and verify_on_arrival
    build = build if checked else None
    if not checked:
        uploads.append(("SHA256SUMS", io.BytesIO(sums), "SHA256SUMS", len(sums)))
    how_sent = "OpenSSH" if via else "SFTP"
    names = " ".join(quote(o.sha256) for o in plan.upload)
    if via is not None:
        try:
            receiver = f"python3 -c {quote(source('receiver'))}" + (f" {quote(json.dumps(build))}" if build else "")
            stream_upload(via, incoming, uploads, remote=receiver if checked else None,
                          timeout=dev.target.settings.deploy.command_timeout_s)
        except UploadFailed as exc:
            _discard_partial(dev, incoming)
            # verified and moved in (or some of them): nothing activated
            if build and exc.code == receiver_program.BUILD_FAILED:
                raise DeployError(f"{dev.target.name}: build {posixpath.relpath(build['final'], dev.root)} failed: "
                                  f"{exc.why}") from None
            if checked and exc.code == receiver_program.MISMATCH:
                raise DeployError(f"{dev.target.name}: uploaded files failed sha256 verification; nothing was "
                                  f"activated: {exc.why}") from None
            raise DeployError(f"{dev.target.name}: upload of {exc.what} failed, nothing was activated: "
                              f"{exc.why}") from None
    else:
        import paramiko

        for what, local, name, _ in uploads:
            try:
                dev.transport.put(local, remote=posixpath.join(incoming, name))
            except (OSError, EOFError, paramiko.SSHException) as exc:
                _discard_partial(dev, incoming)
                raise DeployError(f"{dev.target.name}: upload of {what} failed, nothing was activated: "
                                  f"{exc or type(exc).__name__}") from None
    sent = sum(o.size for o in plan.upload)
    if not checked:
        verify = dev.run(f"cd {quote(incoming)} && sha256sum --check --quiet --strict SHA256SUMS",
                         "verify uploads", privileged=False, warn=True)
        if verify.exited != 0:
            dev.run(f"cd {quote(incoming)} && rm -f -- {names} SHA256SUMS", "discard bad uploads", privileged=False,
                    warn=True)
            raise DeployError(f"{dev.target.name}: uploaded files failed sha256 verification; nothing was "
                              f"activated: {(verify.stdout + verify.stderr).strip()[-400:]}")
    secs = time.monotonic() - t0
    how = "sha256 verified as written" if checked else "sha256 verified"
    log(f"  uploaded {len(plan.upload)} objects, {sent / 1e6:.1f} MB in {secs:.1f} s ({how_sent}), {how}")
    if build:
        return None, True
    # read-only, with the verified mark (mtime 0: tar sets it, SFTP does not), as the receiver leaves them
    move_in = (f"cd {quote(incoming)} && chmod 0444 -- {names} && TZ=UTC0 touch -t 197001010000.00 -- {names} "
               f"&& mv -f -- {names} {quote(dev.path('objects'))}/ "
               f"&& rm -f SHA256SUMS")
    if dev.target.settings.sudo:  # objects may reach `sudo install`: hashed again where they now are
        move_in += " && " + _recheck_command(dev, [o.sha256 for o in plan.upload])
    return move_in, False
