"""Check inventory values where they are written, and say what is wrong in our words.

Each layer (a board's `settings`, a group's `vars`, a device's keys) is checked on its own
before values are merged, so a typo or a bad value is reported at the path and file where it
was written (`groups.pis.vars.runtime.max_seq_len`), not under every device that inherits it.
Rules that tie keys together (threads vs affinity, soft vs hard limit) need the merged values
and are reported at the layer that set the key they name, "for device X".
"""

from __future__ import annotations

import difflib
import functools
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from .errors import InputError
from .yamlsrc import Document, Origin


class InventoryError(InputError):
    """The inventory is invalid; the message names the file, the line and the key."""

__all__ = ["words", "unknown_key", "check_layer", "setting_paths", "check_bundle_fits", "written_at"]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def words(err: Any) -> str:
    """Say what a pydantic error means, in our words (the value, what was expected)."""
    kind, ctx, got = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "missing":
        return "required key missing"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"expected a whole number, got {_short(got)}"
    if kind in ("float_parsing", "float_type"):
        return f"expected a number, got {_short(got)}"
    if kind in ("bool_parsing", "bool_type"):
        return f"expected true or false, got {_short(got)}"
    if kind == "string_type":
        return f"expected text, got {_short(got)}"
    if kind in ("list_type", "tuple_type"):
        return f"expected a list, got {_short(got)}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"expected a mapping of keys, got {_short(got)}"
    limits = {"greater_than_equal": ("ge", "is below the minimum"), "greater_than": ("gt", "must be above"),
              "less_than_equal": ("le", "is above the maximum"), "less_than": ("lt", "must be below")}
    if kind in limits:
        name, text = limits[kind]
        return f"{_short(got)} {text} {ctx.get(name)}"
    if kind == "literal_error":
        return f"{_short(got)} is not one of {ctx.get('expected')}"
    if kind == "string_pattern_mismatch":
        return f"{_short(got)} does not match the pattern {ctx.get('pattern')}"
    if kind == "value_error":
        return str(err["msg"]).removeprefix("Value error, ")
    return f"{err['msg']} (got {_short(got)})"


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """Return the model a field holds (unwrapping `X | None`), or None for a plain value."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, types.UnionType):
        models = [a for a in get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        return models[0] if len(models) == 1 else None
    return None


@functools.cache
def _adapter(model: type[BaseModel], name: str) -> TypeAdapter:
    """Return a validator for one field of `model` alone, with its constraints (ge, le, pattern)."""
    field = model.model_fields[name]
    kind: Any = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
    return TypeAdapter(kind)


def setting_paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Return the dotted path of every leaf key `model` takes (runtime.limits.queue_depth, ...)."""
    out = []
    for name, field in model.model_fields.items():
        sub = _model_of(field.annotation)
        out += setting_paths(sub, prefix + (name,)) if sub else [prefix + (name,)]
    return out


def unknown_key(where: str, path: tuple[str, ...], allowed: Iterable[str],
                nested: Iterable[tuple[str, ...]] = ()) -> str:
    """Say that the last key of `path` is unknown, suggest the nearest allowed one, list them."""
    key, names = path[-1], sorted(allowed)
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.75)
    if not close:  # a key written one level too high, e.g. a device's max_seq_len for runtime.max_seq_len
        deeper = {".".join(p): p[-1] for p in nested if len(p) > 1}
        exact = [full for full, last in deeper.items() if last == key]
        near = difflib.get_close_matches(key, list(deeper.values()), n=1, cutoff=0.8)
        close = exact[:1] or [full for full, last in deeper.items() if near and last == near[0]][:1]
    close = close or difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    hint = f" (did you mean `{close[0]}`?)" if close else ""
    return f"{where}: {'.'.join(path)}: unknown key{hint}; allowed: {', '.join(names)}"


def check_layer(data: Any, model: type[BaseModel], doc: Document, base: tuple[str, ...],
                also: dict[str, FieldInfo] | None = None) -> list[str]:
    """Check one layer's keys and values against `model` (plus the fields in `also`, checked
    elsewhere); return one line per problem, each naming file:line and the path as written."""
    if not isinstance(data, dict):
        return [f"{doc.where(*base)}: {'.'.join(base)}: expected a mapping of keys, got {_short(data)}"]
    fields = model.model_fields
    problems = []
    for key, value in data.items():
        path = base + (str(key),)
        if also and key in also:
            continue
        if key not in fields:
            allowed = [*fields, *(also or {})]
            problems.append(unknown_key(doc.where(*path), path, allowed, setting_paths(model)))
            continue
        sub = _model_of(fields[key].annotation)
        if sub is not None and isinstance(value, dict):
            problems += check_layer(value, sub, doc, path)
            continue
        try:
            _adapter(model, key).validate_python(value)
        except ValidationError as exc:
            for err in exc.errors():
                loc = tuple(str(p) for p in err["loc"])
                problems.append(f"{doc.where(*path, *loc)}: {'.'.join(path + loc)}: {words(err)}")
    return problems


def written_at(origin: Origin | None, device: str, fallback: str) -> tuple[str, str]:
    """Return (file:line, dotted path as written) of a resolved key of `device`; for a layer
    other than the device's own, the path says which device the problem is for."""
    if origin is None or not origin.written:
        return fallback, f"devices.{device}"
    dotted = ".".join(origin.written)
    if origin.layer != f"device {device}":
        dotted += f": for device {device}"
    return f"{origin.path}:{origin.line}", dotted


def check_bundle_fits(target, bundle_dir: Path) -> None:
    """Refuse a target whose values cannot work with this bundle (runtime.max_seq_len above the
    bundle's), naming the file, line and path where the value was set."""
    import json

    asked = target.settings.runtime.max_seq_len
    if asked is None:
        return
    try:
        meta = json.loads((Path(bundle_dir) / "bundle.json").read_text())
    except (OSError, ValueError):
        return  # the release step names an unreadable bundle
    most = meta.get("max_seq_len") if isinstance(meta, dict) else None
    if isinstance(most, int) and asked > most:
        where, dotted = written_at(target.origins.get(("runtime", "max_seq_len")), target.name, str(target.source))
        raise InventoryError(f"{where}: {dotted}: {asked} is above the bundle's max_seq_len {most} "
                             f"({Path(bundle_dir).name}); the runtime would silently use {most}: "
                             f"set it to {most} or less, or remove it")
