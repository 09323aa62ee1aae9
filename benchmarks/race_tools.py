"""The contenders of bench_race.py: their pinned venv, the staged job, and one run of each tool.

The "same job" for every tool is edgefleet's release for the target: the bundle, the payload
sources, the resolved packages (site.tar.gz), the rendered runtime.yaml, units and manifest,
placed on the device, plus one command (restart a service) when something changed. The
other tools place it under /opt/race/<tool>/ and restart `race@<tool>.service` (a one-shot
stand-in, or with `--restart runtime` the runtime itself from their tree), so they never touch
edgefleet's /opt/edgefleet or its service.

Every tool verifies host keys against the lab's known_hosts (no auto-add).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RACE = REPO / "build" / "race"
VENV = RACE / "venv"
# the contenders, pinned; they are benchmark tools, never edgefleet dependencies
PINS = ("ansible-core==2.19.14", "mitogen==0.3.54", "pyinfra==3.10.0")
# ansible.posix (synchronize) ships only inside the `ansible` package; we take that collection from it
ANSIBLE_PKG = "ansible==12.3.0"
COLLECTIONS = RACE / "collections"
REMOTE_ROOT = "/opt/race"
RACE_UNIT = """\
[Unit]
Description=deploy race stand-in service for %i (edgefleet benchmark)

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/true
"""
# `--restart runtime`: the same runtime edgefleet's unit starts (Type=simple, its own placed
# payload, bundle and runtime.yaml), on a free port, with the packages edgefleet's untimed
# first deploy unpacked (RACE_SITE links to them): the restart costs the device what edgefleet's does
RACE_SITE = "/var/lib/race-site"
RACE_RUNTIME_UNIT = f"""\
[Unit]
Description=deploy race: the edgefleet runtime as placed by %i (edgefleet benchmark)

[Service]
Type=simple
Environment=PYTHONPATH={REMOTE_ROOT}/%i/payload:{RACE_SITE}
# as edgefleet's runtime, which cannot write its release: no __pycache__ appears in the tool's
# tree (rsync --delete would count it a change, and every re-run would restart)
Environment=PYTHONDONTWRITEBYTECODE=1
ExecStart=/usr/bin/python3 -m edge_runtime serve --bundle {REMOTE_ROOT}/%i/bundle --config {REMOTE_ROOT}/%i/runtime.yaml --port 0
"""
q = shlex.quote


def ensure_venv(log=print) -> Path:
    """Install the pinned contenders into build/race/venv (idempotent: a stamp holds the pins)."""
    stamp = VENV / ".race-pins"
    want = "\n".join((*PINS, ANSIBLE_PKG)) + "\n"
    if stamp.is_file() and stamp.read_text() == want and (COLLECTIONS / "ansible_collections" / "ansible" / "posix").is_dir():
        return VENV
    log(f"race venv: installing {' '.join(PINS)} and ansible.posix from {ANSIBLE_PKG} into {VENV}")
    if not (VENV / "bin" / "python").is_file():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(VENV / "bin" / "pip"), "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", *PINS], check=True)
    wheels = RACE / "wheels"
    subprocess.run([*pip, "download", "--no-deps", ANSIBLE_PKG, "-d", str(wheels)], check=True)
    wheel = next(wheels.glob(ANSIBLE_PKG.replace("==", "-") + "-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.namelist() if m.startswith("ansible_collections/ansible/posix/")]
        zf.extractall(COLLECTIONS, members)
    stamp.write_text(want)
    return VENV


def rsync_debs(log=print) -> list[Path]:
    """Fetch rsync and the libraries the lab image lacks for it (bookworm .debs, apt-get download)."""
    debs = RACE / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    wanted = ("rsync", "libpopt0", "libxxhash0")
    have = {p.name.split("_")[0]: p for p in debs.glob("*.deb")}
    missing = [w for w in wanted if w not in have]
    if missing:
        log(f"race: apt-get download {' '.join(missing)}")
        subprocess.run(["apt-get", "download", "-q", *missing], cwd=debs, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    return sorted(debs.glob("*.deb"))


def stage_release(release, host_dir: Path, zstd: bool = True, packages: bool = True) -> None:
    """Lay out `release`'s files under `host_dir` as the others place them; unchanged files keep their mtime.

    `zstd`: the devices have zstd, so edgefleet sends the packages as site.tar.zst: so do the others.
    `packages`: the job includes the packages' tarball (False: the devices have them already).
    The payload's .pyc files edgefleet compiled on this host go too: the others' runtimes start
    from them as edgefleet's does (unchecked-hash .pyc files load wherever they are)."""
    wanted = {}
    for obj in (*release.files, *release.compiled, release.unit, *release.tuning, release.manifest):
        wanted[obj.path if "/" in obj.path or obj.path.endswith((".yaml", ".json")) else f"units/{obj.path}"] = obj
    if packages:
        tarball = release.env_tarball(zstd=zstd)  # what edgefleet sends these devices
        wanted[f"site/{tarball.path}"] = tarball
    for rel, obj in wanted.items():
        dest = host_dir / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if obj.source is not None:
            if not (dest.exists() and os.path.samefile(dest, obj.source)):
                dest.unlink(missing_ok=True)
                os.link(obj.source, dest)  # same bytes, same mtime: rsync's quick check sees no change
        elif not dest.is_file() or dest.read_bytes() != obj.data:
            tmp = dest.with_name(dest.name + ".tmp")
            tmp.write_bytes(obj.data)
            tmp.replace(dest)
    for path in sorted(host_dir.rglob("*"), reverse=True):
        rel = path.relative_to(host_dir).as_posix()
        if path.is_file() and rel not in wanted:
            path.unlink()


