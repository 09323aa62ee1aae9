"""Inventory loading: resolution order and errors that name the file and the key."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from edgefleet.inventory import InventoryError, load_inventory, merge

REPO = Path(__file__).resolve().parents[2]


def make_inventory(tmp_path: Path, fleet: str, extra: dict[str, str] | None = None) -> Path:
    shutil.copytree(REPO / "targets" / "boards", tmp_path / "boards")
    (tmp_path / "fleet.yaml").write_text(textwrap.dedent(fleet))
    for name, text in (extra or {}).items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    return tmp_path


def test_shipped_inventory_loads():
    inv = load_inventory(REPO / "targets")
    pi, orin = inv.target("pi5-01"), inv.target("orin-01")
    assert (pi.settings.arch, pi.settings.python, pi.settings.big_cores) == ("arm64", "3.11", [0, 1, 2, 3])
    assert orin.settings.python == "3.10"
    assert pi.settings.runtime.max_seq_len == 128  # from group pis
    assert orin.settings.runtime.threads == 4  # device overrides board's 6
    assert [t.name for t in inv.group("jetsons")] == ["orin-01"]


def test_board_then_group_then_device(tmp_path):
    inv = load_inventory(make_inventory(tmp_path, """
        groups:
          g1: {vars: {runtime: {threads: 2, port: 9000}}}
          g2: {vars: {runtime: {threads: 3}}}
        devices:
          d1: {board: rk3588, host: 127.0.0.1, groups: [g1, g2], runtime: {max_seq_len: 64}}
          d2: {board: rk3588, host: 127.0.0.1, groups: [g1], runtime: {threads: 1}}
    """))
    d1, d2 = inv.target("d1"), inv.target("d2")
    assert (d1.settings.runtime.threads, d1.settings.runtime.port, d1.settings.runtime.max_seq_len) == (3, 9000, 64)
    assert (d2.settings.runtime.threads, d2.settings.runtime.port) == (1, 9000)
    assert d1.settings.big_cores == [4, 5, 6, 7]  # from the board


@pytest.mark.parametrize("fleet, extra, expected", [
    ("devices: {d1: {board: pi5, host: h, colour: red}}", None, "fleet.yaml: devices.d1.colour: unknown setting"),
    ("devices: {d1: {board: pi5, host: h, port: abc}}", None, "fleet.yaml: devices.d1.port: "),
    ("devices: {d1: {board: pi5, host: h, port: 70000}}", None, "devices.d1.port: Input should be less than or equal to 65535"),
    ("devices: {d1: {board: pi7, host: h}}", None, "devices.d1.board: unknown board 'pi7'"),
    ("devices: {d1: {board: pi5}}", None, "devices.d1.host: Field required"),
    ("devices: {d1: {board: pi5, host: h, big_cores: [0, 9]}}", None, "devices.d1.big_cores: cores [9] do not exist"),
    ("devices: {d1: {board: pi5, host: h, groups: [nope]}}", None, "devices.d1.groups: unknown group 'nope'"),
    ("devices: {d1: {board: pi5, host: h, runtime: {threads: 0}}}", None, "devices.d1.runtime.threads"),
    ("devices: {d1: {board: pi5, host: h, arch: sparc}}", None, "devices.d1.arch"),
    ("groups: {g: {vars: {colour: red}}}", None, "fleet.yaml: groups.g.vars.colour: unknown setting"),
    ("groups: {g: {varz: {}}}", None, "fleet.yaml: groups.g.varz: Extra inputs are not permitted"),
    ("devices: [d1, d2]", None, "fleet.yaml: devices: "),
    ("devices: {d1: {board: pi5, host: h}", None, "fleet.yaml: not valid YAML"),
    ("devices: {d1: {board: pi5, host: h}}", {"more.yaml": "devices: {d1: {board: pi5, host: h2}}"},
     "more.yaml: devices.d1: duplicate device"),
])
def test_errors_name_file_and_key(tmp_path, fleet, extra, expected):
    with pytest.raises(InventoryError) as err:
        load_inventory(make_inventory(tmp_path, fleet, extra))
    assert expected in str(err.value)


def test_unknown_target_lists_known(tmp_path):
    inv = load_inventory(make_inventory(tmp_path, "devices: {d1: {board: pi5, host: h}}"))
    with pytest.raises(InventoryError, match=r"unknown target 'd2' \(known: d1\)"):
        inv.target("d2")


def test_relative_key_paths_resolve_against_the_file(tmp_path):
    inv = load_inventory(make_inventory(tmp_path, "devices: {d1: {board: pi5, host: h, ssh_key: keys/id}}"))
    assert inv.target("d1").ssh_key == (tmp_path / "keys" / "id").resolve()


@pytest.mark.parametrize("base, over, expected", [
    ({"a": 1}, {"a": 2}, {"a": 2}),
    ({"r": {"x": 1, "y": 2}}, {"r": {"y": 3}}, {"r": {"x": 1, "y": 3}}),
    ({"l": [1, 2]}, {"l": [3]}, {"l": [3]}),
    ({}, {"n": {"k": None}}, {"n": {"k": None}}),
])
def test_merge(base, over, expected):
    assert merge(base, over) == expected
