"""Race edgefleet's real rollout against Ansible, Ansible + mitogen, pyinfra and a parallel rsync loop.

    .venv/bin/python benchmarks/bench_race.py [--devices 10] [--rounds 3] [--tools edgefleet,rsync,...]

Same job for all (see race_tools.py): edgefleet's release for each lab device, placed, plus a
restart. Three phases, each a fresh set of rounds, tools interleaved (order rotated every
round): `first` (devices wiped), `noop` (run again, nothing changed), `config` (one rendered
value, runtime.log_level, changes on every device). Wall time is the tool's whole command,
start-up included (edgefleet runs as a child process too). Bytes are counted by nft
counters on the loopback hook for the lab slot's SSH port range: "sent" is towards the
devices, summed over them. edgefleet's `gate` column is the tail its health gate adds after
the last device was restarted; `placed` is the wall time without that tail (`--gates apart`:
no gate starts before every device is placed). The others restart a /bin/true stand-in, or
with `--restart runtime` the runtime itself, as edgefleet does.

Needs root (nft), the lab (docker), and pulls the contenders (pinned) into build/race/venv.
Starts its own lab unless --reuse-lab; the lab uses EDGEFLEET_LAB_SLOT.

Code before and after a change, on the same devices: `--tree before=DIR --tree after=DIR` runs
edgefleet from each work tree (tool `edgefleet@before`, ...) in turn, order rotated every round.
Each tree makes its own release, so in the `noop` phase every turn starts with one untimed run
that puts that tree's release on the devices (`switch`), then `--per-turn K` timed no-ops.
`--op deploy` times `deploy()` of each device one after another in one process instead of one
rollout wave (the no-op deploy a user runs device by device).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
# the edgefleet code a child runs: this tree's, or another work tree's (--tree)
CODE = Path(os.environ.get("EDGEFLEET_RACE_TREE") or REPO)
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(CODE))

import race_tools as rt  # noqa: E402

from edgefleet.inventory import load_inventory  # noqa: E402

# ansible: ssh + pipelining, synchronize; mitogen: mitogen_linear strategy with synchronize or copy
ANSIBLE_TOOLS = {"ansible": (False, "synchronize"), "ansible-copy": (False, "copy"),
                 "mitogen": (True, "synchronize"), "mitogen-copy": (True, "copy")}
TOOLS = ("edgefleet", "rsync", "rsync-mux", *ANSIBLE_TOOLS, "pyinfra")
DEFAULT_TOOLS = ("edgefleet", "rsync", "rsync-mux", "ansible", "mitogen", "mitogen-copy", "pyinfra")
PHASES = ("first", "noop", "config")
BUNDLE = Path(os.environ.get("EDGEFLEET_RACE_BUNDLE") or REPO / "build" / "bundles" / "all-minilm-l6-v2-int8")
RUN_TIMEOUT_S = 1800


class Counters:
    """nft byte counters on the output hook for this lab slot's SSH ports (loopback traffic passes it once)."""

    def __init__(self):
        from edgefleet.lab import plan as lab_plan

        base = lab_plan.SSH_PORT_BASE + 100 * lab_plan.slot()
        self.table = f"edgefleet_race{lab_plan.slot()}"
        self.ports = f"{base + 1}-{base + lab_plan.MAX_DEVICES}"

    def __enter__(self):
        subprocess.run(["nft", "delete", "table", "inet", self.table], capture_output=True)
        rules = (f"table inet {self.table} {{\n chain out {{\n  type filter hook output priority 0; policy accept;\n"
                 f"  tcp dport {self.ports} counter comment \"sent\"\n"
                 f"  tcp sport {self.ports} counter comment \"received\"\n }}\n}}\n")
        subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True)
        return self

    def read(self) -> dict[str, int]:
        doc = json.loads(subprocess.run(["nft", "-j", "list", "table", "inet", self.table], capture_output=True,
                                        text=True, check=True).stdout)
        out = {}
        for item in doc["nftables"]:
            rule = item.get("rule")
            if rule:
                counter = next(e["counter"] for e in rule["expr"] if "counter" in e)
                out[rule["comment"]] = counter["bytes"]
        return out

    def __exit__(self, *exc):
        subprocess.run(["nft", "delete", "table", "inet", self.table], capture_output=True)


