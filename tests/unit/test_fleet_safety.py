"""The model-level gate's verdict and probe, the stale-lock rule, and which releases a prune keeps."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from edgefleet.deploy.health import Budget, judge, probe_request
from edgefleet.deploy.lock import owner_line, parse_owner, process_start, stale_reason
from edgefleet.deploy.prune import choose_releases, parse_listing, previous_committed, unreferenced
from edgefleet.deploy.remote import source as program_source


def answer(latencies=(10.0,) * 20, states=("ok", "ok"), rss=(100 * 2**20, 120 * 2**20), temps=(50.0,), errors=()):
    infos = [{"status": 200, "throttle": s, "rss_bytes": r, "temps": list(temps)} for s, r in zip(states, rss)]
    return {"latency_ms": list(latencies), "outputs": [], "info": infos, "errors": list(errors)}


LAT = [10.0] * 18 + [30.0, 60.0]  # p95 = 31.5


@pytest.mark.parametrize("probe, budget, ok, failure, note", [
    (answer(LAT), Budget(40, 200), True, None, None),
    (answer(LAT), Budget(25, 200), False, "p95 latency 31.5 ms over the budget of 25 ms", None),
    (answer(LAT), Budget(25, 200, emulated=True), True, None, "emulated: latency reported, not judged"),
    (answer(LAT, states=("ok", "soft")), Budget(25, 200), True, None, "throttled (soft) during the check"),
    (answer(LAT, states=("hard", "ok")), Budget(25, 200), True, None, "throttled (hard)"),
    (answer(LAT), Budget(None, 200), True, None, "no latency budget"),
    (answer(LAT), Budget(40, 110), False, "RSS 120 MiB over the budget of 110 MiB", None),
    (answer(LAT), Budget(25, 110, emulated=True), False, "RSS 120 MiB over", "emulated"),
    (answer(LAT, rss=(0, 0)), Budget(40, 110), False, "did not report its RSS", None),
    (answer(LAT[:10]), Budget(40, 200), False, "only 10 of 20 probe requests answered", None),
    (answer(LAT, errors=["/v1/embed answered 503: too hot"]), Budget(40, 200), False, "503: too hot", None),
])
def test_judge(probe, budget, ok, failure, note):
    v = judge(probe, budget, expected_samples=20)
    assert v.ok is ok, v
    if failure:
        assert any(failure in f for f in v.failures), v.failures
    else:
        assert not v.failures
    if note:
        assert any(n.startswith(note) for n in v.notes) and not v.speed_judged
    assert v.p95_ms == pytest.approx(31.5 if len(probe["latency_ms"]) == 20 else 10.0)
    assert v.temperature_c == 50.0


def test_probe_runs_one_input_per_request_and_reads_info_between_rounds():
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _answer(self, body: dict):
            raw = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self):
            seen.append(("GET", self.path, self.headers.get("Authorization")))
            self._answer({"throttle": {"state": "ok"}, "rss_bytes": 5 * 2**20,
                          "temperatures": {"cpu": {"type": "cpu-thermal", "temp_c": 41.5}}})

        def do_POST(self):
            texts = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["texts"]
            seen.append(("POST", self.path, texts, self.headers.get("Authorization")))
            self._answer({"embeddings": [[float(len(texts[0])), 1.0]]})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        proc = subprocess.run([sys.executable, "-c", program_source("probe")], capture_output=True, text=True, timeout=30,
                              input=probe_request(server.server_address[1], "/v1/embed",
                                                   [{"texts": ["a"]}, {"texts": ["bb"]}], 2, "s3cret"))
    finally:
        server.shutdown()
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [s[1:-1] if s[0] == "POST" else s[1] for s in seen] == [
        "/v1/info", ("/v1/embed", ["a"]), ("/v1/embed", ["bb"]), "/v1/info",
        ("/v1/embed", ["a"]), ("/v1/embed", ["bb"]), "/v1/info"]
    assert {s[-1] for s in seen} == {"Bearer s3cret"}
    assert out["outputs"] == [{"embeddings": [[1.0, 1.0]]}, {"embeddings": [[2.0, 1.0]]}]
    assert len(out["latency_ms"]) == 4 and not out["errors"]
    v = judge(out, Budget(None, 10), expected_samples=4)
    assert v.ok and v.rss_mib == 5 and v.temperature_c == 41.5


ME = {"host": "ctl", "pid": "100", "start": "555", "boot": "b1"}


@pytest.mark.parametrize("owner, age, starts, expected", [
    (owner_line(ME, "t"), 5, {100: "555"}, None),  # alive: the same process
    (owner_line(ME, "t"), 5, {}, "is gone"),  # the pid is not there
    (owner_line(ME, "t"), 5, {100: "999"}, "belongs to another process"),  # pid reused
    (owner_line({**ME, "boot": "b0"}, "t"), 5, {100: "555"}, "rebooted"),
    (owner_line({**ME, "host": "other"}, "t"), 5, {}, None),  # another host: only age can tell
    (owner_line({**ME, "host": "other"}, "t"), 4000, {}, "over the 3600 s limit"),
    ("someone-else", 5, {}, None),  # an unknown owner format
    ("unknown", 3601, {}, "3601 s old"),
])
def test_stale_reason(owner, age, starts, expected):
    reason = stale_reason(owner, age, 3600, ME, start_of=starts.get)
    assert (reason is None) if expected is None else (expected in reason), reason


def test_owner_line_round_trips_and_process_start_sees_this_process():
    import os
    me = {"host": "h", "pid": str(os.getpid()), "start": process_start(os.getpid()), "boot": "x"}
    assert parse_owner(owner_line(me, "2026-01-01T00:00:00+00:00")) == {**me, "time": "2026-01-01T00:00:00+00:00"}
    assert me["start"].isdigit() and process_start(2**22 + 7) is None


def h(release, active, healthy=True, previous=None):
    return {"release": release, "active": active, "healthy": healthy, "previous": previous}


HISTORY = [h("r-1", "r-1"), h("r-2", "r-2"), h("r-3", "r-2", healthy=False), h("r-4", "r-4"), h("r-5", "r-5")]


@pytest.mark.parametrize("history, active, expected", [
    (HISTORY, "r-5", "r-4"),
    (HISTORY[:3], "r-2", "r-1"),  # r-3 failed its gate: never a rollback target
    (HISTORY + [h("r-4", "r-4", previous="r-5")], "r-4", "r-5"),  # after a rollback, back again
    ([h("r-1", "r-1")], "r-1", None),
    ([], None, None),
])
def test_previous_committed(history, active, expected):
    assert previous_committed(history, active) == expected


@pytest.mark.parametrize("releases, active, keep, kept, gone", [
    ({"r-1", "r-2", "r-3", "r-4", "r-5"}, "r-5", 3, ["r-5", "r-4", "r-3"], ["r-1", "r-2"]),
    ({"r-1", "r-2", "r-3", "r-4", "r-5"}, "r-5", 2, ["r-5", "r-4"], ["r-1", "r-2", "r-3"]),
    # rolled back to r-2: the active and the previous committed (r-5) stay even with keep=2
    ({"r-1", "r-2", "r-3", "r-4", "r-5"}, "r-2", 2, ["r-2", "r-5"], ["r-1", "r-3", "r-4"]),
    ({"r-4", "r-5", "r-6.tmp", "r-x"}, "r-5", 5, ["r-5", "r-4", "r-x"], ["r-6.tmp"]),  # a killed build goes
    ({"r-5"}, "r-5", 2, ["r-5"], []),
])
def test_choose_releases(releases, active, keep, kept, gone):
    history = HISTORY + ([h("r-2", "r-2", previous="r-5")] if active == "r-2" else [])
    assert choose_releases(releases, history, active, keep) == (kept, gone)


def test_listing_parse_and_unreferenced_objects():
    m1 = {"files": {"a": "o1", "b": "o2"}, "env": {"sha256": "e1"}, "unit": {"sha256": "u1"}}
    m2 = {"files": {"a": "o1", "b": "o3"}, "env": {"sha256": "e2"}, "unit": {"sha256": "u1"}, "tuning": {"t": "t1"},
          "compiled": {"a.pyc": "c1"}}
    output = (json.dumps({"current": "r-2", "history": HISTORY}) + "\n--releases--\n"
              f"r-1 m1sha {json.dumps(m1)}\nr-2 m2sha {json.dumps(m2)}\nr-3.tmp\n"
              "--envs--\ne1\ne2\ne2.tmp\n--objects--\no1\no2\no3\nu1\nt1\nc1\ne1\ne2\nm1sha\nm2sha\n")
    state, manifests, releases, envs, objects = parse_listing(output)
    assert state["current"] == "r-2" and releases == {"r-1", "r-2", "r-3.tmp"}
    assert manifests["r-2"] == ("m2sha", m2) and manifests["r-3.tmp"] == ("", {})
    # a packages' tarball left in objects/ (a deploy that died before unpacking it) goes too:
    # what a release uses is its unpacked env dir
    assert unreferenced(manifests, ["r-2"], objects, envs) == (["e1", "e2", "m1sha", "o2"], ["e1", "e2.tmp"])
    assert unreferenced(manifests, ["r-1", "r-2"], objects, envs) == (["e1", "e2"], ["e2.tmp"])
    # the host's .pyc files go with the last release that links them
    assert "c1" in unreferenced(manifests, ["r-1"], objects, envs)[0]


def test_listing_command_runs_in_sh(tmp_path):
    from edgefleet.deploy.prune import listing_command
    root = tmp_path / "root"
    (root / "releases" / "r-1").mkdir(parents=True)
    (root / "releases" / "r-1" / "manifest.json").write_text('{\n  "files": {"a": "o1"}\n}\n')
    (root / "releases" / "r-2.tmp").mkdir()
    (root / "envs" / "e1").mkdir(parents=True)
    (root / "objects").mkdir()
    (root / "objects" / "o1").write_text("x")
    (root / "state.json").write_text('{"current": "r-1", "history": []}')
    out = subprocess.run(["sh", "-c", listing_command(str(root))], capture_output=True, text=True, check=True).stdout
    state, manifests, releases, envs, objects = parse_listing(out)
    assert state["current"] == "r-1" and releases == {"r-1", "r-2.tmp"} and envs == {"e1"} and objects == {"o1"}
    assert manifests["r-1"][1] == {"files": {"a": "o1"}} and len(manifests["r-1"][0]) == 64


@pytest.fixture
def local_device(tmp_path):
    """A Device whose commands run here (invoke's local Context), rooted in tmp_path."""
    import dataclasses
    from pathlib import Path

    from invoke import Context

    from edgefleet.deploy import Device
    from edgefleet.inventory import load_inventory

    target = load_inventory(Path(__file__).resolve().parents[2] / "targets").target("pi5-01")
    target = dataclasses.replace(target, settings=target.settings.model_copy(
        update={"root": str(tmp_path / "root"), "sudo": False}))
    return Device(Context(), target)


def test_device_lock_breaks_a_dead_controllers_lock_and_refuses_a_live_one(local_device):
    import os
    import socket

    from edgefleet.deploy import DeployError
    from edgefleet.deploy.lock import controller_identity, device_lock

    root = local_device.root
    dead = subprocess.Popen(["true"])
    dead.wait()
    ghost = owner_line({**controller_identity(), "pid": str(dead.pid), "start": "1"}, "then")
    os.makedirs(f"{root}/.lock")
    with open(f"{root}/.lock/owner", "w") as fh:
        fh.write(ghost + "\n")
    lines = []
    with device_lock(local_device, lines.append, "now") as lock:
        assert open(f"{root}/.lock/owner").read().strip() == lock.owner
        assert "breaking a stale deploy lock" in lines[0] and "is gone" in lines[0]
        # a second controller (here: this very process, alive) is refused and names the holder
        with pytest.raises(DeployError, match=f"another deploy holds .*pid={os.getpid()}"):
            device_lock(local_device, lines.append, "now").__enter__()
    assert not os.path.exists(f"{root}/.lock")

    live = owner_line({"host": socket.gethostname() + "-elsewhere", "pid": "1"}, "now")
    os.makedirs(f"{root}/.lock")
    with open(f"{root}/.lock/owner", "w") as fh:
        fh.write(live + "\n")
    with pytest.raises(DeployError, match="another deploy holds"):
        device_lock(local_device, lines.append, "now").__enter__()
    assert open(f"{root}/.lock/owner").read().strip() == live  # left alone


def test_fault_knob_scripts_parse_and_names_map_to_this_slot(monkeypatch):
    from edgefleet.lab import faults

    monkeypatch.setenv("EDGEFLEET_LAB_SLOT", "4")
    assert faults.container_of("lab-03") == "edgefleet-lab4-03"
    with pytest.raises(faults.FaultError, match="not a lab device"):
        faults.container_of("pi5-01")
    for script in (faults._fill_to("/opt/edgefleet", 0), faults._upload_started("/opt/x/.incoming", 4 << 20)):
        subprocess.run(["sh", "-n", "-c", script], check=True)


def test_final_table_shows_old_new_release_p95_marks_and_temperature():
    from rich.console import Console

    from edgefleet.rollout import print_table

    doc = {"rollout": "x", "status": "completed", "record": "/r", "seconds": 9.5, "order": ["a", "b", "c"],
           "counts": {"updated": 2, "failed": 1, "ok": 2},
           "devices": {
               "a": {"wave": 1, "result": "updated", "previous": "r-1", "new": "r-2", "latency_ms": 12.25,
                     "temperature_c": 51.0, "seconds": 3.0, "gate_notes": []},
               "b": {"wave": 2, "result": "updated", "previous": None, "new": "r-3", "latency_ms": 80.0,
                     "temperature_c": None, "seconds": 4.0, "gate_notes": ["emulated: latency reported, not judged"]},
               "c": {"wave": 2, "result": "failed", "previous": "r-1", "new": "r-4", "latency_ms": 9.0,
                     "temperature_c": 88.0, "seconds": 5.0, "gate_notes": ["throttled (hard) during the check"],
                     "error": "RSS 900 MiB over the budget of 250 MiB; journal:\nlots"}}}
    console = Console(record=True, width=220)
    print_table(doc, console=console)
    text = console.export_text()
    assert "previous -> target" in text and "p95 ms" in text and "°C" in text
    assert "r-1 -> r-2" in text and "12.2" in text and "51.0" in text
    assert "(none) -> r-3" in text and "80.0 (emulated)" in text
    # the reason, then the journal's last line (its tail, where the failing line is)
    assert "9.0 (throttled)" in text and "c: RSS 900 MiB over the budget of 250 MiB | lots" in text
    assert "2 updated, 1 failed;" in text
