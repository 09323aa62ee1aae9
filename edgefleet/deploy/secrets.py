"""The API token on the device: one root-only file systemd reads, never a content-addressed object.

runtime.yaml (hard links into objects/, 0644) names an environment variable; the unit's
`EnvironmentFile=` fills it from `<root>/secrets/runtime.env` (0600, in a 0700 directory, owned
by whoever writes the device root: root, or a deploy user who owns it). systemd reads it as
root before it drops to the service user, so only root and the service's own processes see
the token. The token travels on the command's standard input, never on a command line.
"""

from __future__ import annotations

from shlex import quote

from ..render import TOKEN_ENV, TOKEN_FILE
from .device import Device

__all__ = ["write_token_file"]


def write_token_file(dev: Device) -> None:
    """Write the target's token for systemd (atomically, 0600), or remove a token file it no longer has."""
    path = dev.path(TOKEN_FILE)
    token = dev.target.settings.runtime.token
    if not token:
        dev.run(f"rm -f {quote(path)}", "remove the old API token file")
        return
    secrets, tmp = quote(path.rsplit("/", 1)[0]), quote(path + ".tmp")
    # created anew under umask 077 (noclobber: no planted link is followed), then renamed into place
    dev.run(f"umask 077 && mkdir -p {secrets} && chmod 0700 {secrets} && rm -f {tmp} && set -C && "
            f"cat > {tmp} && chmod 0600 {tmp} && mv -f {tmp} {quote(path)}",
            "write the API token file", text=f"{TOKEN_ENV}='{token}'\n")