def on_devices(targets, command: str, puts: list[tuple[Path | bytes, str]] = ()) -> None:
    """Run `command` on every device (after uploading `puts`), in parallel, through edgefleet.transport."""
    import io

    from edgefleet.transport import connect

    def one(t):
        c = connect(t)
        try:
            for src, remote in puts:
                c.put(io.BytesIO(src) if isinstance(src, bytes) else str(src), remote=remote)
            r = c.run(command, hide=True, warn=True, in_stream=False)
            if r.exited != 0:
                raise RuntimeError(f"{t.name}: {command[:60]}... failed: {r.stderr.strip()[-400:]}")
        finally:
            c.close()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, targets))


def provision(targets, restart: str = "stand-in") -> None:
    """Give the devices what the contenders need and edgefleet does not: rsync, and the race@ unit
    (`restart`: "stand-in", a one-shot /bin/true; "runtime", edgefleet's runtime from their tree)."""
    debs = rt.rsync_debs()
    unit = rt.RACE_RUNTIME_UNIT if restart == "runtime" else rt.RACE_UNIT
    puts = [(d, f"/tmp/{d.name}") for d in debs] + [(unit.encode(), "/etc/systemd/system/race@.service")]
    names = " ".join(f"/tmp/{d.name}" for d in debs)
    on_devices(targets, f"(command -v rsync >/dev/null || dpkg -i {names} >/dev/null) && rm -f {names} "
                        f"&& systemctl daemon-reload && mkdir -p {rt.REMOTE_ROOT}", puts)


def reset(targets, keep_packages: bool = False) -> None:
    """Remove what every tool put on the devices, so the next run is a first deploy.

    `keep_packages`: leave edgefleet's unpacked packages (envs/): a first deploy of the model onto
    a provisioned fleet, the issue's job (model, sources, a rendered template, one command)."""
    gone = ("/opt/edgefleet/objects /opt/edgefleet/releases /opt/edgefleet/current /opt/edgefleet/state.json "
            "/opt/edgefleet/.lock" if keep_packages else "/opt/edgefleet")
    on_devices(targets, "systemctl stop 'race@*' >/dev/null 2>&1; "
                        "systemctl disable --now edgefleet-runtime.service edgefleet-tuning.service >/dev/null 2>&1; "
                        f"rm -rf {gone} /etc/systemd/system/edgefleet-*.service /usr/local/lib/edgefleet "
                        f"/var/tmp/edgefleet-incoming-* {rt.REMOTE_ROOT}/*; systemctl daemon-reload")


def set_log_level(targets_dir: Path, level: str) -> None:
    """Set runtime.log_level of every lab device in the inventory (the config-only change)."""
    path = targets_dir / "lab.yaml"
    doc = yaml.safe_load(path.read_text())
    for entry in doc["devices"].values():
        entry.setdefault("runtime", {})["log_level"] = level
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def lab_targets(targets_dir: Path):
    inventory = load_inventory(targets_dir)
    return [inventory.target(n) for n in sorted(inventory.targets) if n.startswith("lab-")]


def stage(targets, build: Path, stage_dir: Path, packages: bool = True) -> None:
    """Render edgefleet's release for each target and lay it out for the other tools."""
    from edgefleet.rollout import prepare_releases

    releases = prepare_releases(targets, BUNDLE, build, log=lambda _: None)
    for t in targets:
        rt.stage_release(releases[t.name], stage_dir / t.name, packages=packages)


