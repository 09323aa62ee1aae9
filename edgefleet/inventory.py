"""Load the inventory (boards, groups, devices) into typed, validated targets.

Values resolve board profile -> groups (parents before children, in the order the device
lists them) -> device; later wins, dicts merge key by key. Every error names the file, the
line and the key. Ansible YAML inventories (a top-level `all:`) are read too (edgefleet.ansible).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .inventory_check import InventoryError, _model_of, check_layer, unknown_key, words, written_at
from .settings import Settings
from .yamlsrc import Document, Origin, SourceError, layer_origins, read_document

__all__ = ["InventoryError", "Inventory", "Target", "Settings", "Origin", "load_inventory", "load_board_profiles",
           "merge"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BoardFile(_Strict):
    description: str = Field(description="what the board is")
    cpu: str = Field(description="its CPU, for people")
    cores: int = Field(ge=1, le=256, description=(
        "CPU count; core numbers in `big_cores` and `runtime.affinity` must be below it"))
    settings: dict[str, Any] = Field(description="any settings (below): the first layer")


class GroupEntry(_Strict):
    description: str = Field(default="", description="what the group is, for people")
    vars: dict[str, Any] = Field(default_factory=dict, description="any settings, for every device in the group")
    children: list[str] = Field(default_factory=list, description=(
        "names of groups whose devices are also in this group (their vars apply after this group's)"))


class DeviceEntry(_Strict):
    model_config = ConfigDict(extra="allow", frozen=True)

    board: str = Field(description="a board profile's name (`boards/<board>.yaml`)")
    host: str = Field(description="address or name to SSH to")
    port: int | None = Field(default=None, ge=1, le=65535, description=(
        "SSH port; null: from `~/.ssh/config`, else 22"))
    user: str | None = Field(default=None, description="login user; null: from `~/.ssh/config`, else the local user")
    ssh_key: str | None = Field(default=None, description=(
        "private key; `~` expanded, relative to the inventory file's directory"))
    known_hosts: str | None = Field(default=None, description=(
        "the only `known_hosts` the host key is checked against; resolved as `ssh_key`"))
    groups: list[str] = Field(default_factory=list, description=(
        "groups the device belongs to, in resolution order (each after its parent groups)"))


class InventoryFile(_Strict):
    groups: dict[str, GroupEntry | None] = Field(default_factory=dict)
    devices: dict[str, DeviceEntry] = Field(default_factory=dict)


@dataclass(frozen=True)
class Board:
    name: str
    description: str
    cpu: str
    cores: int
    settings: dict[str, Any]
    doc: Document | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Target:
    """One device, with every value resolved and where each value came from."""

    name: str
    board: Board
    host: str
    port: int | None
    user: str | None
    ssh_key: Path | None
    known_hosts: Path | None
    groups: tuple[str, ...]
    settings: Settings
    source: Path
    origins: dict[tuple[str, ...], Origin] = field(default_factory=dict, compare=False, repr=False)


@dataclass
class Inventory:
    targets: dict[str, Target] = field(default_factory=dict)
    groups: dict[str, GroupEntry] = field(default_factory=dict)

    def target(self, name: str) -> Target:
        """Return the target called `name`, or fail naming the known ones."""
        try:
            return self.targets[name]
        except KeyError:
            known = ", ".join(sorted(self.targets)) or "none"
            raise InventoryError(f"unknown target {name!r} (known: {known})") from None

    def group(self, name: str) -> list[Target]:
        """Return the targets in group `name` (directly or through child groups), sorted by name."""
        if name not in self.groups:
            known = ", ".join(sorted(self.groups)) or "none"
            raise InventoryError(f"unknown group {name!r} (known: {known})")
        return [t for _, t in sorted(self.targets.items()) if name in t.groups]


def _read(path: Path) -> Document:
    try:
        return read_document(path)
    except SourceError as exc:
        raise InventoryError(str(exc)) from None


def _model_at(model: type[BaseModel], loc: tuple[str, ...]) -> type[BaseModel] | None:
    """Return the model that holds the last key of `loc` (a dict entry's name is stepped over)."""
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        if field is None:
            continue  # the name of a group or a device
        annotation = field.annotation
        if get_origin(annotation) is dict:
            annotation = get_args(annotation)[1]
        sub = _model_of(annotation)
        if sub is None:
            return None
        model = sub
    return model


def _errors(doc: Document, exc: ValidationError, model: type[BaseModel], base: tuple = (), origins=None,
            device: str = "") -> InventoryError:
    lines = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        msg = words(err)
        named = re.match(r"([a-z_]+(?:\.[a-z_]+)*) ", msg)  # a model check names its key first
        if named and origins is not None and loc + tuple(named.group(1).split(".")) in origins:
            loc = loc + tuple(named.group(1).split("."))
        if err["type"] == "extra_forbidden":
            holder = _model_at(model, loc)
            allowed = list(holder.model_fields) if holder else []
            lines.append(unknown_key(doc.where(*base, *loc), base + loc, allowed))
            continue
        where, key = doc.where(*base, *loc), ".".join(base + loc)
        if origins is not None:  # a resolved setting: point at the layer and path that set it
            for n in range(len(loc), 0, -1):
                if loc[:n] in origins:
                    where, key = written_at(origins[loc[:n]], device, where)
                    break
        if origins is not None and err["type"] == "missing":
            msg += " (set it in the board profile, a group's vars or the device)"
        lines.append(f"{where}: {key or '(top)'}: {msg}")
    return InventoryError("\n".join(lines))


def _validate(model: type[BaseModel], data: Any, doc: Document, base: tuple = (), origins=None,
              device: str = "") -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _errors(doc, exc, model, base, origins, device) from None


def _check_layer(data: Any, doc: Document, base: tuple, also=None) -> None:
    problems = check_layer(data, Settings, doc, base, also)
    if problems:
        raise InventoryError("\n".join(problems))


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Return `base` updated by `over`, merging nested dicts key by key."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_boards(boards_dir: Path) -> dict[str, Board]:
    """Load every board profile in `boards_dir`."""
    boards = {}
    for path in sorted(boards_dir.glob("*.yaml")):
        doc = _read(path)
        entry = _validate(BoardFile, doc.data, doc)
        _check_layer(entry.settings, doc, ("settings",))
        boards[path.stem] = Board(path.stem, entry.description, entry.cpu, entry.cores, entry.settings, doc)
    return boards


def _resolve_path(value: str | None, base: Path) -> Path | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def _read_inventory_file(path: Path) -> Document:
    doc = _read(path)
    if isinstance(doc.data, dict) and "all" in doc.data:
        from .ansible import AnsibleError, ansible_to_native
        try:
            return ansible_to_native(doc)
        except AnsibleError as exc:
            raise InventoryError(str(exc)) from None
    return doc


def _ancestors(name: str, parents: dict[str, list[str]], groups, trail: tuple[str, ...] = ()) -> list[str]:
    """Return the groups `name` belongs to through `children`, outermost first, then `name`."""
    if name in trail:
        group_doc = groups[name][0]
        cycle = " -> ".join((*trail[trail.index(name):], name))
        raise InventoryError(f"{group_doc.where('groups', name, 'children')}: groups.{name}.children: "
                             f"cycle in groups: {cycle}")
    out: list[str] = []
    for parent in parents.get(name, []):
        for g in _ancestors(parent, parents, groups, trail + (name,)):
            if g not in out:
                out.append(g)
    return out + [name]


def _boards_dir(targets_dir: Path) -> Path:
    from .paths import repo_root  # an inventory without its own boards uses the shipped profiles
    return targets_dir / "boards" if (targets_dir / "boards").is_dir() else repo_root() / "targets" / "boards"


def load_board_profiles(targets_dir: Path) -> dict[str, Board]:
    """Load the board profiles an inventory in `targets_dir` resolves against."""
    return load_boards(_boards_dir(Path(targets_dir)))


def load_inventory(targets_dir: Path) -> Inventory:
    """Load and validate every inventory file in `targets_dir`."""
    targets_dir = Path(targets_dir)
    if not targets_dir.is_dir():
        raise InventoryError(f"{targets_dir}: inventory directory not found")
    boards = load_boards(_boards_dir(targets_dir))
    files = []
    for path in sorted(targets_dir.glob("*.yaml")):
        doc = _read_inventory_file(path)
        files.append((doc, _validate(InventoryFile, doc.data, doc)))

    groups: dict[str, tuple[Document, GroupEntry]] = {}
    for doc, inv in files:
        for name, group in inv.groups.items():
            group = group or GroupEntry()
            if name in groups and groups[name][1] != group:
                raise InventoryError(f"{doc.where('groups', name)}: groups.{name}: also defined in "
                                     f"{groups[name][0].where('groups', name)}")
            _check_layer(group.vars, doc, ("groups", name, "vars"))
            groups[name] = (doc, group)
    parents: dict[str, list[str]] = {}
    for name, (doc, group) in groups.items():
        for index, child in enumerate(group.children):
            if child not in groups:
                raise InventoryError(f"{doc.where('groups', name, 'children', index)}: groups.{name}.children: "
                                     f"unknown group {child!r}")
            parents.setdefault(child, []).append(name)
    for name in groups:
        _ancestors(name, parents, groups)

    inventory = Inventory(groups={name: g for name, (_, g) in groups.items()})
    for doc, inv in files:
        for name, dev in inv.devices.items():
            inventory.targets[name] = _resolve_device(doc, name, dev, boards, groups, parents, inventory)
    return inventory


def _resolve_device(doc: Document, name: str, dev: DeviceEntry, boards, groups, parents, inventory) -> Target:
    base = ("devices", name)
    where = f"devices.{name}"
    if name in inventory.targets:
        raise InventoryError(f"{doc.where(*base)}: {where}: duplicate device "
                             f"(also in {inventory.targets[name].source})")
    if dev.board not in boards:
        known = ", ".join(sorted(boards)) or "none"
        raise InventoryError(f"{doc.where(*base, 'board')}: {where}.board: unknown board {dev.board!r} "
                             f"(known: {known})")
    extra = dict(dev.model_extra or {})
    _check_layer(extra, doc, base, also=DeviceEntry.model_fields)
    board = boards[dev.board]
    origins: dict[tuple[str, ...], Origin] = {}
    layered = board.settings
    layer_origins(origins, board.settings, board.doc, ("settings",), f"board {board.name}")
    member_of: list[str] = []
    for index, group_name in enumerate(dev.groups):
        if group_name not in groups:
            raise InventoryError(f"{doc.where(*base, 'groups', index)}: {where}.groups: unknown group {group_name!r}")
        for g in _ancestors(group_name, parents, groups):
            if g not in member_of:
                member_of.append(g)
    for g in member_of:
        gdoc, group = groups[g]
        layered = merge(layered, group.vars)
        layer_origins(origins, group.vars, gdoc, ("groups", g, "vars"), f"group {g}")
    layered = merge(layered, extra)
    layer_origins(origins, extra, doc, base, f"device {name}")
    settings = _validate(Settings, layered, doc, base, origins, device=name)
    for key, cores in (("big_cores", settings.big_cores), ("runtime.affinity", settings.runtime.affinity or [])):
        bad = [c for c in cores if not 0 <= c < board.cores]
        if bad:
            o = origins.get(tuple(key.split(".")))
            at = f"{o.path}:{o.line}" if o else doc.where(*base)
            raise InventoryError(f"{at}: {where}.{key}: cores {bad} do not exist on board {board.name!r} "
                                 f"({board.cores} cores: 0-{board.cores - 1})")
    return Target(
        name=name,
        board=board,
        host=dev.host,
        port=dev.port,
        user=dev.user,
        ssh_key=_resolve_path(dev.ssh_key, doc.path.parent),
        known_hosts=_resolve_path(dev.known_hosts, doc.path.parent),
        groups=tuple(member_of),
        settings=settings,
        source=doc.path,
        origins=origins,
    )
