"""Deploy decisions: facts parsing, preflight refusals, and the plan (tables, no SSH)."""

from __future__ import annotations

import dataclasses
import json
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edgefleet.deploy.facts import ARCH_NAMES, Facts, PlanError, facts_command, parse_facts
from edgefleet.deploy.health import NotReady
from edgefleet.deploy.plan import make_plan
from edgefleet.deploy.release import ReleaseError, make_release
from edgefleet.device_env import DeviceEnv
from edgefleet.digest import sha256_file
from edgefleet.inventory import load_inventory
from edgefleet.render import render_target

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def target():
    return load_inventory(REPO / "targets").target("pi5-01")


def fake_bundle(root: Path, model: bytes = b"onnx") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.onnx").write_bytes(model)
    (root / "tokenizer.json").write_text("{}")
    (root / "bundle.json").write_text(json.dumps({"name": "tiny-int8", "golden": {}}))
    return root


def fake_env(tmp_path: Path) -> DeviceEnv:
    tarball = tmp_path / "site.tar.gz"
    tarball.write_bytes(b"site-packages")
    return DeviceEnv("arm64", "3.11", tarball, sha256_file(tarball))


@pytest.fixture
def release(tmp_path, target):
    return make_release(target.name, fake_bundle(tmp_path / "b"), REPO / "payload", render_target(target), fake_env(tmp_path))


def facts(**over) -> Facts:
    base = Facts(arch="arm64", python="3.11", systemd=True, current=None, committed=None, lock_owner=None,
                 free_bytes=10**10, unit_sha256=None, service_active="inactive", user_exists=False,
                 envs=frozenset(), releases=frozenset(), objects=frozenset())
    return dataclasses.replace(base, **over)


@pytest.mark.parametrize("shell", ["sh", "bash"])  # dash (Debian's sh) and bash: a login shell is either
def test_facts_command_runs_in_sh_and_parses(tmp_path, target, shell):
    """The fact script is valid sh, and on a machine with nothing deployed parses to 'empty'."""
    settings = target.settings.model_copy(update={"root": str(tmp_path / "opt" / "edgefleet")})
    tgt = dataclasses.replace(target, settings=settings)
    out = subprocess.run([shell, "-c", facts_command(tgt)], capture_output=True, text=True, check=True).stdout
    got = parse_facts(out)
    assert got.current is None and got.objects == frozenset() and got.free_bytes > 0
    assert got.arch == ARCH_NAMES[platform.machine()] and got.committed is None  # bash: its $HOSTTYPE
    assert got.gnu_tar  # this host's tar is GNU tar (a busybox one would say no)

    # state.json as record_state writes it
    root = Path(settings.root)
    root.mkdir(parents=True)
    state = {"current": "r-0123456789ab", "history": [{"release": "r-ffffffffffff", "active": "r-0123456789ab"}]}
    (root / "state.json").write_text(json.dumps(state, indent=2) + "\n")
    (root / "objects").mkdir()
    (root / "objects" / ("a" * 64)).write_text("x")
    out = subprocess.run([shell, "-c", facts_command(tgt)], capture_output=True, text=True, check=True).stdout
    got = parse_facts(out)
    assert got.committed == "r-0123456789ab" and got.objects == frozenset({"a" * 64})
    assert got.lock_owner is None and got.envs == frozenset() and got.releases == frozenset()

    # a held lock, envs and releases, a current link: read with the shell's builtins
    (root / ".lock").mkdir()
    (root / ".lock" / "owner").write_text("host=ctl pid=7 time=now\n")
    for name in ("envs/e1", "envs/e2", "releases/r-1", "releases/r-2"):
        (root / name).mkdir(parents=True)
    (root / "current").symlink_to("releases/r-2")
    got = parse_facts(subprocess.run([shell, "-c", facts_command(tgt)], capture_output=True, text=True,
                                     check=True).stdout)
    assert got.lock_owner == "host=ctl pid=7 time=now" and 0 <= got.lock_age_s < 60
    assert got.envs == {"e1", "e2"} and got.releases == {"r-1", "r-2"} and got.current == "r-2"
    assert got.owns_root
    (root / ".lock" / "owner").write_text("")  # the owner line never got written: still a lock
    got = parse_facts(subprocess.run([shell, "-c", facts_command(tgt)], capture_output=True, text=True,
                                     check=True).stdout)
    assert got.lock_owner == "unknown"
    (root / "current").unlink()  # a link to a release that is gone: no current release
    (root / "current").symlink_to("releases/r-gone")
    got = parse_facts(subprocess.run([shell, "-c", facts_command(tgt)], capture_output=True, text=True,
                                     check=True).stdout)
    assert got.current is None and got.releases == {"r-1", "r-2"}


