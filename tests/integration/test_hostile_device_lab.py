"""A broken or hostile device cannot hang, crash or mislead the controller (issue 19, items 2-4).

One amd64 lab device for the module; each test leaves it on a committed release with no lock
and no shim on its PATH. The faults are the red-team pass's: a `df` that never returns, a
`systemctl show` that never returns once the release has switched, 512 MB of output, `[]` and
a truncated state.json, a full disk under the deploy lock.
"""

from __future__ import annotations

import json
import resource
import shutil
import time
from pathlib import Path

import pytest

from edgefleet.deploy import DeployError, deploy
from edgefleet.deploy.device import Device
from edgefleet.deploy.facts import PlanError
from edgefleet.deploy.lock import device_lock
from edgefleet.deploy.rollback import revert, rollback
from edgefleet.lab import faults
from edgefleet.model.tiny import tiny_bundle
from edgefleet.transport import connect, http_json_over_ssh
from edgefleet.transport.base import OUTPUT_CAP

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
SHIM = "/usr/local/bin"


def _with(target, **deploy_settings):
    """Return `target` with deploy settings changed (as its inventory would say them)."""
    s = target.settings
    settings = s.model_copy(update={"deploy": s.deploy.model_copy(update=deploy_settings)})
    return target.__class__(**{**target.__dict__, "settings": settings})


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    v1 = tiny_bundle(root / "v1")["bundle_dir"]
    out = {"v1": v1}
    for name in ("v2", "v3"):
        shutil.copytree(v1, root / name)
        meta = json.loads((root / name / "bundle.json").read_text())
        (root / name / "bundle.json").write_text(json.dumps({**meta, "name": f"tiny-{name}"}))
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def device(one_lab_device, bundles):
    """lab-01 with v1 deployed and committed."""
    assert deploy(one_lab_device, bundles["v1"], REPO / "build", log=lambda _: None).ok
    return one_lab_device


def _state(run_on, target) -> dict:
    return json.loads(run_on(target, f"cat {target.settings.root}/state.json"))


@pytest.mark.timeout(600)
def test_state_json_of_the_wrong_shape_is_recovered_and_prune_waits(device, bundles, run_on):
    t, root = _with(device, keep_releases=2), device.settings.root
    first = deploy(t, bundles["v2"], REPO / "build", log=lambda _: None)
    assert first.ok
    # valid JSON of the wrong shape: the deploy passes its gate, records, says what it did
    run_on(t, f"echo '[]' > {root}/state.json")
    lines: list[str] = []
    third = deploy(t, bundles["v3"], REPO / "build", log=lines.append)
    said = "\n".join(lines)
    assert third.ok and "state.json is unreadable" in said and "recovered from state.json.bak" in said, said
    assert third.pruned == [] and "prune skipped" in said, said
    history = [e["release"] for e in _state(run_on, t)["history"]]
    assert history[-2:] == [first.release_id, third.release_id], history  # the backup had v2's entry
    # truncated: kept aside, recovered again; v2 (the last committed before v3) is never pruned
    run_on(t, f"head -c 40 {root}/state.json > {root}/s && mv {root}/s {root}/state.json")
    lines = []
    again = deploy(t, bundles["v2"], REPO / "build", log=lines.append)
    said = "\n".join(lines)
    assert again.ok and "state.json is unreadable (not JSON" in said and again.pruned == [], said
    releases = set(run_on(t, f"ls {root}/releases").split())
    assert {first.release_id, third.release_id} <= releases, releases
    assert int(run_on(t, f"ls {root} | grep -c '^state.json.broken-'")) == 2
    # and rollback still has somewhere to go
    back = rollback(t, log=lambda _: None)
    assert back.ok and back.active == third.release_id, back


@pytest.mark.timeout(300)
def test_a_hanging_df_fails_the_deploy_within_its_timeout(device, bundles, run_on):
    run_on(device, f"printf '#!/bin/sh\\nexec sleep 600\\n' > {SHIM}/df && chmod 0755 {SHIM}/df")
    try:
        t0 = time.monotonic()
        with pytest.raises(DeployError, match=r"lab-01: gather facts timed out after 5 s"):
            deploy(_with(device, command_timeout_s=5), bundles["v1"], REPO / "build", log=lambda _: None)
        assert time.monotonic() - t0 < 60  # the release is prepared first; the facts wait 5 s
    finally:
        run_on(device, f"rm -f {SHIM}/df; pkill -x sleep; true")


