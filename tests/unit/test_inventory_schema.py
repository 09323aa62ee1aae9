"""The inventory's JSON Schemas and its reference in docs/inventory.md are generated from the
models and checked in; the shipped files point editors at them and conform to them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgefleet.inventory_schema import board_schema, generated_files, inventory_schema

REPO = Path(__file__).resolve().parents[2]
SCHEMA_LINE = re.compile(r"^# yaml-language-server: \$schema=(\S+)$")


@pytest.mark.parametrize("path", sorted(generated_files(REPO)), ids=lambda p: str(p.relative_to(REPO)))
def test_checked_in_file_equals_the_generated_one(path):
    assert path.read_text() == generated_files(REPO)[path], f"{path} is stale: run invoke inventory.schema"


def _resolve(schema: dict, node: dict) -> dict:
    while "$ref" in node:
        node = schema["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def unknown_keys(schema: dict, node: dict, data: Any, at: str = "") -> list[str]:
    """Return the keys of `data` the schema does not allow (what an editor would underline)."""
    node = _resolve(schema, node)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        return unknown_keys(schema, options[0], data, at) if options and data is not None else []
    if not isinstance(data, dict):
        return []
    found = []
    for key, value in data.items():
        if key in node.get("properties", {}):
            found += unknown_keys(schema, node["properties"][key], value, f"{at}.{key}")
        elif isinstance(node.get("additionalProperties"), dict):
            found += unknown_keys(schema, node["additionalProperties"], value, f"{at}.{key}")
        elif node.get("additionalProperties") is False:
            found.append(f"{at}.{key}")
    return found


SHIPPED = sorted([*REPO.glob("targets/*.yaml"), *REPO.glob("targets/boards/*.yaml"),
                  *REPO.glob("targets/examples/native/*.yaml")])


@pytest.mark.parametrize("path", [p for p in SHIPPED if p.name not in ("lab.yaml", "lab-vm.yaml")],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_files_name_their_schema_and_conform_to_it(path):
    first = path.read_text().splitlines()[0]
    match = SCHEMA_LINE.match(first)
    assert match, f"{path}: first line should be '# yaml-language-server: $schema=...'"
    schema_file = (path.parent / match.group(1)).resolve()
    expected = "board.schema.json" if path.parent.name == "boards" else "inventory.schema.json"
    assert schema_file == REPO / "targets" / expected
    schema = board_schema() if expected.startswith("board") else inventory_schema()
    assert unknown_keys(schema, schema, yaml.safe_load(path.read_text())) == []


@pytest.mark.parametrize("text, found", [
    ("devices: {d1: {board: pi5, host: h, runtime: {max_seq_lne: 1}}}", [".devices.d1.runtime.max_seq_lne"]),
    ("groups: {g: {vars: {thermal: {hardc: 1}}}}", [".groups.g.vars.thermal.hardc"]),
    ("groups: {g: null}\ndevices: {d1: {board: pi5, host: h, ssh_key: k, emulated: true}}", []),
])
def test_the_schema_flags_what_loading_refuses(text, found):
    schema = inventory_schema()
    assert unknown_keys(schema, schema, yaml.safe_load(text)) == found


def test_every_setting_has_a_description_and_a_row_in_the_reference():
    from edgefleet.inventory_check import setting_paths
    from edgefleet.settings import Settings

    reference = (REPO / "docs" / "inventory.md").read_text()
    for path in setting_paths(Settings):
        assert f"| `{'.'.join(path)}` |" in reference, path
    rows = [line for line in reference.splitlines() if line.startswith("| `")]
    assert all(not line.rstrip().endswith("|  |") for line in rows), "a key without a meaning"
