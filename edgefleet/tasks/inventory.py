"""Inventory tasks: `inventory.schema` writes the JSON Schemas and the reference in docs/inventory.md."""

from __future__ import annotations

from invoke import Collection, Exit

from ..paths import repo_root
from ._errors import exits_on_user_error
from ._task import task


@task(help={"check": "write nothing; exit 1 naming each generated file that is out of date"})
@exits_on_user_error
def schema(c, check=False):
    """Generate targets/*.schema.json and the reference in docs/inventory.md from the models."""
    from ..inventory_schema import generated_files

    repo = repo_root()
    stale = []
    for path, text in generated_files(repo).items():
        if path.exists() and path.read_text() == text:
            print(f"up to date: {path.relative_to(repo)}")
            continue
        stale.append(path)
        if not check:
            path.write_text(text)
            print(f"wrote {path.relative_to(repo)}")
    if check and stale:
        names = ", ".join(str(p.relative_to(repo)) for p in stale)
        raise Exit(f"out of date: {names} (run: invoke inventory.schema)", code=1)


ns = Collection("inventory", schema)
