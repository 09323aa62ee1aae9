"""Key files and recipe hashing (no docker)."""

import stat

import paramiko
import pytest

from edgefleet.image import base
from edgefleet.lab import image, keys


def test_keypair_made_once_and_readable_by_paramiko(tmp_path):
    path = tmp_path / "sub" / "id_ed25519"
    private, public = keys.ensure_keypair(path, "edgefleet-lab")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert public.startswith("ssh-ed25519 ") and public.endswith(" edgefleet-lab")
    assert keys.ensure_keypair(path, "other") == (private, public)
    loaded = paramiko.Ed25519Key.from_private_key_file(str(path))
    assert public.split()[1] == loaded.get_base64()


@pytest.mark.parametrize("change, base_changes, tag_changes", [
    ("packages.txt", True, True),
    ("configure.sh", True, True),
    ("Dockerfile", False, True),
])
def test_recipe_hash_follows_recipe_files(tmp_path, monkeypatch, change, base_changes, tag_changes):
    for name in ("configure.sh", "packages.txt", "Dockerfile"):
        (tmp_path / name).write_text(name)
    recipe = base.Recipe("lab-device", "edgefleet/lab-base", directory=tmp_path)
    monkeypatch.setattr(image, "RECIPE", recipe)
    before = (base.base_hash(recipe, "arm64"), image.image_tag("arm64"))
    (tmp_path / change).write_text(change + " changed")
    after = (base.base_hash(recipe, "arm64"), image.image_tag("arm64"))
    assert (before[0] != after[0], before[1] != after[1]) == (base_changes, tag_changes)


def test_recipe_hash_differs_by_arch():
    assert image.image_tag("arm64").split(":")[1][6:] != image.image_tag("amd64").split(":")[1][6:]
