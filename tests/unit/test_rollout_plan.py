"""Rollout decisions from tables: counts, waves, the failure limit, what a failed wave rolls back, resume."""

from __future__ import annotations

import json

import pytest

from edgefleet.rollout import RolloutError, latest_record, plan_rollout, resume_targets
from edgefleet.rollout.plan import env_key, limit_exceeded, parse_count, to_roll_back
from edgefleet.rollout.report import RolloutRecord, print_table
from edgefleet.rollout.run import DeviceOutcome

DEVS = [f"d{i:02d}" for i in range(1, 11)]


@pytest.mark.parametrize("spec, total, minimum, expected", [
    ("0", 10, 0, 0),
    ("3", 10, 0, 3),
    (3, 10, 0, 3),
    ("10%", 10, 0, 1),
    ("25%", 10, 0, 3),  # rounds up
    ("1%", 2000, 0, 20),
    ("1%", 10, 1, 1),  # a batch has at least one device
    ("100%", 7, 0, 7),
    (" 2 ", 10, 0, 2),
])
def test_parse_count(spec, total, minimum, expected):
    assert parse_count(spec, total, "batch", minimum) == expected


@pytest.mark.parametrize("spec", ["-1", "x", "150%", "%", "2.5", "-5%"])
def test_parse_count_refuses(spec):
    with pytest.raises(RolloutError, match="--batch"):
        parse_count(spec, 10, "batch")


@pytest.mark.parametrize("names, canary, batch, max_fail, waves, limit", [
    (DEVS[:3], 1, 2, 0, [["d01"], ["d02", "d03"]], 0),
    (DEVS[:3], 0, "100%", 0, [["d01", "d02", "d03"]], 0),
    (DEVS[:3], 5, 1, 0, [["d01", "d02", "d03"]], 0),  # the canary takes everyone
    (DEVS, 1, "25%", "10%", [["d01"], ["d02", "d03", "d04"], ["d05", "d06", "d07"], ["d08", "d09", "d10"]], 1),
    (DEVS, "20%", 4, 2, [["d01", "d02"], ["d03", "d04", "d05", "d06"], ["d07", "d08", "d09", "d10"]], 2),
    (["b", "a", "b"], 1, 1, 0, [["b"], ["a"]], 0),  # order kept, duplicates dropped
])
def test_plan_waves(names, canary, batch, max_fail, waves, limit):
    plan = plan_rollout(names, canary, batch, max_fail, parallel=4)
    assert [list(w) for w in plan.waves] == waves
    assert plan.max_fail == limit
    assert plan.targets == tuple(dict.fromkeys(names))


def test_plan_describe_names_the_canary():
    lines = plan_rollout(DEVS[:3], 1, 2, 0, parallel=4).describe()
    assert lines[0].startswith("rollout: 3 device(s) in 2 wave(s), at most 4 at a time")
    assert lines[1:] == ["  wave 1 (canary, 1): d01", "  wave 2 (batch, 2): d02, d03"]


@pytest.mark.parametrize("kwargs, message", [
    ({"names": []}, "no devices"),
    ({"names": DEVS, "parallel": 0}, "--parallel"),
    ({"names": DEVS, "parallel": "many"}, "--parallel"),
    ({"names": DEVS, "batch": 0}, "--batch 0: need at least 1"),  # not silently a batch of one
    ({"names": DEVS, "batch": "0%"}, "--batch '0%': need at least 1"),
    ({"names": DEVS, "max_fail": "lots"}, "--max-fail"),
    ({"names": DEVS, "canary": "-1"}, "--canary"),
])
def test_plan_refuses(kwargs, message):
    with pytest.raises(RolloutError, match=message):
        plan_rollout(**kwargs)


@pytest.mark.parametrize("failures, max_fail, stop", [(0, 0, False), (1, 0, True), (1, 1, False), (2, 1, True)])
def test_limit(failures, max_fail, stop):
    assert limit_exceeded(failures, max_fail) is stop


@pytest.mark.parametrize("wave, back", [
    ({"a": {"result": "updated", "previous": "r-1", "new": "r-2"},
      "b": {"result": "failed", "previous": "r-1", "new": "r-2"}}, ["a"]),
    ({"a": {"result": "unchanged", "previous": "r-2", "new": "r-2"}}, []),  # was on it before
    ({"a": {"result": "updated", "previous": None, "new": "r-2"}}, []),  # nothing to go back to
    ({"a": {"result": "not reached"}, "c": {"result": "updated", "previous": "r-0", "new": "r-2"},
      "b": {"result": "updated", "previous": "r-1", "new": "r-2"}}, ["b", "c"]),
])
def test_to_roll_back(wave, back):
    assert to_roll_back(wave) == back


