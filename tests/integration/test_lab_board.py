"""A lab device shaped like an RK3588 (amd64 container, fake sysfs): the runtime, `status` and deploy
read and write its cpufreq policies and thermal zones as on the board.

Heat past the soft and the hard limit (503 + Retry-After, then recovery), a governor changed by
hand (drift, then repaired by a deploy), and core placement on this 2-core machine where the
board's big cores 4-7 do not exist. The lab is shared machine state: this module refuses to run
over a lab that is already up, and takes down the one it starts.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgefleet import lab
from edgefleet.deploy import deploy
from edgefleet.inspect import collect_status
from edgefleet.lab import knobs, sysfs
from edgefleet.transport import connect, http_over_ssh

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
REPO = Path(__file__).resolve().parents[2]
POLICY = "/sys/devices/system/cpu/cpufreq/policy4/scaling_governor"


@pytest.fixture(scope="module")
def rk3588(rk3588_lab_device, bundle):
    """lab-01 as an rk3588 board, deployed once: (target, lab paths, the first deploy's result)."""
    target = rk3588_lab_device
    lines = []
    result = deploy(target, bundle, REPO / "build", log=lines.append)
    assert result.ok, "\n".join(lines)
    return target, lab.LabPaths(build_dir=REPO / "build", targets_dir=target.source.parent), result


def call(target, path: str, payload: dict | None = None) -> tuple[int, dict, str]:
    """One request to the device's runtime through SSH: status, headers, body text."""
    conn = connect(target)
    try:
        status, headers, raw = http_over_ssh(conn, target.settings.runtime.port, path, payload, timeout=60)
    finally:
        conn.close()
    return status, headers, raw.decode()


def info(target) -> dict:
    status, _, body = call(target, "/v1/info")
    assert status == 200, body
    return json.loads(body)


def metric(text: str, name: str, **labels) -> float:
    """Return the value of the one sample of `name` whose labels include `labels`."""
    for line in text.splitlines():
        match = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            return float(match.group(2))
    raise AssertionError(f"no sample {name} {labels} in /metrics")


def wait_for_throttle(target, state: str, timeout: float = 30.0) -> dict:
    """Poll /v1/info until the thermal guard is in `state` (it polls every thermal.poll_s)."""
    deadline = time.monotonic() + timeout
    while True:
        now = info(target)
        if now["throttle"]["state"] == state or time.monotonic() > deadline:
            assert now["throttle"]["state"] == state, now["throttle"]
            return now
        time.sleep(0.5)


def test_runtime_and_status_read_the_boards_fake_sysfs(rk3588):
    target, _, first = rk3588
    assert first.temperature_c == sysfs.IDLE_C  # the deploy reports the hottest zone after its gate
    now = info(target)
    policies = now["governor"]["policies"]
    assert {name: (p["governor"], p["cpus"], p["max_khz"]) for name, p in policies.items()} == {
        "policy0": ("performance", [0, 1, 2, 3], 1800000),  # the tuning unit set it (boots schedutil)
        "policy4": ("performance", [4, 5], 2352000),
        "policy6": ("performance", [6, 7], 2352000),
    }
    assert now["governor"]["drift"] == []
    assert {z: (t["type"], t["temp_c"]) for z, t in now["temperatures"].items()} == {
        "thermal_zone0": ("soc-thermal", 45.0), "thermal_zone1": ("bigcore0-thermal", 45.0),
        "thermal_zone2": ("bigcore1-thermal", 45.0)}  # only the board's zones, of the seven there
    # placement on this machine: none of the big cores 4-7 exists, so the runtime stays on every
    # CPU it may use and runs one ORT thread per CPU (systemd's CPUAffinity= would have failed)
    host_cpus = sorted(os.sched_getaffinity(0))
    assert now["affinity"] == host_cpus and now["threads"] == min(4, len(host_cpus))
    assert "CPUs [4, 5, 6, 7] do not exist" in now["tuning_warnings"][0]
    assert now["nice"] == -5  # systemd sets Nice= (the lab container has CAP_SYS_NICE)

    status, _, text = call(target, "/metrics")
    assert status == 200
    assert metric(text, "edge_temperature_celsius", zone="thermal_zone1", type="bigcore0-thermal") == 45.0
    assert metric(text, "edge_throttle_state", state="ok") == 1
    assert [metric(text, "edge_governor_drift", policy=p, governor="performance") for p in policies] == [0, 0, 0]

    st = collect_status(target)
    assert st.healthy and st.drift == [] and st.throttling == "ok (45.0 C)"
    assert st.governors == {"policy0": "performance", "policy4": "performance", "policy6": "performance"}


def test_heat_past_soft_then_hard_refuses_work_then_recovers(rk3588):
    target, paths, _ = rk3588
    soft, hard = target.settings.thermal.soft_c, target.settings.thermal.hard_c
    texts = {"texts": ["warm device"]}
    try:
        assert knobs.heat(paths, "lab-01", soft + 3, zone="bigcore0-thermal") == ["thermal_zone1"]
        wait_for_throttle(target, "soft")
        assert call(target, "/v1/embed", texts)[0] == 200  # soft: slower, still serving
        assert collect_status(target).throttling == f"soft ({soft + 3:.1f} C)"

        knobs.heat(paths, "lab-01", hard + 2, zone=1)
        wait_for_throttle(target, "hard")
        status, headers, body = call(target, "/v1/embed", texts)
        assert status == 503 and "too hot" in json.loads(body)["error"]
        assert headers["Retry-After"] == str(math.ceil(2 * target.settings.thermal.poll_s))
        _, _, text = call(target, "/metrics")
        assert metric(text, "edge_throttle_state", state="hard") == 1
        assert metric(text, "edge_temperature_celsius", zone="thermal_zone1") == hard + 2
        assert collect_status(target).throttling == f"hard ({hard + 2:.1f} C)"

        knobs.heat(paths, "lab-01", soft + 1)  # every zone below hard, above soft: still refusing
        time.sleep(2.5 * target.settings.thermal.poll_s)
        assert info(target)["throttle"]["state"] == "hard"
        assert call(target, "/v1/embed", texts)[0] == 503
    finally:
        knobs.heat(paths, "lab-01", sysfs.IDLE_C)
    wait_for_throttle(target, "ok")
    status, _, body = call(target, "/v1/embed", texts)
    assert status == 200 and len(json.loads(body)["embeddings"]) == 1


def _invoke(paths, *args: str) -> subprocess.CompletedProcess:
    """Run a task as a user types it, against this lab's inventory."""
    env = {**os.environ, "INVOKE_EDGEFLEET_TARGETS_DIR": str(paths.targets_dir), "COLUMNS": "240"}
    return subprocess.run([str(Path(sys.executable).parent / "invoke"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_heated_past_the_hard_limit_status_says_not_healthy_and_why(rk3588):
    """`lab.heat --celsius 99`: the runtime refuses inference, so `status` says unhealthy, why, and exits 1."""
    target, paths, _ = rk3588
    try:
        heat = _invoke(paths, "lab.heat", "--device", "lab-01", "--celsius", "99")
        assert heat.returncode == 0, heat.stderr
        wait_for_throttle(target, "hard")
        table = _invoke(paths, "status", "--target", "lab-01")
        assert table.returncode == 1, table.stdout + table.stderr
        assert "too hot" in table.stdout, table.stdout
        report = _invoke(paths, "status", "--target", "lab-01", "--json")
        st = json.loads(report.stdout)["targets"]["lab-01"]
        assert report.returncode == 1 and st["healthy"] is False, st
        assert "too hot: 99.0 °C above the hard limit 85 °C" in st["ready_detail"], st
    finally:
        knobs.heat(paths, "lab-01", sysfs.IDLE_C)
    wait_for_throttle(target, "ok")
    assert collect_status(target).healthy


def test_the_docs_lab_inventory_reaches_a_lab_device(rk3588, tmp_path):
    """docs/inventory.md's copy-paste inventory, moved to this lab's slot as the docs say, logs in
    to lab-01 (host key verified against the lab's known_hosts) and reads its release and health."""
    from tests.unit.test_inventory_docs import yaml_block

    target, paths, first = rk3588
    text = yaml_block("<!-- snippet: lab-fleet")
    moves = (("port: 2201", f"port: {target.port}"),
             ("{port: 18081}", f"{{port: {target.settings.runtime.port}}}"),
             ("../build/lab/id_ed25519", str(target.ssh_key)),
             ("../build/lab/known_hosts", str(target.known_hosts)))
    for old, new in moves:
        assert old in text, old
        text = text.replace(old, new)
    (tmp_path / "myfleet").mkdir()
    (tmp_path / "myfleet" / "fleet.yaml").write_text(text)
    report = _invoke(lab.LabPaths(build_dir=paths.build_dir, targets_dir=tmp_path / "myfleet"),
                     "status", "--target", "shelf-pi-01", "--json")
    st = json.loads(report.stdout)["targets"]["shelf-pi-01"]
    assert st["reachable"] and st["release"] == first.release_id and st["healthy"], (st, report.stderr)


def test_heat_knob_errors_name_the_device_and_zone(rk3588):
    _, paths, _ = rk3588
    with pytest.raises(ValueError, match=r"no running lab device 'lab-07' .*running: lab-01"):
        knobs.heat(paths, "lab-07", 80)
    with pytest.raises(ValueError, match=r"no thermal zone 'cpu-thermal' \(known: 0 \(soc-thermal\)"):
        knobs.heat(paths, "lab-01", 80, zone="cpu-thermal")


def test_governor_changed_by_hand_is_drift_and_a_deploy_repairs_it(rk3588, run_on, bundle):
    target, paths, _ = rk3588
    assert run_on(target, f"echo powersave > {POLICY} && cat {POLICY}") == "powersave"
    assert sysfs.read_governors(paths.sysfs("lab-01"))["policy4"] == "powersave"  # the write reached the host tree

    st = collect_status(target)
    assert st.drift == ["cpufreq policy4 governor is powersave, expected performance"]
    assert info(target)["governor"]["drift"] == ["policy4"]
    _, _, text = call(target, "/metrics")
    assert metric(text, "edge_governor_drift", policy="policy4", governor="powersave") == 1

    lines = []
    repaired = deploy(target, bundle, REPO / "build", log=lines.append)
    assert repaired.ok, "\n".join(lines)
    assert "  note: cpufreq policy4: governor is not performance; the tuning unit re-applies it" in lines
    assert collect_status(target).drift == []
    assert set(sysfs.read_governors(paths.sysfs("lab-01")).values()) == {"performance"}
    assert info(target)["governor"]["drift"] == []
