"""The API token never sits in a content-addressed file: runtime.yaml (0644 in objects/ and the
release) names an environment variable that systemd fills from a root-only 0600 file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edgefleet.errors import EdgefleetError
from edgefleet.inventory import load_inventory
from edgefleet.render import UNIT_NAME, render_target

REPO = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-Token_0123456789abcdef"


def _with_token(target, token: str | None, ship: str | None = None):
    s = target.settings
    update: dict = {"runtime": s.runtime.model_copy(update={"token": token})}
    if ship:
        update["ship"] = ship
    return target.__class__(**{**target.__dict__, "settings": s.model_copy(update=update)})


@pytest.fixture(scope="module")
def pi5():
    return load_inventory(REPO / "targets").target("pi5-01")


@pytest.mark.parametrize("ship", ["venv", "image"])
def test_the_token_is_in_no_rendered_file(pi5, ship):
    files = {f.name: f.text for f in render_target(_with_token(pi5, TOKEN, ship))}
    assert not [name for name, text in files.items() if TOKEN in text]
    config = yaml.safe_load(files["runtime.yaml"])
    assert config["token"] is None and config["token_env"] == "EDGEFLEET_RUNTIME_TOKEN"
    assert f"EnvironmentFile={pi5.settings.root}/secrets/runtime.env" in files[UNIT_NAME].splitlines()
    if ship == "image":
        assert "--env EDGEFLEET_RUNTIME_TOKEN" in files[UNIT_NAME]


def test_a_new_token_is_a_new_runtime_yaml_and_no_token_renders_as_before(pi5):
    def config(token):
        return next(f.text for f in render_target(_with_token(pi5, token)) if f.name == "runtime.yaml")
    assert config(TOKEN) != config(TOKEN + "x")
    plain = config(None)
    assert "token_env" not in plain and "secrets" not in plain and "token: null" in plain


@pytest.mark.parametrize("token", ["with space", "quote'd", 'dq"', "back\\slash", "new\nline"])
def test_a_token_the_environment_file_cannot_hold_is_refused(token, tmp_path):
    from edgefleet.settings import RuntimeSettings
    with pytest.raises((ValueError, EdgefleetError)):
        RuntimeSettings(token=token)


def test_the_runtime_reads_its_token_from_the_named_variable(monkeypatch):
    from edge_runtime.config import ConfigError, parse_config
    monkeypatch.setenv("EDGEFLEET_RUNTIME_TOKEN", TOKEN)
    doc = {"host": "0.0.0.0", "token": None, "token_env": "EDGEFLEET_RUNTIME_TOKEN"}
    assert parse_config(doc).token == TOKEN
    monkeypatch.delenv("EDGEFLEET_RUNTIME_TOKEN")
    with pytest.raises(ConfigError, match="EDGEFLEET_RUNTIME_TOKEN"):
        parse_config(doc)
