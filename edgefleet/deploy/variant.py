"""Pick, per target, the bundle of the variant its board asks for (`bundle.precision`).

A bundle set is the bundles of one model side by side, named `<model>-<precision>`
(`build/bundles/all-minilm-l6-v2-int8/`, `.../all-minilm-l6-v2-fp16/`, as `model.quantize`
names them): given any one of them, a target gets its variant's sibling.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..inventory import Target

__all__ = ["Variant", "bundle_precision", "pick_variant", "PRECISIONS"]

PRECISIONS = ("int8", "fp16")


@dataclass(frozen=True)
class Variant:
    """The bundle a target gets, its precision, and a warning when it is not the one asked for."""

    bundle_dir: Path
    precision: str
    warning: str = ""


def bundle_precision(bundle_dir: Path) -> str:
    """Return a bundle's precision from its bundle.json (int8 when it does not say)."""
    path = Path(bundle_dir) / "bundle.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: not found (is {bundle_dir} a bundle?)") from None
    except ValueError as error:
        raise InputError(f"{path}: not valid JSON: {error}") from None
    precision = meta.get("precision", "int8") if isinstance(meta, dict) else None
    if precision not in PRECISIONS:
        raise InputError(f"{path}: key 'precision' must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def _sibling(bundle_dir: Path, precision: str) -> Path | None:
    for other in PRECISIONS:
        if bundle_dir.name.endswith(f"-{other}"):
            return bundle_dir.with_name(bundle_dir.name[: -len(other)] + precision)
    return None


def pick_variant(target: Target, bundle_dir: Path) -> Variant:
    """Return the bundle of `target`'s variant: `bundle_dir` itself or its sibling in the set.

    Without that variant beside it, the target gets `bundle_dir` and a warning saying so (the
    rollout table and the deploy line show which variant each device got).
    """
    bundle_dir = Path(bundle_dir)
    wanted = target.settings.bundle.precision
    given = bundle_precision(bundle_dir)
    if given == wanted:
        return Variant(bundle_dir, given)
    sibling = _sibling(bundle_dir, wanted)
    if sibling is not None and (sibling / "bundle.json").is_file():
        found = bundle_precision(sibling)
        if found != wanted:
            raise InputError(f"{sibling / 'bundle.json'}: precision {found}, but its name says {wanted}")
        return Variant(sibling, wanted)
    where = sibling or bundle_dir.with_name(f"<model>-{wanted}")
    return Variant(bundle_dir, given,
                   f"{target.name}: board {target.board.name} takes the {wanted} variant (bundle.precision), "
                   f"but there is no {where}: deploying {given} (invoke model.quantize --precision {wanted})")
