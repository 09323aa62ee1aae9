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


@pytest.mark.parametrize("name, threads, max_len, affinity, thermal_zones", [
    ("pi5-01", 4, 128, [0, 1, 2, 3], ["cpu-thermal"]),
    ("orin-01", 4, 256, [2, 3, 4, 5], ["cpu-thermal", "gpu-thermal", "tj-thermal"]),
])
def test_render_values_come_from_the_target(inventory, name, threads, max_len, affinity, thermal_zones):
    files = {f.name: f for f in render_target(inventory.target(name))}
    config = yaml.safe_load(files["runtime.yaml"].text)
    assert {k: config[k] for k in ("target", "threads", "affinity", "host", "port", "max_seq_len", "nice", "spin")} == {
        "target": name, "threads": threads, "affinity": affinity, "host": "127.0.0.1", "port": 8080,
        "max_seq_len": max_len, "nice": -5, "spin": False}
    assert config["thermal"]["zones"] == thermal_zones and config["sysfs_root"] == "/sys"
    unit = files[UNIT_NAME].text.splitlines()
    # the runtime pins itself (it copes with missing CPUs; systemd's CPUAffinity= fails the start)
    assert "Nice=-5" in unit and not any(line.startswith("CPUAffinity=") for line in unit)
    for line in ("User=edgefleet", "CapabilityBoundingSet=", "AmbientCapabilities=", "PrivateMounts=yes",
                 "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes"):
        assert line in unit
    assert files[UNIT_NAME].device_path == f"/etc/systemd/system/{UNIT_NAME}"


def test_rendered_files_pass_checks(inventory):
    files = render_target(inventory.target("pi5-01"))
    notes = check_rendered(files)
    assert all("not installed" in n for n in notes)  # only when systemd-analyze / shellcheck are missing


def test_a_text_that_passed_is_not_checked_again(inventory, monkeypatch, tmp_path):
    import edgefleet.render as render

    files = render_target(inventory.target("pi5-01"))
    assert check_rendered(files, cache_dir=tmp_path) == []
    monkeypatch.setattr(render.subprocess, "run", lambda *a, **k: pytest.fail(f"checked again: {a}"))
    assert check_rendered(files, cache_dir=tmp_path) == []  # a re-run of a rollout: no subprocess
    changed = [f if f.name != UNIT_NAME else render.RenderedFile(f.name, f.device_path, f.text + "\n") for f in files]
    with pytest.raises(pytest.fail.Exception, match="checked again"):
        check_rendered(changed, cache_dir=tmp_path)  # new text: checked
    with pytest.raises(pytest.fail.Exception, match="checked again"):
        check_rendered(files)  # no cache: checked


@pytest.mark.parametrize("broken, expected", [
    ("edgefleet-tuning.sh.j2", "sh -n failed"),
])
def test_bad_script_fails_its_check(inventory, tmp_path, broken, expected):
    shutil.copytree(REPO / "templates", tmp_path, dirs_exist_ok=True)
    (tmp_path / broken).write_text((tmp_path / broken).read_text() + "\nif then fi\n")
    with pytest.raises(RenderError, match=expected):
        check_rendered(render_target(inventory.target("pi5-01"), templates_dir=tmp_path))


def test_explain_names_board_group_and_device_lines(inventory):
    from edgefleet.explain import explain_target
    lines = explain_target(inventory.target("orin-01"))
    by_key = {ln.split(" = ")[0].strip(): ln for ln in lines[1:]}
    assert "board orin-nano" in by_key["arch"] and "orin-nano.yaml:6" in by_key["arch"]  # line 1 names the schema
    assert "group jetsons" in by_key["runtime.max_seq_len"] and "fleet.yaml:" in by_key["runtime.max_seq_len"]
    assert "device orin-01" in by_key["runtime.affinity"]
    assert by_key["root"].endswith("<- default")


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


def _many(inventory, names):
    return [render_target(inventory.target(n)) for n in names]


def test_many_targets_are_checked_in_one_batch_and_remembered(inventory, tmp_path, monkeypatch):
    """A rollout's targets: one systemd-analyze for all units, one shellcheck per distinct script
    (scripts that differ only in their header comment are one), each file remembered as checked."""
    import subprocess

    from edgefleet import render

    if not shutil.which("systemd-analyze") or not shutil.which("shellcheck"):
        pytest.fail("systemd-analyze and shellcheck are missing: scripts/setup.sh installs them")
    calls = []
    real = subprocess.run
    monkeypatch.setattr(render.subprocess, "run", lambda argv, **kw: calls.append(argv[0:2]) or real(argv, **kw))
    sets = _many(inventory, ["pi5-01", "orin-01"])
    twin = [render.RenderedFile(f.name, f.device_path, f.text.replace("pi5-01", "pi5-99")) for f in sets[0]]
    assert render.check_rendered_many([*sets, twin], tmp_path) == []
    tools = [Path(a[0]).name for a in calls]
    assert tools.count("systemd-analyze") == 1 and tools.count("shellcheck") == 1
    shellchecked = [a for a in calls if Path(a[0]).name == "shellcheck"]
    assert len(shellchecked) == 1
    calls.clear()
    assert render.check_rendered_many([*sets, twin], tmp_path) == [] and calls == []  # remembered
    assert check_rendered(twin, cache_dir=tmp_path) == [] and calls == []  # the one-target check agrees


@pytest.mark.parametrize("broken, message", [
    ("service", "edgefleet-runtime.service: systemd-analyze verify failed"),
    ("script", "edgefleet-tuning.sh: shellcheck failed"),
])
def test_a_broken_file_among_many_is_named(inventory, tmp_path, broken, message):
    from edgefleet import render

    sets = _many(inventory, ["pi5-01", "orin-01"])
    bad = []
    for f in sets[1]:
        text = f.text
        if broken == "service" and f.name == UNIT_NAME:
            text = text.replace("[Service]\n", "[Service]\nNoSuchDirective=1\n")
        if broken == "script" and f.name.endswith(".sh"):
            text += '\nrm -rf $UNQUOTED/*\n'
        bad.append(render.RenderedFile(f.name, f.device_path, text))
    with pytest.raises(RenderError, match=message):
        render.check_rendered_many([sets[0], bad], tmp_path)
    assert not any(tmp_path.iterdir()) or all(  # nothing of the failing batch's bad file is remembered
        p.name != render._check_key(next(f for f in bad if f.name.endswith(".sh" if broken == "script" else ".service")))
        for p in tmp_path.iterdir())


@pytest.mark.parametrize("name, providers, options", [
    ("pi5-01", ["CPUExecutionProvider"], {}),
    ("orin-01", ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
     {"TensorrtExecutionProvider": {"trt_fp16_enable": True}}),
])
def test_runtime_config_carries_the_boards_providers(inventory, name, providers, options):
    files = {f.name: f for f in render_target(inventory.target(name))}
    config = yaml.safe_load(files["runtime.yaml"].text)
    assert config["providers"] == providers
    assert config["provider_options"] == options and config["require_providers"] == []
