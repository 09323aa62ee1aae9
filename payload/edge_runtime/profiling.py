"""Profile a bundle per ONNX node with ORT's profiler and rank the nodes by time."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

__all__ = ["node_profile", "top_nodes", "format_table"]


def top_nodes(events: list[dict], top: int = 15) -> list[dict]:
    """Sum kernel time per node over ORT profile events; return the top rows by total time."""
    totals: dict[str, dict] = {}
    for event in events:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        name = event["name"][: -len("_kernel_time")]
        row = totals.setdefault(name, {"node": name, "op": event.get("args", {}).get("op_name",
                                                                                    "?"),
                                       "calls": 0, "total_us": 0})
        row["calls"] += 1
        row["total_us"] += int(event.get("dur", 0))
    grand = sum(row["total_us"] for row in totals.values()) or 1
    rows = sorted(totals.values(), key=lambda row: row["total_us"], reverse=True)[:top]
    for row in rows:
        row["mean_us"] = row["total_us"] / row["calls"]
        row["share"] = row["total_us"] / grand
    return rows


def format_table(rows: list[dict]) -> list[str]:
    """Return the rows as aligned text lines with a header."""
    out = [f"{'node':44s} {'op':22s} {'calls':>5s} {'mean_us':>9s} {'total_ms':>9s} {'share':>6s}"]
    for row in rows:
        out.append(f"{row['node'][:44]:44s} {row['op'][:22]:22s} {row['calls']:5d} "
                   f"{row['mean_us']:9.1f} {row['total_us'] / 1000:9.2f} {row['share']:6.1%}")
    return out


def node_profile(bundle_dir, inputs: list, runs: int = 5, threads=None, spin=False,
                 max_seq_len=None, top: int = 15) -> list[dict]:
    """Load a profiling session, run each input runs times at batch 1, return top_nodes.

    inputs are the bundle's golden inputs: texts, or (question, context) pairs for QA.
    """
    from edge_runtime.golden import run
    from edge_runtime.model import load, session_options

    options = session_options(threads, spin)
    options.enable_profiling = True
    workdir = tempfile.mkdtemp(prefix="edge-profile-")
    options.profile_file_prefix = os.path.join(workdir, "ort")
    model = load(bundle_dir, max_seq_len=max_seq_len, options=options)
    run(model, inputs[0])  # warm-up (its events are counted too; runs dominate)
    for _ in range(max(runs, 1)):
        for item in inputs:
            run(model, item)
    path = Path(model.session.end_profiling())
    try:
        events = json.loads(path.read_text())
    finally:
        path.unlink(missing_ok=True)
        os.rmdir(workdir)
    return top_nodes(events, top)
