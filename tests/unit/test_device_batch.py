"""Root-only steps batched into one session (Device.batch of root_steps), run by sh on this host."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from edgefleet.deploy.device import DeployError, Device, root_steps
from edgefleet.inventory import load_inventory

REPO = Path(__file__).resolve().parents[2]


class LocalShell:
    """A connection whose `run` is sh on this host (what the device's login shell would do)."""

    def __init__(self):
        self.commands: list[str] = []

    def run(self, command, **_):
        self.commands.append(command)
        proc = subprocess.run(["sh", "-c", command], capture_output=True, text=True)
        return type("Result", (), {"exited": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr})()


@pytest.fixture
def dev():
    target = load_inventory(REPO / "targets").target("pi5-01")
    target = target.__class__(**{**target.__dict__, "settings": target.settings.model_copy(update={"sudo": False})})
    return Device(LocalShell(), target)


def test_one_session_runs_every_step_and_reports_warned_failures(dev, tmp_path):
    mark = tmp_path / "ran"
    codes = dev.batch(root_steps(dev, [(["true"], "first", False), (["sh", "-c", "exit 4"], "may fail", True),
                         (["touch", str(mark)], "last", False)]))
    assert codes == [0, 4, 0] and mark.exists() and len(dev.transport.commands) == 1


def test_the_failing_step_is_named_with_its_own_output_and_stops_the_batch(dev, tmp_path):
    after = tmp_path / "after"
    with pytest.raises(DeployError) as failed:
        dev.batch(root_steps(dev, [(["sh", "-c", "echo early-noise >&2"], "first", False),
                     (["sh", "-c", "echo no such unit >&2; exit 5"], "enable the service", False),
                     (["touch", str(after)], "never", False)]))
    assert str(failed.value) == "pi5-01: enable the service failed (exit 5): no such unit"  # its own output only
    assert not after.exists()


def test_each_step_is_one_argv_a_line_for_a_sudoers_list(dev):
    sudo_dev = Device(dev.transport, dev.target.__class__(**{**dev.target.__dict__, "settings":
                                                       dev.target.settings.model_copy(update={"sudo": True})}))
    sudo_dev.transport.run = lambda command, **_: (dev.transport.commands.append(command) or
                                           type("R", (), {"exited": 0, "stdout": "", "stderr": ""})())
    sudo_dev.batch(root_steps(sudo_dev, [(["systemctl", "daemon-reload"], "reload", False),
                      (["systemctl", "restart", "x y.service"], "restart", False)]))
    lines = dev.transport.commands[-1].splitlines()
    assert lines[0].startswith("sudo -n systemctl daemon-reload; rc=$?; ")
    assert lines[1].startswith("sudo -n systemctl restart 'x y.service'; rc=$?; ")


@pytest.mark.parametrize("host_compiled", [False, True])
def test_a_venv_release_is_built_by_one_python(tmp_path, host_compiled):
    """Hard links into objects/, the packages link, and the payload byte-compiled: by the device for
    its final path, or by the host (linked like the rest; the device compiles nothing)."""
    import hashlib
    import importlib.util
    import json
    import shlex
    import sys

    from edgefleet.deploy.release import _pyc
    from edgefleet.deploy.remote import source as program_source

    objects, envs = tmp_path / "objects", tmp_path / "envs" / "e1"
    objects.mkdir()
    envs.mkdir(parents=True)
    source = "payload/edge_runtime/__init__.py"
    files = {source: b"def where():\n    return where.__code__.co_filename\n", "bundle/bundle.json": b"{}",
             "runtime.yaml": b"a: 1\n"}
    if host_compiled:
        (tmp_path / "src.py").write_bytes(files[source])
        files[importlib.util.cache_from_source(source)] = _pyc(tmp_path / "src.py", "x")
    links = []
    for rel, data in files.items():
        sha = hashlib.sha256(data).hexdigest()
        (objects / sha).write_bytes(data)
        links.append([sha, rel])
    tmp, final = tmp_path / "releases" / "r-1.tmp", tmp_path / "releases" / "r-1"
    (tmp / "payload").mkdir(parents=True)  # left by a deploy that died while building: started afresh
    (tmp / "payload" / "stale.py").write_text("x = 1\n")
    spec = {"tmp": str(tmp), "final": str(final), "objects": str(objects), "site": str(envs), "links": links,
            "compile": not host_compiled}
    subprocess.run(f"{shlex.quote(sys.executable)} -c {shlex.quote(program_source('builder'))} {shlex.quote(json.dumps(spec))}",
                   shell=True, check=True)
    assert not tmp.exists() and not (final / "payload" / "stale.py").exists()  # built, then renamed into place
    for rel, data in files.items():
        assert (final / rel).read_bytes() == data and (final / rel).stat().st_ino == (objects / links[
            list(files).index(rel)][0]).stat().st_ino  # a hard link, not a copy
    assert (final / "site").resolve() == envs
    pyc = next((final / "payload" / "edge_runtime" / "__pycache__").glob("__init__.*.pyc"))
    if not host_compiled:
        assert str(final).encode() in pyc.read_bytes()  # compiled for where it lives
    else:  # the host's, as linked: nothing compiled over it
        assert pyc.stat().st_ino == (objects / hashlib.sha256(files[str(pyc.relative_to(final))]).hexdigest()).stat().st_ino
    before = pyc.read_bytes()
    # the module loads from the .pyc and names its real source file (the import system fixes it up)
    out = subprocess.run([sys.executable, "-c", "import edge_runtime; print(edge_runtime.where())"],
                         cwd=final / "payload", capture_output=True, text=True, check=True).stdout.strip()
    assert out == str(final / source)
    assert (final / importlib.util.cache_from_source(source)).read_bytes() == before  # loaded, not rewritten
