"""Execution providers: which of those runtime.yaml asks for this onnxruntime offers, and how
the session's nodes were spread over them."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

__all__ = ["ProviderChoice", "choose_providers", "with_options", "node_shares", "profiled_node_shares", "CPU"]

CPU = "CPUExecutionProvider"


@dataclass(frozen=True)
class ProviderChoice:
    """What was asked for, what the session gets (name, options), and what is missing."""

    requested: tuple[str, ...]
    session_providers: tuple[tuple[str, dict[str, str]], ...]
    missing: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.session_providers]


def choose_providers(requested: Iterable[str], options: dict, available: Iterable[str]) -> ProviderChoice:
    """Return the requested providers this onnxruntime offers, in their order, CPU last.

    A provider not asked for is never used (onnxruntime may offer e.g. Azure's); CPU is always
    used, asked for or not, because it runs what no accelerator takes. ONNX Runtime reads each
    option's value as a string.
    """
    requested = tuple(requested)
    offered = set(available)
    chosen = [name for name in requested if name != CPU and name in offered]
    missing = [name for name in requested if name != CPU and name not in offered]
    session = tuple((name, {str(k): _option(v) for k, v in (options.get(name) or {}).items()})
                    for name in [*chosen, CPU])
    return ProviderChoice(requested, session, missing)


def with_options(session_providers, name: str, options: dict) -> tuple[tuple[str, dict[str, str]], ...]:
    """Return `session_providers` with `name`'s options replaced by `options` (as strings)."""
    return tuple((n, {str(k): _option(v) for k, v in options.items()} if n == name else o)
                 for n, o in session_providers)


def _option(value) -> str:
    # booleans as "1"/"0": ORT's option parsers take those for a bool; Python's "True" is not a given
    return ("1" if value else "0") if isinstance(value, bool) else str(value)


def node_shares(events: list[dict]) -> dict[str, float]:
    """Return the share of distinct graph nodes each provider ran, from ORT profile events.

    The nodes are those of the optimized graph: an accelerator's fused subgraph counts once.
    """
    provider_of: dict[str, str] = {}
    for event in events:
        args = event.get("args") if isinstance(event, dict) else None
        if event.get("cat") != "Node" or not isinstance(args, dict) or not args.get("provider"):
            continue
        provider_of[str(event.get("name"))] = str(args["provider"])
    total = len(provider_of)
    counts: dict[str, int] = {}
    for provider in provider_of.values():
        counts[provider] = counts.get(provider, 0) + 1
    return {provider: count / total for provider, count in counts.items()}


def profiled_node_shares(session, run_once: Callable[[], object]) -> dict[str, float]:
    """Run `run_once` on a session created with profiling on, end the profile, return the shares.

    ORT has no API that says which provider took which node; its profiler names the provider
    of every node it ran. The profile file is deleted; profiling stops for later runs.
    """
    try:
        run_once()
    finally:
        path = session.end_profiling()
    try:
        with open(path) as handle:
            events = json.load(handle)
    except (OSError, ValueError):
        return {}
    finally:
        if path and os.path.exists(path):
            os.unlink(path)
        try:
            os.rmdir(os.path.dirname(path))  # profile_prefix's private directory
        except OSError:
            pass
    return node_shares(events if isinstance(events, list) else [])


def profile_prefix() -> str:
    """Return a profile file prefix in a private temporary directory."""
    return os.path.join(tempfile.mkdtemp(prefix="edge-runtime-profile-"), "nodes")
