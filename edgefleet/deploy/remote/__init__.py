"""Programs that run on the device with its python3 and the stdlib only, sent as source.

Each is a real module here (linted, type-checked, unit-tested); `source(name)` returns the
text that is sent (`python3 -c <text>`): a line ending in `# host only` is left out, which is
how a program imports a helper that `source` sends ahead of it (`_REQUIRES`), and the
`from __future__` lines are said once, first.
"""

from __future__ import annotations

import functools
from importlib import resources

__all__ = ["source"]

_HOST_ONLY = "# host only"
_FUTURE = "from __future__ import annotations"
# what each program needs sent ahead of it, in order
_REQUIRES = {"receiver": ("build",), "builder": ("build",), "probe": ()}


@functools.cache
def source(name: str) -> str:
    """Return program `name`'s source as it is sent: its helpers first, host-only lines left out."""
    parts = [*_REQUIRES[name], name]
    texts = [resources.files(__package__).joinpath(f"{part}.py").read_text() for part in parts]
    lines = [line for text in texts for line in text.splitlines()
             if not line.rstrip().endswith(_HOST_ONLY) and not line.startswith("from __future__ ")]
    return "\n".join([_FUTURE, *lines]) + "\n"
