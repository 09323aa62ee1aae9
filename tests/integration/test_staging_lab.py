"""No unverified byte reaches objects/ on a sudo target while another local account attacks.

The attack (found by a red-team pass): uploads to a sudo target were staged in
/var/tmp/edgefleet-incoming-<user>, a fixed name in a world-writable directory. Any local
account that loops `mkdir` takes that directory between the deploy's `rm -rf` and `mkdir -p`,
then renames its own file over each object that arrives, before it is moved into objects/
(where a unit or the tuning script is installed as root by `sudo install`).

Here a lab device gets two ordinary accounts: `deployer` (the target's login user, sudo) and
`mallory` (nothing). Mallory runs the attack, bounded in time, during a whole deploy, for both
sudo set-ups: general sudo (the root belongs to root) and a root the deployer owns (as on the
lab VM, whose sudoers lists only the root-only steps). The deploy must succeed and every file
in objects/ must hash to its name, with none of mallory's bytes anywhere.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from edgefleet.deploy import deploy
from edgefleet.inventory import load_inventory
from edgefleet.model.tiny import tiny_bundle

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
EVIL = "mallory-was-here"

ACCOUNTS = r"""
set -e
id deployer >/dev/null 2>&1 || useradd -m -s /bin/sh deployer
id mallory >/dev/null 2>&1 || useradd -m -s /bin/sh mallory
install -d -m 0700 -o deployer -g deployer /home/deployer/.ssh
install -m 0600 -o deployer -g deployer /root/.ssh/authorized_keys /home/deployer/.ssh/authorized_keys
echo 'deployer ALL=(root) NOPASSWD: ALL' > /etc/sudoers.d/deployer
chmod 0440 /etc/sudoers.d/deployer
"""

# mallory's loop: take the staging dir's name whenever it is free, rename her own bytes over
# anything that arrives in it, and try the device root's own staging names too; stops by itself
ATTACK = r"""
end=$(( $(date +%s) + 240 ))
printf '%s' "$EVIL" > "$HOME/evil"
while [ "$(date +%s)" -lt "$end" ]; do
  for d in /var/tmp/edgefleet-incoming-deployer "$ROOT/.incoming-deployer" "$ROOT/objects/.incoming"; do
    mkdir -m 0777 "$d" 2>/dev/null || true
    for f in "$d"/* "$d"/.*.part "$ROOT/.state.json.tmp"; do
      [ -f "$f" ] || continue
      cp "$HOME/evil" "$d/.m$$" 2>/dev/null && mv -f "$d/.m$$" "$f" 2>/dev/null || true
    done
  done
done
"""


def _sudo_target(lab_target, tmp_path: Path, owns_root: bool):
    """Return lab-01 as a sudo target that logs in as `deployer`, from an inventory of its own."""
    targets = tmp_path / "targets"
    shutil.copytree(REPO / "targets" / "boards", targets / "boards")
    lab = yaml.safe_load(lab_target.source.read_text())
    device = dict(lab["devices"][lab_target.name], user="deployer", sudo=True)
    device.pop("groups", None)
    device["root"] = "/opt/edgefleet-owned" if owns_root else "/opt/edgefleet"
    (targets / "fleet.yaml").write_text(yaml.safe_dump({"devices": {"sudo-01": device}}))
    return load_inventory(targets).target("sudo-01")


@pytest.mark.timeout(900)
@pytest.mark.parametrize("owns_root", [False, True], ids=["general-sudo", "deployer-owns-root"])
def test_a_local_account_cannot_plant_bytes_in_objects(one_lab_device, run_on, tmp_path, owns_root):
    run_on(one_lab_device, ACCOUNTS)
    target = _sudo_target(one_lab_device, tmp_path, owns_root)
    root = target.settings.root
    if owns_root:
        run_on(one_lab_device, f"install -d -m 0755 -o deployer -g deployer {root}")
    # a first deploy in peace (the staging dir then exists, as on any device deployed before),
    # then a second one, with other objects to upload, while mallory attacks
    v1 = tiny_bundle(tmp_path / "v1")["bundle_dir"]
    assert deploy(target, v1, REPO / "build", log=lambda _: None).ok
    v2 = tmp_path / "v2"
    shutil.copytree(v1, v2)
    meta = json.loads((v2 / "bundle.json").read_text())
    (v2 / "bundle.json").write_text(json.dumps({**meta, "name": "tiny-v2"}))
    attack = (f"runuser -u mallory -- env EVIL={EVIL} ROOT={root} HOME=/home/mallory "
              f"setsid sh -c {shlex.quote(ATTACK)} >/dev/null 2>&1 & echo $!")
    attacker = run_on(one_lab_device, attack)
    try:
        lines: list[str] = []
        result = deploy(target, v2, REPO / "build", log=lines.append)
    finally:
        run_on(one_lab_device, f"pkill -u mallory; kill {attacker} 2>/dev/null; true")
    assert result.ok and result.changed, "\n".join(lines)
    # every object hashes to its name (as root, on the device), and no file anywhere under the
    # root, nor state.json, holds mallory's bytes
    bad = run_on(one_lab_device, f"cd {root}/objects && for f in *; do "
                                 f"[ \"$(sha256sum < \"$f\" | cut -d' ' -f1)\" = \"$f\" ] || echo \"$f\"; done")
    assert bad == "", f"objects that do not hash to their name: {bad}"
    assert run_on(one_lab_device, f"grep -rl {EVIL} {root} 2>/dev/null; true") == ""
    assert run_on(one_lab_device, f"stat -c %U {root}/state.json") in ("root", "deployer")
