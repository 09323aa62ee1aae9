"""Device data is untrusted: every wrong shape is a per-device failure with a message, never a traceback.

The shapes are the red-team pass's (issue 19): valid JSON of the wrong type, strings where
numbers go, truncated files. state.json is exercised on a device root in a temporary
directory, through the same commands a deploy sends (run by sh on this host).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from edgefleet.deploy.device import Device
from edgefleet.deploy.facts import PlanError, facts_command, parse_facts
from edgefleet.deploy.health import Budget, NotReady, judge, wait_ready
from edgefleet.deploy.prune import prune
from edgefleet.deploy.record import record_state
from edgefleet.inventory import load_inventory

REPO = Path(__file__).resolve().parents[2]


class LocalShell:
    """A connection whose `run` is sh on this host (what the device's login shell would do)."""

    def run(self, command, in_stream=None, **_):
        text = in_stream.read() if in_stream not in (None, False) else None
        proc = subprocess.run(["sh", "-c", command], input=text, capture_output=True, text=True)
        return type("Result", (), {"exited": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr})()


@pytest.fixture
def dev(tmp_path):
    target = load_inventory(REPO / "targets").target("pi5-01")
    settings = target.settings.model_copy(update={"sudo": False, "root": str(tmp_path / "root")})
    (tmp_path / "root").mkdir()
    return Device(LocalShell(), target.__class__(**{**target.__dict__, "settings": settings}))


def _facts_output(**override: str) -> str:
    values = {"arch": "aarch64", "python": "3.11", "systemd": "yes", "free_kb": "1000", **override}
    return "\n".join(f"{k}={v}" for k, v in values.items()) + "\n--objects--\n"


@pytest.mark.parametrize("key, value", [("free_kb", "abc"), ("free_kb", "-5"), ("free_kb", "1e9"),
                                        ("lock_age", "x1")])
def test_facts_of_the_wrong_shape_are_a_plan_error(key, value):
    if key == "lock_age":  # an unreadable age only means "age unknown"
        assert parse_facts(_facts_output(lock="someone", lock_age=value)).lock_age_s is None
        return
    with pytest.raises(PlanError, match=key):
        parse_facts(_facts_output(**{key: value}))


def test_facts_script_is_still_one_sh_program(dev):
    assert subprocess.run(["sh", "-n", "-c", facts_command(dev.target)]).returncode == 0


def _ready_call(body):
    return lambda path, payload=None, timeout=10: (503, body)


@pytest.mark.parametrize("body", [[1], "ready", 7, None, {"state": ["failed"]}])
def test_readyz_of_the_wrong_shape_is_not_ready(body):
    with pytest.raises(NotReady):
        wait_ready(_ready_call(body), 0.3, poll_s=0.05)


GOOD_INFO = {"rss_bytes": 100 * 2**20, "temps": [40.0], "throttle": "ok"}


@pytest.mark.parametrize("answer, says", [
    ({"latency_ms": ["fast", 2.0], "info": [GOOD_INFO], "outputs": []}, "latency_ms"),
    ({"latency_ms": [1.0, 2.0], "info": [{**GOOD_INFO, "temps": [40.0, "hot", None]}], "outputs": []}, "temps"),
    ({"latency_ms": [1.0, 2.0], "info": [{**GOOD_INFO, "rss_bytes": "big"}], "outputs": []}, "rss_bytes"),
    ({"latency_ms": {"a": 1}, "info": [GOOD_INFO], "outputs": []}, "latency_ms"),
    ({"latency_ms": [1.0, 2.0], "info": "none", "outputs": []}, "info"),
    ({"latency_ms": [1.0, 2.0], "info": [GOOD_INFO], "outputs": [], "errors": "boom"}, "errors"),
    ([1, 2], "probe"),
])
def test_a_probe_answer_of_the_wrong_shape_fails_the_gate(answer, says):
    verdict = judge(answer, Budget(None, None), 2)
    assert not verdict.ok and says in "; ".join(verdict.failures)


def test_state_json_holding_a_list_is_recovered_from_its_backup(dev, tmp_path):
    record_state(dev, {"release": "r-1", "active": "r-1", "healthy": True})
    record_state(dev, {"release": "r-2", "active": "r-2", "healthy": True})
    (tmp_path / "root" / "state.json").write_text("[]\n")
    logged: list[str] = []
    sound = record_state(dev, {"release": "r-3", "active": "r-3", "healthy": True}, log=logged.append)
    state = json.loads((tmp_path / "root" / "state.json").read_text())
    assert [e["release"] for e in state["history"]] == ["r-1", "r-2", "r-3"]
    assert not sound and any("recovered from state.json.bak" in line for line in logged)


def test_a_truncated_state_json_is_kept_aside_never_replaced_silently(dev, tmp_path):
    root = tmp_path / "root"
    (root / "state.json").write_text('{"current": "r-1", "history": [{"release": "r-1", "act')
    logged: list[str] = []
    sound = record_state(dev, {"release": "r-2", "active": "r-2", "healthy": True}, log=logged.append)
    assert not sound and any("unreadable" in line for line in logged)
    kept = [p for p in root.iterdir() if p.name.startswith("state.json.broken")]
    assert kept and kept[0].read_text().startswith('{"current": "r-1"')


def test_prune_never_ranks_releases_by_name_when_history_is_unreadable(dev, tmp_path):
    root = tmp_path / "root"
    for rid in ("r-a", "r-b", "r-c", "r-z", "r-new"):
        (root / "releases" / rid).mkdir(parents=True)
        (root / "releases" / rid / "manifest.json").write_text("{}")
    (root / "state.json").write_text('{"current": "r-a", "hist')
    logged: list[str] = []
    assert prune(dev, "r-new", logged.append) == []
    assert sorted(p.name for p in (root / "releases").iterdir()) == ["r-a", "r-b", "r-c", "r-new", "r-z"]
    assert any("state.json" in line for line in logged)
