"""Regenerate the golden files: `.venv/bin/python -m tests.golden.regen` (then review the diff)."""

from __future__ import annotations

import shutil
from pathlib import Path

from edgefleet.inventory import load_inventory
from edgefleet.render import check_rendered, render_target, write_rendered

GOLDEN = Path(__file__).resolve().parent


def golden_targets():
    """Return (board name, target) for every golden device, one per board profile."""
    inv = load_inventory(GOLDEN / "inventory")
    return sorted((t.board.name, t) for t in inv.targets.values())


def main() -> None:
    """Render every golden device, check the files, and write them to tests/golden/<board>/."""
    for board, target in golden_targets():
        files = render_target(target)
        check_rendered(files)
        out = GOLDEN / board
        shutil.rmtree(out, ignore_errors=True)
        for path in write_rendered(files, out):
            print(f"wrote {path.relative_to(GOLDEN.parents[1])}")


if __name__ == "__main__":
    main()
