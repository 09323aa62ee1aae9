"""Read an Ansible YAML inventory (hosts, groups, children, vars) as a native edgefleet one.

Vars come inline and from `group_vars/` and `host_vars/` next to the inventory file (those win,
as in Ansible). Connection: `ansible_host`, `ansible_port`, `ansible_user`, `ansible_ssh_private_key_file`,
and `edgefleet_board` / `edgefleet_known_hosts`, as host vars or inherited group vars. Settings
go under an `edgefleet:` var (host or group). Other Ansible vars are ignored. Lines stay those
of the Ansible file, so errors point into it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import EdgefleetError
from .yamlsrc import Document

__all__ = ["AnsibleError", "ansible_to_native"]

CONNECTION = {"ansible_host": "host", "ansible_port": "port", "ansible_user": "user",
              "ansible_ssh_private_key_file": "ssh_key", "edgefleet_board": "board",
              "edgefleet_known_hosts": "known_hosts"}


class AnsibleError(EdgefleetError):
    """The Ansible inventory has a shape we cannot read."""


class _Reader:
    def __init__(self, doc: Document):
        self.doc = doc
        self.groups: dict[str, dict[str, Any]] = {}
        self.host_groups: dict[str, list[str]] = {}
        self.host_vars: dict[str, dict[str, Any]] = {}
        self.lines: dict[tuple[str, ...], int] = {}

    def mapping(self, value: Any, at: tuple[str, ...]) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise AnsibleError(f"{self.doc.where(*at)}: {'.'.join(at)}: expected a mapping, got {type(value).__name__}")
        return value

    def group(self, name: str, body: Any, at: tuple[str, ...]) -> None:
        body = self.mapping(body, at)
        for key in body:
            if key not in ("hosts", "children", "vars"):
                raise AnsibleError(f"{self.doc.where(*at, key)}: {'.'.join((*at, key))}: unknown key "
                                   "(an Ansible group has hosts, children, vars)")
        # as in Ansible, group_vars/<group>.yml next to the inventory wins over inline vars
        gvars = {**self.mapping(body.get("vars"), at + ("vars",)), **self.vars_file("group_vars", name)}
        entry = self.groups.setdefault(name, {"vars": {}, "children": [], "connection": {}})
        entry["vars"].update(self.mapping(gvars.get("edgefleet"), at + ("vars", "edgefleet")))
        entry["connection"].update({k: v for k, v in gvars.items() if k in CONNECTION})
        self.lines.setdefault(("groups", name), self.doc.line(*at))
        if gvars.get("edgefleet"):
            self._map_lines(at + ("vars", "edgefleet"), ("groups", name, "vars"))
        for host, hvars in self.mapping(body.get("hosts"), at + ("hosts",)).items():
            hvars = {**self.mapping(hvars, at + ("hosts", host)), **self.vars_file("host_vars", host)}
            self.host_groups.setdefault(host, [])
            if name not in self.host_groups[host]:
                self.host_groups[host].append(name)
            self.host_vars.setdefault(host, {}).update(hvars)
            self.lines.setdefault(("devices", host), self.doc.line(*at, "hosts", host))
            for key in hvars:
                if key in CONNECTION:
                    self.lines[("devices", host, CONNECTION[key])] = self.doc.line(*at, "hosts", host, key)
            self._map_lines(at + ("hosts", host, "edgefleet"), ("devices", host))
        for child, child_body in self.mapping(body.get("children"), at + ("children",)).items():
            if child not in entry["children"]:
                entry["children"].append(child)
            self.group(child, child_body, at + ("children", child))

    def vars_file(self, kind: str, name: str) -> dict:
        """Return the vars of `group_vars/<name>.yml` (or host_vars/, .yaml, no suffix) if present."""
        folder = Path(self.doc.path).parent / kind
        for candidate in (folder / f"{name}.yml", folder / f"{name}.yaml", folder / name):
            if candidate.is_file():
                try:
                    data = yaml.safe_load(candidate.read_text())
                except yaml.YAMLError as exc:
                    raise AnsibleError(f"{candidate}: not valid YAML: {exc}") from None
                if data is not None and not isinstance(data, dict):
                    raise AnsibleError(f"{candidate}: expected a mapping of vars, got {type(data).__name__}")
                return data or {}
        return {}

    def _map_lines(self, src: tuple[str, ...], dest: tuple[str, ...]) -> None:
        n = len(src)
        for key, line in self.doc.lines.items():
            if key[:n] == src and len(key) > n:
                self.lines[dest + key[n:]] = line

    def ancestry(self, group: str, seen: tuple[str, ...] = ()) -> list[str]:
        parents = [g for g, e in self.groups.items() if group in e["children"] and g not in seen]
        out: list[str] = []
        for p in parents:
            for g in self.ancestry(p, seen + (group,)):
                if g not in out:
                    out.append(g)
        return out + [group]


def ansible_to_native(doc: Document) -> Document:
    """Return `doc` (an Ansible YAML inventory) as a native inventory document."""
    reader = _Reader(doc)
    top = reader.mapping(doc.data, ())
    if set(top) != {"all"}:
        raise AnsibleError(f"{doc.where(*top)}: an Ansible inventory has only the top-level group 'all'")
    reader.group("all", top["all"], ("all",))
    devices = {}
    for host, groups in reader.host_groups.items():
        connection: dict[str, Any] = {}
        lineage: list[str] = []
        for g in groups:
            for a in reader.ancestry(g):
                if a not in lineage:
                    lineage.append(a)
        for g in lineage:
            connection.update(reader.groups[g]["connection"])
        hvars = reader.host_vars[host]
        connection.update({k: v for k, v in hvars.items() if k in CONNECTION})
        device = {CONNECTION[k]: v for k, v in connection.items()}
        device.setdefault("host", host)
        device["groups"] = [g for g in groups if g != "all"] or ["all"]
        device.update(reader.mapping(hvars.get("edgefleet"), ("all", "hosts", host, "edgefleet")))
        devices[host] = device
    native_groups = {name: {"description": f"Ansible group {name}", "vars": e["vars"], "children": e["children"]}
                     for name, e in reader.groups.items()}
    return Document(doc.path, {"groups": native_groups, "devices": devices}, reader.lines)
