"""The receiving end of an upload: `python3 -c <source> [BUILD_SPEC_JSON]`, a tar stream on stdin.

Each object of the stream is written as `.<name>.part` (created anew: O_EXCL, no link
followed), hashed as it is written, and renamed to its name only when the bytes' sha256 is
that name: one pass over the bytes instead of tar and then `sha256sum -c`. Given a build spec
(only where the login user writes the device root), it then moves the verified objects into
objects/ and builds the release in the same process.

Exit status: 0 done, 3 a write failed (disk full), 4 an object's bytes were not its sha256,
5 the verified objects could not be moved in or the release not built.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
import tarfile

from edgefleet.deploy.remote.build import build  # host only

WRITE_FAILED, MISMATCH, BUILD_FAILED = 3, 4, 5
_PIPE_SIZE = 1 << 20
_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def widen_pipe(fd: int) -> None:
    """Ask for a 1 MiB stdin pipe (the most an unprivileged process may): sshd then hands over the
    stream in large writes instead of growing and copying a channel window of buffers."""
    try:
        fcntl.fcntl(fd, _SETPIPE_SZ, _PIPE_SIZE)
    except OSError:
        pass  # not a pipe, or a lower pipe-max-size: only slower


def receive(stream, out_dir: str = ".") -> tuple[list[str], list[str]]:
    """Write each verified object of the tar `stream` into `out_dir`; return (received, refused) names."""
    bad: list[str] = []
    got: list[str] = []
    with tarfile.open(fileobj=stream, mode="r|", bufsize=_PIPE_SIZE) as tar:
        for member in tar:
            name = member.name
            source = tar.extractfile(member) if member.isreg() else None
            if source is None or "/" in name or name.startswith("."):
                bad.append(name)
                continue
            digest, part = hashlib.sha256(), os.path.join(out_dir, "." + name + ".part")
            try:
                fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                with open(fd, "wb") as out:
                    for chunk in iter(lambda: source.read(_PIPE_SIZE), b""):  # noqa: B023 (used at once)
                        digest.update(chunk)
                        out.write(chunk)
            except OSError as exc:
                sys.stderr.write(f"{name}: {exc}\n")
                sys.exit(WRITE_FAILED)
            if digest.hexdigest() != name:
                os.unlink(part)
                bad.append(name)
                continue
            os.chmod(part, 0o444)  # read-only: an editor refuses to write through a release's link
            os.utime(part, (0, 0))  # the verified mark: a later write moves the mtime (deploy/converge.py)
            os.rename(part, os.path.join(out_dir, name))
            got.append(name)
    return got, bad


def main() -> None:
    widen_pipe(0)
    got, bad = receive(sys.stdin.buffer)
    if bad:
        sys.stderr.write("sha256 mismatch: " + " ".join(bad) + "\n")
        sys.exit(MISMATCH)
    if len(sys.argv) > 1:
        spec = json.loads(sys.argv[1])
        try:
            for name in got:
                os.rename(name, os.path.join(spec["objects"], name))
            build(spec)
        except OSError as exc:
            sys.stderr.write(f"build: {exc}\n")
            sys.exit(BUILD_FAILED)


if __name__ == "__main__":
    main()
