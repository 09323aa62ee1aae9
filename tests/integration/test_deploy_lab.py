"""Deploy through real sshd and systemd to a lab device (amd64 container, native speed).

The lab is shared machine state (container names, ports): this module refuses to run over a
lab that is already up, and takes down the one it starts.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from edgefleet.deploy import Device, deploy, service_call
from edgefleet.render import RUNTIME_UNIT_EXPOSURE
from edgefleet.transport import connect

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


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
    # ...with no capability at all, yet at nice -5 (lab-01 is a pi5: systemd set Nice=), and the
    # unit's sandbox applied: / is read-only in its namespace
    assert lab_target.board.name == "pi5" and lab_target.settings.runtime.nice == -5
    assert run_on(lab_target, f"grep CapBnd /proc/{pid}/status").split() == ["CapBnd:", f"{0:016x}"]
    assert run_on(lab_target, f"ps -o ni= -p {pid}") == "-5"
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


def test_installed_unit_security_exposure(run_on, lab_target):
    """systemd itself scores the running unit (not the offline file): at most RUNTIME_UNIT_EXPOSURE."""
    out = run_on(lab_target, "systemd-analyze security --no-pager edgefleet-runtime.service 2>&1")
    match = re.search(r"Overall exposure level for edgefleet-runtime.service: ([0-9.]+)", out)
    assert match, out[-600:]
    assert float(match.group(1)) <= RUNTIME_UNIT_EXPOSURE, out[-1500:]


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


def test_orin_providers_on_cpu_only_onnxruntime_warn_and_fail_when_required(run_on, lab_target, bundle,
                                                                          monkeypatch):
    """An Orin's provider list on a device whose onnxruntime is PyPI's (CPU only): the gate passes
    with a fallback warning that status shows too; with `require_providers` deploy refuses a package
    set without onnxruntime-gpu, and where the device's onnxruntime still lacks the provider (a
    wrong wheel, missing CUDA libraries) the gate fails and rolls back."""
    from dataclasses import replace

    from edgefleet.deploy import run as deploy_run
    from edgefleet.errors import InputError
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
    # TensorRT asked for: the deploy made the engine cache, the service's one writable place
    root = lab_target.settings.root
    assert run_on(lab_target, f"stat -c '%U %a' {root}/cache/trt") == "edgefleet 755"
    # the GPU's nodes: the service user joined video (this Debian has no render group: skipped, not failed)
    assert "video" in run_on(lab_target, "id -nG edgefleet").split()

    needs_cuda = asking(providers=ORIN_PROVIDERS, require_providers=["CUDAExecutionProvider"])
    with pytest.raises(InputError, match="require_providers CUDAExecutionProvider needs onnxruntime-gpu"):
        deploy(needs_cuda, bundle, REPO / "build", log=lambda _: None)
    # the package set passes the host's check (as one with onnxruntime-gpu would); the device's does not run it
    monkeypatch.setattr(deploy_run, "gpu_package_check", lambda target: (None, None))
    lines: list[str] = []
    required = deploy(needs_cuda, bundle, REPO / "build", log=lines.append)
    assert not required.ok and required.rolled_back and required.previous == fallback.release_id
    assert "required execution provider CUDAExecutionProvider is not active" in required.health.reason
    root = lab_target.settings.root
    assert run_on(lab_target, f"readlink {root}/current") == f"releases/{fallback.release_id}"


def _slower_bundle(src: Path, dst: Path, size: int = 384, rounds: int = 4) -> Path:
    """Copy `src` with a graph that gives the same outputs after extra work: MatMuls on a value
    made from the input ids (nothing ORT can fold away), multiplied by zero and added."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from edgefleet.model.bundle import externalize_weights
    from edgefleet.model.files import file_record

    shutil.copytree(src, dst)
    model = onnx.load(str(dst / "model.onnx"))
    graph = model.graph
    out = graph.output[0].name
    for node in graph.node:
        node.output[:] = [f"{out}_fast" if name == out else name for name in node.output]
    rng = np.random.default_rng(0)
    graph.initializer.extend([numpy_helper.from_array((rng.random((size, size)) * 0.01).astype(np.float32), "slow_a"),
                              numpy_helper.from_array(np.zeros((), np.float32), "slow_zero")])
    nodes = [helper.make_node("Cast", ["input_ids"], ["slow_ids"], to=onnx.TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["slow_ids"], ["slow_sum"], keepdims=0),
             helper.make_node("Mul", ["slow_a", "slow_sum"], ["slow_x0"])]
    for i in range(rounds):
        nodes += [helper.make_node("MatMul", [f"slow_x{i}", "slow_a"], [f"slow_y{i}"]),
                  helper.make_node("Tanh", [f"slow_y{i}"], [f"slow_x{i + 1}"])]
    nodes += [helper.make_node("ReduceSum", [f"slow_x{rounds}"], ["slow_r"], keepdims=0),
              helper.make_node("Mul", ["slow_r", "slow_zero"], ["slow_z"]),
              helper.make_node("Add", [f"{out}_fast", "slow_z"], [out])]
    graph.node.extend(nodes)
    onnx.save(model, str(dst / "model.onnx"))
    externalize_weights(dst / "model.onnx")
    meta = json.loads((dst / "bundle.json").read_text())
    meta["name"] = meta.get("name", "tiny") + "-slow"
    meta["files"] = {name: file_record(dst / name) for name in meta["files"] if (dst / name).is_file()}
    (dst / "bundle.json").write_text(json.dumps(meta))
    return dst


