"""Fleet tasks: render, deploy, rollback, status."""

from __future__ import annotations

import json
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from invoke import Collection, Exit

from ..deploy import deploy as deploy_target
from ..deploy import rollback as rollback_target
from ..errors import EdgefleetError
from ..explain import explain_target
from ..inspect import collect_status, device_diff, kept_releases
from ..inventory import Target, load_inventory
from ..paths import build_dir, bundle_dir, targets_dir
from ..render import (
    MAX_EXPOSURE,
    UNIT_NAME,
    RenderError,
    check_rendered,
    render_target,
    security_exposure,
    write_rendered,
)
from ..status import plain
from ._errors import UsageError, exits_on_user_error, require
from ._task import task
from .image import image_tag


def _sigterm_unwinds() -> None:
    """Turn SIGTERM into SystemExit so a stopped deploy still releases the device lock."""
    def handler(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, handler)


def _tuned(c, target: Target) -> Target:
    """Return `target` with its board's recorded choice (`tune`) applied: what a deploy renders for it,
    so that render and status compare a device with what it was given."""
    from ..tune.recorded import apply_tuning

    return apply_tuning(target, build_dir(c))[0]


def _target(c, name: str | None, task: str) -> Target:
    return _tuned(c, load_inventory(targets_dir(c)).target(require(name, "--target", task)))


def _targets(c, target: str | None, group: str | None) -> list[Target]:
    """Return the one device of --target or every device of --group (exactly one given)."""
    if target and not group:
        return [_tuned(c, load_inventory(targets_dir(c)).target(target))]
    if group and not target:
        return [_tuned(c, t) for t in load_inventory(targets_dir(c)).group(group)]
    raise UsageError("give exactly one of --target or --group")


@task(help={
    "target": "device name from the inventory (targets/)",
    "out": "directory to write into (default: build/rendered/<target>)",
    "dry_run": "print the rendered files instead of writing them",
    "explain": "print where each resolved value came from (board / group / device file:line)",
    "diff": "fetch the files now on the device over SSH and show what a deploy would change",
})
@exits_on_user_error
def render(c, target=None, out=None, dry_run=False, explain=False, diff=False):
    """Render a device's runtime config, systemd units and tuning script from templates/."""
    tgt = _target(c, target, "render")
    if explain:
        print("\n".join(explain_target(tgt)))
        return
    files = render_target(tgt)
    notes = check_rendered(files)
    exposure = security_exposure(next(f for f in files if f.name == UNIT_NAME))
    if exposure is not None:
        if exposure > MAX_EXPOSURE:
            raise RenderError(f"{UNIT_NAME}: systemd-analyze security exposure {exposure} > {MAX_EXPOSURE}")
        notes.append(f"{UNIT_NAME}: systemd-analyze security exposure {exposure} (<= {MAX_EXPOSURE})")
    if diff:
        diffs = device_diff(tgt)
        print("".join(diffs) if diffs else f"{tgt.name}: the device's files match the rendered ones")
    elif dry_run:
        for f in files:
            print(f"# --- {f.name} -> {tgt.name}:{f.device_path}")
            print(f.text, end="" if f.text.endswith("\n") else "\n")
    else:
        out_dir = Path(out) if out else build_dir(c) / "rendered" / tgt.name
        for path in write_rendered(files, out_dir):
            print(f"wrote {path}")
    print(f"variant: {tgt.settings.bundle.precision} (a deploy runs the bundle set's "
          f"<model>-{tgt.settings.bundle.precision} bundle)")
    for note in notes:
        print(f"note: {note}")


@task(help={
    "target": "device name from the inventory (targets/)",
    "bundle": "bundle directory (default: config edgefleet.bundle)",
    "dry_run": "gather facts and print the plan; change nothing",
})
@exits_on_user_error
def deploy(c, target=None, bundle=None, dry_run=False):
    """Deploy the bundle and the runtime to a device over SSH, then gate on health."""
    tgt = _target(c, target, "deploy")
    bundle_path = Path(bundle) if bundle else bundle_dir(c)
    _sigterm_unwinds()
    result = deploy_target(tgt, bundle_path, build_dir(c), dry_run=dry_run, image_tag=image_tag(c))
    if dry_run:
        print("dry run: nothing was changed")
        return
    if result.rolled_back:
        raise Exit(f"{tgt.name}: release {result.release_id} failed its health gate; "
                   f"rolled back to {result.previous}", code=1)
    if not result.ok:
        raise Exit(f"{tgt.name}: release {result.release_id} is UNHEALTHY: {result.health.reason}", code=1)
    verb = ("unchanged" if not result.changed else "repaired" if result.repaired else "deployed")
    tuned = f", tuned: {result.tuned}" if result.tuned else ""
    print(f"{tgt.name}: {verb} {result.release_id} (variant {result.variant}{tuned}) in {result.seconds:.1f} s")


def _print_rollback_table(results) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="edgefleet rollback")
    for column in ("device", "old -> new release", "result", "p95 ms", "temp °C", "time s", "detail"):
        table.add_column(column)
    for r in results:
        h = r.health
        result = "skipped" if r.skipped else "rolled back" if r.ok else ("FAILED, restored" if r.restored else "FAILED")
        releases = (f"{r.from_release or '(none)'} (kept)" if r.skipped
                    else f"{r.from_release or '?'} -> {r.to_release or '?'}")
        table.add_row(r.target, plain(releases), result,
                      "-" if h is None or h.p95_ms is None else f"{h.p95_ms:.1f}",
                      "-" if h is None or h.temperature_c is None else f"{h.temperature_c:.1f}", f"{r.seconds:.1f}",
                      plain((r.error or (", ".join(h.notes) if h else "")).split("; journal:")[0][:160]))
    Console(width=None if sys.stdout.isatty() else 160).print(table)


