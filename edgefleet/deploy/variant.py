"""Pick, per target, the bundle of the variant its board asks for (`bundle.precision`).

A bundle set is the bundles of one model side by side, named `<model>-<precision>`
(`build/bundles/all-minilm-l6-v2-int8/`, `.../all-minilm-l6-v2-fp16/`, as `model.quantize`
names them): given any one of them, a target gets its variant's sibling. Variants: `int8` (dynamic,
the CPU default), `int8-static` (`model.quantize --mode static --name <model>-int8-static`),
`fp32` (`--precision fp32`) and `fp16` (`--precision fp16`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..inventory import Target

__all__ = ["Variant", "bundle_precision", "bundle_variant", "pick_variant", "sibling", "PRECISIONS", "VARIANTS"]

PRECISIONS = ("int8", "fp32", "fp16")
# longest suffix first: `m-int8-static` is the static variant, not `m-int8`'s name
VARIANTS = ("int8-static", "int8", "fp32", "fp16")


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


def bundle_variant(bundle_dir: Path) -> str:
    """Return a bundle's variant: its precision, `int8-static` for a statically quantized INT8 one."""
    precision = bundle_precision(bundle_dir)
    if precision != "int8":
        return precision
    meta = json.loads((Path(bundle_dir) / "bundle.json").read_text())
    quantization = meta.get("quantization")
    static = isinstance(quantization, dict) and quantization.get("method") == "static"
    return "int8-static" if static else "int8"


def sibling(bundle_dir: Path, variant: str) -> Path | None:
    """Return where `variant`'s bundle sits beside `bundle_dir` (None: its name ends in no variant)."""
    for other in VARIANTS:
        if bundle_dir.name.endswith(f"-{other}"):
            return bundle_dir.with_name(bundle_dir.name[: -len(other)] + variant)
    return None


def pick_variant(target: Target, bundle_dir: Path) -> Variant:
    """Return the bundle of `target`'s variant: `bundle_dir` itself or its sibling in the set.

    Without that variant beside it, the target gets `bundle_dir` and a warning saying so (the
    rollout table and the deploy line show which variant each device got).
    """
    bundle_dir = Path(bundle_dir)
    wanted = target.settings.bundle.precision
    given = bundle_variant(bundle_dir)
    if given == wanted:
        return Variant(bundle_dir, given)
    other = sibling(bundle_dir, wanted)
    if other is not None and (other / "bundle.json").is_file():
        found = bundle_variant(other)
        if found != wanted:
            what = "precision" if found in PRECISIONS and wanted in PRECISIONS else "variant"
            raise InputError(f"{other / 'bundle.json'}: {what} {found}, but its name says {wanted}")
        return Variant(other, wanted)
    where = other or bundle_dir.with_name(f"<model>-{wanted}")
    return Variant(bundle_dir, given,
                   f"{target.name}: board {target.board.name} takes the {wanted} variant (bundle.precision), "
                   f"but there is no {where}: deploying {given} ({_how_to_make(wanted)})")


def _how_to_make(variant: str) -> str:
    if variant == "int8-static":
        return "invoke model.quantize --mode static --name <model>-int8-static"
    return f"invoke model.quantize --precision {variant}"