def ssh_opts(key: Path, known_hosts: Path) -> list[str]:
    """OpenSSH options every OpenSSH-based contender uses: the lab key, its known_hosts, strict checking."""
    return ["-i", str(key), "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={known_hosts}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"]


def rsync_loop_script(hosts: list[tuple[str, int]], stage: Path, key: Path, known_hosts: Path,
                      control_dir: Path | None = None, tool: str = "rsync") -> str:
    """Return a bash script: one rsync-over-ssh per host, all in parallel, restart where rsync changed files.

    `control_dir`: reuse connections through OpenSSH masters kept there for 120 s (ControlPersist),
    as edgefleet does; without it every run logs in afresh (the loop as the issue describes it).
    """
    opts = ssh_opts(key, known_hosts)
    if control_dir is not None:
        opts += ["-o", "ControlMaster=auto", "-o", f"ControlPath={control_dir}/%C", "-o", "ControlPersist=120"]
    ssh = "ssh " + " ".join(q(o) for o in opts)
    dest = f"{REMOTE_ROOT}/{tool}/"
    lines = ["set -u", "pids=()", "fail=0"]
    for name, port in hosts:
        lines.append(
            f"( out=$(rsync -a --delete --itemize-changes -e {q(ssh + f' -p {port}')} "
            f"{q(str(stage / name) + '/')} root@127.0.0.1:{dest}) || exit 1; "
            f"[ -z \"$out\" ] || {ssh} -p {port} root@127.0.0.1 systemctl restart race@{tool}.service ) & pids+=($!)")
    lines += ['for p in "${pids[@]}"; do wait "$p" || fail=1; done', 'exit "$fail"']
    return "\n".join(lines) + "\n"


