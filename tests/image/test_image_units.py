"""Runtime image logic without docker: platforms, build plans, refs, lock, prune, archives, reports."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile

import pytest

from edgefleet.engine import Features
from edgefleet.image import archive, base, build, check, context

MULTI = Features("26.1.5", containerd_store=True, buildx=True)
GRAPH = Features("20.10.24", containerd_store=False, buildx=True)
NO_BUILDX = Features("26.1.5", containerd_store=True, buildx=False)


@pytest.mark.parametrize("text, expected", [
    ("linux/arm64", ["linux/arm64"]),
    ("linux/arm64,linux/amd64", ["linux/arm64", "linux/amd64"]),
    (" linux/amd64 , linux/amd64,", ["linux/amd64"]),
])
def test_parse_platforms(text, expected):
    assert build.parse_platforms(text) == expected


@pytest.mark.parametrize("text, message", [
    ("linux/riscv64", "unknown platform 'linux/riscv64'"),
    ("arm64", "unknown platform 'arm64'"),
    (",", "no platform given"),
])
def test_parse_platforms_rejects(text, message):
    with pytest.raises(build.ImageError, match=message):
        build.parse_platforms(text)


@pytest.mark.parametrize("platforms, features, steps, note_has", [
    (["linux/arm64"], GRAPH, [("t:1", ("linux/arm64",))], None),
    (["linux/arm64", "linux/amd64"], MULTI, [("t:1", ("linux/arm64", "linux/amd64"))], None),
    (["linux/arm64", "linux/amd64"], GRAPH,
     [("t:1-arm64", ("linux/arm64",)), ("t:1-amd64", ("linux/amd64",))], "containerd-snapshotter"),
    (["linux/arm64", "linux/amd64"], NO_BUILDX,
     [("t:1-arm64", ("linux/arm64",)), ("t:1-amd64", ("linux/amd64",))], "no buildx plugin"),
])
def test_plan_builds(platforms, features, steps, note_has):
    plan = build.plan_builds(platforms, "t:1", features)
    assert [(s.tag, s.platforms) for s in plan.steps] == steps
    if note_has is None:
        assert plan.note == ""
    else:
        assert note_has in plan.note and "t:1-arm64, t:1-amd64" in plan.note


def test_plan_note_names_the_engine_version():
    assert "dockerd 20.10.24" in build.plan_builds(["linux/arm64", "linux/amd64"], "t", GRAPH).note


@pytest.mark.parametrize("labels, platform, expected", [
    ({"t": {"edgefleet.platforms": "linux/arm64,linux/amd64"}}, "linux/amd64", "t"),
    ({"t": {"edgefleet.platforms": "linux/arm64"}, "t-amd64": {"edgefleet.platforms": "linux/amd64"}},
     "linux/amd64", "t-amd64"),
    ({"t": None, "t-arm64": {"edgefleet.platforms": "linux/arm64"}}, "linux/arm64", "t-arm64"),
    ({"t": {"edgefleet.platforms": "linux/arm64"}}, "linux/amd64", None),
    ({"t": {}}, "linux/arm64", None),
])
def test_pick_ref(labels, platform, expected):
    assert build.pick_ref("t", platform, labels) == expected


def _wheel(directory, name, content):
    path = directory / name
    path.write_bytes(content)
    return path, hashlib.sha256(content).hexdigest()


def test_lock_text_pins_every_wheel_hash(tmp_path):
    a, ha = _wheel(tmp_path, "numpy-2.4.6-cp311-cp311-manylinux_2_28_aarch64.whl", b"a")
    b, hb = _wheel(tmp_path, "numpy-2.4.6-cp311-cp311-manylinux_2_28_x86_64.whl", b"b")
    c, hc = _wheel(tmp_path, "PyYAML-6.0.4-cp311-cp311-manylinux_2_17_x86_64.whl", b"c")
    first, second = sorted([ha, hb])
    assert context.lock_text([a, b, c], "# header").splitlines() == [
        "# header",
        "numpy==2.4.6 \\", f"    --hash=sha256:{first} \\", f"    --hash=sha256:{second}",
        "pyyaml==6.0.4 \\", f"    --hash=sha256:{hc}",
    ]


def test_lock_text_refuses_two_versions(tmp_path):
    a, _ = _wheel(tmp_path, "numpy-2.4.6-cp311-cp311-x.whl", b"a")
    b, _ = _wheel(tmp_path, "numpy-2.4.7-cp311-cp311-x.whl", b"b")
    with pytest.raises(context.ContextError, match="more than one version resolved for numpy"):
        context.lock_text([a, b], "#")


def test_committed_lock_covers_requirements_for_both_arches(repo):
    lock = (repo / "docker" / "runtime" / "requirements.lock").read_text()
    for line in (repo / "payload" / "requirements.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name = line.split("==")[0].lower()
            assert f"\n{line.split()[0].lower()} \\\n" in lock, name
    assert lock.count("--hash=sha256:") == 2 * 4  # one wheel per arch for each of 4 packages


@pytest.mark.parametrize("name, expected", [
    ("numpy/_core/tests/test_x.py", True),
    ("numpy/_core/multiarray.py", False),
    ("numpy/tests", True),
    ("onnxruntime/capi/libonnxruntime.so.1.32.0", True),
    ("onnxruntime/capi/libonnxruntime_providers_shared.so", False),
    ("onnxruntime/capi/onnxruntime_pybind11_state.so", False),
    ("onnxruntime/transformers/models/bert.py", True),
    ("tokenizers/__init__.pyi", True),
    ("tokenizers/__init__.py", False),
    ("yaml/__init__.py", False),
])
def test_prune_list(repo, name, expected):
    patterns = context.read_prune(repo / "docker" / "runtime" / "prune.txt")
    assert context.pruned(name, patterns) is expected


def test_prune_site_keeps_order_and_metadata(tmp_path):
    src = tmp_path / "site.tar.gz"
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in [("pkg", None), ("pkg/a.py", b"a"), ("pkg/tests", None), ("pkg/tests/t.py", b"t")]:
            info = tarfile.TarInfo(name)
            info.mode, info.mtime = 0o644, 0
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    src.write_bytes(gzip.compress(raw.getvalue()))
    context.prune_site(src, tmp_path / "out.tar", ["*/tests"])
    with tarfile.open(tmp_path / "out.tar") as tar:
        assert tar.getnames() == ["pkg", "pkg/a.py"]
        assert tar.extractfile("pkg/a.py").read() == b"a"


def test_base_hash_follows_shared_script_and_arch(tmp_path, monkeypatch):
    (tmp_path / "packages.txt").write_text("python3\n")
    (tmp_path / "configure.sh").write_text("true\n")
    recipe = base.Recipe("r", "edgefleet/r", directory=tmp_path)
    script = tmp_path / "debootstrap.sh"
    script.write_text("one")
    monkeypatch.setattr(base, "_script", lambda: script)
    first = base.base_hash(recipe, "arm64")
    assert first != base.base_hash(recipe, "amd64")
    script.write_text("two")
    assert base.base_hash(recipe, "arm64") != first
    assert base.base_tag(recipe, "arm64").startswith("edgefleet/r:arm64-")


SELFTEST_OUT = """cosine[0] = 0.999950
cosine[1] = 1.000000
latency_ms p50=2.00 p95=4.50 p99=5.00
rss_mib 107.6
PASS: all 2 golden texts have cosine >= 0.999
"""


@pytest.mark.parametrize("out, passed, reason", [
    (SELFTEST_OUT, True, "all 2 golden texts have cosine >= 0.999"),
    (SELFTEST_OUT.replace("PASS: all 2", "FAIL: 1 of 2"), False, "1 of 2 golden texts have cosine >= 0.999"),
    ("Traceback ...", False, "no PASS/FAIL line in the selftest output"),
])
def test_parse_selftest(out, passed, reason):
    cosines, latency, ok, why = check.parse_selftest(out)
    assert (ok, why) == (passed, reason)
    if out is SELFTEST_OUT:
        assert cosines == [0.99995, 1.0] and latency == {"p50": 2.0, "p95": 4.5, "p99": 5.0}


@pytest.mark.parametrize("out, error", [
    (SELFTEST_OUT + check.EMBED_MARKER + '\n{"embeddings": [[1.0, 0.0]]}\n', None),
    (SELFTEST_OUT, "selftest did not finish"),
    (SELFTEST_OUT + check.EMBED_MARKER + "\nTraceback", "embed printed no embeddings"),
])
def test_parse_check_output(out, error):
    if error:
        with pytest.raises(build.ImageError, match=error):
            check.parse_check_output(out)
    else:
        (cosines, _, passed, _), embeddings = check.parse_check_output(out)
        assert (cosines, passed, embeddings) == ([0.99995, 1.0], True, [[1.0, 0.0]])


def _result(platform, emulated, embeddings, passed=True):
    return check.PlatformResult(platform, "img", emulated, passed, "r", [1.0], {"p50": 1.0},
                                embeddings=embeddings)


@pytest.mark.parametrize("second, passed", [
    ([[1.0, 0.0], [0.0, 2.0]], True),           # same directions, other norm
    ([[1.0, 0.02], [0.0, 1.0]], False),         # cosine 0.9998 on the first text
])
def test_judge_cross_platform(second, passed):
    report = check.judge([_result("linux/amd64", False, [[1.0, 0.0], [0.0, 1.0]]),
                          _result("linux/arm64", True, second)], threshold=0.9999)
    assert report["passed"] is passed
    pair = report["cross"]["pairs"][0]
    assert pair["passed"] is passed
    assert pair["mean_cosine"] == pytest.approx(sum(pair["cosines"]) / 2)
    assert report["platforms"]["linux/arm64"]["latency_ms"]["emulated"] is True
    assert "emulated" not in report["platforms"]["linux/amd64"]["latency_ms"]


def test_judge_fails_without_embeddings_or_selftest():
    ok = _result("linux/amd64", False, [[1.0]])
    assert check.judge([ok, _result("linux/arm64", True, [])])["passed"] is False
    assert check.judge([ok, _result("linux/arm64", True, [[1.0]], passed=False)])["passed"] is False


def test_texts_from_file_first_lines_without_blanks(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("one\n\n  \ntwo\nthree\n", encoding="utf-8")
    assert check.texts_from_file(path) == ["one", "two", "three"]
    assert check.texts_from_file(path, first=2) == ["one", "two"]
    with pytest.raises(build.ImageError, match="need at least one"):
        check.texts_from_file(path, first=0)
    (tmp_path / "blank.txt").write_text("\n \n", encoding="utf-8")
    with pytest.raises(build.ImageError, match="blank.txt: no texts"):
        check.texts_from_file(tmp_path / "blank.txt")
    with pytest.raises(build.ImageError, match="missing.txt: cannot read texts"):
        check.texts_from_file(tmp_path / "missing.txt")


@pytest.mark.parametrize("texts, expected", [
    (None, ["golden a", "golden b"]),           # the bundle's golden texts by default
    (["x", "y", "z"], ["x", "y", "z"]),
])
def test_run_platform_embeds_given_texts_under_the_asked_cpu(tmp_path, monkeypatch, texts,
                                                             expected):
    golden = {"golden": {"texts": ["golden a", "golden b"]}}
    (tmp_path / "bundle.json").write_text(json.dumps(golden))
    seen = {}

    def fake_run(spec, timeout, what):
        seen.update(spec=spec, timeout=timeout)
        rows = [[1.0, 0.0]] * len(spec.command[spec.command.index("--") + 2:])
        return SELFTEST_OUT + check.EMBED_MARKER + "\n" + json.dumps({"embeddings": rows})

    monkeypatch.setattr(check, "_run", fake_run)
    emulated = check.host_arch() != "arm64"
    result = check.run_platform("img", "linux/arm64", tmp_path, texts=texts,
                                qemu_cpu="cortex-a76")
    command = seen["spec"].command
    assert list(command[command.index("--") + 2:]) == expected
    assert len(result.embeddings) == len(expected) and result.selftest_passed
    assert seen["spec"].environment == ({"QEMU_CPU": "cortex-a76"} if emulated else {})
    per_text = 3.0 if emulated else 0.5
    assert seen["timeout"] == check.TIMEOUT_S[emulated] + per_text * len(expected)


def test_cross_cosines_shape_mismatch():
    with pytest.raises(build.ImageError, match="differ in shape"):
        check.cross_cosines([[1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]])


def _oci_archive(path, platforms):
    """Write a small multi-platform `docker save` archive (OCI index -> index -> manifests)."""
    blobs = {}

    def blob(data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs["blobs/sha256/" + digest[7:]] = data
        return digest

    entries = []
    for arch in platforms:
        layer = b"layer-" + arch.encode()
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo("hello")
            info.size = len(layer)
            tar.addfile(info, io.BytesIO(layer))
        raw = buf.getvalue()
        config = json.dumps({"os": "linux", "architecture": arch,
                             "rootfs": {"type": "layers",
                                        "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]}}).encode()
        manifest = json.dumps({"config": {"digest": blob(config)},
                               "layers": [{"digest": blob(gzip.compress(raw))}]}).encode()
        entries.append({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": blob(manifest), "platform": {"os": "linux", "architecture": arch}})
    inner = json.dumps({"manifests": entries}).encode()
    index = {"manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": blob(inner)}]}
    with tarfile.open(path, "w") as tar:
        for name, data in {**blobs, "index.json": json.dumps(index).encode()}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_platform_archive_cuts_one_platform_with_raw_layers(tmp_path):
    _oci_archive(tmp_path / "save.tar", ["amd64", "arm64"])
    archive.platform_archive(tmp_path / "save.tar", tmp_path / "out.tar", "linux/arm64", "x/y:z")
    with tarfile.open(tmp_path / "out.tar") as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())
        assert manifest[0]["RepoTags"] == ["x/y:z"] and len(manifest[0]["Layers"]) == 1
        config = json.loads(tar.extractfile(manifest[0]["Config"]).read())
        assert config["architecture"] == "arm64"
        layer = tar.extractfile(manifest[0]["Layers"][0]).read()
        assert "sha256:" + hashlib.sha256(layer).hexdigest() == config["rootfs"]["diff_ids"][0]
        with tarfile.open(fileobj=io.BytesIO(layer)) as inner:
            assert inner.extractfile("hello").read() == b"layer-arm64"


def test_platform_archive_names_what_it_found(tmp_path):
    _oci_archive(tmp_path / "save.tar", ["amd64"])
    with pytest.raises(archive.ArchiveError, match=r"no linux/arm64 image .*found: linux/amd64"):
        archive.platform_archive(tmp_path / "save.tar", tmp_path / "out.tar", "linux/arm64", "x")
    assert not (tmp_path / "out.tar").exists()


def test_readonly_binds_become_top_only_readonly_mounts():
    from edgefleet.engine import _readonly_mounts

    binds = {"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "ro"},
             "/srv/data": {"bind": "/data", "mode": "rw"}}
    assert _readonly_mounts(binds) == [{
        "Type": "bind", "Source": "/sys/fs/cgroup", "Target": "/sys/fs/cgroup", "ReadOnly": True,
        "BindOptions": {"ReadOnlyNonRecursive": True}}]