@pytest.mark.parametrize("results, expected", [
    ({"a": "updated", "b": "unchanged", "c": "failed"}, ["c"]),
    ({"a": "failed", "b": "not reached", "c": "rolled back"}, ["a", "b", "c"]),
    ({"a": "updated", "b": "rollback failed", "c": "updated"}, ["b"]),
    ({"a": "updated", "b": "updated", "c": "updated"}, []),
])
def test_resume_targets(results, expected):
    record = {"order": ["a", "b", "c"], "devices": {n: {"result": r} for n, r in results.items()}}
    assert resume_targets(record) == expected


def test_resume_refuses_a_record_without_devices():
    with pytest.raises(RolloutError, match="cannot resume"):
        resume_targets({"rollout": "x"})


@pytest.mark.parametrize("a, b, same", [
    (("arm64", "3.11", {}, None, None), ("arm64", "3.11", {}, "", ""), True),
    (("arm64", "3.10", {"onnxruntime": "1.23.2"}, None, None),
     ("arm64", "3.10", {"onnxruntime": "1.23.2"}, None, None), True),
    (("arm64", "3.11", {}, None, None), ("amd64", "3.11", {}, None, None), False),
    (("arm64", "3.10", {}, None, None), ("arm64", "3.10", {"onnxruntime": "1.23.2"}, None, None), False),
])
def test_env_key_groups_devices_that_share_packages(a, b, same):
    assert (env_key(*a) == env_key(*b)) is same


def test_record_starts_unreached_and_resumes_from_the_newest(tmp_path):
    plan = plan_rollout(["a", "b", "c"], 1, 2, 0)
    first = RolloutRecord(tmp_path, plan, tmp_path / "bundle", {"group": "lab"})
    on_disk = json.loads((first.dir / "rollout.json").read_text())
    assert [d["result"] for d in on_disk["devices"].values()] == ["not reached"] * 3
    assert resume_targets(latest_record(tmp_path)) == ["a", "b", "c"]  # a controller killed now resumes all

    first.device(DeviceOutcome("a", 1, "updated", "r-1", "r-2", "r-2", 12.5, None, 3.2))
    # killed now: rollout.json still says "not reached" for a; its journal line says otherwise
    assert json.loads((first.dir / "rollout.json").read_text())["devices"]["a"]["result"] == "not reached"
    assert resume_targets(latest_record(tmp_path)) == ["b", "c"]
    with (first.dir / "devices.jsonl").open("a") as fh:  # a line cut short by the kill is not an outcome
        fh.write('{"target": "b", "result": "upd')
    assert resume_targets(latest_record(tmp_path)) == ["b", "c"]
    doc = first.finish(stopped=True, seconds=4.0, counts={"updated": 1, "not reached": 2, "ok": 1})
    assert doc["status"] == "stopped" and doc["devices"]["a"]["log"].endswith("logs/a.log")
    assert resume_targets(latest_record(tmp_path)) == ["b", "c"]

    second = RolloutRecord(tmp_path, plan_rollout(["b", "c"], 0, 2, 0), tmp_path / "bundle", {})
    assert latest_record(tmp_path)["rollout"] == second.doc["rollout"]


def test_no_record_to_resume(tmp_path):
    with pytest.raises(RolloutError, match="nothing to resume"):
        latest_record(tmp_path / "rollouts")


def test_table_shows_old_and_new_release(tmp_path):
    from rich.console import Console

    record = RolloutRecord(tmp_path, plan_rollout(["a", "b"], 1, 1, 0), tmp_path, {})
    record.device(DeviceOutcome("a", 1, "failed", "r-1", "r-2", "r-1", None, 41.0, 2.0, "golden outputs differ"))
    doc = record.finish(stopped=True, seconds=2.5, counts={"failed": 1, "not reached": 1, "ok": 0})
    console = Console(record=True, width=200)
    print_table(doc, console)
    text = console.export_text()
    assert "r-1 -> r-2" in text and "failed" in text and "41.0" in text and "not reached" in text
    assert "1 failed, 1 not reached;" in text and "stopped" in text
