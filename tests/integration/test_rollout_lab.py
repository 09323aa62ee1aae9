"""Roll out to three lab devices (amd64 containers): waves, a failed wave rolled back, resume, a stop after the canary.

The lab is shared machine state: this module refuses to run over a lab that is already up,
and takes down the one it starts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgefleet.model.tiny import tiny_bundle
from edgefleet.rollout import latest_record, plan_rollout, resume_targets, rollout

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
NAMES = ["lab-01", "lab-02", "lab-03"]


@pytest.fixture(scope="module")
def fleet(three_lab_devices):
    return three_lab_devices


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    v1 = tiny_bundle(root / "v1")["bundle_dir"]
    v2 = root / "v2"  # healthy, but another release: bundle.json differs
    shutil.copytree(v1, v2)
    meta = json.loads((v2 / "bundle.json").read_text())
    meta["name"] = meta.get("name", "tiny") + "-v2"
    (v2 / "bundle.json").write_text(json.dumps(meta))
    bad = root / "bad"  # expectations no model can meet: every golden vector flipped
    shutil.copytree(v1, bad)
    meta = json.loads((bad / "bundle.json").read_text())
    meta["golden"]["embeddings"] = [[-v for v in row] for row in meta["golden"]["embeddings"]]
    (bad / "bundle.json").write_text(json.dumps(meta))
    return {"v1": v1, "v2": v2, "bad": bad}


def active(fleet, run_on) -> dict[str, str]:
    return {t.name: run_on(t, f"readlink {t.settings.root}/current").rsplit("/", 1)[-1] for t in fleet}


def releases(doc: dict) -> dict[str, str]:
    return {n: d["new"] for n, d in doc["devices"].items()}


def results(doc: dict) -> dict[str, str]:
    return {n: d["result"] for n, d in doc["devices"].items()}


def test_rollout_waves_rollback_resume_and_canary_stop(run_on, fleet, bundles, tmp_path):
    build = tmp_path / "build"  # records of its own under build/rollouts/; the packages cache is shared
    build.mkdir()
    (REPO / "build" / "device-envs").mkdir(parents=True, exist_ok=True)
    (build / "device-envs").symlink_to(REPO / "build" / "device-envs")
    run = lambda names, bundle, **kw: rollout(fleet, plan_rollout(names, **kw), bundle, build, progress=False,
                                              log=lambda _: None)

    # 1. canary 1, then a batch of 2: every device takes v1
    first = run(NAMES, bundles["v1"], canary=1, batch=2, max_fail=0)
    assert first["plan"]["waves"] == [["lab-01"], ["lab-02", "lab-03"]]
    assert first["status"] == "completed" and set(results(first).values()) == {"updated"}, first
    v1 = releases(first)  # a release per device: its rendered config is part of it
    assert active(fleet, run_on) == v1 and len(set(v1.values())) == 3
    assert all(d["latency_ms"] for d in first["devices"].values())
    log = Path(first["devices"]["lab-02"]["log"]).read_text()
    assert "health gate" in log and "healthy" in log
    # boards round-robin; lab-02 is an orin-nano (JetPack: cp310): it runs the lab image's 3.11 with
    # the board's pins, resolved for cp311 (a per-device override in the lab's inventory)
    assert [t.board.name for t in fleet] == ["pi5", "orin-nano", "rk3588"]
    versions = "import sys, onnxruntime; print('%d.%d' % sys.version_info[:2], onnxruntime.__version__)"
    assert run_on(fleet[1], f"cd {fleet[1].settings.root}/current && PYTHONPATH=site python3 -c \"{versions}\"") \
        == f"3.11 {fleet[1].settings.packages.pins['onnxruntime']}"

    # 2. lab-02 is locked by "another deploy": wave 2 fails, so lab-03 (updated in that wave) goes back to v1
    lock = f"{fleet[1].settings.root}/.lock"
    run_on(fleet[1], f"mkdir {lock} && echo someone-else > {lock}/owner")
    second = run(NAMES, bundles["v2"], canary=1, batch=2, max_fail=0)
    assert second["status"] == "stopped"
    assert results(second) == {"lab-01": "updated", "lab-02": "failed", "lab-03": "rolled back"}, second
    assert "another deploy holds" in second["devices"]["lab-02"]["error"]
    v2 = releases(second)
    assert active(fleet, run_on) == {"lab-01": v2["lab-01"], "lab-02": v1["lab-02"], "lab-03": v1["lab-03"]}
    state = json.loads(run_on(fleet[2], f"cat {fleet[2].settings.root}/state.json"))
    assert state["current"] == v1["lab-03"] and state["history"][-1]["reason"].startswith("rollback: wave 2 failed")

    # 3. the lock is gone: --resume re-runs only lab-02 and lab-03
    run_on(fleet[1], f"rm -r {lock}")
    record = latest_record(build / "rollouts")
    assert record["rollout"] == second["rollout"]
    assert resume_targets(record) == ["lab-02", "lab-03"]
    third = run(resume_targets(record), Path(record["bundle"]), canary=0, batch="100%", max_fail=0)
    assert third["order"] == ["lab-02", "lab-03"] and set(results(third).values()) == {"updated"}, third
    assert active(fleet, run_on) == v2

    # 4. a release that fails its gate on the canary stops the rollout there; nobody leaves v2
    fourth = run(NAMES, bundles["bad"], canary=1, batch=2, max_fail=0)
    assert fourth["status"] == "stopped"
    assert results(fourth) == {"lab-01": "failed", "lab-02": "not reached", "lab-03": "not reached"}, fourth
    assert "golden" in fourth["devices"]["lab-01"]["error"]
    assert active(fleet, run_on) == v2
    assert resume_targets(latest_record(build / "rollouts")) == NAMES


def test_mixed_boards_each_get_the_variant_their_board_asks_for(run_on, fleet, tmp_path):
    """Boards round-robin: lab-02 is an orin-nano (bundle.precision fp16), the others int8. One
    rollout of the set's int8 bundle gives lab-02 the FP16 sibling; the table and the record say so."""
    from edgefleet.model.fp16 import convert_fp16

    paths = tiny_bundle(tmp_path / "tiny")
    shutil.copytree(paths["bundle_dir"], tmp_path / "set" / "tiny-int8")
    convert_fp16(paths["fp32_dir"], tmp_path / "set" / "tiny-fp16", name="tiny-fp16")
    build = tmp_path / "build"
    build.mkdir()
    (REPO / "build" / "device-envs").mkdir(parents=True, exist_ok=True)
    (build / "device-envs").symlink_to(REPO / "build" / "device-envs")
    doc = rollout(fleet, plan_rollout(NAMES, canary=1, batch=2, max_fail=0), tmp_path / "set" / "tiny-int8", build,
                  progress=False, log=lambda _: None)
    assert doc["status"] == "completed" and set(results(doc).values()) == {"updated"}, doc
    assert {n: d["variant"] for n, d in doc["devices"].items()} == {"lab-01": "int8", "lab-02": "fp16",
                                                                     "lab-03": "int8"}
    for target in fleet:
        meta = json.loads(run_on(target, f"cat {target.settings.root}/current/bundle/bundle.json"))
        assert meta.get("precision", "int8") == doc["devices"][target.name]["variant"]
    # the Orin's TensorRT/CUDA are not in the lab's onnxruntime: it passed with the warning
    assert any(w.startswith("provider fallback") for w in doc["devices"]["lab-02"]["warnings"])
    from io import StringIO

    from rich.console import Console

    from edgefleet.rollout.report import print_table

    out = StringIO()
    print_table(doc, Console(file=out, width=250))
    assert "(fp16)" in out.getvalue() and "provider fallback" in out.getvalue()


