"""A client of an OpenSSH master's control socket (its PROTOCOL.mux, version 4), in-process.

What `ssh -S <socket> host command` does, without starting a client: the master opens the
session on its connection, and we hand it our pipes' file descriptors (SCM_RIGHTS), so the
remote command's output flows straight into them. A command then costs a few socket messages
instead of a process (an exec, libcrypto, the config), once per command and device.
Only the passenger requests edgefleet needs: a command, and a stdio forward (`ssh -W`).
"""

from __future__ import annotations

import os
import selectors
import socket
import struct
import time
from dataclasses import dataclass

from .base import TailBuffer

__all__ = ["MuxError", "MuxTimeout", "MuxUnavailable", "MuxRefused", "Completed", "Session", "run_command",
           "start_command", "open_forward"]

_HELLO = 0x00000001
_NEW_SESSION = 0x10000002
_NEW_STDIO_FWD = 0x10000008
_OK = 0x80000001
_PERMISSION_DENIED = 0x80000002
_FAILURE = 0x80000003
_EXIT_MESSAGE = 0x80000004
_SESSION_OPENED = 0x80000006
_TTY_ALLOC_FAIL = 0x80000008
_VERSION = 4
_NO_ESCAPE = 0xFFFFFFFF
_MAX_PACKET = 256 * 1024


class MuxError(Exception):
    """The master is gone or broke the protocol (the caller falls back to a new connection)."""


class MuxTimeout(MuxError):
    """The command did not end within its timeout (it may still run on the device)."""


class MuxUnavailable(MuxError):
    """The master could not be asked at all (gone, or not a master): nothing ran; use a new connection."""


class MuxRefused(MuxError):
    """The master refused the request (its reason is the message): e.g. nothing listens on a forward's port."""


@dataclass
class Completed:
    exited: int
    stdout: bytes
    stderr: bytes


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _send(sock: socket.socket, kind: int, body: bytes) -> None:
    payload = struct.pack(">I", kind) + body
    sock.sendall(struct.pack(">I", len(payload)) + payload)


