"""Each target gets the bundle of the variant its board asks for, from a bundle set."""

import json
from pathlib import Path

import pytest

from edgefleet.deploy.variant import pick_variant
from edgefleet.errors import InputError
from edgefleet.inventory import load_inventory

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def inventory():
    return load_inventory(REPO / "targets")


def _bundle(path: Path, precision: str | None) -> Path:
    path.mkdir(parents=True)
    (path / "bundle.json").write_text(json.dumps({"name": path.name} | ({"precision": precision} if precision else {})))
    return path


@pytest.mark.parametrize("given, present, target, got, warned", [
    ("m-int8", ["m-int8", "m-fp16"], "orin-01", "m-fp16", False),
    ("m-fp16", ["m-int8", "m-fp16"], "orin-01", "m-fp16", False),
    ("m-fp16", ["m-int8", "m-fp16"], "pi5-01", "m-int8", False),
    ("m-int8", ["m-int8", "m-fp16"], "pi5-01", "m-int8", False),
    # no fp16 beside it: the Orin gets int8, and a warning says so
    ("m-int8", ["m-int8"], "orin-01", "m-int8", True),
    ("bundle", ["bundle"], "orin-01", "bundle", True),
])
def test_pick_variant(inventory, tmp_path, given, present, target, got, warned):
    for name in present:
        _bundle(tmp_path / name, None if name == "bundle" else name.rsplit("-", 1)[1])
    variant = pick_variant(inventory.target(target), tmp_path / given)
    assert variant.bundle_dir == tmp_path / got
    assert bool(variant.warning) == warned
    if warned:
        assert "orin-01: board orin-nano takes the fp16 variant" in variant.warning


def test_a_sibling_whose_precision_contradicts_its_name_is_an_input_error(inventory, tmp_path):
    _bundle(tmp_path / "m-int8", "int8")
    _bundle(tmp_path / "m-fp16", "int8")
    with pytest.raises(InputError, match=r"m-fp16/bundle.json: precision int8, but its name says fp16"):
        pick_variant(inventory.target("orin-01"), tmp_path / "m-int8")


def test_orin_profiles_take_fp16_and_pis_int8(inventory):
    assert inventory.target("orin-01").settings.bundle.precision == "fp16"
    assert inventory.target("pi5-01").settings.bundle.precision == "int8"
