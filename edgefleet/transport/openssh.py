"""SSH through the OpenSSH client: one multiplexed master per device, kept warm between runs.

`OpenSSHConnection` is an Invoke `Context` whose `run()` executes on the device, so a step
written as `fn(c, ...)` runs the same through it, through Fabric, or against `MockContext`.
The OpenSSH client logs in once per device and stays as its master (ControlMaster); every
command after that is a request on the master's control socket made in-process (`sshmux`), so
the key exchange is paid once per device, a command costs no process on this host, and a run
that starts within `EDGEFLEET_SSH_PERSIST` seconds (default 120; 0 turns masters off: one
client per command) of the last one logs in not at all. Without a usable master a command
falls back to its own `ssh` client. Host keys are verified exactly as `edgefleet.ssh.connect`
does: only the target's known_hosts (or ~/.ssh/config's), StrictHostKeyChecking=yes on every
hop (ProxyJump too, through `client_config`), never added; BatchMode, so nothing ever prompts.
A master's control socket lives in a private 0700 directory: anyone who can reach it can run
commands on the device as the login user, as with any OpenSSH ControlMaster.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import json
import os
import re
import shlex
import socket
import subprocess
import tempfile
from functools import cached_property
from pathlib import Path

from invoke import Config, Context
from invoke.exceptions import UnexpectedExit
from invoke.runners import Result

from . import mux as sshmux
from .base import PUT, RESPONSE_CAP, STREAM, CommandTimeout, OpenSSHError
from .openssh_process import MuxProcess, input_bytes, run_client, ssh_failed, without_mux_noise
from .sshconfig import KEY_CHARS, client_config, control_dir, openssh_client, persist_seconds

__all__ = ["OpenSSHConnection", "ForwardedHTTPConnection"]



class OpenSSHConnection(Context):
    """Run commands on one device through the OpenSSH client over a multiplexed master.

    `options`: the client's options (trust, key, port, user, timeouts) without the host;
    `host`: the address or ~/.ssh/config alias; `known_hosts`: the only file trusted (None: what
    ~/.ssh/config says), for every hop. `open()` before the first command.
    """

    capabilities = frozenset({STREAM, PUT})

    def __init__(self, name: str, host: str, options: list[str], timeout: float, known_hosts: Path | None = None):
        # Invoke's defaults only: `run` here never reads Invoke's runner settings, and a full
        # Config looks for six config files per connection
        super().__init__(config=Config(lazy=True))
        ssh = openssh_client() or "ssh"
        base = [ssh, "-F", str(client_config(known_hosts)), *options]
        persist = persist_seconds()
        control_path: Path | None = None
        if persist:
            # how the device is reached and trusted names its master; a timeout does not. The
            # trusted keys are part of "trusted": a master checked the host key once, when it
            # logged in, so after any edit of known_hosts a run logs in anew (and checks again)
            identity = [a for a in (*base, host) if not a.startswith("ConnectTimeout=")]
            identity += _known_hosts_digests(known_hosts)
            key = hashlib.sha256("\0".join(identity).encode()).hexdigest()[:KEY_CHARS]
            control_path = control_dir() / key
        mux = ["-o", "ControlMaster=no", "-o", f"ControlPath={control_path}"] if control_path else []
        # plain attributes (`_set`): a Context would file anything set on it as a config key,
        # and look it up through the config on every read
        self._set(name=name, host=host, timeout=timeout, ssh=ssh, base=base, persist=persist,
                  control_path=control_path, mux=mux)

    # -- what ssh makes of the target (~/.ssh/config included), asked only when needed
    @cached_property
    def resolved(self) -> dict[str, str]:
        out = subprocess.run([*self.base, "-G", "--", self.host], capture_output=True, text=True, timeout=30)
        values: dict[str, str] = {}
        for line in out.stdout.splitlines():
            key, _, value = line.partition(" ")
            values.setdefault(key, value)
        return values

    @property
    def user(self) -> str:
        return self.resolved.get("user", "")

    @property
    def port(self) -> int:
        return int(self.resolved.get("port", "22"))

    @property
    def address(self) -> str:
        host = self.resolved.get("hostname", self.host)
        return host if self.port == 22 else f"[{host}]:{self.port}"

    @property
    def known_hosts(self) -> Path:
        first = (self.resolved.get("userknownhostsfile") or "~/.ssh/known_hosts").split()[0]
        return Path(first).expanduser()

    def argv(self, command: str | None = None, *extra: str) -> list[str]:
        """Return the client argv for `command` on the device (over the master when there is one)."""
        return [*self.base, *self.mux, *extra, "--", self.host, *([command] if command is not None else [])]

    # -- the master
    def open(self) -> None:
        """Make sure the device's master is up (start it if not); raise OpenSSHError when the device
        cannot be reached or did not prove who it is. Without masters, check one login."""
        if self.control_path is None:
            self._check(subprocess.run(self.argv("true"), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                       timeout=self.timeout * 4))
            return
        with open(f"{self.control_path}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one process starts it; the others wait and use it
            if self.alive():
                return
            with contextlib.suppress(FileNotFoundError):
                self.control_path.unlink()  # left by a master that died without cleaning up
            with tempfile.TemporaryFile() as err:  # a file, not a pipe: the master keeps no pipe open
                res = subprocess.run([*self.base, "-o", "ControlMaster=yes", "-o", f"ControlPath={self.control_path}",
                                      "-o", f"ControlPersist={self.persist}", "-f", "-N", "--", self.host],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                     timeout=self.timeout * 4)
                err.seek(0)
                res.stderr = err.read().decode(errors="replace")  # type: ignore[assignment]  # text, as _check reads it
            if res.returncode != 0:
                # a ControlPersist client sends its ProxyJump hops' stderr to /dev/null: ask again
                # without a master to learn which hop refused and why
                self._check(subprocess.run([*self.base, "-o", "ControlPath=none", "--", self.host, "true"],
                                           stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                           timeout=self.timeout * 4))
            self._check(res)

    def alive(self) -> bool:
        """Return whether this device's master is listening on its socket (a dead one's socket refuses).

        A connect on the socket, not `ssh -O check`: no client started (once per device and run).
        A master whose link died exits by itself (ServerAlive*).
        """
        if self.control_path is None:
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(5)
            try:
                probe.connect(str(self.control_path))
            except OSError:
                return False
        return True

    def close(self) -> None:
        """Leave the master for the next run (it exits after EDGEFLEET_SSH_PERSIST idle seconds)."""

    def exit_master(self) -> None:
        """Stop this device's master now."""
        if self.control_path is not None and self.control_path.exists():
            subprocess.run([*self.base, "-o", f"ControlPath={self.control_path}", "-O", "exit", "--", self.host],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=30)

    def _check(self, res: subprocess.CompletedProcess) -> None:
        if res.returncode == 0:
            return
        raise OpenSSHError(res.stderr if isinstance(res.stderr, str) else res.stderr.decode(errors="replace"))

    # -- Context
    def run(self, command: str, hide=None, warn: bool = False, in_stream=None, timeout: float | None = None,
            **_ignored) -> Result:
        """Run `command` on the device; like Fabric's `Connection.run` for the options edgefleet uses.

        `in_stream`: False/None (no input), a text or bytes stream, str or bytes. An SSH-level
        failure (exit 255 and the client's own message) raises OpenSSHError.
        """
        data = input_bytes(in_stream)
        command = self._prefix_commands(command)
        exited, out, err = self._execute(command, data, timeout)
        stdout, raw = out.decode(errors="replace"), err.decode(errors="replace")
        stderr = without_mux_noise(raw)
        if exited == 255 and ssh_failed(raw):
            raise OpenSSHError(raw.strip())
        result = Result(stdout=stdout, stderr=stderr, command=command, shell="", exited=exited,
                        hide=("stdout", "stderr"))
        if exited != 0 and not warn:
            raise UnexpectedExit(result)
        return result

    def _execute(self, command: str, data: bytes | None, timeout: float | None) -> tuple[int, bytes, bytes]:
        """Run `command`: over the master's socket in-process (sshmux), else through an `ssh` client."""
        if self.control_path is not None:
            try:
                done = sshmux.run_command(str(self.control_path), command, data, timeout)
                return done.exited, done.stdout, done.stderr
            except sshmux.MuxUnavailable:
                pass  # no master (gone since open()): the client below connects afresh
            except sshmux.MuxTimeout as exc:
                raise CommandTimeout(f"{exc}: {command[:80]}") from None
            except sshmux.MuxError as exc:  # it may have run: never run it twice
                raise OpenSSHError(f"mux_client_request_session: {exc}") from None
        return run_client(self.argv(command), data, timeout)

    def stream(self, command: str, stderr) -> subprocess.Popen | MuxProcess:
        """Start `command` on the device to read what we write into the returned process's `stdin`
        (its output is dropped, its errors go to the file `stderr`); `wait()` returns its exit status.

        Over the master: it reads our pipe itself, no client process relays the bytes; else through
        an `ssh` client.
        """
        if self.control_path is not None:
            r, w = os.pipe()
            try:
                with open(os.devnull, "wb") as null:
                    session = sshmux.start_command(str(self.control_path), command, r, null.fileno(), stderr.fileno())
            except sshmux.MuxUnavailable:
                os.close(w)  # no master (gone since open()): the client below connects afresh
            except sshmux.MuxError as exc:  # it may have started: never start it twice
                os.close(w)
                raise OpenSSHError(f"mux_client_request_session: {exc}") from None
            else:
                return MuxProcess(session, os.fdopen(w, "wb", buffering=0))
            finally:
                os.close(r)  # the master holds its own copy
        return subprocess.Popen(self.argv(command), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=stderr)

    def put(self, local, remote: str) -> None:
        """Write `local` (a path or a binary file object) to `remote` on the device."""
        command = f"cat > {shlex.quote(remote)}"
        with contextlib.ExitStack() as stack:
            source = local if hasattr(local, "read") else stack.enter_context(open(local, "rb"))
            exited, _, err = self._execute(command, source.read(), None)  # small files (state.json)
        if exited != 0:
            raise OSError(f"{self.name}: writing {remote} failed: "
                          f"{without_mux_noise(err.decode(errors='replace')).strip()[-300:]}")

    def forward(self, port: int) -> tuple[socket.socket, socket.socket | subprocess.Popen]:
        """Open a stream to 127.0.0.1:`port` on the device (`ssh -W`); return our end of it and what
        carries it: the master's control connection (in-process), else an `ssh -W` client process.

        A port nothing listens on raises ConnectionRefusedError (in-process) or shows in the
        client's stderr (see ForwardedHTTPConnection.refused).
        """
        if self.control_path is not None:
            try:
                return sshmux.open_forward(str(self.control_path), "127.0.0.1", port)
            except sshmux.MuxRefused as exc:
                raise ConnectionRefusedError(f"127.0.0.1:{port} on the device: {exc}") from None
            except sshmux.MuxError:
                pass  # no master: a client connects afresh
        ours, theirs = socket.socketpair()
        try:
            proc = subprocess.Popen(self.argv(None, "-W", f"127.0.0.1:{port}"), stdin=theirs.fileno(),
                                    stdout=theirs.fileno(),
                                    stderr=subprocess.PIPE)
        finally:
            theirs.close()
        return ours, proc


    def request(self, port: int, path: str, payload: dict | None = None,
                timeout: float = 120.0) -> tuple[int, dict[str, str], bytes]:
        """Send one HTTP request to 127.0.0.1:`port` on the device over the master (`ssh -W`)."""
        link = ForwardedHTTPConnection(self, port, timeout)
        body = None if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json", "Connection": "close"}
        try:
            link.request("GET" if body is None else "POST", path, body=body, headers=headers)
            response = link.getresponse()
            return response.status, dict(response.getheaders()), response.read(RESPONSE_CAP)
        except (OSError, http.client.HTTPException) as exc:
            refused = link.refused()
            if refused is not None:  # not listening (yet): what paramiko's refused channel says too
                raise ConnectionRefusedError(f"127.0.0.1:{port} on the device: {refused}") from None
            if isinstance(exc, OSError):
                raise
            raise ConnectionResetError(f"127.0.0.1:{port} on the device: {exc or type(exc).__name__}") from None
        finally:
            link.release()