class _Closed(MuxError):
    """The master closed the control connection."""


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = sock.recv(left)
        if not chunk:
            raise _Closed("the master closed the control connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _recv(sock: socket.socket) -> tuple[int, bytes]:
    (length,) = struct.unpack(">I", _recv_exact(sock, 4))
    if not 4 <= length <= _MAX_PACKET:
        raise MuxError(f"bad packet length {length} from the master")
    packet = _recv_exact(sock, length)
    return struct.unpack(">I", packet[:4])[0], packet[4:]


def _reason(body: bytes) -> str:
    if len(body) < 8:
        return "no reason given"
    (n,) = struct.unpack(">I", body[4:8])
    return body[8:8 + n].decode(errors="replace")


def _connect(path: str, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        _send(sock, _HELLO, struct.pack(">I", _VERSION))
        kind, body = _recv(sock)
        if kind != _HELLO or struct.unpack(">I", body[:4])[0] != _VERSION:
            raise MuxUnavailable(f"the master speaks another mux protocol (message {kind:#x})")
    except (OSError, MuxError) as exc:
        sock.close()
        raise MuxUnavailable(f"control socket {path}: {exc}") from None
    return sock


def _send_fds(sock: socket.socket, fds: list[int]) -> None:
    for fd in fds:  # the master takes them one message at a time, each with one byte of data
        socket.send_fds(sock, [b"\0"], [fd])


def _opened(sock: socket.socket, request_id: int) -> int:
    """Wait for the master to open the session; return its id, or raise MuxRefused with its reason."""
    while True:
        kind, body = _recv(sock)
        if kind == _SESSION_OPENED:
            return struct.unpack(">I", body[4:8])[0]
        if kind in (_PERMISSION_DENIED, _FAILURE):
            raise MuxRefused(_reason(body))
        if kind != _OK:
            raise MuxError(f"unexpected message {kind:#x} from the master")


class _Fds:
    """File descriptors this call owns, each closed exactly once (a second close could hit the
    same number reused by another thread's pipe)."""

    def __init__(self):
        self.open: set[int] = set()

    def add(self, *fds: int) -> tuple[int, ...]:
        self.open.update(fds)
        return fds

    def close(self, fd: int) -> None:
        if fd in self.open:
            self.open.discard(fd)
            os.close(fd)

    def close_all(self) -> None:
        for fd in list(self.open):
            self.close(fd)


def _new_session(sock: socket.socket, path: str, command: str, fds: list[int]) -> None:
    """Ask the master for a session running `command` with `fds` as its stdin, stdout and stderr."""
    # request id, reserved, want tty / X11 / agent / subsystem (u32 each, all off), no escape
    # character, no terminal type, the command; no environment
    body = (struct.pack(">I", 1) + _string(b"") + struct.pack(">IIIII", 0, 0, 0, 0, _NO_ESCAPE)
            + _string(b"") + _string(command.encode()))
    try:
        _send(sock, _NEW_SESSION, body)
        _send_fds(sock, fds)
    except OSError as exc:
        raise MuxUnavailable(f"control socket {path}: {exc}") from None


class Session:
    """A command the master runs with our file descriptors for its input and output (`start_command`)."""

    def __init__(self, sock: socket.socket, session: int):
        self.sock, self.session = sock, session

    def wait(self, timeout: float | None = None) -> int:
        """Return the command's exit status (255: gone without one) once the master closed the
        session: its exit message can come before the master wrote the last of its output."""
        self.sock.settimeout(timeout)
        exited = 255
        try:
            while True:
                kind, body = _recv(self.sock)
                if kind == _EXIT_MESSAGE and struct.unpack(">I", body[:4])[0] == self.session:
                    exited = struct.unpack(">I", body[4:8])[0]
                elif kind not in (_TTY_ALLOC_FAIL, _OK):
                    raise MuxError(f"unexpected message {kind:#x} from the master")
        except _Closed:
            return exited
        except OSError as exc:  # a timeout among them
            raise MuxError(f"waiting for the command: {exc}") from None
        finally:
            self.close()

    def close(self) -> None:
        """Let go of the session (the master closes its channel; the command's input ends)."""
        self.sock.close()


def start_command(path: str, command: str, stdin: int, stdout: int, stderr: int) -> Session:
    """Start `command` on the device over the master on `path`, its input read by the master
    straight from `stdin` (e.g. a pipe we write into: no client process relays the bytes) and
    its output written to `stdout` and `stderr`. Raises MuxUnavailable when nothing ran."""
    sock = _connect(path, 30.0)
    try:
        _new_session(sock, path, command, [stdin, stdout, stderr])
        return Session(sock, _opened(sock, 1))
    except MuxRefused as exc:  # e.g. sshd's MaxSessions on this connection: nothing ran
        sock.close()
        raise MuxUnavailable(f"the master could not open a session: {exc}") from None
    except MuxUnavailable:
        sock.close()
        raise
    except (OSError, MuxError) as exc:  # it may have started
        sock.close()
        raise MuxError(f"control socket {path}: {exc}") from None


def run_command(path: str, command: str, stdin: bytes | None = None, timeout: float | None = None) -> Completed:
    """Run `command` on the device over the master listening on `path`; collect its output and exit status.

    Raises MuxUnavailable when the master could not be asked (nothing ran), MuxError when the
    link broke once the session was open (it may have run).
    """
    sock = _connect(path, 30.0)
    fds = _Fds()
    try:
        out_r, out_w = fds.add(*os.pipe())
        err_r, err_w = fds.add(*os.pipe())
        in_r, in_w = fds.add(*os.pipe()) if stdin else (fds.add(os.open(os.devnull, os.O_RDONLY))[0], -1)
        _new_session(sock, path, command, [in_r, out_w, err_w])
        for fd in (in_r, out_w, err_w):  # the master holds them now
            fds.close(fd)
        try:
            session = _opened(sock, 1)
        except MuxRefused as exc:  # e.g. sshd's MaxSessions (10) on this connection: nothing ran
            raise MuxUnavailable(f"the master could not open a session: {exc}") from None
        return _collect(sock, session, fds, out_r, err_r, in_w, stdin or b"", timeout)
    except OSError as exc:
        raise MuxError(f"control socket {path}: {exc}") from None
    finally:
        fds.close_all()
        sock.close()


def _collect(sock: socket.socket, session: int, fds: _Fds, out_r: int, err_r: int, in_w: int, data: bytes,
             timeout: float | None) -> Completed:
    """Feed stdin, drain stdout and stderr until both end, and read the exit message."""
    deadline = None if timeout is None else time.monotonic() + timeout
    output = {out_r: TailBuffer(), err_r: TailBuffer()}
    exited: int | None = None
    sock.setblocking(False)
    with selectors.DefaultSelector() as sel:
        sel.register(out_r, selectors.EVENT_READ)
        sel.register(err_r, selectors.EVENT_READ)
        sel.register(sock, selectors.EVENT_READ)
        view = memoryview(data)
        if in_w >= 0:
            os.set_blocking(in_w, False)
            sel.register(in_w, selectors.EVENT_WRITE)
        pending = b""
        while output.keys() & {k.fd for k in sel.get_map().values()} or exited is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise MuxTimeout(f"the command did not end within {timeout:g} s")
            for key, _ in sel.select(left):
                fd = key.fd
                if fd == in_w:
                    try:
                        view = view[os.write(in_w, view[:65536]):]
                    except BrokenPipeError:  # the command ended without reading all of it
                        view = view[len(view):]
                    if not view:
                        sel.unregister(in_w)
                        fds.close(in_w)  # the remote command sees the end of its input
                elif fd in output:
                    chunk = os.read(fd, 65536)
                    if chunk:
                        output[fd].add(chunk)
                    else:
                        sel.unregister(fd)
                else:
                    chunk = sock.recv(65536)
                    if not chunk:
                        sel.unregister(sock)
                        if exited is None:  # gone without an exit status: as `ssh` says it, 255
                            exited = 255
                            output[err_r].add(b"mux_client_read_packet: the master closed the session\n")
                        continue
                    pending += chunk
                    while len(pending) >= 4 and len(pending) >= 4 + struct.unpack(">I", pending[:4])[0]:
                        (length,) = struct.unpack(">I", pending[:4])
                        packet, pending = pending[4:4 + length], pending[4 + length:]
                        kind = struct.unpack(">I", packet[:4])[0]
                        if kind == _EXIT_MESSAGE and struct.unpack(">I", packet[4:8])[0] == session:
                            exited = struct.unpack(">I", packet[8:12])[0]
                        elif kind not in (_TTY_ALLOC_FAIL, _OK):
                            raise MuxError(f"unexpected message {kind:#x} from the master")
    return Completed(exited, output[out_r].value(), output[err_r].value())


def open_forward(path: str, host: str, port: int) -> tuple[socket.socket, socket.socket]:
    """Open a stream to host:port as seen from the device (`ssh -W`), over the master on `path`.

    Return (our end of the stream, the control connection, to close after the stream); raise
    MuxRefused when the device refuses the connection (e.g. nothing listens there yet).
    """
    sock = _connect(path, 30.0)
    ours, theirs = socket.socketpair()
    try:
        _send(sock, _NEW_STDIO_FWD, struct.pack(">I", 1) + _string(b"") + _string(host.encode())
              + struct.pack(">I", port))
        _send_fds(sock, [theirs.fileno(), theirs.fileno()])
        theirs.close()
        _opened(sock, 1)
    except BaseException:
        theirs.close()
        ours.close()
        sock.close()
        raise
    return ours, sock
