"""Read YAML keeping the line of every key, and track where each resolved value came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import InputError

# libyaml's parser when PyYAML has it (many times faster than the pure-Python one on a fleet's inventory)
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

__all__ = ["Document", "Origin", "SourceError", "read_document", "layer_origins"]

Key = tuple[str, ...]


class SourceError(InputError):
    """A file is unreadable or not valid YAML; the message names the file and the line."""


@dataclass(frozen=True)
class Origin:
    """Where a value was set: which layer (board/group/device), file and line."""

    layer: str
    path: Path
    line: int
    written: Key = ()  # the key's full path in that file, e.g. ("groups", "pis", "vars", "runtime", "threads")

    def __str__(self) -> str:
        return f"{self.layer} ({self.path}:{self.line})"


@dataclass
class Document:
    """A parsed YAML file and the 1-based line of every key in it."""

    path: Path
    data: Any
    lines: dict[Key, int] = field(default_factory=dict)

    def line(self, *key: Any) -> int:
        """Return the line of `key`, or of its nearest ancestor present in the file."""
        parts = tuple(str(k) for k in key)
        while parts:
            if parts in self.lines:
                return self.lines[parts]
            parts = parts[:-1]
        return 1

    def where(self, *key: Any) -> str:
        return f"{self.path}:{self.line(*key)}"


def _walk(node: yaml.Node, prefix: Key, lines: dict[Key, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = prefix + (str(key_node.value),)
            lines.setdefault(key, key_node.start_mark.line + 1)
            _walk(value_node, key, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            key = prefix + (str(index),)
            lines.setdefault(key, item.start_mark.line + 1)
            _walk(item, key, lines)


def read_document(path: Path) -> Document:
    """Parse `path`; the data is what yaml.safe_load returns ({} for an empty file)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {exc.strerror}") from None
    loader = _Loader(text)  # one parse: the node tree (line numbers), then the data built from it
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SourceError(f"{path}{line}: not valid YAML: {problem}") from None
    finally:
        loader.dispose()
    lines: dict[Key, int] = {}
    if node is not None:
        _walk(node, (), lines)
    return Document(path, {} if data is None else data, lines)


def layer_origins(origins: dict[Key, Origin], data: Any, doc: Document, base: Key, layer: str,
                  prefix: Key = ()) -> None:
    """Record in `origins` that `layer` set every leaf of `data` (merge semantics: dicts merge)."""
    if not isinstance(data, dict):
        return
    for key, value in data.items():
        path = prefix + (str(key),)
        if not isinstance(value, dict):
            for old in [k for k in origins if k[:len(path)] == path]:
                del origins[old]
            origins[path] = Origin(layer, doc.path, doc.line(*base, *path), base + path)
        else:
            if path in origins:  # a dict replaces a scalar set earlier
                del origins[path]
            layer_origins(origins, value, doc, base, layer, path)
