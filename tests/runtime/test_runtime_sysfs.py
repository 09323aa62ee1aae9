"""sysfs parsers, governor drift and the thermal guard, against a fake sysfs tree."""

import pytest
from edge_runtime.config import ThermalConfig
from edge_runtime.sysfs import Policy, Sysfs, governor_drift, parse_cpu_list, parse_khz, parse_millidegrees
from edge_runtime.thermal import HARD, OK, SOFT, ThermalGuard, next_state


@pytest.mark.parametrize("text, expected", [
    ("0 1 2 3\n", (0, 1, 2, 3)), ("4-7", (4, 5, 6, 7)), ("0-1,6", (0, 1, 6)), ("", ()),
    ("3 1", (1, 3)),
])
def test_parse_cpu_list(text, expected):
    assert parse_cpu_list(text) == expected


@pytest.mark.parametrize("text, expected", [("45000\n", 45.0), ("-5500", -5.5), ("85123", 85.123)])
def test_parse_millidegrees(text, expected):
    assert parse_millidegrees(text) == expected


@pytest.mark.parametrize("text, expected", [("2400000\n", 2400000), ("<unknown>", None)])
def test_parse_khz(text, expected):
    assert parse_khz(text) == expected


def test_policies_and_drift(fake_sysfs):
    fake_sysfs.policy(4, cpus="4 5 6 7", governor="schedutil", cur=408000)
    fake_sysfs.policy(10, cpus="8", governor="performance")
    policies = Sysfs(fake_sysfs.root).policies()
    assert [p.name for p in policies] == ["policy0", "policy4", "policy10"]
    assert policies[1] == Policy("policy4", (4, 5, 6, 7), "schedutil", 408000, 2400000)
    assert governor_drift(policies, "performance") == ["policy4"]
    assert governor_drift(policies, "schedutil") == ["policy0", "policy10"]
    assert governor_drift(policies, None) == []


def test_missing_tree_reads_empty(tmp_path):
    assert Sysfs(tmp_path / "nothing").policies() == []
    assert Sysfs(tmp_path / "nothing").zones() == []


def test_zones_filter_and_bad_values(fake_sysfs):
    fake_sysfs.zone(1, 60.5, kind="gpu-thermal")
    (fake_sysfs.root / "class/thermal/thermal_zone1/temp").write_text("garbage\n")
    zones = Sysfs(fake_sysfs.root).zones()
    assert [(z.name, z.type, z.temp_c) for z in zones] == [
        ("thermal_zone0", "cpu-thermal", 45.0), ("thermal_zone1", "gpu-thermal", None)]
    assert [z.name for z in Sysfs(fake_sysfs.root).zones(["gpu-thermal"])] == ["thermal_zone1"]
    assert [z.name for z in Sysfs(fake_sysfs.root).zones(["thermal_zone0"])] == ["thermal_zone0"]


@pytest.mark.parametrize("state, temp, expected", [
    (OK, 50.0, OK), (OK, 75.0, OK), (OK, 75.1, SOFT), (OK, 85.0, SOFT), (OK, 85.1, HARD),
    (SOFT, 74.0, OK), (SOFT, 90.0, HARD), (HARD, 80.0, HARD), (HARD, 75.0, HARD),
    (HARD, 74.9, OK), (SOFT, None, SOFT), (HARD, None, HARD),
])
def test_next_state(state, temp, expected):
    assert next_state(state, temp, soft_c=75.0, hard_c=85.0) == expected


def test_guard_ticks_through_soft_hard_and_recovery(fake_sysfs):
    guard = ThermalGuard(Sysfs(fake_sysfs.root), ThermalConfig(soft_c=75.0, hard_c=85.0,
                                                               poll_s=0.5))
    steps = [(45.0, OK), (80.0, SOFT), (90.0, HARD), (80.0, HARD), (70.0, OK)]
    for temp, expected in steps:
        fake_sysfs.zone(0, temp)
        assert guard.tick() == expected, temp
    assert guard.transitions == 3 and guard.hottest() == 70.0 and guard.retry_after_s == 1


def test_guard_thread_polls(fake_sysfs):
    import time

    guard = ThermalGuard(Sysfs(fake_sysfs.root), ThermalConfig(poll_s=0.02)).start()
    try:
        fake_sysfs.zone(0, 99.0)
        deadline = time.monotonic() + 5
        while guard.state != HARD and time.monotonic() < deadline:
            time.sleep(0.01)
        assert guard.state == HARD
    finally:
        guard.stop()


def test_guard_looks_zones_up_once_then_reads_only_temps(fake_sysfs, monkeypatch):
    """A tick between lookups reads the known zones' temp files; a zone that stops reading, or
    RESCAN_S passing, makes the next tick look them up again (a new zone is then seen)."""
    from edge_runtime import thermal

    sysfs = Sysfs(fake_sysfs.root)
    lookups = []
    real_find = sysfs.find_zones
    monkeypatch.setattr(sysfs, "find_zones", lambda names=(): lookups.append(1) or real_find(names))
    guard = ThermalGuard(sysfs, ThermalConfig(soft_c=75.0, hard_c=85.0, poll_s=1.0))
    for temp in (45.0, 80.0, 46.0):
        fake_sysfs.zone(0, temp)
        guard.tick()
    assert len(lookups) == 1 and guard.hottest() == 46.0
    (fake_sysfs.root / "class/thermal/thermal_zone0/temp").unlink()  # the zone went away
    guard.tick()
    fake_sysfs.zone(0, 50.0).zone(1, 90.0)
    assert guard.tick() == HARD and len(lookups) == 2 and guard.hottest() == 90.0
    clock = [thermal.time.monotonic() + thermal.RESCAN_S + 1]
    monkeypatch.setattr(thermal.time, "monotonic", lambda: clock[0])
    fake_sysfs.zone(2, 40.0)
    guard.tick()
    assert len(lookups) == 3 and len(guard.zones) == 3
