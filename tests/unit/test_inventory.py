"""Inventory loading: resolution order, provenance, and errors that name the file, line and key."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgefleet.inventory import InventoryError, load_inventory, merge

REPO = Path(__file__).resolve().parents[2]


def make_inventory(tmp_path: Path, fleet: str, extra: dict[str, str] | None = None) -> Path:
    shutil.copytree(REPO / "targets" / "boards", tmp_path / "boards")
    (tmp_path / "fleet.yaml").write_text(textwrap.dedent(fleet))
    for name, text in (extra or {}).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(textwrap.dedent(text))
    return tmp_path


def test_shipped_inventory_loads():
    inv = load_inventory(REPO / "targets")
    pi, orin = inv.target("pi5-01"), inv.target("orin-01")
    assert (pi.settings.arch, pi.settings.python, pi.settings.big_cores) == ("arm64", "3.11", [0, 1, 2, 3])
    assert orin.settings.python == "3.10" and orin.settings.abi == "cp310"
    assert pi.settings.runtime.max_seq_len == 128  # from group pis
    assert (pi.settings.threads, pi.settings.affinity) == (4, [0, 1, 2, 3])  # one thread per big core
    assert (orin.settings.threads, orin.settings.affinity) == (4, [2, 3, 4, 5])  # device narrows the affinity
    assert orin.settings.providers[-1] == "CPUExecutionProvider"
    assert orin.settings.packages.pins == {"onnxruntime": "1.23.2", "numpy": "2.2.6"}
    assert [t.name for t in inv.group("jetsons")] == ["orin-01"]


def test_board_then_group_then_device(tmp_path):
    inv = load_inventory(make_inventory(tmp_path, """
        groups:
          g1: {vars: {runtime: {threads: 2, port: 9000}}}
          g2: {vars: {runtime: {threads: 3}}}
        devices:
          d1: {board: qemu-virt, host: 127.0.0.1, groups: [g1, g2], runtime: {max_seq_len: 64}}
          d2: {board: qemu-virt, host: 127.0.0.1, groups: [g1], runtime: {threads: 1}}
    """))
    d1, d2 = inv.target("d1"), inv.target("d2")
    assert (d1.settings.runtime.threads, d1.settings.runtime.port, d1.settings.runtime.max_seq_len) == (3, 9000, 64)
    assert (d2.settings.runtime.threads, d2.settings.runtime.port) == (1, 9000)
    origins = {k: (o.layer, o.line) for k, o in d1.origins.items()}
    assert origins[("runtime", "threads")] == ("group g2", 4)
    assert origins[("runtime", "port")] == ("group g1", 3)
    assert origins[("runtime", "max_seq_len")] == ("device d1", 6)
    assert origins[("arch",)][0] == "board qemu-virt"


def test_group_children_apply_parents_first(tmp_path):
    inv = load_inventory(make_inventory(tmp_path, """
        groups:
          site: {vars: {runtime: {port: 9000, max_seq_len: 64}}, children: [shelf]}
          shelf: {vars: {runtime: {max_seq_len: 128}}}
        devices:
          d1: {board: pi5, host: h, groups: [shelf]}
    """))
    d1 = inv.target("d1")
    assert d1.groups == ("site", "shelf")
    assert (d1.settings.runtime.port, d1.settings.runtime.max_seq_len) == (9000, 128)
    assert [t.name for t in inv.group("site")] == ["d1"]


OK_DEVICE = "devices: {d1: {board: pi5, host: h}}\n"


@pytest.mark.parametrize("fleet, extra, expected", [
    # 1 unknown setting on a device
    ("devices:\n  d1:\n    board: pi5\n    host: h\n    colour: red\n", None, "fleet.yaml:5: devices.d1.colour: unknown key"),
    # 2 wrong type
    ("devices:\n  d1:\n    board: pi5\n    host: h\n    port: abc\n", None, "fleet.yaml:5: devices.d1.port: "),
    # 3 out of range
    ("devices:\n  d1:\n    board: pi5\n    host: h\n    port: 70000\n", None, "fleet.yaml:5: devices.d1.port: 70000 is above the maximum 65535"),
    # 4 unknown board
    ("devices:\n  d1:\n    board: pi7\n    host: h\n", None, "fleet.yaml:3: devices.d1.board: unknown board 'pi7'"),
    # 5 missing field
    ("devices:\n  d1:\n    board: pi5\n", None, "fleet.yaml:2: devices.d1.host: required key missing"),
    # 6 core the board does not have
    ("devices:\n  d1:\n    board: pi5\n    host: h\n    big_cores: [0, 9]\n", None, "fleet.yaml:5: devices.d1.big_cores: cores [9] do not exist"),
    # 7 unknown group
    ("devices:\n  d1:\n    board: pi5\n    host: h\n    groups: [nope]\n", None, "fleet.yaml:5: devices.d1.groups: unknown group 'nope'"),
    # 8 bad nested value
    ("devices:\n  d1:\n    board: pi5\n    host: h\n    runtime:\n      threads: 0\n", None, "fleet.yaml:6: devices.d1.runtime.threads"),
    # 9 bad enum
    ("devices:\n  d1:\n    board: pi5\n    host: h\n    arch: sparc\n", None, "fleet.yaml:5: devices.d1.arch"),
    # 10 unknown setting in group vars
    ("groups:\n  g:\n    vars:\n      colour: red\n", None, "fleet.yaml:4: groups.g.vars.colour: unknown key"),
    # 11 unknown key in a group
    ("groups:\n  g:\n    varz: {}\n", None, "fleet.yaml:3: groups.g.varz: unknown key (did you mean `vars`?)"),
    # 12 wrong shape
    ("devices: [d1, d2]\n", None, "fleet.yaml:1: devices: "),
    # 13 YAML syntax
    ("devices: {d1: {board: pi5, host: h}\n", None, "fleet.yaml:2: not valid YAML"),
    # 14 duplicate device across files
    (OK_DEVICE, {"more.yaml": "\ndevices:\n  d1: {board: pi5, host: h2}\n"}, "more.yaml:3: devices.d1: duplicate device"),
    # 15 cycle in groups
    ("groups:\n  a: {children: [b]}\n  b:\n    children: [a]\n", None, "cycle in groups"),
    # 16 unknown child group
    ("groups:\n  a:\n    children: [ghost]\n", None, "fleet.yaml:3: groups.a.children: unknown group 'ghost'"),
    # 17 threads disagree with the affinity
    ("devices:\n  d1:\n    board: rk3588\n    host: h\n    runtime:\n      threads: 2\n", None,
     "fleet.yaml:6: devices.d1.runtime.threads: runtime.threads (2) must equal the number of cores"),
    # 18 thermal limits the wrong way round
    ("devices:\n  d1:\n    board: pi5\n    host: h\n    thermal: {soft_c: 90}\n", None, "fleet.yaml:5: devices.d1.thermal.soft_c: soft_c (90.0) must be below hard_c"),
    # 19 CPU not last among the execution providers
    ("devices:\n  d1:\n    board: pi5\n    host: h\n    providers: [CPUExecutionProvider, CUDAExecutionProvider]\n", None,
     "fleet.yaml:5: devices.d1.providers: providers must be distinct and end with CPUExecutionProvider"),
    # 20 non-loopback host without a token
    ("devices:\n  d1:\n    board: pi5\n    host: h\n    runtime: {host: 0.0.0.0}\n", None, "token is required when host is not loopback"),
    # 21 a bad value set by a group names the group's line and path
    ("groups:\n  g:\n    vars:\n      runtime: {nice: -40}\ndevices:\n  d1: {board: pi5, host: h, groups: [g]}\n", None,
     "fleet.yaml:4: groups.g.vars.runtime.nice"),
    # 22 affinity outside the board
    ("devices:\n  d1:\n    board: pi5\n    host: h\n    runtime:\n      affinity: [4]\n", None, "fleet.yaml:6: devices.d1.runtime.affinity: cores [4] do not exist"),
    # 23 a broken board profile
    (OK_DEVICE, {"boards/bad.yaml": "description: x\ncpu: y\ncores: 2\nsettings:\n  arch: arm64\n  gpu: yes\n"},
     "bad.yaml:6: settings.gpu: unknown key"),
    # 24 more workers than threads (pi5: 4 big cores)
    ("devices:\n  d1:\n    board: pi5\n    host: h\n    runtime:\n      workers: 5\n", None,
     "runtime.workers (5) must be at most the runtime's threads (4)"),
])
def test_errors_name_file_line_and_key(tmp_path, fleet, extra, expected):
    with pytest.raises(InventoryError) as err:
        load_inventory(make_inventory(tmp_path, fleet, extra))
    assert expected in str(err.value)


def test_render_task_reports_errors_without_a_traceback(tmp_path):
    inv = make_inventory(tmp_path, "devices:\n  d1:\n    board: pi5\n    host: h\n    colour: red\n")
    proc = subprocess.run([sys.executable, "-m", "invoke", "render", "--target", "d1"], cwd=REPO,
                          capture_output=True, text=True, env={"INVOKE_EDGEFLEET_TARGETS_DIR": str(inv), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    assert "fleet.yaml:5: devices.d1.colour: unknown key" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


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