def edgefleet_child(targets_dir: Path, build: Path) -> int:
    """Run one rollout of all lab devices (one wave, N connections); print timings as JSON.

    EDGEFLEET_RACE_GATES=apart: each device's health gate waits until every device has reached
    its own (or finished without one), so no gate runs while others still place: `placed` is then
    the deploy without the gate's CPU in it, and the gates follow together. Default (overlap): as
    a rollout runs, each gate as soon as its device is placed.
    """
    if os.environ.get("EDGEFLEET_RACE_OP") == "deploy":
        return deploy_child(targets_dir, build)
    import edgefleet.deploy.run as deploy_mod  # the module whose deploy() calls health_gate
    import edgefleet.rollout.run as run_mod
    from edgefleet.rollout import plan_rollout, rollout

    apart = os.environ.get("EDGEFLEET_RACE_GATES") == "apart"
    t0 = time.monotonic()
    gates: list[tuple[float, float]] = []
    lock = threading.Lock()
    real_gate, real_deploy = deploy_mod.health_gate, run_mod.deploy
    targets = lab_targets(targets_dir)
    expected = len(targets)  # apart: the gates go once this many devices arrived
    arrived, all_in, at = 0, threading.Event(), threading.local()
    released: float | None = None  # when the last device reached its gate (apart)

    def arrive() -> None:
        nonlocal arrived, released
        with lock:
            arrived += 1
            if arrived == expected:
                released = time.monotonic() - t0
                all_in.set()

    def timed_gate(*args, **kwargs):
        if apart and not getattr(at, "gate", False):
            at.gate = True
            arrive()
            all_in.wait(RUN_TIMEOUT_S)
        start = time.monotonic()
        try:
            return real_gate(*args, **kwargs)
        finally:
            with lock:
                gates.append((start - t0, time.monotonic() - t0))

    def counted_deploy(*args, **kwargs):  # a device that fails before its gate arrives all the same
        at.gate = False
        try:
            return real_deploy(*args, **kwargs)
        finally:
            if apart and not at.gate:
                arrive()
    deploy_mod.health_gate, run_mod.deploy = timed_gate, counted_deploy
    plan = plan_rollout([t.name for t in targets], canary=0, batch="100%", max_fail=0, parallel=len(targets))
    doc = rollout(targets, plan, BUNDLE, build, progress=False, log=lambda _: None)
    wall = time.monotonic() - t0
    placed = released if apart and released is not None else max((s for s, _ in gates), default=wall)
    errors = {name: d.get("error", "")[:600] for name, d in doc["devices"].items() if d.get("error")}
    # what the devices' logs say went up (objects and packages), to tell payload bytes from the rest
    uploaded = [float(m.group(1)) for log in Path(doc["record"], "logs").glob("*.log")
                for m in re.finditer(r"uploaded \d+ objects, ([0-9.]+) MB", log.read_text())]
    print(json.dumps({"counts": doc["counts"], "errors": errors, "wall": wall, "placed": placed,
                      "uploaded_mb": sum(uploaded), "uploading_devices": len(uploaded),
                      "gate_median": statistics.median(e - s for s, e in gates) if gates else 0.0}))
    return 0


def deploy_child(targets_dir: Path, build: Path) -> int:
    """Run `deploy()` of every lab device one after another (the tree's own code); print timings as JSON."""
    from edgefleet.deploy import deploy

    t0 = time.monotonic()
    counts: dict[str, int] = {}
    errors, each = {}, []
    for target in lab_targets(targets_dir):
        start = time.monotonic()
        result = deploy(target, BUNDLE, build, log=lambda _: None)
        each.append(time.monotonic() - start)
        kind = "failed" if not result.ok else "updated" if result.changed else "unchanged"
        counts[kind] = counts.get(kind, 0) + 1
        if not result.ok:
            errors[target.name] = str(getattr(result.health, "reason", ""))[:600]
    counts["ok"] = counts.get("updated", 0) + counts.get("unchanged", 0)
    wall = time.monotonic() - t0
    print(json.dumps({"counts": counts, "errors": errors, "wall": wall, "placed": wall, "uploaded_mb": 0.0,
                      "uploading_devices": 0, "gate_median": 0.0, "deploy_median": statistics.median(each)}))
    return 0


def tree_of(tool: str, ctx: dict) -> Path | None:
    """Return the work tree an `edgefleet@NAME` tool runs from (None: this one)."""
    return ctx["trees"].get(tool.partition("@")[2]) if "@" in tool else None


