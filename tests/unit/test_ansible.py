"""Ansible YAML inventories: read as native ones, same configs, errors point into the Ansible file."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from edgefleet.inventory import InventoryError, load_inventory
from edgefleet.render import render_target

EXAMPLES = Path(__file__).resolve().parents[2] / "targets" / "examples"


def test_ansible_example_renders_the_same_configs_as_its_native_equivalent():
    native, ansible = load_inventory(EXAMPLES / "native"), load_inventory(EXAMPLES / "ansible")
    assert sorted(native.targets) == sorted(ansible.targets) == ["cell-orin-1", "shelf-pi-1", "shelf-rk-1"]
    for name, n in native.targets.items():
        a = ansible.targets[name]
        assert (a.host, a.port, a.user, a.board.name, a.groups) == (n.host, n.port, n.user, n.board.name, n.groups)
        assert a.settings == n.settings
        assert [(f.name, f.text) for f in render_target(a)] == [(f.name, f.text) for f in render_target(n)]
    assert [t.name for t in ansible.group("line")] == ["shelf-pi-1", "shelf-rk-1"]
    assert ansible.target("cell-orin-1").user == "ubuntu"  # group var beats the all-group var


@pytest.mark.parametrize("hosts, expected", [
    ("all:\n  hosts:\n    h1:\n      ansible_host: 10.0.0.1\n", "hosts.yaml:3: devices.h1.board: required key missing"),
    ("all:\n  hosts:\n    h1:\n      edgefleet_board: pi5\n      edgefleet:\n        colour: red\n",
     "hosts.yaml:6: devices.h1.colour: unknown key"),
    ("all:\n  children:\n    g:\n      hostz: {}\n", "hosts.yaml:4: all.children.g.hostz: unknown key"),
    ("all:\n  children:\n    g:\n      vars:\n        edgefleet:\n          runtime: {port: 0}\n"
     "      hosts:\n        h1: {edgefleet_board: pi5}\n", "hosts.yaml:6: groups.g.vars.runtime.port: 0 is below the minimum 1"),
])
def test_ansible_errors_point_into_the_file(tmp_path, hosts, expected):
    (tmp_path / "hosts.yaml").write_text(textwrap.dedent(hosts))
    with pytest.raises(InventoryError) as err:
        load_inventory(tmp_path)
    assert expected in str(err.value)
