"""Deploy through real sshd and systemd to a lab device (amd64 container, native speed).

The lab is shared machine state (container names, ports): this module refuses to run over a
lab that is already up, and takes down the one it starts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgefleet.deploy import Device, deploy, service_call
from edgefleet.model.tiny import tiny_bundle
from edgefleet.transport import connect

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory.mktemp("tiny"))["bundle_dir"]


@pytest.fixture(scope="module")
def lab_target(one_lab_device):
    return one_lab_device


def test_deploy_then_nothing_changed(run_on, lab_target, bundle, tmp_path):
    lines = []
    first = deploy(lab_target, bundle, REPO / "build", log=lines.append)
    assert first.ok and first.changed, "\n".join(lines)
    assert first.health.min_cosine >= 0.999
    assert any("upload" in line for line in lines)

    root = lab_target.settings.root
    assert run_on(lab_target, f"readlink {root}/current") == f"releases/{first.release_id}"
    assert run_on(lab_target, "systemctl is-active edgefleet-runtime.service") == "active"
    assert run_on(lab_target, "systemctl is-active edgefleet-tuning.service") == "active"
    # the service runs unprivileged, as the edgefleet user
    pid = run_on(lab_target, "systemctl show -p MainPID --value edgefleet-runtime.service")
    assert run_on(lab_target, f"ps -o user= -p {pid}") == "edgefleet"
    # ...with CAP_SYS_NICE only (lab-01 is a pi5: nice -5), and the unit's sandbox applied: / is
    # read-only in its namespace
    assert lab_target.board.name == "pi5" and lab_target.settings.runtime.nice == -5
    assert run_on(lab_target, f"grep CapBnd /proc/{pid}/status").split() == ["CapBnd:", f"{1 << 23:016x}"]
    root_mount = run_on(lab_target, f"awk '$5 == \"/\" {{print $6}}' /proc/{pid}/mountinfo")
    assert root_mount.split(",")[0] == "ro"
    state = json.loads(run_on(lab_target, f"cat {root}/state.json"))
    assert state["current"] == first.release_id and state["history"][-1]["healthy"] is True

    # the running service answers through an SSH tunnel, like the demo does
    conn = connect(lab_target)
    try:
        status, body = service_call(Device(conn, lab_target))("/v1/embed", {"texts": ["hello device"]})
    finally:
        conn.close()
    assert status == 200 and len(body["embeddings"]) == 1

    lines.clear()
    second = deploy(lab_target, bundle, REPO / "build", log=lines.append)
    assert not second.changed and second.ok
    assert second.release_id == first.release_id
    assert "nothing to do" in lines[0]


def test_unhealthy_release_rolls_back(run_on, lab_target, bundle, tmp_path):
    good = deploy(lab_target, bundle, REPO / "build", log=lambda _: None)
    assert good.ok
    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    meta = json.loads((bad / "bundle.json").read_text())
    # expectations no model can meet: every golden vector flipped
    meta["golden"]["embeddings"] = [[-v for v in row] for row in meta["golden"]["embeddings"]]
    (bad / "bundle.json").write_text(json.dumps(meta))
    lines = []
    result = deploy(lab_target, bad, REPO / "build", log=lines.append)
    assert not result.ok and result.rolled_back, "\n".join(lines)
    root = lab_target.settings.root
    assert run_on(lab_target, f"readlink {root}/current") == f"releases/{good.release_id}"
    state = json.loads(run_on(lab_target, f"cat {root}/state.json"))
    assert state["history"][-1]["healthy"] is False and state["current"] == good.release_id


def test_status_reports_drift_and_deploy_repairs_it(run_on, lab_target, bundle):
    from edgefleet.inspect import collect_status, device_diff

    assert deploy(lab_target, bundle, REPO / "build", log=lambda _: None).ok
    clean = collect_status(lab_target)
    assert clean.reachable and clean.healthy and clean.drift == [], clean
    assert clean.governors == {"policy0": "performance"} and clean.throttling == "ok (45.0 C)"  # the fake sysfs
    assert device_diff(lab_target) == []

    unit = "/etc/systemd/system/edgefleet-runtime.service"
    run_on(lab_target, f"sed -i 's/^RestartSec=.*/RestartSec=30/' {unit} && systemctl daemon-reload "
                          "&& systemctl disable --now edgefleet-runtime.service")
    drifted = collect_status(lab_target)
    assert drifted.healthy is False
    assert f"{unit} differs from the rendered file (render --target lab-01 --diff)" in drifted.drift
    assert "edgefleet-runtime.service is disabled, not enabled" in drifted.drift
    assert "edgefleet-runtime.service is inactive, not active" in drifted.drift
    [diff] = device_diff(lab_target)
    assert "-RestartSec=30" in diff and f"--- device:{unit}" in diff

    repaired = deploy(lab_target, bundle, REPO / "build", log=lambda _: None)
    assert repaired.ok and repaired.changed
    assert collect_status(lab_target).drift == []


ORIN_PROVIDERS = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_orin_providers_on_cpu_only_onnxruntime_warn_and_fail_when_required(run_on, lab_target, bundle):
    """An Orin's provider list on a device whose onnxruntime is PyPI's (CPU only): the gate passes
    with a fallback warning that status shows too; with `require_providers` it fails and rolls back."""
    from dataclasses import replace

    from edgefleet.inspect import collect_status

    def asking(**settings):
        return replace(lab_target, settings=lab_target.settings.model_copy(update=settings))

    orin = asking(providers=ORIN_PROVIDERS)
    fallback = deploy(orin, bundle, REPO / "build", log=lambda _: None)
    assert fallback.ok and fallback.changed, fallback.health and fallback.health.reason
    [warning] = [n for n in fallback.health.notes if n.startswith("provider fallback")]
    assert "TensorrtExecutionProvider, CUDAExecutionProvider not offered" in warning
    assert warning in fallback.health.summary()
    assert collect_status(orin).warnings == [warning]

    lines: list[str] = []
    required = deploy(asking(providers=ORIN_PROVIDERS, require_providers=["CUDAExecutionProvider"]), bundle,
                      REPO / "build", log=lines.append)
    assert not required.ok and required.rolled_back and required.previous == fallback.release_id
    assert "required execution provider CUDAExecutionProvider is not active" in required.health.reason
    root = lab_target.settings.root
    assert run_on(lab_target, f"readlink {root}/current") == f"releases/{fallback.release_id}"
