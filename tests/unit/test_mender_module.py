"""The edgefleet-release update module as the device runs it: one stdlib-only file, the mender protocol's
queries, refusal of a tampered payload before anything is written, and state.json as the deploy keeps it."""

from __future__ import annotations

import ast
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgefleet.mender.device import module_source
from edgefleet.mender.device.module import SPEC_FORMAT, SPEC_NAME


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("module") / "edgefleet-release"
    path.write_text(module_source())
    path.chmod(0o755)
    return path


def test_the_program_needs_only_the_stdlib_and_runs_its_own_main():
    tree = ast.parse(module_source())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    # edge_runtime comes from the release being judged, numpy from its packages: imported inside the gate
    assert "edgefleet" not in imported
    assert imported <= set(sys.stdlib_module_names) | {"edge_runtime", "numpy", "__future__"}
    assert module_source().rstrip().endswith("main()")
    assert module_source().count('if __name__ == "__main__":') == 1  # the helpers' own entry points left out


@pytest.mark.parametrize(("state", "answer"), [("SupportsRollback", "Yes"), ("NeedsArtifactReboot", "No"),
                                               ("Download", ""), ("ArtifactFailure", "")])
def test_the_clients_queries(program, tmp_path, state, answer):
    res = subprocess.run([str(program), state, str(tmp_path)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and res.stdout.strip() == answer


def _payload(tmp_path: Path, root: Path) -> Path:
    files = tmp_path / "tree" / "files"
    files.mkdir(parents=True)
    data = b"an object"
    (files / hashlib.sha256(data).hexdigest()).write_bytes(data)
    (files / SPEC_NAME).write_text(json.dumps({"format": SPEC_FORMAT, "root": str(root), "release_id": "r-1"}))
    return files


def test_a_tampered_payload_is_refused_before_anything_is_written(program, tmp_path):
    root = tmp_path / "opt"
    files = _payload(tmp_path, root)
    victim = next(p for p in files.iterdir() if p.name != SPEC_NAME)
    victim.write_bytes(b"another object")
    res = subprocess.run([str(program), "ArtifactInstall", str(files.parent)], capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 1
    assert f"payload file {victim.name}: its bytes are not its sha256; nothing was installed" in res.stderr
    assert not root.exists()
    # the client then asks for a rollback of an install that wrote nothing: nothing to do, and no error
    res = subprocess.run([str(program), "ArtifactRollback", str(files.parent)], capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 0, res.stderr
    assert not root.exists()


def test_state_json_is_the_deploys_own_format(tmp_path):
    from edgefleet.mender.device import module

    spec = {"root": str(tmp_path)}
    module.record_state(spec, {"release": "r-aaaaaaaaaaaa", "healthy": True, "active": "r-aaaaaaaaaaaa"})
    module.record_state(spec, {"release": "r-bbbbbbbbbbbb", "healthy": False, "active": "r-aaaaaaaaaaaa"})
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["current"] == "r-aaaaaaaaaaaa" and len(state["history"]) == 2
    # the SSH deploy's facts read the committed release from line 2, in shell
    assert (tmp_path / "state.json").read_text().splitlines()[1] == '  "current": "r-aaaaaaaaaaaa",'


def test_a_commit_prunes_old_releases_as_a_deploy_does(tmp_path):
    from edgefleet.mender.device import module

    spec = {"root": str(tmp_path), "keep_releases": 2}
    objects = tmp_path / "objects"
    objects.mkdir()
    history = []
    for rid in ("r-aaaaaaaaaaa1", "r-aaaaaaaaaaa2", "r-aaaaaaaaaaa3"):
        data = rid.encode()
        sha = hashlib.sha256(data).hexdigest()
        (objects / sha).write_bytes(data)
        manifest = json.dumps({"release_id": rid, "files": {"bundle/model.onnx": sha}}).encode()
        (objects / hashlib.sha256(manifest).hexdigest()).write_bytes(manifest)
        (tmp_path / "releases" / rid).mkdir(parents=True)
        (tmp_path / "releases" / rid / "manifest.json").write_bytes(manifest)
        history.append({"release": rid, "healthy": True, "active": rid})
    (tmp_path / "releases" / "r-aaaaaaaaaaa4.tmp").mkdir()  # a killed install's leftover
    (tmp_path / "state.json").write_text(json.dumps({"current": "r-aaaaaaaaaaa3", "history": history}))
    # TensorRT engine caches: one for a kept release's model, one for the release that goes
    for name, rid in (("a" * 24, "r-aaaaaaaaaaa3"), ("b" * 24, "r-aaaaaaaaaaa1")):
        (tmp_path / "cache" / "trt" / name).mkdir(parents=True)
        (tmp_path / "cache" / "trt" / name / "key.json").write_text(
            json.dumps({"model_files": {"model.onnx": hashlib.sha256(rid.encode()).hexdigest()}}))
    deleted = module.prune_releases({**spec, "release_id": "r-aaaaaaaaaaa3"})
    assert [p.name for p in (tmp_path / "cache" / "trt").iterdir()] == ["a" * 24]
    assert deleted == ["r-aaaaaaaaaaa1", "r-aaaaaaaaaaa4.tmp"]
    assert sorted(p.name for p in (tmp_path / "releases").iterdir()) == ["r-aaaaaaaaaaa2", "r-aaaaaaaaaaa3"]
    assert hashlib.sha256(b"r-aaaaaaaaaaa1").hexdigest() not in {p.name for p in objects.iterdir()}
    assert len(list(objects.iterdir())) == 4  # the two kept releases' object and manifest
