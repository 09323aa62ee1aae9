"""The inventories in docs/inventory.md load as written, and the lab one points at the devices
`invoke lab.up --devices 2 --board pi5` starts in slot 0."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from edgefleet.inventory import load_inventory
from edgefleet.lab import LabPaths, plan

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "inventory.md").read_text()


def yaml_block(after: str) -> str:
    """Return the first ```yaml block after the text `after` in docs/inventory.md."""
    start = DOC.index(after)
    match = re.compile(r"```yaml\n(.*?)```", re.S).search(DOC, start)
    assert match, after
    return match.group(1)


def save_as_myfleet(tmp_path: Path, text: str) -> Path:
    """Save `text` as the docs say: myfleet/fleet.yaml in a checkout (schema beside it, no boards/)."""
    (tmp_path / "targets").mkdir()
    shutil.copy(REPO / "targets" / "inventory.schema.json", tmp_path / "targets")
    (tmp_path / "myfleet").mkdir()
    (tmp_path / "myfleet" / "fleet.yaml").write_text(text)
    return tmp_path / "myfleet"


def test_lab_snippet_loads_and_points_at_the_lab_devices(tmp_path, monkeypatch):
    monkeypatch.delenv(plan.SLOT_ENV, raising=False)  # the docs' snippet is for slot 0
    inventory = load_inventory(save_as_myfleet(tmp_path, yaml_block("<!-- snippet: lab-fleet")))
    lab = LabPaths(build_dir=tmp_path / "build", targets_dir=tmp_path / "targets")
    devices = plan.plan_devices(2, "arm64", board="pi5")
    targets = [inventory.target(n) for n in ("shelf-pi-01", "shelf-pi-02")]
    for device, target in zip(devices, targets, strict=True):
        assert (target.host, target.port, target.user) == ("127.0.0.1", device.ssh_port, "root")
        assert (target.ssh_key, target.known_hosts) == (lab.client_key.resolve(), lab.known_hosts.resolve())
        assert target.settings.runtime.port == device.runtime_port
        overrides = plan.device_overrides(device, load_board("pi5"))
        for key in ("arch", "emulated"):
            assert getattr(target.settings, key) == overrides[key], key
        assert target.settings.health.ready_timeout_s >= overrides["health"]["ready_timeout_s"]
        assert not target.settings.sudo and target.settings.runtime.max_seq_len == 128
    assert [t.name for t in inventory.group("shelf")] == ["shelf-pi-01", "shelf-pi-02"]


def load_board(name: str) -> dict:
    import yaml

    return yaml.safe_load((REPO / "targets" / "boards" / f"{name}.yaml").read_text())["settings"]


def test_real_boards_snippet_loads(tmp_path):
    inventory = load_inventory(save_as_myfleet(tmp_path, yaml_block("### Real boards")))
    pi, orin = inventory.target("shelf-pi-01"), inventory.target("cell-orin-01")
    assert pi.groups == ("plant", "shelf") and pi.settings.runtime.max_seq_len == 128
    assert pi.settings.deploy.keep_releases == orin.settings.deploy.keep_releases == 4
    assert (orin.settings.threads, orin.settings.affinity) == (4, [2, 3, 4, 5])