def test_tune_records_a_choice_per_board_class_and_the_next_deploy_takes_it(run_on, fleet, bundles, tmp_path):
    """`tune` on lab-01 (pi5) and lab-02 (orin-nano), marked not emulated for the test: each board's
    choice is measured on the device with its own onnxruntime, written to build/tuning/<board>.json,
    and the next deploy to that board takes the variant and the threads."""
    import dataclasses

    from edgefleet.deploy import deploy
    from edgefleet.digest import sha256_file
    from edgefleet.model.fp16 import convert_fp16
    from edgefleet.tune.recorded import write_tuning
    from edgefleet.tune.run import TuneOptions, bundle_set, pick_devices, tune_group

    shutil.copytree(bundles["v1"], tmp_path / "set" / "tiny-int8")  # the module's tiny bundle and its FP32 export
    convert_fp16(bundles["v1"].parent / "fp32", tmp_path / "set" / "tiny-fp32", name="tiny-fp32", precision="fp32")
    build = tmp_path / "build"
    build.mkdir()
    (REPO / "build" / "device-envs").mkdir(parents=True, exist_ok=True)
    (build / "device-envs").symlink_to(REPO / "build" / "device-envs")
    two = fleet[:2]
    for target in two:  # tune runs the device's own onnxruntime: a release must be there (the tests above leave one)
        if not run_on(target, f"readlink {target.settings.root}/current"):
            deploy(target, tmp_path / "set" / "tiny-int8", build, log=lambda _: None)
    real = [dataclasses.replace(t, settings=t.settings.model_copy(update={"emulated": False})) for t in two]
    candidates = bundle_set(tmp_path / "set" / "tiny-int8")
    assert list(candidates) == ["int8", "fp32"]
    options = TuneOptions(rounds=2, lengths=(16, 32), length=32, threads=(1, 2))
    chosen = {}
    for result in tune_group(real, candidates, options, log=lambda _: None):  # the two boards at once
        assert result.measurement is not None, result.error
        board, devices = result.board, pick_devices(real)[result.board]
        path = write_tuning(build, result, candidates, options)
        doc = json.loads(path.read_text())
        assert path.name == f"{board}.json" and doc["device"] == devices[0].name and not doc["emulated"]
        # measured with the device's own onnxruntime (the board's pin), every candidate past its goldens
        root = devices[0].settings.root
        assert doc["onnxruntime"] == run_on(devices[0], f"cd {root}/current && PYTHONPATH=site python3 -c "
                                                        "'import onnxruntime; print(onnxruntime.__version__)'")
        assert {(c["variant"], c["threads"]) for c in doc["configs"] if c["golden_passed"]} == \
            {("int8", 1), ("int8", 2), ("fp32", 1), ("fp32", 2)}
        assert doc["choice"]["variant"] in ("int8", "fp32") and doc["choice"]["threads"] in (1, 2), doc
        assert set(doc["configs"][0]["p50_ms"]) == {"16", "32", "golden"} and doc["noise_floor"] >= 0.03
        chosen[devices[0].name] = doc["choice"]
        # the scratch dir is gone; the candidates stay as verified objects
        assert "tuning" not in run_on(devices[0], f"ls {root}").split()
        assert sha256_file(candidates["fp32"] / "model.onnx") in run_on(devices[0], f"ls {root}/objects").split()
    assert set(chosen) == {"lab-01", "lab-02"}

    # the next deploy takes the recorded choice (the lab's own targets, emulated: the gate judges no latency)
    lab01 = fleet[0]
    result = deploy(lab01, tmp_path / "set" / "tiny-int8", build, log=lambda _: None)
    assert result.ok and result.changed and (result.variant, result.tuned.rsplit("/", 2)[-2:]) == \
        (chosen["lab-01"]["variant"], ["tuning", "pi5.json"])
    config = run_on(lab01, f"cat {lab01.settings.root}/current/runtime.yaml")
    assert f"threads: {chosen['lab-01']['threads']}" in config
    plan = deploy(fleet[1], tmp_path / "set" / "tiny-int8", build, dry_run=True, log=lambda _: None)
    assert plan.variant == chosen["lab-02"]["variant"] and plan.tuned.endswith("orin-nano.json")
