"""Judge the execution providers a device's service reports (/v1/info `providers`), pure.

A provider the board asks for but the device's onnxruntime does not offer is a fallback: a
warning, or a failure when the inventory requires that provider (`require_providers`).
"""

from __future__ import annotations

__all__ = ["FALLBACK", "provider_verdict", "fallback_warning", "engine_note"]

FALLBACK = "provider fallback"  # how a fallback note starts (the gate, status and rollout show it)
CPU = "CPUExecutionProvider"


def _names(value) -> list[str] | None:
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        return None
    return value


def fallback_warning(reported) -> str | None:
    """Return the fallback warning for a /v1/info `providers` value, or None when there is none."""
    if not isinstance(reported, dict):
        return None
    requested, active = _names(reported.get("requested")), _names(reported.get("active"))
    if requested is None or active is None:
        return None
    missing = [name for name in requested if name != CPU and name not in active]
    if not missing:
        return None
    return (f"{FALLBACK}: {', '.join(missing)} not offered by the device's onnxruntime; "
            f"running on {', '.join(active) or 'nothing'}")


def provider_verdict(reported, requested: list[str], required: list[str]) -> tuple[list[str], list[str]]:
    """Return (failures, warnings) for what the service reports against what the target asks.

    `requested` and `required` come from the inventory, so a device whose runtime.yaml was
    edited is judged by what it should run.
    """
    if not isinstance(reported, dict) or _names(reported.get("active")) is None:
        if required:
            return [f"the service did not report its execution providers (/v1/info providers), "
                    f"so the required {', '.join(required)} cannot be confirmed"], []
        return [], []
    active = _names(reported.get("active")) or []
    missing_required = [name for name in required if name not in active]
    failures = []
    if missing_required:
        failures.append(f"required execution provider {', '.join(missing_required)} is not active on the "
                        f"device (active: {', '.join(active) or 'none'}); its onnxruntime lacks it: "
                        "ship onnxruntime-gpu (packages.find_links) or drop require_providers")
    warning = fallback_warning({"requested": requested, "active": active})
    return failures, [warning] if warning and not failures else []


def engine_note(reported) -> list[str]:
    """Return a note on the TensorRT engine the service started from (/v1/info providers.engine_cache):
    built now (and how long it took on the device), or loaded from the cache; [] when none."""
    cache = reported.get("engine_cache") if isinstance(reported, dict) else None
    if not isinstance(cache, dict):
        return []
    key = str(cache.get("key") or "?")[:12]
    built = cache.get("build_s")
    if cache.get("source") == "context model":
        return [f"TensorRT engine {key} loaded from the device's cache"]
    if isinstance(built, (int, float)) and not isinstance(built, bool):
        return [f"TensorRT engine {key}: session created from model.onnx in {built:.1f} s on the device "
                "(an engine build, or ORT's engine files)"]
    return []