def _known_hosts_digests(known_hosts: Path | None) -> list[str]:
    """Return a digest of each known_hosts file that decides trust (the target's, else OpenSSH's defaults).

    With known_hosts left to ~/.ssh/config (UserKnownHostsFile there), OpenSSH's default files are
    the ones hashed; a file named only in ~/.ssh/config is not (see docs/security.md).
    """
    files = [known_hosts] if known_hosts is not None else [
        Path("~/.ssh/known_hosts").expanduser(), Path("~/.ssh/known_hosts2").expanduser(),
        Path("/etc/ssh/ssh_known_hosts"), Path("/etc/ssh/ssh_known_hosts2")]
    digests = []
    for path in files:
        try:
            digests.append(hashlib.sha256(path.read_bytes()).hexdigest())
        except OSError:
            digests.append("-")
    return digests


class ForwardedHTTPConnection(http.client.HTTPConnection):
    """HTTP to 127.0.0.1:`port` on the device over `ssh -W` (nothing listens on this host).

    http.client calls `close()` as soon as it has a `Connection: close` response's headers (the
    body is still to be read from the socket); the stream's carrier (the master's control
    connection, or the `ssh -W` client) must outlive that, or the master drops the body: it
    goes in `release()`, which the caller runs once the body is read.
    """

    def __init__(self, conn: OpenSSHConnection, port: int, timeout: float):
        super().__init__("127.0.0.1", port, timeout=timeout)
        self._conn = conn
        self._carrier: socket.socket | subprocess.Popen | None = None
        self._stderr = ""

    def connect(self) -> None:
        self.sock, self._carrier = self._conn.forward(self.port)
        self.sock.settimeout(self.timeout)

    def refused(self) -> str | None:
        """After a failure: the client's reason when the device refused the forward, else None."""
        self.release()
        err = self._stderr.strip()
        return err if re.search(r"open failed|forwarding (request )?failed", err, re.I) else None

    def release(self) -> None:
        """Close the stream and its carrier (reap the client process, if it was one)."""
        self.close()
        carrier, self._carrier = self._carrier, None
        if carrier is None:
            return
        if isinstance(carrier, socket.socket):  # the master's control connection
            carrier.close()
            return
        try:
            carrier.wait(timeout=5)
        except subprocess.TimeoutExpired:
            carrier.kill()
            carrier.wait()
        if carrier.stderr is not None:
            self._stderr += without_mux_noise(carrier.stderr.read().decode(errors="replace"))
            carrier.stderr.close()
