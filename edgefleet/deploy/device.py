"""The device runner: a target plus its transport. Commands run as the login user, through sudo
for the device root where needed, and root-only steps as plain `sudo -n` argv (no shell), so a
sudoers list can name each. Every command is built from quoted parts (shlex.quote).
"""

from __future__ import annotations

import io
import posixpath
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from shlex import quote

from ..errors import EdgefleetError
from ..inventory import Target
from ..transport import CommandTimeout, OpenSSHError, SSHError, Transport

__all__ = ["Device", "DeployError", "StepTimeout", "root_steps", "docker_argv", "now"]

_STEP_MARK = "edgefleet-step"  # Device.batch: each command of a batch reports its exit code


class DeployError(EdgefleetError):
    """A step failed on the device; the message names the target and the step."""


class StepTimeout(DeployError):
    """A step did not end within its timeout, or the device's deadline had passed."""


@dataclass
class Device:
    """A target plus its connection: runs commands, privileged ones through sudo when asked.

    Two kinds of privilege: writing the device root (`run(..., privileged=True)`), which needs
    no sudo when the login user owns the root (`owns_root`, from the facts), and root-only
    system steps (`system`: units, useradd), each one plain `sudo -n` argv with no shell, so a
    sudoers list can name exactly what a deploy runs.

    Three verbs: `run` (a shell command), `system` (one root-only argv), `batch` (several of
    either, built by `file_command` / `system_command` / `root_steps`, in one session).
    """

    transport: Transport
    target: Target
    owns_root: bool = False
    deadline: float | None = None  # time.monotonic() after which no step starts (deploy.device_deadline_s)

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
            return "sudo -n sh -c " + quote(command)
        return command

    def system_command(self, argv: list[str]) -> str:
        """Return a root-only argv as it runs: one plain `sudo -n` argv when the target uses sudo."""
        return ("sudo -n " if self.target.settings.sudo else "") + " ".join(quote(a) for a in argv)

    def batch(self, steps: list[tuple[str, str, bool]]) -> list[int]:
        """Run commands (`file_command`/`system_command` strings, step, warn) in order in one
        session; return their exit codes.

        A root-only one is the same `sudo -n` argv `system` runs (one a line, so a sudoers list
        still names each); the first that fails and is not `warn` ends the batch and raises,
        naming its step. One session instead of one each: a session costs a fork and an exec on
        the device (and far more under qemu-user).
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

    def step_timeout(self, step: str) -> float:
        """Return how long the next step may run: the command timeout, or less when the deadline is near."""
        limit = self.target.settings.deploy.command_timeout_s
        if self.deadline is None:
            return limit
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise StepTimeout(f"{self.target.name}: {step}: not started, the device's deadline has passed "
                              f"(deploy.device_deadline_s = {self.target.settings.deploy.device_deadline_s:g} s)")
        return min(limit, left)

    def _exec(self, command: str, step: str, warn: bool, text: str | None = None):
        from invoke.exceptions import CommandTimedOut  # what Fabric's run raises

        timeout = self.step_timeout(step)
        try:
            stdin = io.StringIO(text) if text is not None else False
            result = self.transport.run(command, hide=True, warn=True, in_stream=stdin, timeout=timeout)
        except (CommandTimeout, CommandTimedOut):
            raise StepTimeout(f"{self.target.name}: {step} timed out after {timeout:.0f} s (deploy.command_timeout_s "
                              f"{self.target.settings.deploy.command_timeout_s:g} s, deploy.device_deadline_s "
                              f"{self.target.settings.deploy.device_deadline_s:g} s)") from None
        except OpenSSHError as exc:  # the link, not the command (Fabric raises paramiko's errors here)
            raise SSHError(f"{self.target.name}: {step}: SSH failed: {str(exc)[-500:]}") from None
        if result.exited != 0 and not warn:
            detail = (result.stderr or result.stdout).strip()[-800:]
            raise DeployError(f"{self.target.name}: {step} failed (exit {result.exited}): {detail}")
        return result


def root_steps(dev: Device, steps: list[tuple[list[str], str, bool]]) -> list[tuple[str, str, bool]]:
    """Return root-only steps (argv, step, warn) as `Device.batch` takes them."""
    return [(dev.system_command(argv), step, warn) for argv, step, warn in steps]


def docker_argv(target: Target, *args: str) -> list[str]:
    """Return a docker command on the device: through `sudo -n` when the target uses sudo.

    The deploy user's docker access is the fixed commands in its sudoers list (see
    edgefleet.lab.vmplan.docker_commands), not the docker group (which is root without a list).
    """
    return (["sudo", "-n"] if target.settings.sudo else []) + ["docker", *args]


def now() -> str:
    """Return the time for state.json and lock records (UTC, ISO 8601, seconds)."""
    return datetime.now(UTC).isoformat(timespec="seconds")
