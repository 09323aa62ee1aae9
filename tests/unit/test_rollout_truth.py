"""Rollout reports tell where each device is: previous, target and now; counts count what changed."""

from __future__ import annotations

import pytest
from rich.console import Console

from edgefleet.deploy.facts import Facts
from edgefleet.deploy.health import HealthResult
from edgefleet.deploy.run import DeployResult
from edgefleet.rollout import plan_rollout, print_table
from edgefleet.rollout import run as rollout_run
from edgefleet.rollout.plan import choose_canary
from edgefleet.rollout.report import LastKnown, LiveProgress, RolloutRecord
from edgefleet.rollout.run import DeviceOutcome, run_rollout
from edgefleet.textclip import keep_tail


class FakeRelease:
    def __init__(self, release_id):
        self.release_id, self.bundle_id = release_id, "b0ddle5ab1e5"


class FakeTarget:
    def __init__(self, name):
        self.name = name


def facts(current):
    return Facts(arch="amd64", python="3.11", systemd=True, current=current, committed=current, lock_owner=None,
                 free_bytes=1, unit_sha256=None, service_active="active", user_exists=True, envs=frozenset(),
                 releases=frozenset(), objects=frozenset())


def run(monkeypatch, tmp_path, behaviours: dict, now: dict, known: dict | None = None, max_fail=5):
    """Run a rollout of r-B where each device's deploy does what `behaviours` says; `now`: its facts after."""
    def fake_deploy(target, bundle_dir, build_dir, log, release, facts=None, on_facts=None):
        return behaviours[target.name](on_facts)

    monkeypatch.setattr(rollout_run, "deploy", fake_deploy)
    monkeypatch.setattr(rollout_run, "gather_facts", lambda target: now.get(target.name))
    names = list(behaviours)
    plan = plan_rollout(names, 0, "100%", max_fail)
    record = RolloutRecord(tmp_path, plan, tmp_path, {})
    outcomes, stopped = run_rollout([FakeTarget(n) for n in names], plan, {n: FakeRelease("r-B") for n in names},
                                    tmp_path, tmp_path, record.log_dir, lambda k, w, p: record.device(p)
                                    if k == "device" else None, last_known=(known or {}).get)
    doc = record.finish(stopped, 1.0, rollout_run.summary_counts(outcomes))
    console = Console(record=True, width=80)
    print_table(doc, console)
    return doc, console.export_text()


def updated(on_facts):
    on_facts(facts("r-A"))
    return DeployResult("x", "r-B", "r-A", True, HealthResult(True, ""))


def unchanged(on_facts):
    on_facts(facts("r-B"))
    return DeployResult("x", "r-B", "r-B", False, HealthResult(True, ""))


def gate_failed(on_facts):
    on_facts(facts("r-A"))
    journal = "\n".join([f"old release start-up line {i}" for i in range(40)]
                        + ["Traceback (most recent call last):", "ValueError: bundle.json: max_seq_len 0"])
    return DeployResult("x", "r-B", "r-A", True, HealthResult(False, f"/readyz never answered; journal:\n{journal}"),
                        rolled_back=True)


def killed_mid_upload(on_facts):
    on_facts(facts("r-A"))
    raise OSError("upload of bundle/model.onnx failed: ssh exit 255: connection lost")


def sshd_stopped(on_facts):
    raise OSError("lab-05: ssh: connect to host 127.0.0.1 port 2405: Connection refused")


def test_rows_say_previous_target_and_where_the_device_is_now(monkeypatch, tmp_path):
    doc, text = run(monkeypatch, tmp_path,
                    {"lab-01": updated, "lab-02": unchanged, "lab-03": gate_failed, "lab-04": killed_mid_upload,
                     "lab-05": sshd_stopped},
                    now={"lab-04": facts("r-A")}, known={"lab-05": "r-A"})
    d = doc["devices"]
    assert [d[n]["previous"] for n in sorted(d)] == ["r-A", "r-B", "r-A", "r-A", "r-A"]
    assert d["lab-03"]["where"] == "rolled back to r-A"
    assert d["lab-04"]["where"] == "still on r-A"
    assert d["lab-05"]["where"] == "unreachable: last known r-A"
    assert "(none) ->" not in text and "lab-05" in text and "r-A -> r-B" in text
    # the failing line, not the old release's start-up lines
    assert "ValueError: bundle.json: max_seq_len 0" in d["lab-03"]["error"]
    assert "ValueError: bundle.json: max_seq_len 0" in text.replace("\n", " ") or "max_seq_len" in text
    assert doc["status"] == "failed"
    assert "1 updated, 1 unchanged, 2 failed, 1 failed (rolled back)" in text


