"""One command on a device through the OpenSSH client, as the connection runs it: an `ssh`
client process fed its input and bounded in time, keeping only the tail of its output; the
process-like handle of a command started over a master; and how the client's own failures
are told from a remote command's exit status.
"""

from __future__ import annotations

import os
import re
import selectors
import subprocess
import time

from . import mux as sshmux
from .base import CommandTimeout, OpenSSHError, TailBuffer

__all__ = ["run_client", "MuxProcess", "input_bytes", "without_mux_noise", "ssh_failed"]


def run_client(argv: list[str], data: bytes | None, timeout: float | None) -> tuple[int, bytes, bytes]:
    """Run an `ssh` client: feed `data`, keep the tail of its output (TailBuffer), bounded by `timeout`."""
    deadline = None if timeout is None else time.monotonic() + timeout
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    out, err = TailBuffer(), TailBuffer()
    output = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
    try:
        with selectors.DefaultSelector() as sel:
            for fd in output:
                sel.register(fd, selectors.EVENT_READ)
            view = memoryview(data or b"")
            if proc.stdin is not None:
                os.set_blocking(proc.stdin.fileno(), False)
                sel.register(proc.stdin.fileno(), selectors.EVENT_WRITE)
            while sel.get_map():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise CommandTimeout(f"ssh: the command did not end within {timeout:g} s: {argv[-1][:80]}")
                for key, _ in sel.select(left):
                    if key.fd in output:
                        chunk = os.read(key.fd, 65536)
                        if chunk:
                            output[key.fd].add(chunk)
                        else:
                            sel.unregister(key.fd)
                        continue
                    try:
                        view = view[os.write(key.fd, view[:65536]):]
                    except BrokenPipeError:
                        view = view[len(view):]
                    if not view:
                        sel.unregister(key.fd)
                        proc.stdin.close()  # type: ignore[union-attr]  # the command sees its input end
        left = None if deadline is None else max(deadline - time.monotonic(), 0.1)
        exited = proc.wait(left)
    except subprocess.TimeoutExpired:
        raise CommandTimeout(f"ssh: the command did not end within {timeout:g} s: {argv[-1][:80]}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None and not stream.closed:
                stream.close()
    return exited, out.value(), err.value()


class MuxProcess:
    """What `stream` returns over a master: like the Popen an `ssh` client would be, for its use."""

    def __init__(self, session: sshmux.Session, stdin):
        self.session, self.stdin = session, stdin

    def wait(self, timeout: float | None = None) -> int:
        try:
            return self.session.wait(timeout)
        except sshmux.MuxError as exc:
            raise OpenSSHError(f"mux_client_request_session: {exc}") from None

    def kill(self) -> None:
        self.stdin.close()
        self.session.close()

    def terminate(self) -> None:
        """End the session from another thread: the master lets go of the channel and of its end of
        our pipe (so a blocked write fails); our end stays open for the writer to close."""
        self.session.close()


def input_bytes(in_stream) -> bytes | None:
    if in_stream is None or in_stream is False:
        return None
    if isinstance(in_stream, (bytes, str)):
        data = in_stream
    else:
        data = in_stream.read()
    return data.encode() if isinstance(data, str) else data


# what the client prints when the master it was told to use is gone; it then connects directly
_MUX_NOISE = re.compile(r"^(Control socket connect\(.*|mux_client_\w+: .*)\n?", re.M)
# the client's own failures (a remote command's exit 255 alone is not one)
_SSH_FAILED = re.compile(r"^(ssh: |Host key verification failed|kex_exchange_identification|Connection (closed|reset|"
                         r"timed out)|client_loop: |Broken pipe|Permission denied \(|@@@@@@@@|Received disconnect|"
                         r"ssh_exchange_identification|Bad owner or permissions|Timeout, server .* not responding|"
                         r"banner exchange: |stdio forwarding failed|Stdio forwarding request failed|"
                         r"channel \d+: open failed|"
                         r"mux_client_\w+: )", re.M)


def without_mux_noise(stderr: str) -> str:
    return _MUX_NOISE.sub("", stderr)


def ssh_failed(stderr: str) -> bool:
    return bool(_SSH_FAILED.search(stderr))