@pytest.mark.timeout(300)
def test_a_step_timing_out_after_the_switch_rolls_back(device, bundles, run_on):
    before = faults.device_state(device)
    shim = ('#!/bin/sh\\n[ "$1" = show ] && exec sleep 600\\nexec /usr/bin/systemctl "$@"\\n')
    run_on(device, f"printf '{shim}' > {SHIM}/systemctl && chmod 0755 {SHIM}/systemctl")
    try:
        lines: list[str] = []
        result = deploy(_with(device, command_timeout_s=20), bundles["v1"], REPO / "build", log=lines.append)
    finally:
        run_on(device, f"rm -f {SHIM}/systemctl; pkill -x sleep; true")
    said = "\n".join(lines)
    assert not result.ok and result.rolled_back, said
    assert "query the service timed out after 20 s" in result.health.reason, result.health.reason
    after = faults.device_state(device)
    assert after.current == before.current == after.committed and after.lock is None, after


@pytest.mark.timeout(300)
def test_output_flood_keeps_the_controller_small(device):
    conn = connect(device)
    try:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        res = Device(conn, device).run("head -c 512M /dev/zero; echo the-last-line", "flood", privileged=False)
        grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    finally:
        conn.close()
    assert res.stdout.rstrip().endswith("the-last-line") and len(res.stdout) <= OUTPUT_CAP + 200
    assert grown_mib < 150, f"controller RSS grew {grown_mib:.0f} MiB"


@pytest.mark.timeout(300)
def test_full_disk_never_leaves_an_ownerless_lock(device, run_on):
    root = device.settings.root
    faults.small_disk("lab-01", root, 1)
    try:
        faults.fill_disk("lab-01", root, leave_mb=0)
        conn = connect(device)
        try:
            dev = Device(conn, device)
            with pytest.raises(DeployError, match="take the deploy lock failed"):
                with device_lock(dev, log=lambda _: None, when="now"):
                    pass
            assert ".lock" not in run_on(device, f"ls -A {root}").split()  # nothing called a lock, no owner-less one
            # and a rollback refuses before it writes anything, naming the device and the space
            with pytest.raises(PlanError, match=r"lab-01: .* too little to roll back"):
                revert(device, None, "test")
            faults.free_disk("lab-01", root)
            with device_lock(dev, log=lambda _: None, when="now"):  # space again: the lock is free
                assert "time=now" in run_on(device, f"cat {root}/.lock/owner")
        finally:
            conn.close()
    finally:
        faults.free_disk("lab-01", root)
        faults.restore_disk("lab-01", root)
    assert faults.device_state(device).lock is None


@pytest.mark.timeout(600)
def test_the_api_token_is_readable_by_root_only(device, bundles, run_on):
    token = "lab-token-7f3a9c1e5b2d4f60"
    s = device.settings
    with_token = device.__class__(**{**device.__dict__, "settings": s.model_copy(
        update={"runtime": s.runtime.model_copy(update={"token": token})})})
    root = s.root
    result = deploy(with_token, bundles["v1"], REPO / "build", log=lambda _: None)
    assert result.ok, result.health  # the gate's probe sends the token: the service has it
    conn = connect(device)
    try:
        status, _ = http_json_over_ssh(conn, s.runtime.port, "/v1/info", timeout=10)
    finally:
        conn.close()
    assert status == 401  # and demands it
    holders = run_on(device, f"grep -rl {token} {root} /etc/systemd/system 2>/dev/null; true")
    assert holders == f"{root}/secrets/runtime.env"
    assert run_on(device, f"stat -c '%a %U' {root}/secrets {root}/secrets/runtime.env").split("\n") == [
        "700 root", "600 root"]
    # without a token again: the file goes with the next (re)start
    assert deploy(device, bundles["v2"], REPO / "build", log=lambda _: None).ok
    assert run_on(device, f"ls -A {root}/secrets") == ""