def run_tool(tool: str, ctx: dict) -> dict:
    """Run one tool once against all devices; return wall seconds and, for edgefleet, its own timings."""
    env, cwd = None, None
    masters = ctx["masters"] / tool  # where the tool's OpenSSH masters live (edgefleet, rsync-mux, Ansible)
    if ctx["connections"] == "cold":
        stop_control_masters(masters)
    warm = live_masters(masters)
    if tool.startswith("edgefleet"):
        tree = tree_of(tool, ctx)
        build = ctx["build"] / tool if tree else ctx["build"]
        inventory = build / "targets" if tree else ctx["targets_dir"]
        argv = [sys.executable, __file__, "--edgefleet-child", str(inventory), str(build)]
        env = {**os.environ, "XDG_RUNTIME_DIR": str(masters),  # its masters: <dir>/edgefleet-ssh-<uid>/
               "EDGEFLEET_RACE_GATES": ctx["gates"], "EDGEFLEET_RACE_OP": ctx["op"],
               "EDGEFLEET_RACE_TREE": str(tree or REPO)}
    elif tool in ("rsync", "rsync-mux"):
        script = rt.rsync_loop_script(ctx["hosts"], ctx["stage"], ctx["key"], ctx["known_hosts"],
                                      control_dir=masters if tool == "rsync-mux" else None, tool=tool)
        argv = ["bash", "-c", script]
    elif tool in ANSIBLE_TOOLS:
        work = ctx["work"] / tool
        mitogen, module = ANSIBLE_TOOLS[tool]
        argv, env = rt.ansible_files(work, ctx["hosts"], ctx["stage"], ctx["key"], ctx["known_hosts"],
                                     forks=len(ctx["hosts"]), mitogen=mitogen, module=module, tool=tool,
                                     control_dir=masters)
        cwd = work
    elif tool == "pyinfra":
        argv = rt.pyinfra_files(ctx["work"] / tool, ctx["hosts"], ctx["stage"], ctx["key"], ctx["known_hosts"],
                                parallel=len(ctx["hosts"]))
        cwd = ctx["work"] / tool
    t0, r0 = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=RUN_TIMEOUT_S)
    wall, r1 = time.monotonic() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        why = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "UNREACHABLE" in ln or "fatal:" in ln]
        raise RuntimeError(f"{tool} failed (exit {proc.returncode}):\n" + "\n".join(why[:5]) +
                           f"\n{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}")
    # CPU the tool's own processes used on the host (user + sys of it and its waited-for children)
    out = {"wall": wall, "cpu": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime), "warm": warm}
    if tool.startswith("edgefleet"):
        child = json.loads(proc.stdout.strip().splitlines()[-1])
        if child["counts"].get("ok") != len(ctx["hosts"]):
            raise RuntimeError(f"edgefleet {ctx['op']} not ok: {child}")
        out.update(placed=child["placed"] + (wall - child["wall"]), gate=child["wall"] - child["placed"],
                   counts=child["counts"], uploaded_mb=child["uploaded_mb"], uploading=child["uploading_devices"],
                   inner=child["wall"], deploy_median=child.get("deploy_median"))
    return out


def _sockets(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_socket()] if root.is_dir() else []


def stop_control_masters(root: Path) -> None:
    """Close the OpenSSH masters a tool left under `root` (ControlPersist), so the next run logs in afresh."""
    for sock in _sockets(root):
        subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "x"], capture_output=True)


