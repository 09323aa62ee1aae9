"""Inventory errors in our words, at the path where the value was written, with a "did you mean";
values that cannot work refused before anything is sent (issue 18)."""

from __future__ import annotations

import json
import re

import pytest

from edgefleet.inventory import InventoryError, load_inventory
from tests.unit.test_inventory import make_inventory

PYDANTIC_WORDS = re.compile(r"Extra inputs are not permitted|Input should be|Field required|Value error")


def load_error(tmp_path, fleet: str, extra: dict[str, str] | None = None) -> str:
    with pytest.raises(InventoryError) as err:
        load_inventory(make_inventory(tmp_path, fleet, extra))
    message = str(err.value)
    assert not PYDANTIC_WORDS.search(message), message
    return message


GROUP_TYPO = """\
groups:
  pis:
    vars:
      runtime:
        max_seq_lne: 128
devices:
  d1: {board: pi5, host: h, groups: [pis]}
"""


@pytest.mark.parametrize("fleet, extra, expected", [
    # a typo in a group's vars: reported under the group, at its line, with a suggestion
    (GROUP_TYPO, None, "fleet.yaml:5: groups.pis.vars.runtime.max_seq_lne: unknown key (did you mean `max_seq_len`?"),
    # the group in another file: that file
    ("devices:\n  d1: {board: pi5, host: h, groups: [pis]}\n", {"groups.yaml": GROUP_TYPO.split("devices:")[0]},
     "groups.yaml:5: groups.pis.vars.runtime.max_seq_lne: unknown key"),
    # a setting written at the device's top level that lives under runtime
    ("devices:\n  d1:\n    board: pi5\n    host: h\n    max_seq_len: 64\n", None,
     "fleet.yaml:5: devices.d1.max_seq_len: unknown key (did you mean `runtime.max_seq_len`?"),
    # a misspelt connection key; allowed lists the connection keys too
    ("devices:\n  d1:\n    board: pi5\n    host: h\n    ssh_kye: k\n", None,
     "fleet.yaml:5: devices.d1.ssh_kye: unknown key (did you mean `ssh_key`?"),
    # a group key
    ("groups:\n  g:\n    varz: {}\n", None, "fleet.yaml:3: groups.g.varz: unknown key (did you mean `vars`?"),
    # a board profile's settings
    ("devices: {d1: {board: pi5, host: h}}\n", {"boards/bad.yaml": "description: x\ncpu: y\ncores: 2\n"
                                                       "settings:\n  arch: arm64\n  runtime: {thredas: 2}\n"},
     "bad.yaml:6: settings.runtime.thredas: unknown key (did you mean `threads`?"),
    # a bad value set by a group: the group's path, its line
    ("groups:\n  g:\n    vars:\n      runtime: {nice: -40}\ndevices:\n  d1: {board: pi5, host: h, groups: [g]}\n", None,
     "fleet.yaml:4: groups.g.vars.runtime.nice: -40 is below the minimum -20"),
    # ranges and types in words
    ("devices:\n  d1:\n    board: pi5\n    host: h\n    port: 70000\n", None,
     "fleet.yaml:5: devices.d1.port: 70000 is above the maximum 65535"),
    ("devices:\n  d1:\n    board: pi5\n    host: h\n    runtime: {threads: many}\n", None,
     "fleet.yaml:5: devices.d1.runtime.threads: expected a whole number, got 'many'"),
    ("devices:\n  d1:\n    board: pi5\n", None, "fleet.yaml:2: devices.d1.host: required key missing"),
    ("devices:\n  d1:\n    board: pi5\n    host: h\n    ship: docker\n", None,
     "fleet.yaml:5: devices.d1.ship: 'docker' is not one of 'venv' or 'image'"),
    # threads against the affinity: the path that set threads, and where the affinity came from
    ("groups:\n  g:\n    vars:\n      runtime: {threads: 2}\ndevices:\n  d1: {board: rk3588, host: h, groups: [g]}\n",
     None, "fleet.yaml:4: groups.g.vars.runtime.threads: for device d1: runtime.threads (2) must equal the number of "
           "cores in the affinity [4, 5, 6, 7]"),
])
def test_errors_in_our_words_at_the_path_written(tmp_path, fleet, extra, expected):
    assert expected in load_error(tmp_path, fleet, extra)


def test_allowed_list_of_a_device_names_connection_keys(tmp_path):
    message = load_error(tmp_path, "devices:\n  d1:\n    board: pi5\n    host: h\n    colour: red\n")
    allowed = message.split("allowed: ", 1)[1]
    for key in ("board", "host", "port", "user", "ssh_key", "known_hosts", "groups", "runtime", "arch"):
        assert re.search(rf"\b{key}\b", allowed), (key, message)


def test_every_problem_in_a_file_is_listed(tmp_path):
    message = load_error(tmp_path, "devices:\n  d1:\n    board: pi5\n    host: h\n    colour: red\n"
                                   "    runtime: {nicee: 1}\n")
    assert "devices.d1.colour" in message and "devices.d1.runtime.nicee" in message


def write_bundle(tmp_path, max_seq_len: int):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "bundle.json").write_text(json.dumps({"name": "mini", "max_seq_len": max_seq_len}))
    return bundle


def test_max_seq_len_above_the_bundles_is_refused_where_it_was_set(tmp_path):
    from edgefleet.inventory_check import check_bundle_fits

    inv = load_inventory(make_inventory(tmp_path / "inv", "groups:\n  g:\n    vars:\n      runtime:\n"
                                                           "        max_seq_len: 1024\n"
                                                           "devices:\n  d1: {board: pi5, host: h, groups: [g]}\n"))
    bundle = write_bundle(tmp_path, 256)
    with pytest.raises(InventoryError, match=r"fleet.yaml:5: groups.g.vars.runtime.max_seq_len: for device d1: "
                                             r"1024 is above the bundle's max_seq_len 256"):
        check_bundle_fits(inv.target("d1"), bundle)
    (tmp_path / "big").mkdir()
    check_bundle_fits(inv.target("d1"), write_bundle(tmp_path / "big", 2048))  # fits: no error


def test_deploy_refuses_max_seq_len_above_the_bundle_before_any_work(tmp_path):
    from edgefleet.deploy import prepare_release

    inv = load_inventory(make_inventory(tmp_path / "inv", "devices:\n  d1:\n    board: pi5\n    host: h\n"
                                                           "    runtime: {max_seq_len: 1024}\n"))
    with pytest.raises(InventoryError, match=r"fleet.yaml:5: devices.d1.runtime.max_seq_len: 1024 is above"):
        prepare_release(inv.target("d1"), write_bundle(tmp_path, 256), tmp_path / "build")


def test_deploy_task_exits_2_naming_where_max_seq_len_was_set(tmp_path):
    """As a user meets it: `invoke deploy --dry-run` stops before any connection, exit 2."""
    import subprocess
    import sys
    from pathlib import Path

    inv = make_inventory(tmp_path / "inv", "devices:\n  d1:\n    board: pi5\n    host: 127.0.0.1\n"
                                           "    runtime: {max_seq_len: 1024}\n")
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "invoke", "deploy", "--target", "d1", "--bundle",
                           str(write_bundle(tmp_path, 256)), "--dry-run"], cwd=repo, capture_output=True, text=True,
                          env={"INVOKE_EDGEFLEET_TARGETS_DIR": str(inv), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "fleet.yaml:5: devices.d1.runtime.max_seq_len: 1024 is above the bundle's max_seq_len 256" in proc.stderr
    assert "Traceback" not in proc.stderr
