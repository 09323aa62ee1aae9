"""The update module's program, as the device runs it: one Python file built from real modules.

`module.py` is the module itself and `gate.py` its health gate; they use the SSH deploy's own
device programs (the release builder and the gate's probe, `edgefleet/deploy/remote/`) and the
gate's judgement (`edgefleet/deploy/health.py`), which are sent ahead of them in one file: lines ending in
`# host only` and relative imports are left out, as are the helpers' `__main__` blocks and `from __future__` lines
(said once, first). Everything in the file needs only the device's python3 and stdlib; the
judgement imports numpy and `edge_runtime` from the release being judged.
"""

from __future__ import annotations

import functools
from importlib import resources

__all__ = ["module_source", "MODULE_NAME"]

MODULE_NAME = "edgefleet-release"  # the payload type in the artifact and the module's file name
_HOST_ONLY = "# host only"
_FUTURE = "from __future__ import annotations"
# (package, module) sent ahead of module.py, in order
_HELPERS = (("edgefleet.deploy.remote", "build"), ("edgefleet.deploy.remote", "probe"),
            ("edgefleet.deploy", "health"), ("edgefleet.deploy", "prune"), (__package__, "gate"),
            (__package__, "module"))


def _program_lines(text: str) -> list[str]:
    kept = []
    for line in text.splitlines():
        if line.startswith('if __name__ == "__main__":'):
            break  # a helper's own entry point: only the module's runs
        # a relative import is the host package's: what it names is used only by host-side code
        if line.rstrip().endswith(_HOST_ONLY) or line.startswith(("from __future__ ", "from .")):
            continue
        kept.append(line)
    return kept


@functools.cache
def module_source() -> str:
    """Return the update module's program as installed on the device (its own `main` last)."""
    lines = ["#!/usr/bin/python3", f'"""edgefleet {MODULE_NAME} update module for mender-client (generated)."""',
             _FUTURE]
    for package, name in _HELPERS:
        lines += _program_lines(resources.files(package).joinpath(f"{name}.py").read_text())
    lines += ["", "", 'if __name__ == "__main__":', "    main()"]
    return "\n".join(lines) + "\n"
