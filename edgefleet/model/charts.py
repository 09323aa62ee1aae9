"""Draw the runtime's per-node profile (edge_runtime profile --json) as a PNG bar chart."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["parse_profile", "profile_chart"]

NODE_KEYS = ("node", "op", "calls", "total_us", "mean_us", "share")


def parse_profile(text: str, source: str = "edge_runtime profile --json") -> dict:
    """Parse the profile document; a clear error names the source and the missing key."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{source}: not valid JSON: {error}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), list):
        raise ValueError(f"{source}: expected an object with a 'nodes' list")
    for index, row in enumerate(doc["nodes"]):
        missing = [key for key in NODE_KEYS if not isinstance(row, dict) or key not in row]
        if missing:
            raise ValueError(f"{source}: nodes[{index}] lacks {', '.join(missing)}")
    return doc


def profile_chart(doc: dict, path) -> Path:
    """Write a horizontal bar chart of the top nodes' total time (ms), slowest on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = list(reversed(doc["nodes"]))  # barh draws bottom-up
    labels = [f"{row['node'][-48:]}  ({row['op']})" for row in rows]
    totals = [row["total_us"] / 1000 for row in rows]
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(rows) + 1.6))
    bars = ax.barh(range(len(rows)), totals, color="#4c72b0")
    for bar, row in zip(bars, rows, strict=True):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2,
                f" {row['share']:.1%} ({row['mean_us']:.0f} us x {row['calls']})",
                va="center", fontsize=7)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.set_xlabel("total kernel time, ms (ORT profiler)")
    ax.set_xmargin(0.25)
    runs = f"{doc.get('inputs', '?')} inputs x {doc.get('runs', '?')} runs, batch 1"
    ax.set_title(f"{doc.get('bundle') or 'bundle'} ({doc.get('task', '?')}): top {len(rows)} "
                 f"nodes by time, {doc.get('threads', '?')} thread(s), {runs}", fontsize=9)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