def live_masters(root: Path) -> int:
    """Return how many OpenSSH masters under `root` answer (a run that starts warm reuses them)."""
    return sum(subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "check", "x"],
                              capture_output=True).returncode == 0 for sock in _sockets(root))


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def race(args, targets_dir: Path, build: Path) -> tuple[dict, int]:
    """Run every phase and round; return {phase: {tool: [run, ...]}} and the number of devices."""
    from edgefleet import lab

    paths = lab.LabPaths(build_dir=REPO / "build", targets_dir=targets_dir)
    targets = lab_targets(targets_dir)
    ctx = {"targets_dir": targets_dir, "build": build, "hosts": [(t.name, t.port) for t in targets],
           "key": paths.client_key.resolve(), "known_hosts": paths.known_hosts.resolve(),
           "stage": build / "stage", "work": build / "work", "connections": args.connections, "gates": args.gates,
           "masters": Path(tempfile.mkdtemp(prefix="efr-", dir="/tmp")),  # short: sockets live there
           "trees": args.trees, "op": args.op}
    others = [t for t in args.tools if not t.startswith("edgefleet")]  # the contenders need rsync and race@
    if others:
        provision(targets, args.restart)
    for name, tree in args.trees.items():  # each tree: its own host caches, and its own board profiles
        own = build / f"edgefleet@{name}"  # beside the lab's inventory (their keys differ between versions)
        own.mkdir()
        (own / "device-envs").symlink_to(REPO / "build" / "device-envs")
        shutil.copytree(tree / "targets" / "boards", own / "targets" / "boards")
        (own / "targets" / "lab.yaml").symlink_to(targets_dir / "lab.yaml")
    results: dict = {p: {t: [] for t in args.tools} for p in args.phases}
    failures: list[str] = []
    provisioned = False
    with Counters() as counters, _masters_cleaned(ctx["masters"]):
        for tool in {"edgefleet", *args.tools}:
            (ctx["masters"] / tool).mkdir(mode=0o700)
        for rnd in range(args.rounds):
            order = args.tools[rnd % len(args.tools):] + args.tools[:rnd % len(args.tools)]
            if "first" in args.phases or rnd == 0:
                set_log_level(targets_dir, "info")
                if args.job == "model" and rnd == 0 and not provisioned:  # edgefleet unpacks the packages once,
                    reset(targets)                                       # untimed: the fleet is provisioned
                    print(f"setup: packages on every device ({run_tool('edgefleet', ctx)['wall']:.1f} s, not counted)",
                          flush=True)
                    provisioned = True
                    if args.restart == "runtime":  # the others' runtimes use the packages it unpacked
                        on_devices(targets, f"set -- /opt/edgefleet/envs/*; [ -d \"$1\" ] && ln -sfn \"$1\" {rt.RACE_SITE}")
                reset(targets, keep_packages=args.job == "model")
                if others:
                    stage(lab_targets(targets_dir), build, ctx["stage"], packages=args.job == "full")
            if "first" not in args.phases and rnd == 0:  # the devices need the job once, untimed
                for tool in order:
                    if tree_of(tool, ctx):  # its turns begin with a switch to its release anyway
                        continue
                    print(f"setup: first deploy by {tool} ({run_tool(tool, ctx)['wall']:.1f} s, not counted)", flush=True)
            for phase in args.phases:
                if phase == "config":  # without first deploys in between, flip the value back and forth
                    level = "warning" if "first" in args.phases or rnd % 2 == 0 else "info"
                    set_log_level(targets_dir, level)
                    if others:
                        stage(lab_targets(targets_dir), build, ctx["stage"], packages=args.job == "full")
                for tool, turn_run in [(t, k) for t in order for k in range(args.per_turn)]:
                    if phase == "noop" and tree_of(tool, ctx) and turn_run == 0:
                        # the devices may hold another tree's release: put this one's (every turn, so that
                        # each turn starts alike, the A/A control's too)
                        switch = run_tool(tool, ctx)
                        print(f"round {rnd + 1} switch {tool} ({switch['wall']:.1f} s, {switch['counts']}, not "
                              f"counted)", flush=True)
                        time.sleep(args.settle)  # the restarted runtimes finish starting before the clock runs
                    if phase == "first" and tool == "edgefleet":  # a new fleet's configs were never
                        for cache in ("checked", "pyc"):  # checked, its payload never compiled: no host cache
                            shutil.rmtree(build / cache, ignore_errors=True)
                    before = counters.read()
                    load_1m = os.getloadavg()[0]
                    try:
                        run = run_tool(tool, ctx)
                        if phase == "noop" and tool.startswith("edgefleet") and \
                                run["counts"].get("unchanged") != len(ctx["hosts"]):
                            raise RuntimeError(f"not a no-op: {run['counts']}")
                    except RuntimeError as exc:  # reported and left out of the medians, the race goes on
                        print(f"round {rnd + 1} {phase:6} {tool:12} FAILED: {str(exc)[:1500]}", flush=True)
                        failures.append(f"round {rnd + 1} {phase} {tool}")
                        continue
                    after = counters.read()
                    if args.restart == "runtime" and tool != "edgefleet":  # untimed: one runtime of theirs
                        on_devices(targets, f"systemctl stop race@{tool}.service")  # at a time (memory)
                    run.update(sent=after["sent"] - before["sent"], received=after["received"] - before["received"],
                               load=load_1m)
                    results[phase][tool].append(run)
                    extra = (f" (placed {run['placed']:.1f} s, gate {run['gate']:.1f} s; {run['uploading']} device(s) "
                             f"uploaded {run['uploaded_mb']:.1f} MB)" if "gate" in run else "")
                    extra += f", {run['warm']} warm masters" if run["warm"] else ""
                    print(f"round {rnd + 1} {phase:6} {tool:12} {run['wall']:7.3f} s{extra}, host CPU "
                          f"{run['cpu']:6.2f} s, sent {run['sent'] / 1e6:8.3f} MB, load {load_1m:.1f}", flush=True)
    if failures:
        print("failed runs (not in the medians): " + "; ".join(failures))
    return results, len(targets)