@task(help={
    "target": "one device name",
    "group": "every device of a group",
    "parallel": "at most this many devices at once (default 10)",
    "json": "print one JSON document instead of a table",
    "to": "with --target: this release (still on the device) instead of the previous committed one",
})
@exits_on_user_error
def rollback(c, target=None, group=None, parallel=10, json_=False, to=None):
    """Roll devices back to their previous committed release, through the health gate."""
    if to and group:
        raise UsageError("--to names one device's release: use it with --target")
    if int(parallel) < 1:
        raise UsageError(f"--parallel {parallel}: need at least 1")
    targets = _targets(c, target, group)
    _sigterm_unwinds()
    out = sys.stderr if json_ else sys.stdout

    def roll_back(target: Target):
        return rollback_target(target, to, log=lambda line: print(f"{target.name}: {line.strip()}", file=out))

    with ThreadPoolExecutor(max_workers=int(parallel)) as pool:
        results = list(pool.map(roll_back, targets))
    if json_:
        print(json.dumps({"targets": {r.target: {
            "from": r.from_release, "to": r.to_release, "ok": r.ok, "active": r.active, "restored": r.restored,
            "skipped": r.skipped,
            "seconds": round(r.seconds, 2), "error": r.error,
            "health": None if r.health is None else {k: getattr(r.health, k) for k in (
                "ok", "reason", "min_cosine", "p95_ms", "rss_mib", "temperature_c", "throttled", "notes")},
        } for r in results}}, indent=2))
    else:
        _print_rollback_table(results)
    if not all(r.ok for r in results):
        raise Exit(code=1)


def _healthy_cell(st) -> str:
    """yes, ?, or NO with the reason (the runtime's own words: too hot, queue full, selftest)."""
    if st.healthy is None:
        return "?"
    return "yes" if st.healthy else f"NO: {st.ready_detail}" if st.ready_detail else "NO"


def _print_status_table(statuses, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="edgefleet status")
    # names, release ids and bundle ids are never cut (the other columns wrap): as wide as their longest cell
    widest = {"target": max([len(st.target) for st in statuses] + [6]), "release": 14, "bundle": 12}
    for column in ("target", "release", "bundle", "healthy", "service", "governor", "temperature", "drift"):
        table.add_column(column, min_width=widest.get(column), no_wrap=column in widest)
    for st in statuses:
        if not st.reachable:
            table.add_row(st.target, "-", "-", "-", "unreachable", "-", "-", plain(st.error))
            continue
        governors = ", ".join(sorted(set(st.governors.values()))) or "no cpufreq"
        table.add_row(plain(st.target), plain(st.release or "-"), plain(st.bundle_id or "-"), plain(_healthy_cell(st)),
                      plain(st.service), plain(governors), plain(st.throttling),
                      plain("\n".join(st.drift + [f"warning: {w}" for w in st.warnings]) or "none"))
    (console or Console()).print(table)


def _kept_or_why(target: Target) -> list[dict]:
    from ..transport import SSHError

    try:
        return kept_releases(target)
    except (SSHError, EdgefleetError, OSError) as exc:  # an unreachable device is a row, not the end
        return [{"release": f"unreachable: {str(exc)[-200:]}"}]


def _print_releases(kept: dict[str, list[dict]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="releases kept on the devices (rollback --target X --to RELEASE)")
    for column in ("target", "release", "bundle", "active", "last deployed", "passed its gate"):
        table.add_column(column, no_wrap=column in ("target", "release", "bundle"))
    for name, rows in kept.items():
        for row in rows or [{"release": "(none)"}]:
            table.add_row(plain(name), plain(row["release"]), plain(row.get("bundle_id") or "-"),
                          "yes" if row.get("active") else "", plain(row.get("deployed") or "-"),
                          {True: "yes", False: "no", None: "-"}[row.get("healthy")])
    Console().print(table)


@task(help={
    "target": "one device name",
    "group": "every device of a group",
    "json": "print one JSON document instead of a table",
    "releases": "list the releases kept on each device (ids for rollback --to), instead of the status",
})
@exits_on_user_error
def status(c, target=None, group=None, json_=False, releases=False):
    """Report release, health, governor, temperatures and drift for a device or a group."""
    if releases:
        kept = {t.name: _kept_or_why(t) for t in _targets(c, target, group)}
        if json_:
            print(json.dumps({"targets": {name: {"releases": rows} for name, rows in kept.items()}}, indent=2))
        else:
            _print_releases(kept)
        if any(row["release"].startswith("unreachable") for rows in kept.values() for row in rows):
            raise Exit(code=1)
        return
    statuses = [collect_status(t) for t in _targets(c, target, group)]
    if json_:
        print(json.dumps({"targets": {st.target: st.as_dict() for st in statuses}}, indent=2))
    else:
        _print_status_table(statuses)
    if any(not st.reachable or st.healthy is False or st.drift for st in statuses):
        raise Exit(code=1)


ns = Collection("fleet")
ns.add_task(render)
ns.add_task(deploy)
ns.add_task(rollback)
ns.add_task(status)
