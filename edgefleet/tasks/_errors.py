"""How a task ends on an error the user can act on: a one-line message and the error's exit code.

Every task body is wrapped by `exits_on_user_error`: an `EdgefleetError` becomes invoke's
`Exit("error: ...", code=exc.exit_code)` (2 for an input or usage mistake, 1 for a device or
fleet failure); any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from invoke import Exit

from ..errors import EdgefleetError, InputError

__all__ = ["UsageError", "exits_on_user_error", "require"]

P = ParamSpec("P")
R = TypeVar("R")


class UsageError(InputError):
    """A task's arguments cannot work (missing, unknown or clashing); exit status 2."""


def exits_on_user_error(body: Callable[P, R]) -> Callable[P, R]:
    """Wrap a task body: an EdgefleetError ends the task with its message and `exit_code`, no traceback.

    Put it under `@task`: invoke reads the arguments through `functools.wraps`' `__wrapped__`.
    """

    @functools.wraps(body)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return body(*args, **kwargs)
        except EdgefleetError as exc:
            raise Exit(f"error: {exc}", code=exc.exit_code) from None

    return run


def require(value: str | None, flag: str, task: str) -> str:
    """Return the value of a flag `task` needs, or raise UsageError naming the flag.

    Invoke takes an argument without a default as positional, and a positional swallows the
    next word, even `--help`; so required values are flags with a default of None, checked here.
    """
    if not value:
        raise UsageError(f"{task}: {flag} is required (see `invoke {task} --help`)")
    return value