def ansible_files(work: Path, hosts: list[tuple[str, int]], stage: Path, key: Path, known_hosts: Path,
                  forks: int, mitogen: bool, module: str, tool: str, control_dir: Path) -> tuple[list[str], dict]:
    """Write inventory, ansible.cfg and playbook under `work`; return (argv, env) for ansible-playbook.

    `module`: "synchronize" (ansible.posix, rsync over the same ssh options) or "copy" (one
    module run per file without mitogen; mitogen streams the files through its own service).
    `control_dir`: where Ansible keeps its OpenSSH masters (its default ControlPersist=60s).
    """
    work.mkdir(parents=True, exist_ok=True)
    inv = ["[lab]"] + [f"{n} ansible_host=127.0.0.1 ansible_port={p}" for n, p in hosts]
    inv += ["", "[lab:vars]", "ansible_user=root", f"ansible_ssh_private_key_file={key}",
            "ansible_python_interpreter=/usr/bin/python3"]
    (work / "hosts.ini").write_text("\n".join(inv) + "\n")
    known = f"-o UserKnownHostsFile={known_hosts} -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes"
    (work / "ansible.cfg").write_text(textwrap.dedent(f"""\
        [defaults]
        inventory = {work / 'hosts.ini'}
        forks = {forks}
        host_key_checking = True
        gathering = explicit
        retry_files_enabled = False
        collections_path = {COLLECTIONS}
        interpreter_python = /usr/bin/python3

        [ssh_connection]
        pipelining = True
        ssh_args = -o ControlMaster=auto -o ControlPersist=60s {known}
        control_path_dir = {control_dir}
        """))
    dest = f"{REMOTE_ROOT}/{tool}/"
    if module == "copy":
        place = {"ansible.builtin.copy": {"src": f"{stage}/{{{{ inventory_hostname }}}}/", "dest": dest,
                                          "mode": "preserve"}}
    else:
        place = {"ansible.posix.synchronize": {"src": f"{stage}/{{{{ inventory_hostname }}}}/", "dest": dest,
                                               "archive": True, "delete": True, "use_ssh_args": True}}
    play = [{
        "hosts": "lab", "gather_facts": False,
        "tasks": [{"name": "place the release files", **place, "notify": "restart"}],
        "handlers": [{"name": "restart", "ansible.builtin.command": f"systemctl restart race@{tool}.service"}],
    }]
    (work / "play.yml").write_text(json.dumps(play, indent=1))
    env = {**os.environ, "ANSIBLE_CONFIG": str(work / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    if mitogen:
        import glob
        plugins = glob.glob(str(VENV / "lib" / "python3*" / "site-packages" / "ansible_mitogen" / "plugins" / "strategy"))
        env.update(ANSIBLE_STRATEGY_PLUGINS=plugins[0], ANSIBLE_STRATEGY="mitogen_linear")
    return [str(VENV / "bin" / "ansible-playbook"), str(work / "play.yml")], env


def pyinfra_files(work: Path, hosts: list[tuple[str, int]], stage: Path, key: Path, known_hosts: Path,
                  parallel: int) -> list[str]:
    """Write pyinfra's inventory and deploy under `work`; return the argv."""
    work.mkdir(parents=True, exist_ok=True)
    common = {"ssh_hostname": "127.0.0.1", "ssh_user": "root", "ssh_key": str(key),
              "ssh_known_hosts_file": str(known_hosts), "ssh_strict_host_key_checking": "yes",
              "stage": str(stage)}
    entries = [(n, {**common, "ssh_port": p}) for n, p in hosts]
    (work / "inventory.py").write_text(f"lab = {entries!r}\n")
    (work / "deploy.py").write_text(textwrap.dedent(f"""\
        from pyinfra import host
        from pyinfra.operations import files, server

        placed = files.sync(name="place the release files", src=host.data.stage + "/" + host.name + "/",
                            dest="{REMOTE_ROOT}/pyinfra", delete=True)
        server.shell(name="restart", commands=["systemctl restart race@pyinfra.service"], _if=placed.did_change)
        """))
    return [str(VENV / "bin" / "pyinfra"), str(work / "inventory.py"), str(work / "deploy.py"),
            "-y", "--parallel", str(parallel)]
