"""Rendering: templates fill from the resolved target, strictly, and pass their checks."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from edgefleet.inventory import load_inventory
from edgefleet.render import UNIT_NAME, RenderError, check_rendered, render_target

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def inventory():
    return load_inventory(REPO / "targets")


@pytest.mark.parametrize("name, threads, max_len, affinity", [
    ("pi5-01", 4, 128, "CPUAffinity=0 1 2 3"),
    ("orin-01", 4, 256, "CPUAffinity=0 1 2 3 4 5"),
])
def test_render_values_come_from_the_target(inventory, name, threads, max_len, affinity):
    files = {f.name: f for f in render_target(inventory.target(name))}
    config = yaml.safe_load(files["runtime.yaml"].text)
    assert config == {"target": name, "threads": threads, "host": "127.0.0.1", "port": 8080,
                      "max_seq_len": max_len, "log_level": "info"}
    unit = files[UNIT_NAME].text
    assert affinity in unit.splitlines()
    assert "User=edgefleet" in unit and "CapabilityBoundingSet=" in unit and "NoNewPrivileges=yes" in unit
    assert files[UNIT_NAME].device_path == f"/etc/systemd/system/{UNIT_NAME}"


def test_rendered_files_pass_checks(inventory):
    files = render_target(inventory.target("pi5-01"))
    notes = check_rendered(files)
    assert all("not verified" in n for n in notes)  # only when systemd-analyze is missing


def test_undefined_variable_is_an_error(inventory, tmp_path):
    shutil.copytree(REPO / "templates", tmp_path, dirs_exist_ok=True)
    (tmp_path / "runtime.yaml.j2").write_text("threads: {{ runtime.thread_count }}\n")
    with pytest.raises(RenderError, match="runtime.yaml.j2"):
        render_target(inventory.target("pi5-01"), templates_dir=tmp_path)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_bad_unit_key_fails_verify(inventory, tmp_path):
    shutil.copytree(REPO / "templates", tmp_path, dirs_exist_ok=True)
    unit = tmp_path / f"{UNIT_NAME}.j2"
    unit.write_text(unit.read_text().replace("NoNewPrivileges=yes", "NoNewPrivilegez=yes"))
    with pytest.raises(RenderError, match="NoNewPrivilegez"):
        check_rendered(render_target(inventory.target("pi5-01"), templates_dir=tmp_path))
