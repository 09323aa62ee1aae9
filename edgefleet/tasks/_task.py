"""The `@task` decorator every edgefleet task uses: invoke's, with `-h` kept for help.

invoke gives each argument the first free letter of its name as a short flag; `--threads` beside
`--target` got `-h`, so `invoke tune -h` asked for a thread count instead of printing help.
"""

from __future__ import annotations

import invoke

__all__ = ["task"]


class HelpSafeTask(invoke.Task):
    """A Task whose arguments never take `-h` (invoke's help flag) as their short flag."""

    def arg_opts(self, name, default, taken_names):
        return super().arg_opts(name, default, {*taken_names, "h"})


def task(*args, **kwargs):
    """invoke.task with HelpSafeTask (used bare, `@task`, or called, `@task(help=...)`)."""
    kwargs.setdefault("klass", HelpSafeTask)
    return invoke.task(*args, **kwargs)