def test_a_slower_release_fails_the_regression_gate_and_rolls_back(run_on, lab_target, bundle, tmp_path):
    """Lab devices are emulated (speed never judged); this one is marked native for the test, without
    an absolute budget, so only the regression against the committed release's p95 can fail it."""
    from dataclasses import replace

    settings = lab_target.settings
    native = replace(lab_target, settings=settings.model_copy(update={
        "emulated": False, "health": settings.health.model_copy(update={"latency_budget_ms": None})}))
    # the baseline itself is not compared (the shared CI host's noise on a 2 ms model); the slow one is
    unjudged = replace(native, settings=native.settings.model_copy(update={
        "health": native.settings.health.model_copy(update={"latency_budget_ms": None, "max_regression": None})}))
    base = deploy(unjudged, bundle, REPO / "build", log=lambda _: None)
    assert base.ok, base.health and base.health.summary()
    root = lab_target.settings.root
    state = json.loads(run_on(lab_target, f"cat {root}/state.json"))
    committed = state["current"]
    assert isinstance(state["history"][-1]["p95_ms"], float)

    slow = deploy(native, _slower_bundle(bundle, tmp_path / "slow"), REPO / "build", log=lambda _: None)
    assert not slow.ok and slow.rolled_back and slow.previous == committed, slow.health.summary()
    assert slow.health.reason.startswith("regression: p95"), slow.health.reason
    assert run_on(lab_target, f"readlink {root}/current") == f"releases/{committed}"

    # the same slower release on the emulated device: reported, never judged
    emulated = deploy(replace(native, settings=native.settings.model_copy(update={"emulated": True})),
                      tmp_path / "slow", REPO / "build", log=lambda _: None)
    assert emulated.ok and any(n.startswith("regression seen") for n in emulated.health.notes), \
        emulated.health.summary()


def test_prune_keeps_the_engine_cache_of_a_kept_releases_model_and_removes_the_others(run_on, lab_target, bundle):
    """Engine caches as plain files (no GPU here): the one whose key.json names the model files of a
    kept release survives prune, one for a model no kept release has goes, timing-* stays."""
    from edgefleet.deploy.prune import prune

    root = lab_target.settings.root
    active = run_on(lab_target, f"readlink {root}/current").removeprefix("releases/")
    if not active:  # run alone: the module's earlier tests left no committed release
        active = deploy(lab_target, bundle, REPO / "build", log=lambda _: None).release_id
    files = json.loads(run_on(lab_target, f"cat {root}/current/manifest.json"))["files"]
    ours = {name: files[f"bundle/{name}"] for name in ("model.onnx", "model.onnx.data") if f"bundle/{name}" in files}
    caches = {"0" * 24: ours, "f" * 24: {"model.onnx": "e" * 64}}
    script = [f"mkdir -p {root}/cache/trt/timing-0123456789ab"]
    for name, model in caches.items():
        key = json.dumps({"key": name, "model_files": model})
        script += [f"mkdir -p {root}/cache/trt/{name}/engines",
                   f"printf %s '{key}' > {root}/cache/trt/{name}/key.json",
                   f"printf engine > {root}/cache/trt/{name}/engines/TRTKernel_fp16_sm87.engine"]
    run_on(lab_target, " && ".join(script))
    lines: list[str] = []
    conn = connect(lab_target)
    try:
        prune(Device(conn, lab_target), active, lines.append)
    finally:
        conn.close()
    left = set(run_on(lab_target, f"ls {root}/cache/trt").split())
    assert left == {"0" * 24, "timing-0123456789ab"}, "\n".join(lines)
    assert any("pruned 1 TensorRT engine cache(s) no kept release uses (ffffffffffff)" in line for line in lines)