@pytest.mark.parametrize("interpreter, link, expected", [
    ("python3.9", True, "3.9"),  # a versioned file name is read, the interpreter is not started
    ("python3", False, "3.12"),  # anything else is asked
])
def test_facts_python_version(tmp_path, target, interpreter, link, expected):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / interpreter
    fake.write_text("#!/bin/sh\necho 3.12\n" if not link else "#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    if link:
        (bin_dir / "python3").symlink_to(fake)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    out = subprocess.run(["sh", "-c", facts_command(target)], capture_output=True, text=True, check=True, env=env).stdout
    assert parse_facts(out).python == expected


@pytest.mark.parametrize("output, field, expected", [
    ("arch=aarch64\npython=3.11\nsystemd=yes\nfree_kb=10\n--objects--\n", "arch", "arm64"),
    ("arch=x86_64\npython=3.11\nsystemd=no\nfree_kb=10\n--objects--\n", "systemd", False),
    ("arch=aarch64\npython=3.11\nsystemd=yes\nfree_kb=10\ncurrent=releases/r-abc\n--objects--\n", "current", "r-abc"),
    ("arch=aarch64\npython=3.11\nsystemd=yes\nfree_kb=2\n--objects--\n", "free_bytes", 2048),
    ("arch=aarch64\npython=3.11\nsystemd=yes\nfree_kb=2\ncommitted=r-0a1b\n--objects--\n", "committed", "r-0a1b"),
    ("arch=aarch64\npython=3.11\nsystemd=yes\nfree_kb=2\nenvs=a b \n--objects--\n", "envs", frozenset({"a", "b"})),
    ("arch=aarch64\npython=3.11\nsystemd=yes\nfree_kb=2\n--objects--\n" + "a" * 64 + "\nx.tmp\n",
     "objects", frozenset({"a" * 64})),
    ("arch=aarch64\npython=3.11\nsystemd=yes\nfree_kb=2\ngovernor:policy4=powersave\ngovernor:policy0=performance\n"
     "--objects--\n", "governors", (("policy0", "performance"), ("policy4", "powersave"))),
])
def test_parse_facts(output, field, expected):
    assert getattr(parse_facts(output), field) == expected


def test_parse_facts_rejects_truncated_output():
    with pytest.raises(PlanError, match="incomplete"):
        parse_facts("arch=aarch64\n")


def test_fresh_device_gets_everything(target, release):
    plan = make_plan(target, release, facts())
    assert {f.sha256 for f in plan.upload} == set(release.objects())
    assert plan.install_env and plan.build_release and plan.install_unit and plan.create_user
    assert plan.activate and plan.restart and not plan.nothing_to_do
    assert any("upload" in line for line in plan.describe())


def test_device_with_zstd_gets_the_packages_as_zstd(target, tmp_path):
    """The zstd tarball replaces the gzip one for a device that has zstd; neither goes once unpacked."""
    env = fake_env(tmp_path)
    zst = tmp_path / "site.tar.zst"
    zst.write_bytes(b"smaller")
    env = dataclasses.replace(env, zst=zst, zst_sha256=sha256_file(zst))
    release = make_release(target.name, fake_bundle(tmp_path / "b"), REPO / "payload", render_target(target), env)
    with_zstd = make_plan(target, release, facts(zstd=True))
    sent = {f.sha256: f.path for f in with_zstd.upload}
    assert sent[env.zst_sha256] == "site.tar.zst" and env.sha256 not in sent
    assert with_zstd.env_tarball.sha256 == env.zst_sha256
    assert any("(site.tar.zst)" in line for line in with_zstd.describe())
    without = make_plan(target, release, facts(zstd=False))
    assert without.env_tarball.sha256 == env.sha256 and env.zst_sha256 not in {f.sha256 for f in without.upload}
    unpacked = make_plan(target, release, facts(zstd=True, envs=frozenset({env.sha256})))
    assert not unpacked.install_env and unpacked.env_tarball is None
    assert not {env.sha256, env.zst_sha256} & {f.sha256 for f in unpacked.upload}


def test_same_release_again_is_a_no_op(target, release):
    now = facts(current=release.release_id, committed=release.release_id, unit_sha256=release.unit.sha256, service_active="active",
                user_exists=True, envs=frozenset({release.env.sha256}),
                releases=frozenset({release.release_id}), objects=frozenset(release.objects()),
                tuning_unit_sha256=release.tuning[0].sha256, tuning_script_sha256=release.tuning[1].sha256)
    plan = make_plan(target, release, now)
    assert plan.nothing_to_do
    assert plan.describe() == [f"pi5-01: release {release.release_id} is already active and running; nothing to do"]


@pytest.mark.parametrize("unit_same, script_same, install", [
    (True, True, False), (False, True, True), (True, False, True), (False, False, True),
])
def test_tuning_is_installed_only_when_changed(target, release, unit_same, script_same, install):
    unit, script = release.tuning
    now = facts(current=release.release_id, committed=release.release_id, unit_sha256=release.unit.sha256,
                service_active="active", user_exists=True, envs=frozenset({release.env.sha256}),
                releases=frozenset({release.release_id}), objects=frozenset(release.objects()),
                tuning_unit_sha256=unit.sha256 if unit_same else "0" * 64,
                tuning_script_sha256=script.sha256 if script_same else None)
    plan = make_plan(target, release, now)
    assert plan.install_tuning is install and plan.nothing_to_do is not install
    assert any("edgefleet-tuning.service" in line for line in plan.describe()) is install


@pytest.mark.parametrize("governors, retune", [
    ((), False),                                                    # no cpufreq (a VM, a container)
    ((("policy0", "performance"),), False),
    ((("policy0", "performance"), ("policy4", "powersave")), True),  # changed by hand since the last deploy
])
def test_governor_drift_re_applies_the_tuning(target, release, governors, retune):
    unit, script = release.tuning
    now = facts(current=release.release_id, committed=release.release_id, unit_sha256=release.unit.sha256,
                service_active="active", user_exists=True, envs=frozenset({release.env.sha256}),
                releases=frozenset({release.release_id}), objects=frozenset(release.objects()),
                tuning_unit_sha256=unit.sha256, tuning_script_sha256=script.sha256, governors=governors)
    plan = make_plan(target, release, now)
    assert plan.install_tuning is retune and plan.nothing_to_do is not retune
    assert plan.notes == (("cpufreq policy4: governor is not performance; the tuning unit re-applies it",)
                          if retune else ())


def test_activated_but_never_judged_release_gets_the_gate(target, release):
    """A deploy killed after the switch left a release nobody checked: check it now."""
    now = facts(current=release.release_id, committed="r-000000000000", unit_sha256=release.unit.sha256,
                service_active="active", user_exists=True, envs=frozenset({release.env.sha256}),
                releases=frozenset({release.release_id}), objects=frozenset(release.objects()))
    plan = make_plan(target, release, now)
    assert plan.gate and not plan.restart and not plan.upload and not plan.nothing_to_do


def test_stopped_service_is_restarted_without_upload(target, release):
    now = facts(current=release.release_id, unit_sha256=release.unit.sha256, service_active="failed",
                user_exists=True, envs=frozenset({release.env.sha256}),
                releases=frozenset({release.release_id}), objects=frozenset(release.objects()))
    plan = make_plan(target, release, now)
    assert plan.restart and not plan.upload and not plan.activate


def test_only_changed_model_is_uploaded(tmp_path, target, release):
    other = make_release(target.name, fake_bundle(tmp_path / "b2", model=b"onnx v2"), REPO / "payload",
                         render_target(target), release.env)
    assert other.release_id != release.release_id
    now = facts(current=release.release_id, objects=frozenset(release.objects()),
                envs=frozenset({release.env.sha256}), user_exists=True, unit_sha256=release.unit.sha256)
    plan = make_plan(target, other, now)
    assert sorted(f.path for f in plan.upload) == ["bundle/model.onnx", "manifest.json"]
    assert not plan.install_env and not plan.install_unit and plan.activate


@pytest.mark.parametrize("over, message", [
    ({"arch": "amd64"}, "device is amd64, inventory says arm64"),
    ({"python": "3.10"}, "device has python 3.10, inventory says 3.11"),
    ({"python": ""}, "device has python none"),
    ({"systemd": False}, "systemd is not running"),
    ({"lock_owner": "host pid 1"}, "another deploy holds /opt/edgefleet/.lock"),
    ({"free_bytes": 1000}, "MB free under /opt/edgefleet"),
])
def test_preflight_refuses(target, release, over, message):
    with pytest.raises(PlanError, match=message):
        make_plan(target, release, facts(**over))


def test_release_id_depends_only_on_content(tmp_path, target):
    env = fake_env(tmp_path)
    a = make_release(target.name, fake_bundle(tmp_path / "a"), REPO / "payload", render_target(target), env)
    b = make_release(target.name, fake_bundle(tmp_path / "b"), REPO / "payload", render_target(target), env)
    assert a.release_id == b.release_id and a.release_id.startswith("r-")


def test_host_compiled_payload_is_a_cache_not_content(tmp_path, target, monkeypatch):
    """This host runs the device's Python X.Y: it ships the payload's .pyc files (the device
    compiles nothing); a host that cannot leaves them out and makes the same release."""
    import importlib.util

    import edgefleet.deploy.release as release_mod

    env, bundle = fake_env(tmp_path), fake_bundle(tmp_path / "b")
    assert env.python == "%d.%d" % sys.version_info[:2]  # the fixture's env is this host's Python
    compiled = make_release(target.name, bundle, REPO / "payload", render_target(target), env)
    monkeypatch.setattr(release_mod, "_host_can_compile", lambda python: False)
    plain = make_release(target.name, bundle, REPO / "payload", render_target(target), env)
    assert compiled.release_id == plain.release_id and not plain.compiled
    sources = [f.path for f in compiled.files if f.path.startswith("payload/") and f.path.endswith(".py")]
    assert sources and sorted(f.path for f in compiled.compiled) == sorted(map(importlib.util.cache_from_source,
                                                                              sources))
    assert {f.sha256 for f in compiled.compiled} <= set(compiled.objects())
    listed = json.loads(compiled.manifest.read())["compiled"]
    assert listed == {f.path: f.sha256 for f in compiled.compiled}
    assert "compiled" not in json.loads(plain.manifest.read())
    # unchecked-hash: the device never compares source mtimes (a release's files have the objects')
    assert all(int.from_bytes(f.read()[4:8], "little") == 0b01 for f in compiled.compiled)
    # a device with the release built by a host that could not compile: still a no-op from this one
    pyc = {f.sha256 for f in compiled.compiled}
    there = facts(current=plain.release_id, committed=plain.release_id, releases=frozenset({plain.release_id}),
                  objects=frozenset(set(plain.objects()) - pyc), envs=frozenset({env.sha256}), user_exists=True,
                  unit_sha256=plain.unit.sha256, service_active="active",
                  tuning_unit_sha256=plain.tuning[0].sha256 if plain.tuning else None,
                  tuning_script_sha256=plain.tuning[1].sha256 if plain.tuning else None)
    assert make_plan(target, plain, there).nothing_to_do and make_plan(target, compiled, there).nothing_to_do
    # and a new device gets them
    assert pyc <= {f.sha256 for f in make_plan(target, compiled, facts()).upload}


def test_host_compiled_payload_is_kept_between_runs(tmp_path, monkeypatch):
    """The .pyc files come from the build dir's cache in a later run (a no-op rollout compiles nothing)."""
    import edgefleet.deploy.release as release_mod

    files = [f for f in release_mod._tree("payload/edge_runtime", REPO / "payload" / "edge_runtime")
             if f.path.endswith(".py")]
    first = release_mod._compiled(files, "%d.%d" % sys.version_info[:2], tmp_path / "pyc")
    assert len(list((tmp_path / "pyc").rglob("*.pyc"))) == len(files) == len(first)
    release_mod._pyc.cache_clear()  # as a new process

    def no_compiling(*_a, **_k):
        raise AssertionError("compiled again")
    monkeypatch.setattr(release_mod.py_compile, "compile", no_compiling)
    assert release_mod._compiled(files, "%d.%d" % sys.version_info[:2], tmp_path / "pyc") == first


def test_release_needs_a_bundle(tmp_path, target):
    (tmp_path / "b").mkdir()
    with pytest.raises(ReleaseError, match="missing model.onnx, tokenizer.json, bundle.json"):
        make_release(target.name, tmp_path / "b", REPO / "payload", render_target(target), fake_env(tmp_path))


def test_release_ships_every_file_the_bundle_lists(tmp_path, target):
    bundle = fake_bundle(tmp_path / "b")
    (bundle / "model.onnx.data").write_bytes(b"weights")
    files = {n: {"sha256": "0" * 64, "bytes": 1} for n in ("model.onnx", "model.onnx.data", "tokenizer.json")}
    (bundle / "bundle.json").write_text(json.dumps({"name": "tiny-int8", "files": files}))
    release = make_release(target.name, bundle, REPO / "payload", render_target(target), fake_env(tmp_path))
    assert {"bundle/model.onnx", "bundle/model.onnx.data", "bundle/tokenizer.json",
            "bundle/bundle.json"} <= {f.path for f in release.files}
    (bundle / "model.onnx.data").unlink()
    with pytest.raises(ReleaseError, match="missing model.onnx.data"):
        make_release(target.name, bundle, REPO / "payload", render_target(target), fake_env(tmp_path))


@pytest.mark.parametrize("name", ["../model.onnx", "sub/x.bin", ".hidden", "bundle.json"])
def test_release_refuses_odd_bundle_file_names(tmp_path, target, name):
    bundle = fake_bundle(tmp_path / "b")
    files = {n: {"sha256": "0" * 64, "bytes": 1} for n in ("model.onnx", "tokenizer.json", name)}
    (bundle / "bundle.json").write_text(json.dumps({"name": "tiny-int8", "files": files}))
    with pytest.raises(ReleaseError, match=r"bundle.json: key 'files' lists .*not plain file names"):
        make_release(target.name, bundle, REPO / "payload", render_target(target), fake_env(tmp_path))


@pytest.mark.parametrize("expected, got, tol, ok", [
    ([[1, 0], [0, 1]], [[1, 0], [0, 1]], 0.999, True),
    ([[1, 0], [0, 1]], [[0.99, 0.1], [0, 1]], 0.999, False),
    ([[1, 0]], [[2, 0]], 0.999, True),  # scale does not matter
    ([[1, 0]], [[1, 0], [0, 1]], 0.5, False),  # wrong shape
])
def test_compare_golden(expected, got, tol, ok):
    from edge_runtime.golden import compare
    assert compare({"texts": ["x"] * len(expected), "embeddings": expected, "min_cosine": tol}, got).passed is ok


def scripted(answers):
    """A fake service `Call` that plays back (status, body) answers or raises exceptions."""
    answers = list(answers)

    def call(path, payload=None, timeout=120.0):
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer
    return call


@pytest.mark.parametrize("answers, outcome", [
    ([(200, {"status": "ready"})], None),
    ([ConnectionRefusedError("not listening"), (503, {"state": "loading"}), (200, {})], None),
    ([(503, {"state": "failed", "error": "2 of 8 golden texts below 0.999"})], "up but not ready: 2 of 8"),
    ([ConnectionRefusedError("not listening")], "not ready after 0 s"),
    ([(503, {"state": "loading"})], r"not ready after 0 s \(last: /readyz 503"),
])
def test_wait_ready(answers, outcome):
    from edgefleet.deploy.health import wait_ready
    # a timeout of 0.3 s: the failed state must end the wait at once, not by timing out
    if outcome is None:
        assert wait_ready(scripted(answers), timeout_s=5, poll_s=0.01) >= 0
    else:
        with pytest.raises(NotReady, match=outcome):
            wait_ready(scripted(answers), timeout_s=0.3, poll_s=0.01)


def test_wait_ready_stops_when_the_service_dies():
    from edgefleet.deploy.health import wait_ready
    with pytest.raises(NotReady, match="stopped before it was ready"):
        wait_ready(scripted([ConnectionRefusedError("x")]), timeout_s=5, still_starting=lambda: False, poll_s=0.01)


QA_GOLDEN = {"questions": ["q1", "q2"], "contexts": ["c1", "c2"], "max_abs_diff": 0.02,
             "answers": [{"answer": "c", "score": 0.5, "start": 0, "end": 1},
                         {"answer": "2", "score": 0.9, "start": 1, "end": 2}]}
CLASSIFY_GOLDEN = {"texts": ["a"], "max_abs_diff": 0.02, "scores": [{"no": 0.2, "yes": 0.8}]}
EMBED_GOLDEN = {"texts": ["a", "b"], "embeddings": [[1, 0], [0.9, 0.1]], "min_cosine": 0.99}


@pytest.mark.parametrize("golden, bodies, ok, metric, reason", [
    (QA_GOLDEN, [{"answer": "c", "score": 0.51, "start": 0, "end": 1}] * 2, False, "abs_diff", "index [1]"),
    (QA_GOLDEN, [{"answer": "2", "score": 0.91, "start": 1, "end": 2}] * 2, False, "abs_diff", "index [0]"),
    (CLASSIFY_GOLDEN, [{"results": [{"label": "yes", "score": 0.79, "scores": {"no": 0.21, "yes": 0.79}}]}],
     True, "abs_diff", ""),
    (CLASSIFY_GOLDEN, [{"results": [{"label": "no", "score": 0.5, "scores": {"no": 0.5, "yes": 0.5}}]}],
     False, "abs_diff", "differ"),
    (CLASSIFY_GOLDEN, [{"error": "this runtime serves an 'embed' bundle"}], False, "", "/v1/classify answered without"),
    (EMBED_GOLDEN, [{"embeddings": [[1.0, 0.0]]}, {"embeddings": [[0.9, 0.1]]}], True, "cosine", ""),
    (EMBED_GOLDEN, [{"embeddings": [[1.0, 0.0]]}, {"embeddings": [[0.0, 1.0]]}], False, "cosine", "index [1]"),
    (EMBED_GOLDEN, [{"embeddings": [[1.0, 0.0]]}], False, "cosine", "shape"),
])
def test_golden_verdict_per_task(golden, bodies, ok, metric, reason):
    from edgefleet.deploy.health import golden_verdict
    got_ok, got_metric, _, why = golden_verdict(golden, bodies)
    assert (got_ok, got_metric) == (ok, metric) and reason in why


def test_probe_request_carries_route_payloads_and_token():
    from edge_runtime import golden as goldens

    from edgefleet.deploy.health import probe_request
    requests = [goldens.request("qa", item) for item in goldens.items(QA_GOLDEN)]
    line = json.loads(probe_request(18081, "/v1/qa", [p for _, p in requests], 3, "s3cret"))
    assert line == {"port": 18081, "route": "/v1/qa", "rounds": 3, "token": "s3cret",
                    "payloads": [{"question": "q1", "context": "c1"}, {"question": "q2", "context": "c2"}]}


def test_systemd_rereads_units_only_when_an_installed_one_is_replaced(target, release):
    """A fresh device gets its units without a daemon-reload; a changed unit (or tuning) needs one."""
    fresh = make_plan(target, release, facts())
    assert fresh.install_unit and fresh.install_tuning and not fresh.reload_units
    changed = make_plan(target, release, facts(unit_sha256="0" * 64, tuning_unit_sha256=release.tuning[0].sha256,
                                               tuning_script_sha256=release.tuning[1].sha256))
    assert changed.install_unit and not changed.install_tuning and changed.reload_units
    tuning = make_plan(target, release, facts(unit_sha256=release.unit.sha256, tuning_unit_sha256="0" * 64))
    assert not tuning.install_unit and tuning.install_tuning and tuning.reload_units


@pytest.mark.parametrize("line, named", [
    ("free_kb=abc", "free_kb='abc'"),
    ("free_kb=²", "free_kb='²'"),
    ("unit_sha=not-a-hash", "unit_sha='not-a-hash'"),
    ("current=releases/r-1;rm -rf", "is not a release name"),
    ("committed=r-0a1b$(x)", "is not a release name"),
])
def test_parse_facts_refuses_a_wrong_shape_naming_the_key(line, named):
    """Device data is untrusted: a value of the wrong shape is a per-device error naming the key."""
    output = "arch=aarch64\npython=3.11\nsystemd=yes\nfree_kb=2\n" + line + "\n--objects--\n"
    with pytest.raises(PlanError, match=re.escape(named)):
        parse_facts(output)


def test_status_and_deploy_ask_the_same_facts(target):
    """The facts both read (arch, current, committed, active, governors) are one set of shell lines."""
    from edgefleet.deploy import facts
    from edgefleet.status import status_command

    command = status_command(target, [])
    for fact in (facts.ARCH, facts.CURRENT, facts.COMMITTED, facts.ACTIVE, facts.GOVERNORS):
        assert all(line in command for line in fact.lines(target))
        assert all(line in facts_command(target) for line in fact.lines(target))
