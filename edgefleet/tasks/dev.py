"""Developer tasks: `check` runs the linters, the type checker and the fast test tier."""

from __future__ import annotations

import shlex
import sys
import time

from invoke import Collection, Exit

from ..paths import repo_root
from ._errors import exits_on_user_error
from ._task import task

LINTED = ("edgefleet", "payload", "tasks.py")
FAST_TIER = ("tests/unit", "tests/golden")


def check_steps(fast_tier: bool = True) -> list[tuple[str, list[str]]]:
    """Return (name, argv) of each check, in the order they run; all run even when one fails."""
    python = sys.executable
    steps = [
        ("ruff", [python, "-m", "ruff", "check", *LINTED]),
        ("mypy", [python, "-m", "mypy"]),  # pyproject.toml's [tool.mypy] names edgefleet and edge_runtime
    ]
    if fast_tier:
        steps.append(("pytest", [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *FAST_TIER]))
    return steps


@task(help={"tests": "also run the fast test tier, tests/unit and tests/golden (--no-tests: only ruff and mypy)"})
@exits_on_user_error
def check(c, tests=True):
    """Run ruff, mypy and the fast test tier; exit 1 if any of them finds something."""
    failed = []
    with c.cd(str(repo_root())):
        for name, argv in check_steps(fast_tier=tests):
            print(f"+ {shlex.join(argv[1:])}", flush=True)
            started = time.monotonic()
            result = c.run(shlex.join(argv), warn=True, pty=False, in_stream=False)
            verdict = "ok" if result.exited == 0 else f"FAILED (exit {result.exited})"
            print(f"check: {name} {verdict} in {time.monotonic() - started:.0f} s", flush=True)
            if result.exited != 0:
                failed.append(name)
    if failed:
        raise Exit(f"check: {', '.join(failed)} found problems", code=1)
    print("check: all clean")


ns = Collection("dev", check)
