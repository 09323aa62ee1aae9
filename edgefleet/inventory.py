"""Load the inventory (boards, groups, devices) into typed, validated targets.

Values resolve board profile -> groups (in the order the device lists them) -> device; later
wins, dicts merge key by key. Every error names the file and the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "InventoryError",
    "Inventory",
    "Target",
    "Settings",
    "load_inventory",
]


class InventoryError(Exception):
    """The inventory is invalid; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RuntimeSettings(_Strict):
    threads: int | None = Field(default=None, ge=1, le=256)
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    max_seq_len: int | None = Field(default=None, ge=8, le=8192)
    token: str | None = None


class HealthSettings(_Strict):
    ready_timeout_s: float = Field(default=120.0, gt=0)
    latency_budget_ms: float | None = Field(default=None, gt=0)


class Settings(_Strict):
    """Everything a board, a group or a device may set."""

    arch: Literal["arm64", "amd64"]
    python: str = Field(pattern=r"^3\.\d+$")
    root: str = "/opt/edgefleet"
    service_user: str = Field(default="edgefleet", pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    sudo: bool = False
    big_cores: list[int] = Field(default_factory=list)
    runtime: RuntimeSettings = RuntimeSettings()
    health: HealthSettings = HealthSettings()
    emulated: bool = False


SETTING_KEYS = set(Settings.model_fields)


class BoardFile(_Strict):
    description: str
    cpu: str
    cores: int = Field(ge=1, le=256)
    settings: dict[str, Any]


class GroupEntry(_Strict):
    description: str = ""
    vars: dict[str, Any] = Field(default_factory=dict)


class DeviceEntry(_Strict):
    model_config = ConfigDict(extra="allow", frozen=True)

    board: str
    host: str
    port: int = Field(default=22, ge=1, le=65535)
    user: str = "root"
    ssh_key: str | None = None
    known_hosts: str | None = None
    groups: list[str] = Field(default_factory=list)


class InventoryFile(_Strict):
    groups: dict[str, GroupEntry] = Field(default_factory=dict)
    devices: dict[str, DeviceEntry] = Field(default_factory=dict)


@dataclass(frozen=True)
class Board:
    name: str
    description: str
    cpu: str
    cores: int
    settings: dict[str, Any]


@dataclass(frozen=True)
class Target:
    """One device, with every value resolved."""

    name: str
    board: Board
    host: str
    port: int
    user: str
    ssh_key: Path | None
    known_hosts: Path | None
    groups: tuple[str, ...]
    settings: Settings
    source: Path


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
        """Return the targets in group `name`, sorted by name."""
        if name not in self.groups:
            known = ", ".join(sorted(self.groups)) or "none"
            raise InventoryError(f"unknown group {name!r} (known: {known})")
        return [t for _, t in sorted(self.targets.items()) if name in t.groups]


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InventoryError(f"{path}: not valid YAML: {exc}") from None


def _explain(path: Path, exc: ValidationError, prefix: str = "") -> InventoryError:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        key = f"{prefix}.{key}" if prefix and key else (prefix or key)
        got = err.get("input")
        got_text = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{path}: {key}: {err['msg']}{got_text}")
    return InventoryError("\n".join(lines))


def _validate(model: type[BaseModel], data: Any, path: Path, prefix: str = "") -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _explain(path, exc, prefix) from None


def _check_setting_keys(data: dict[str, Any], path: Path, where: str) -> None:
    for key in data:
        if key not in SETTING_KEYS:
            allowed = ", ".join(sorted(SETTING_KEYS))
            raise InventoryError(f"{path}: {where}.{key}: unknown setting (allowed: {allowed})")


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
        entry = _validate(BoardFile, _read_yaml(path), path)
        _check_setting_keys(entry.settings, path, "settings")
        boards[path.stem] = Board(path.stem, entry.description, entry.cpu, entry.cores, entry.settings)
    return boards


def _resolve_path(value: str | None, base: Path) -> Path | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def load_inventory(targets_dir: Path) -> Inventory:
    """Load and validate every inventory file in `targets_dir`."""
    targets_dir = Path(targets_dir)
    if not targets_dir.is_dir():
        raise InventoryError(f"{targets_dir}: inventory directory not found")
    boards = load_boards(targets_dir / "boards")
    files = [(p, _validate(InventoryFile, _read_yaml(p), p)) for p in sorted(targets_dir.glob("*.yaml"))]

    groups: dict[str, tuple[Path, GroupEntry]] = {}
    for path, inv in files:
        for name, group in inv.groups.items():
            if name in groups and groups[name][1] != group:
                raise InventoryError(f"{path}: groups.{name}: also defined in {groups[name][0]}")
            _check_setting_keys(group.vars, path, f"groups.{name}.vars")
            groups[name] = (path, group)

    inventory = Inventory(groups={name: g for name, (_, g) in groups.items()})
    for path, inv in files:
        for name, dev in inv.devices.items():
            where = f"devices.{name}"
            if name in inventory.targets:
                raise InventoryError(f"{path}: {where}: duplicate device (also in {inventory.targets[name].source})")
            if dev.board not in boards:
                known = ", ".join(sorted(boards)) or "none"
                raise InventoryError(f"{path}: {where}.board: unknown board {dev.board!r} (known: {known})")
            extra = dict(dev.model_extra or {})
            _check_setting_keys(extra, path, where)
            layered = boards[dev.board].settings
            for group_name in dev.groups:
                if group_name not in groups:
                    raise InventoryError(f"{path}: {where}.groups: unknown group {group_name!r}")
                layered = merge(layered, groups[group_name][1].vars)
            layered = merge(layered, extra)
            settings = _validate(Settings, layered, path, where)
            bad = [c for c in settings.big_cores if c >= boards[dev.board].cores]
            if bad:
                raise InventoryError(
                    f"{path}: {where}.big_cores: cores {bad} do not exist on board {dev.board!r} "
                    f"({boards[dev.board].cores} cores)"
                )
            inventory.targets[name] = Target(
                name=name,
                board=boards[dev.board],
                host=dev.host,
                port=dev.port,
                user=dev.user,
                ssh_key=_resolve_path(dev.ssh_key, path.parent),
                known_hosts=_resolve_path(dev.known_hosts, path.parent),
                groups=tuple(dev.groups),
                settings=settings,
                source=path,
            )
    return inventory
