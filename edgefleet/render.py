"""Render the files written on a device from Jinja2 templates, in memory, and check them."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import jinja2
import yaml

from .inventory import Target
from .paths import repo_root

__all__ = ["RenderedFile", "render_target", "write_rendered", "check_rendered", "RenderError", "UNIT_NAME"]

UNIT_NAME = "edgefleet-runtime.service"
DEVICE_PYTHON = "/usr/bin/python3"


class RenderError(Exception):
    """A template failed to render or a rendered file failed its check."""


@dataclass(frozen=True)
class RenderedFile:
    """One rendered file: its name, where it goes on the device, and its text."""

    name: str
    device_path: str
    text: str


def _environment(templates_dir: Path) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


def render_target(target: Target, templates_dir: Path | None = None) -> list[RenderedFile]:
    """Render the runtime config and the runtime unit for `target`."""
    env = _environment(templates_dir or repo_root() / "templates")
    settings = target.settings
    context = {
        "target": target,
        "settings": settings,
        "runtime": settings.runtime,
        "root": settings.root,
        "python": DEVICE_PYTHON,
    }
    plan = [
        ("runtime.yaml", "runtime.yaml.j2", f"{settings.root}/current/runtime.yaml"),
        (UNIT_NAME, f"{UNIT_NAME}.j2", f"/etc/systemd/system/{UNIT_NAME}"),
    ]
    rendered = []
    for name, template, device_path in plan:
        try:
            text = env.get_template(template).render(context)
        except jinja2.TemplateError as exc:
            raise RenderError(f"templates/{template}: {exc}") from None
        rendered.append(RenderedFile(name, device_path, text))
    return rendered


def check_rendered(files: list[RenderedFile]) -> list[str]:
    """Check rendered files (YAML parses; units pass `systemd-analyze verify`); return notes."""
    notes = []
    for f in files:
        if f.name.endswith(".yaml"):
            try:
                yaml.safe_load(f.text)
            except yaml.YAMLError as exc:
                raise RenderError(f"{f.name}: rendered YAML does not parse: {exc}") from None
        elif f.name.endswith(".service"):
            notes.append(_verify_unit(f))
    return [n for n in notes if n]


def _verify_unit(unit: RenderedFile) -> str:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return f"{unit.name}: systemd-analyze not installed, unit not verified"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / unit.name
        path.write_text(unit.text)
        proc = subprocess.run(
            [analyze, "verify", "--man=no", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    # verify also complains about the host's own units and about paths that exist only on
    # the device (the release dir); keep what is about our unit's syntax.
    problems = [
        line
        for line in (proc.stderr + proc.stdout).splitlines()
        if unit.name in line and "Command" not in line and "not executable" not in line
    ]
    if problems:
        raise RenderError(f"{unit.name}: systemd-analyze verify failed:\n" + "\n".join(problems))
    return ""


def write_rendered(files: list[RenderedFile], out_dir: Path) -> list[Path]:
    """Write rendered files into `out_dir`; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in files:
        path = out_dir / f.name
        path.write_text(f.text)
        paths.append(path)
    return paths
