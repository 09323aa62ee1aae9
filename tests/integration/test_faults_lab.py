"""Faults during deploys and rollouts on three lab devices (amd64 containers, real sshd and systemd).

One lab for the module: the faults run in order and share the devices where they do not
interfere. After each, the devices' state is read over SSH: `current` is a whole release
(every manifest file there with its sha256), it is the release that last passed its gate, the
service is active and no lock is left behind. The module prints a table of faults and outcomes
(and writes it to build/reports/faults.json).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgefleet.deploy import DeployError, deploy, prepare_release
from edgefleet.deploy.facts import PlanError
from edgefleet.deploy.release import make_release
from edgefleet.device_env import build_target_env
from edgefleet.lab import faults
from edgefleet.model.tiny import tiny_bundle
from edgefleet.render import render_target
from edgefleet.rollout import latest_record, plan_rollout, resume_targets, rollout
from edgefleet.rollout.run import run_rollout

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
NAMES = ["lab-01", "lab-02", "lab-03"]
ROWS: list[dict] = []


@pytest.fixture(scope="module")
def fleet(three_lab_devices, request):
    yield {t.name: t for t in three_lab_devices}
    _report(request)


def _report(request) -> None:
    out = REPO / "build" / "reports" / "faults.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(ROWS, indent=2) + "\n")
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if tr is None or not ROWS:
        return
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        _write_table(tr, out)


def _write_table(tr, out: Path) -> None:
    tr.write_line("")
    tr.write_line(f"{'fault':40} {'device':8} {'outcome':72} {'after (over SSH)':50} {'s':>5}")
    for r in ROWS:
        tr.write_line(f"{r['fault'][:40]:40} {r['device']:8} {r['outcome'][:72]:72} {r['after'][:50]:50} "
                      f"{r['seconds']:5.1f}")
    tr.write_line(f"{len(ROWS)} faults, {sum(r['seconds'] for r in ROWS):.0f} s; {out}")


def row(fault: str, device: str, outcome: str, after: str, t0: float) -> None:
    ROWS.append({"fault": fault, "device": device, "outcome": outcome, "after": after,
                 "seconds": round(time.monotonic() - t0, 1)})


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """A build dir of its own (rollout records); the packages cache is shared."""
    b = tmp_path_factory.mktemp("build")
    (REPO / "build" / "device-envs").mkdir(parents=True, exist_ok=True)
    (b / "device-envs").symlink_to(REPO / "build" / "device-envs")
    return b


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """v1 and variants of it: each a healthy bundle and another release (bundle.json differs)."""
    import shutil
    root = tmp_path_factory.mktemp("bundles")
    v1 = tiny_bundle(root / "v1")["bundle_dir"]
    out = {"v1": v1}
    for name in ("v2", "v3", "v4", "v5", "v6", "v7", "v8"):
        shutil.copytree(v1, root / name)
        meta = json.loads((root / name / "bundle.json").read_text())
        meta["name"] = f"tiny-{name}"
        (root / name / "bundle.json").write_text(json.dumps(meta))
        out[name] = root / name
    return out


def settled(target, release: str | None = None, incoming_ok: bool = False) -> faults.DeviceState:
    """Assert nothing is half-done on the device: a whole, committed release runs; no lock is left."""
    st = faults.device_state(target)
    assert st.complete and not st.problems, st
    assert st.current == st.committed, f"{target.name} runs a release that never passed its gate: {st}"
    assert st.service == "active" and st.lock is None, st
    assert incoming_ok or not st.incoming, st
    if release:
        assert st.current == release, st
    return st


def brief(st: faults.DeviceState) -> str:
    return f"{st.current} committed, whole, {st.service}, no lock"


def run(fleet, build, names, bundle, **kw) -> dict:
    targets = [fleet[n] for n in NAMES]
    return rollout(targets, plan_rollout(names, **kw), bundle, build, progress=False, log=lambda _: None)


def results(doc: dict) -> dict[str, str]:
    return {n: d["result"] for n, d in doc["devices"].items()}


def invoke(build, fleet, *args: str) -> subprocess.Popen:
    env = {**os.environ, "INVOKE_EDGEFLEET_TARGETS_DIR": str(fleet["lab-01"].source.parent),
           "INVOKE_EDGEFLEET_BUILD_DIR": str(build)}
    return subprocess.Popen([str(Path(sys.executable).parent / "invoke"), *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.fixture(scope="module")
def v1(fleet, build, bundles):
    """Every device on v1 (a fresh device unpacks its 48 MB package env: the slowest step here)."""
    first = run(fleet, build, NAMES, bundles["v1"], canary=0, batch="100%")
    assert set(results(first).values()) == {"updated"}, first
    return {n: d["new"] for n, d in first["devices"].items()}


@pytest.mark.timeout(900)
def test_device_down_before_the_rollout(fleet, build, bundles, v1):
    t0 = time.monotonic()
    faults.sshd_stop("lab-03")
    try:
        doc = run(fleet, build, NAMES, bundles["v2"], canary=1, batch=2, max_fail=1)
    finally:
        faults.sshd_start("lab-03")
    assert results(doc) == {"lab-01": "updated", "lab-02": "updated", "lab-03": "failed"}, doc
    assert "cannot reach" in doc["devices"]["lab-03"]["error"]
    # the row says where it is: its release from the last rollout, not "(none) ->"; the rollout is titled failed
    down = doc["devices"]["lab-03"]
    assert down["previous"] == v1["lab-03"] and down["where"] == f"unreachable: last known {v1['lab-03']}", down
    assert doc["status"] == "failed"
    settled(fleet["lab-03"], v1["lab-03"])
    resumed = run(fleet, build, resume_targets(latest_record(build / "rollouts")), bundles["v2"], canary=0)
    assert results(resumed) == {"lab-03": "updated"}, resumed
    for n in NAMES:
        st = settled(fleet[n], doc["devices"][n]["new"])
    row("device down before the rollout", "lab-03", "failed (cannot reach), others updated; resume: updated",
        brief(st), t0)


@pytest.mark.timeout(600)
def test_sshd_killed_mid_upload(fleet, build, bundles, run_on, v1, monkeypatch):
    """A fresh small disk makes lab-01 take the whole package env; sshd dies while it uploads.

    Over SFTP (29 MB in ~0.4 s): the watcher that kills sshd polls for "the upload passed 1 MiB",
    and the OpenSSH stream can finish within one poll on this machine (a race the test lost once
    in four runs); the stream's own failure naming is unit-tested (tests/unit/test_stream_upload.py).
    """
    monkeypatch.setenv("EDGEFLEET_SSH_TRANSFER", "paramiko")
    t, root = fleet["lab-01"], fleet["lab-01"].settings.root
    before = settled(t)
    t0 = time.monotonic()
    faults.small_disk("lab-01", root, 700)
    try:
        faults.kill_sshd_during_upload("lab-01", faults.incoming_dir(root), min_bytes=1 << 20)
        with pytest.raises((DeployError, PlanError)) as failed:
            deploy(t, bundles["v2"], build, log=lambda _: None)
        assert "upload of site.tar.zst failed" in str(failed.value)  # lab devices have zstd
        faults.settle("lab-01")  # sshd is back (the watcher restarts it, as systemd would)
        st = faults.device_state(t)
        assert st.current is None and st.releases == () and st.lock is None, st  # nothing activated, lock freed
        again = deploy(t, bundles["v2"], build, log=lambda _: None)  # re-run: the leftovers are cleared
        assert again.ok and again.changed
        st = settled(t, again.release_id)
    finally:
        faults.restore_disk("lab-01", root)
    run_on(t, "systemctl restart edgefleet-runtime.service")  # run from the real disk again
    assert deploy(t, bundles["v2"], build, log=lambda _: None).ok
    settled(t, before.current)
    row("sshd killed mid-upload", "lab-01", f"{type(failed.value).__name__}: upload failed; re-run: updated",
        brief(st), t0)


@pytest.mark.timeout(600)
def test_disk_full(fleet, build, bundles, v1):
    t, root = fleet["lab-02"], fleet["lab-02"].settings.root
    before = settled(t)
    t0 = time.monotonic()
    faults.small_disk("lab-02", root, 600)
    try:
        faults.fill_disk("lab-02", root, leave_mb=2)  # full before the deploy: the preflight refuses
        with pytest.raises(PlanError, match="MB free under"):
            deploy(t, bundles["v2"], build, log=lambda _: None)
        faults.free_disk("lab-02", root)  # room for the preflight ...
        # ... but the objects live on a 4 MiB filesystem of their own: the small files fit, the
        # packages (29 MB) do not, so the disk fills mid-upload whatever the upload's speed (a
        # watcher polling for "the upload began" lost that race to a 0.2 s OpenSSH upload in CI)
        objects = f"{root}/objects"
        faults.small_disk("lab-02", objects, 4)
        try:
            with pytest.raises(DeployError, match=r"upload of site\.tar\.zst failed") as enospc:
                deploy(t, bundles["v2"], build, log=lambda _: None)
            st = faults.device_state(t)  # read before the small filesystem goes
            assert st.current is None and st.releases == () and st.lock is None and not st.incoming, st
        finally:
            faults.restore_disk("lab-02", objects)
    finally:
        faults.free_disk("lab-02", root)
        faults.restore_disk("lab-02", root)
    st = settled(t, before.current)
    row("disk full (preflight; ENOSPC mid-upload)", "lab-02", "preflight refused; upload failed on a full disk, "
        "partial file removed", brief(st), t0)
    assert "site.tar.zst" in str(enospc.value) and "No space left" in str(enospc.value)


@pytest.mark.timeout(600)
def test_corrupted_upload_is_never_activated(fleet, build, bundles, tmp_path, v1):
    t = fleet["lab-03"]
    before = settled(t)
    t0 = time.monotonic()
    release = prepare_release(t, bundles["v3"], build)
    meta = bundles["v3"] / "bundle.json"  # new to the device (the model's bytes are there already)
    text = meta.read_text()
    meta.write_text(text.replace('"tiny-v3"', '"tiny-v9"'))  # changed after its sha256 was taken
    assert meta.read_text() != text and release.release_id not in faults.device_state(t).releases
    with pytest.raises(DeployError, match="failed sha256 verification; nothing was activated"):
        deploy(t, bundles["v3"], build, log=lambda _: None, release=release)
    st = settled(t, before.current)
    assert release.release_id not in st.releases
    row("corrupted upload (sha256 mismatch)", "lab-03", "refused before activation", brief(st), t0)


@pytest.mark.timeout(600)
def test_release_failing_the_model_gate_rolls_back(fleet, build, bundles, v1):
    """lab-02 judged as a real board (not emulated) with a p95 budget no model meets."""
    t = fleet["lab-02"]
    strict = dataclasses.replace(t, settings=t.settings.model_copy(update={
        "emulated": False, "health": t.settings.health.model_copy(update={"latency_budget_ms": 0.01})}))
    before = settled(t)
    t0 = time.monotonic()
    result = deploy(strict, bundles["v4"], build, log=lambda _: None)
    assert not result.ok and result.rolled_back and result.previous == before.current
    assert "p95 latency" in result.health.reason and "over the budget of 0.01 ms" in result.health.reason
    assert result.health.min_cosine > 0.99  # the goldens passed: the model-level check failed it
    st = settled(t, before.current)
    row("release fails the health gate (p95)", "lab-02", "rolled back: " + result.health.reason[:40], brief(st), t0)


@pytest.mark.timeout(600)
def test_crash_looping_service_rolls_back(fleet, build, bundles, v1):
    """A release whose runtime.yaml the runtime refuses: systemd restarts it again and again."""
    t = fleet["lab-03"]
    before = settled(t)
    t0 = time.monotonic()
    rendered = [dataclasses.replace(f, text=f.text + "log_level: shout\n") if f.name == "runtime.yaml" else f
                for f in render_target(t)]
    env = build_target_env(t, REPO / "payload" / "requirements.txt", build / "device-envs")
    release = make_release(t.name, bundles["v5"], REPO / "payload", rendered, env)
    result = deploy(t, bundles["v5"], build, log=lambda _: None, release=release)
    assert not result.ok and result.rolled_back
    assert "crash-looping" in result.health.reason, result.health.reason
    assert time.monotonic() - t0 < 120  # judged by its restarts, not by the 300 s ready timeout
    st = settled(t, before.current)
    row("service crash-loops", "lab-03", "rolled back: crash-looping", brief(st), t0)


@pytest.mark.timeout(600)
def test_two_rollouts_racing_for_one_device(fleet, build, bundles, tmp_path, v1):
    """A real `invoke rollout` holds lab-01; a second rollout (this process, its release ready) tries it meanwhile."""
    t = fleet["lab-01"]
    t0 = time.monotonic()
    ready = {"lab-01": prepare_release(t, bundles["v6"], build)}
    a = invoke(build, fleet, "rollout", "--targets", "lab-01", "--bundle", str(bundles["v6"]), "--canary", "0",
               "--json")
    try:
        deadline = time.monotonic() + 120
        while faults.device_state(t).lock is None:
            assert a.poll() is None, a.communicate()
            assert time.monotonic() < deadline, "the first rollout never took the lock"
            time.sleep(0.1)
        [second], stopped = run_rollout([t], plan_rollout(["lab-01"], canary=0), ready, bundles["v6"], build,
                                        tmp_path / "logs")
        out, err = a.communicate(timeout=240)
    finally:
        if a.poll() is None:
            a.kill()
    assert a.returncode == 0, err
    first = json.loads(out)
    assert results(first) == {"lab-01": "updated"} and second.result == "failed" and stopped, second
    assert "another deploy holds" in second.error and f"pid={a.pid}" in second.error  # a live owner: never broken
    st = settled(t, first["devices"]["lab-01"]["new"])
    assert st.current == ready["lab-01"].release_id
    row("two rollouts racing for one device", "lab-01", "one updated, the other refused (live lock)", brief(st), t0)


@pytest.mark.timeout(600)
def test_controller_killed_mid_wave_then_resumed(fleet, build, bundles, v1):
    t0 = time.monotonic()
    earlier = set((build / "rollouts").glob("*"))
    a = invoke(build, fleet, "rollout", "--targets", ",".join(NAMES), "--bundle", str(bundles["v7"]), "--canary",
               "0", "--batch", "100%", "--parallel", "3", "--json")
    deadline = time.monotonic() + 180
    try:
        while True:  # kill once a device has switched to the new release, before its gate ends
            logs = "".join(p.read_text() for d in set((build / "rollouts").glob("*")) - earlier
                           for p in d.glob("logs/*.log"))
            if re.search(r"\d   current -> releases/", logs) and a.poll() is None:  # done, not planned
                break
            assert a.poll() is None, a.communicate()
            assert time.monotonic() < deadline, "the rollout never activated a release"
            time.sleep(0.05)
    finally:
        os.killpg(a.pid, signal.SIGKILL)
        a.wait(timeout=30)
    record = latest_record(build / "rollouts")
    assert record["status"] == "running"  # it never finished
    held = []
    for n in NAMES:  # whatever the moment: `current` is a whole release, an old lock marks the dead controller
        st = faults.device_state(fleet[n])
        # a restart the dead controller asked for goes on without it (deactivating, then activating)
        assert st.complete and st.service in ("active", "activating", "deactivating"), st
        held += [n] if st.lock else []
        assert st.lock is None or f"pid={a.pid}" in st.lock, st
    assert held, "the controller died holding no lock: killed too late to test anything"
    resumed = invoke(build, fleet, "rollout", "--resume", "--json")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    doc = json.loads(out)
    assert set(results(doc).values()) == {"updated"} and set(doc["order"]) >= set(held), doc
    logs = "".join(Path(d["log"]).read_text() for d in doc["devices"].values())
    assert logs.count("breaking a stale deploy lock") == len(held) and "is gone" in logs
    for n in NAMES:
        st = settled(fleet[n], doc["devices"].get(n, {}).get("new") or record["devices"][n].get("new"))
    row("controller SIGKILLed mid-wave, resumed", ",".join(held), f"stale lock broken on {len(held)}; all updated",
        brief(st), t0)


@pytest.mark.timeout(600)
def test_rollback_group_and_kept_releases(fleet, build, v1):
    t0 = time.monotonic()
    before = {n: settled(fleet[n]) for n in NAMES}
    proc = invoke(build, fleet, "rollback", "--group", "lab", "--json")
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    doc = json.loads(out)["targets"]
    for n in NAMES:
        d = doc[n]
        assert d["ok"] and d["from"] == before[n].current and d["to"] != d["from"], d
        assert d["health"]["min_cosine"] > 0.99 and "emulated: latency reported, not judged" in d["health"]["notes"]
        st = settled(fleet[n], d["to"])
        assert len(st.releases) <= fleet[n].settings.deploy.keep_releases, st  # pruned after each commit
        assert before[n].current in st.releases  # the one we left stays: rollback can come back
    row("rollback --group lab", "all", "each to its previous committed release", brief(st), t0)
