"""The README's main job: model -> INT8 bundle -> lab device -> deploy -> query the device."""

from __future__ import annotations

import statistics
import time

from invoke import Collection, Exit

from ..deploy import Device, service_call
from ..deploy import deploy as deploy_target
from ..inventory import load_inventory
from ..paths import build_dir, bundle_dir, targets_dir
from ..transport import connect
from . import lab as lab_tasks
from . import model as model_tasks
from ._errors import exits_on_user_error
from ._task import task

PAIRS = [
    ("The delivery truck is parked at dock 4.", "A lorry is waiting at loading bay four."),
    ("How do I reset the conveyor belt controller?", "Steps to restart the belt drive unit"),
    ("Camera 3 found a scratch on the door panel.", "The vision system saw a surface defect on camera three."),
    ("The weather in Lisbon is sunny today.", "Quarterly revenue rose by twelve percent."),
    ("Replace the air filter every six months.", "My cat likes to sleep on the windowsill."),
]


def query_device(dev: Device) -> tuple[list[float], list[float]]:
    """Embed the sentence pairs on the device, one text per request; return similarities and latencies."""
    import numpy as np

    vectors, latencies = [], []
    call = service_call(dev)
    for text in (t for pair in PAIRS for t in pair):
        t0 = time.perf_counter()
        status, body = call("/v1/embed", {"texts": [text]})
        latencies.append((time.perf_counter() - t0) * 1000)
        if status != 200:
            raise Exit(f"{dev.target.name}: /v1/embed answered {status}: {body}")
        vectors.append(np.asarray(body["embeddings"][0], dtype=np.float32))
    sims = [float(vectors[2 * i] @ vectors[2 * i + 1]) for i in range(len(PAIRS))]
    return sims, latencies


@task(help={
    "arch": "lab device architecture: arm64 (under QEMU, the default) or amd64 (native, fast)",
    "target": "device to deploy to (default: lab-01, created by lab.up)",
})
@exits_on_user_error
def demo(c, arch="arm64", target="lab-01"):
    """Export, quantize, start a lab device, deploy, and query the model on the device."""
    from rich.console import Console  # here, not at import: every task's start would pay for it

    console = Console()
    console.rule("1/4 export the model to ONNX")
    model_tasks.export(c)
    console.rule("2/4 quantize to an INT8 bundle")
    model_tasks.quantize(c)
    console.rule(f"3/4 start the lab device ({arch})")
    lab_tasks.up(c, devices=1, arch=arch)
    console.rule(f"4/4 deploy to {target}")
    tgt = load_inventory(targets_dir(c)).target(target)
    result = deploy_target(tgt, bundle_dir(c), build_dir(c))
    if not result.ok:
        raise Exit(f"{target}: deploy failed its health gate: {result.health.reason}", code=1)
    conn = connect(tgt)
    try:
        sims, latencies = query_device(Device(conn, tgt))
    finally:
        conn.close()

    from rich.table import Table

    table = Table(title=f"Sentence similarity computed on {target} ({tgt.settings.arch})")
    table.add_column("sentence A")
    table.add_column("sentence B")
    table.add_column("cosine", justify="right")
    for (a, b), sim in zip(PAIRS, sims, strict=True):
        table.add_row(a, b, f"{sim:.3f}")
    console.print(table)
    emulated = " (emulated: not a speed figure)" if tgt.settings.emulated else ""
    console.print(f"release [bold]{result.release_id}[/] on {target}; "
                  f"median latency per text through SSH: {statistics.median(latencies):.0f} ms{emulated}")


ns = Collection("demo")
ns.add_task(demo)
