"""The one base of every error a user can act on.

Tasks catch `EdgefleetError`, print its message without a traceback and exit with its
`exit_code`: 2 for a usage or input mistake (`InputError`: inventory, templates, arguments,
bundles), 1 for a device or fleet failure. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["EdgefleetError", "InputError"]


class EdgefleetError(Exception):
    """A failure the message explains; exit status 1 (a device or fleet failure)."""

    exit_code = 1


class InputError(EdgefleetError):
    """The user's input cannot work (a file, key, argument); exit status 2."""

    exit_code = 2