def test_a_no_op_says_unchanged_not_on_the_new_release(monkeypatch, tmp_path):
    doc, text = run(monkeypatch, tmp_path, {"lab-01": unchanged, "lab-02": unchanged}, now={})
    assert doc["status"] == "completed"
    assert "2 unchanged;" in text and "on the new release" not in text


def test_device_never_seen_is_not_shown_as_having_no_release(monkeypatch, tmp_path):
    doc, text = run(monkeypatch, tmp_path, {"lab-09": sshd_stopped}, now={})
    assert "(none) ->" not in text and "? -> r-B" in text
    assert doc["devices"]["lab-09"]["where"] == "unreachable"


def test_last_known_comes_from_earlier_records(monkeypatch, tmp_path):
    run(monkeypatch, tmp_path, {"lab-01": updated}, now={})
    assert LastKnown(tmp_path)("lab-01") == "r-B" and LastKnown(tmp_path)("lab-02") is None


@pytest.mark.parametrize("canary, changing, expected", [
    (("a",), {"b", "c"}, (("b",), ("a", "c"))),         # a is on the new release already: b goes first
    (("a",), {"a", "c"}, (("a",), ("b", "c"))),         # a changes: kept
    (("a",), set(), (("a",), ("b", "c"))),              # nothing changes: nothing to choose
    (("a", "b"), {"c"}, (("c", "b"), ("a",))),
])
def test_canary_is_a_device_whose_release_changes(canary, changing, expected):
    plan = plan_rollout(["a", "b", "c"], len(canary), "100%")
    assert choose_canary(plan, changing).waves == expected


def test_off_a_terminal_one_line_per_device_and_per_wave(tmp_path):
    lines: list[str] = []
    plan = plan_rollout(["lab-01", "lab-02"], 1, "100%")
    live = LiveProgress(plan, enabled=False, plain=lines.append)
    live("wave", 1, ["lab-01"])
    live("device", 1, DeviceOutcome("lab-01", 1, "updated", "r-A", "r-B", "r-B", seconds=2.0, where="on r-B"))
    assert lines == ["wave 1: 1 device(s): lab-01", "wave 1 lab-01: updated: r-A -> r-B; on r-B (2.0 s)",
                     "wave 1 done: 1 updated"]


def test_long_names_and_release_ids_are_never_cut_at_80_columns(tmp_path):
    name = "shelf-pi5-warehouse-north-aisle-07"
    doc = {"rollout": "x", "status": "completed", "record": "/r", "order": [name],
           "devices": {name: {"target": name, "wave": 1, "result": "updated", "previous": "r-0123456789ab",
                              "new": "r-ba9876543210", "where": "on r-ba9876543210", "seconds": 1.0}}}
    console = Console(record=True, width=80)
    print_table(doc, console)
    text = console.export_text()
    assert name in text and "r-0123456789ab -> r-ba9876543210" in text


def test_keep_tail_keeps_the_first_and_the_last_lines():
    text = "gate failed; journal:\n" + "\n".join(f"line {i}" for i in range(200)) + "\nValueError: the cause"
    kept = keep_tail(text, 120)
    assert kept.startswith("gate failed") and kept.endswith("ValueError: the cause") and len(kept) <= 120


def test_status_at_80_columns_keeps_names_and_release_ids_whole():
    from edgefleet.status import TargetStatus
    from edgefleet.tasks.fleet import _print_status_table

    names = ["shelf-pi5-warehouse-north-07", "shelf-pi5-warehouse-south-12"]
    statuses = [TargetStatus(n, True, release="r-0123456789ab", bundle_id="b0ddle5ab1e5", healthy=True,
                             service="active/enabled", governors={"policy0": "performance"}, throttling="ok (45.0 C)",
                             drift=["runtime.yaml edited on the device (deploy puts it back)"]) for n in names]
    console = Console(record=True, width=80)
    _print_status_table(statuses, console)
    text = console.export_text()
    assert all(n in text for n in names) and text.count("r-0123456789ab") == 2 and "b0ddle5ab1e5" in text


def test_a_drifted_device_is_repaired_not_unchanged(monkeypatch, tmp_path):
    def repaired(on_facts):
        on_facts(facts("r-B"))
        return DeployResult("x", "r-B", "r-B", True, HealthResult(True, ""),
                            plan=["  repair: runtime.yaml edited on the device"])

    def finished(on_facts):  # switched to r-B by a controller killed before the gate: this run commits it
        on_facts(facts("r-B"))
        return DeployResult("x", "r-B", "r-B", True, HealthResult(True, ""), plan=["  gate, then commit r-B"])

    doc, text = run(monkeypatch, tmp_path, {"lab-01": repaired, "lab-02": unchanged, "lab-03": finished}, now={})
    assert doc["devices"]["lab-01"]["result"] == "repaired" and doc["devices"]["lab-03"]["result"] == "updated"
    assert "1 updated, 1 repaired, 1 unchanged;" in text