class _masters_cleaned:
    """Stop every master the tools left under `root` and remove it, however the race ends."""

    def __init__(self, root: Path):
        self.root = root

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        stop_control_masters(self.root)
        shutil.rmtree(self.root, ignore_errors=True)
        return False


def med(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def table(results: dict, n: int, rounds: int, loads: tuple[str, str], job: str = "full",
          restart: str = "stand-in", gates: str = "overlap") -> str:
    lines = [f"\ndeploy race: {n} amd64 lab devices, {rounds} round(s), job {job}, the others restart: {restart}, "
             f"edgefleet's gates: {gates}, "
             f"medians; load before: {loads[0]}",
             f"{'':36}after:  {loads[1]}",
             f"{'phase':7} {'tool':14} {'wall s':>8} {'placed s':>9} {'gate s':>7} {'host CPU s':>10} {'sent MB':>9} "
             f"{'recv MB':>8} {'x edgefleet':>11}"]
    for phase, by_tool in results.items():
        ef_runs = by_tool.get("edgefleet") or by_tool.get("edgefleet-cold")
        ef = med(ef_runs, "placed" if phase == "first" else "wall") if ef_runs else None
        for tool, runs in by_tool.items():
            if not runs:
                continue
            wall = med(runs, "wall")
            placed = f"{med(runs, 'placed'):9.2f}" if "placed" in runs[0] else f"{'':9}"
            gate = f"{med(runs, 'gate'):7.2f}" if "gate" in runs[0] else f"{'':7}"
            ratio = f"{wall / ef:11.2f}" if ef and not tool.startswith("edgefleet") else f"{'':11}"
            cpu = f"{med(runs, 'cpu'):10.2f}" if "cpu" in runs[0] else f"{'':10}"
            lines.append(f"{phase:7} {tool:14} {wall:8.2f} {placed} {gate} {cpu} {med(runs, 'sent') / 1e6:9.3f} "
                         f"{med(runs, 'received') / 1e6:8.3f} {ratio}")
    lines.append("x edgefleet: the tool's wall time / edgefleet's (first: edgefleet's placed time, without the gate)")
    return "\n".join(lines)


def split_warm(results: dict) -> dict:
    """Return `results` with edgefleet's runs apart by how they started: `edgefleet` with its SSH
    masters up (a re-run within EDGEFLEET_SSH_PERSIST of the last one), `edgefleet-cold` logging in
    afresh (here: when the other tools' turns outlasted the 120 s)."""
    out = {}
    for phase, by_tool in results.items():
        out[phase] = {}
        for tool, runs in by_tool.items():
            if tool != "edgefleet":
                out[phase][tool] = runs
                continue
            warm, cold = [r for r in runs if r.get("warm")], [r for r in runs if not r.get("warm")]
            if warm:
                out[phase]["edgefleet"] = warm
            if cold:
                out[phase]["edgefleet-cold"] = cold
    return out


def verdict(results: dict) -> str:
    """Say how edgefleet stands against the issue's done-when targets (warm and cold apart)."""
    r = {p: {t: med(runs, "wall") for t, runs in by.items() if runs} for p, by in results.items()}
    lines = []
    first, noop, config = (results.get(p, {}) for p in PHASES)
    for ef_tool in ("edgefleet", "edgefleet-cold"):
        if first.get(ef_tool) and first.get("rsync"):
            placed = med(first[ef_tool], "placed")
            lines.append(f"first ({ef_tool}), placed (no gate) {placed:.1f} s vs rsync loop {r['first']['rsync']:.1f} s: "
                         f"{'met' if placed <= r['first']['rsync'] else 'MISSED'} (target: no slower)")
        if noop.get(ef_tool):
            ef = r["noop"][ef_tool]
            for label, tools, want in (("the rsync loop", ("rsync",), 3.0),
                                       ("Ansible + mitogen (its faster variant)", ("mitogen", "mitogen-copy"), 8.0)):
                walls = [r["noop"][t] for t in tools if t in r["noop"]]
                if walls:
                    got = min(walls) / ef
                    lines.append(f"no-op ({ef_tool}) vs {label}: {got:.1f}x faster "
                                 f"({'met' if got >= want else 'MISSED'}, target >= {want:g}x)")
            lines.append(f"no-op ({ef_tool}) sent {med(noop[ef_tool], 'sent') / 1e3:.0f} kB in all (no payload)")
        if config.get(ef_tool):
            lines.append(f"config change ({ef_tool}) sent {med(config[ef_tool], 'sent') / 1e3:.0f} kB in all")
    return "\n".join(lines)


def quartiles(values: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return q[0], q[2]


def tree_table(results: dict, n: int, op: str, names: list[str], per_turn: int = 1) -> str:
    """Each tree's runs side by side: median, quartiles, the 1-minute load, ratio to the first tree,
    and the median of the per-round ratios (each round's median against the first tree's in the
    same round: slow drifts of the machine's load cancel out)."""
    lines = [f"\n{op} from each work tree, {n} devices (wall s of the whole child process; in-proc: "
             f"without its start-up)",
             f"{'phase':7} {'tree':14} {'runs':>4} {'median':>7} {'q1-q3':>13} {'in-proc':>7} {'q1-q3':>13} "
             f"{'load':>9} {'x first':>7} {'paired':>15}"]
    for phase, by_tool in results.items():
        first: dict | None = None
        for name in names:
            runs = by_tool.get(f"edgefleet@{name}") or []
            if not runs:
                continue
            walls, inner = [r["wall"] for r in runs], [r["inner"] for r in runs]
            rounds = {}
            for i, r in enumerate(runs):
                rounds.setdefault(i // per_turn, []).append(r["wall"])
            median = statistics.median(walls)
            if first is None:
                first = {"median": median, "rounds": rounds}
            paired = [statistics.median(w) / statistics.median(first["rounds"][k])
                      for k, w in rounds.items() if k in first["rounds"]]
            pq1, pq3 = quartiles(paired)
            q1, q3 = quartiles(walls)
            i1, i3 = quartiles(inner)
            loads = [r["load"] for r in runs]
            lines.append(f"{phase:7} {name:14} {len(runs):4} {median:7.3f} {q1:6.3f}-{q3:6.3f} "
                         f"{statistics.median(inner):7.3f} {i1:6.3f}-{i3:6.3f} {min(loads):4.1f}-{max(loads):4.1f} "
                         f"{median / first['median']:7.3f} {statistics.median(paired):5.3f} "
                         f"({pq1:.2f}-{pq3:.2f})")
    lines.append("x first: median / the first tree's median; paired: median (quartiles) of the per-round ratios")
    return "\n".join(lines)


def summarize(path: Path, op: str, per_turn: int) -> int:
    """Print the tree table of a race written with --json (the trees in the order they were given;
    `op` and `per_turn` where the file does not say)."""
    doc = json.loads(path.read_text())
    names = [t.partition("@")[2] for t in next(iter(doc["results"].values())) if t.startswith("edgefleet@")]
    print(tree_table(doc["results"], doc["devices"], doc.get("op", op), names, doc.get("per_turn", per_turn)))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tools", default=",".join(DEFAULT_TOOLS), help=f"comma-separated subset of {','.join(TOOLS)}")
    ap.add_argument("--phases", default=",".join(PHASES),
                    help="comma-separated subset of first,noop,config; without first, one untimed first deploy "
                         "per tool sets the devices up and the config value flips every round")
    ap.add_argument("--job", choices=("full", "model"), default="full",
                    help="full: the release with its Python packages (a bare device); model: the devices have the "
                         "packages, the job is the model, the sources, the rendered files and a restart (the issue's "
                         "job: a 23 MB model, 20 source files, a template, one command)")
    ap.add_argument("--connections", choices=("warm", "cold"), default="warm",
                    help="warm: each tool keeps what its defaults keep between runs (edgefleet's masters 120 s, "
                         "Ansible's ControlPersist 60 s, rsync-mux's 120 s; the plain rsync loop and pyinfra none); "
                         "cold: every run logs in afresh (all masters stopped before it)")
    ap.add_argument("--restart", choices=("stand-in", "runtime"), default="stand-in",
                    help="what the others restart when they changed something: stand-in, a one-shot /bin/true "
                         "unit; runtime, edgefleet's runtime from their own tree on a free port (Type=simple, as "
                         "edgefleet's unit: the model loads on every device as it does for edgefleet; --job model only)")
    ap.add_argument("--gates", choices=("overlap", "apart"), default="overlap",
                    help="overlap: edgefleet's health gates run as its rollout runs them, each once its device is "
                         "placed, while later devices still place (placed = until the last device reached its "
                         "gate); apart: every gate waits until all devices reached theirs, so `placed` holds no "
                         "gate's CPU (the same deploy path and gates, timed apart)")
    ap.add_argument("--reuse-lab", type=Path, metavar="TARGETS_DIR",
                    help="use the lab that is up, with its inventory in TARGETS_DIR (left up)")
    ap.add_argument("--tree", action="append", default=[], metavar="NAME=DIR",
                    help="also run edgefleet from work tree DIR as tool edgefleet@NAME (repeat: before=..., "
                         "after=...; the same tree under two names is the A/A control whose spread is the noise floor)")
    ap.add_argument("--op", choices=("rollout", "deploy"), default="rollout",
                    help="what an edgefleet run is: one rollout wave of every device, or deploy() of each device "
                         "one after another in one process")
    ap.add_argument("--bundle", type=Path, help="the bundle every tool places (default: build/bundles/"
                                                "all-minilm-l6-v2-int8)")
    ap.add_argument("--per-turn", type=int, default=1, help="timed runs of a tool each time its turn comes")
    ap.add_argument("--settle", type=float, default=3.0,
                    help="seconds to wait after a --tree switch before the timed runs (runtimes finish starting)")
    ap.add_argument("--json", type=Path, help="also write every run to this file")
    ap.add_argument("--summarize", type=Path, metavar="JSON", help="print the --tree table of a race's --json and stop")
    ap.add_argument("--edgefleet-child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.summarize:
        return summarize(args.summarize, args.op, args.per_turn)
    if args.edgefleet_child:
        return edgefleet_child(*args.edgefleet_child)
    if args.bundle:
        global BUNDLE
        BUNDLE = args.bundle.resolve()
        os.environ["EDGEFLEET_RACE_BUNDLE"] = str(BUNDLE)  # the edgefleet children read it
    args.trees = {}
    for spec in args.tree:
        name, _, tree = spec.partition("=")
        if not name or not (Path(tree) / "edgefleet" / "deploy").is_dir():
            ap.error(f"--tree {spec}: want NAME=DIR, DIR an edgefleet work tree")
        args.trees[name] = Path(tree).resolve()
    args.tools = [t for t in args.tools.split(",") if t] if not args.trees or "--tools" in sys.argv else []
    args.tools += [f"edgefleet@{name}" for name in args.trees]
    args.phases = [p for p in PHASES if p in args.phases.split(",")]
    if args.restart == "runtime" and args.job != "model":
        ap.error("--restart runtime needs --job model (the runtimes use the packages already on the devices)")
    unknown = {t for t in args.tools if not t.startswith("edgefleet@")} - set(TOOLS)
    if unknown:
        ap.error(f"--tools: unknown {', '.join(sorted(unknown))} (choose from {', '.join(TOOLS)})")
    if any(not t.startswith("edgefleet") for t in args.tools):
        rt.ensure_venv()
    from edgefleet import lab

    rt.RACE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-race-", dir=rt.RACE))
    build = tmp / "build"
    build.mkdir()
    (REPO / "build" / "device-envs").mkdir(parents=True, exist_ok=True)
    (build / "device-envs").symlink_to(REPO / "build" / "device-envs")
    loads = [load()]
    try:
        if args.reuse_lab:
            results, n = race(args, args.reuse_lab.resolve(), build)
        else:
            targets_dir = tmp / "targets"
            shutil.copytree(REPO / "targets" / "boards", targets_dir / "boards")
            paths = lab.LabPaths(build_dir=REPO / "build", targets_dir=targets_dir)
            with lab.session(paths, devices=args.devices, arch="amd64"):
                results, n = race(args, targets_dir, build)
    except lab.LabBusy as exc:
        print(exc, file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    loads.append(load())
    print(table(split_warm(results), n, args.rounds, tuple(loads), args.job, args.restart, args.gates))
    print(verdict(split_warm(results)))
    if args.trees:
        print(tree_table(results, n, args.op, list(args.trees), args.per_turn))
    if args.json:
        args.json.write_text(json.dumps({"devices": n, "rounds": args.rounds, "job": args.job, "restart": args.restart, "gates": args.gates, "load": loads,
                                         "op": args.op, "per_turn": args.per_turn, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
