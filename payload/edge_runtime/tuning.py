"""Place the process at start-up: CPU affinity, nice value, and the thread count to match."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

__all__ = ["Placement", "apply_affinity", "apply_nice", "choose_workers", "place"]

log = logging.getLogger("edge_runtime")


@dataclass(frozen=True)
class Placement:
    """What start-up achieved: CPUs the process runs on, ORT threads, spinning, nice value, and
    the inference workers (threads that call the one session, sharing its ORT threads)."""

    affinity: tuple[int, ...]
    threads: int
    spin: bool
    nice: int
    warnings: tuple[str, ...] = ()
    workers: int = 1


AUTO_WORKERS = 2


def choose_workers(wanted: int | None, threads: int) -> tuple[int, str | None]:
    """Return (inference workers, warning or None) for runtime.yaml's `workers`.

    None (the default) is two where the session has two threads or more: a second model call
    keeps the pool busy while the first worker is in Python (tokenizing, pooling, gathering its
    next batch); more calls than that only contend for the same threads. With one thread, one
    worker. An explicit count above the threads is cut to them: the extra calls would only queue
    on the same cores.
    """
    if wanted is None:
        return min(AUTO_WORKERS, threads), None
    if wanted > threads:
        return threads, f"workers: {wanted} -> {threads}, the session's threads (more would queue on the same cores)"
    return wanted, None


def _existing_cpus() -> set[int]:
    return set(range(os.cpu_count() or 1))


def apply_affinity(cpus, existing=None) -> tuple[tuple[int, ...], str | None]:
    """Pin the process to cpus that exist; return (CPUs now allowed, warning or None)."""
    current = tuple(sorted(os.sched_getaffinity(0)))
    if not cpus:
        return current, None
    existing = _existing_cpus() if existing is None else set(existing)
    usable = tuple(cpu for cpu in cpus if cpu in existing)
    missing = [cpu for cpu in cpus if cpu not in existing]
    warning = None
    if missing:
        warning = (f"affinity: CPUs {missing} do not exist on this machine "
                   f"(it has {sorted(existing)}); using {list(usable) or 'all allowed CPUs'}")
    if not usable:
        return current, warning
    try:
        os.sched_setaffinity(0, usable)
    except OSError as error:
        return current, f"affinity: sched_setaffinity({list(usable)}) failed: {error}"
    return tuple(sorted(os.sched_getaffinity(0))), warning


def apply_nice(nice) -> tuple[int, str | None]:
    """Set the process's nice value; return (nice now in effect, warning or None)."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if nice is None or nice == current:
        return current, None
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except PermissionError:
        return current, (f"nice: not permitted to set {nice} (needs CAP_SYS_NICE); "
                         f"carrying on at {current}")
    except OSError as error:
        return current, f"nice: setpriority({nice}) failed: {error}; carrying on at {current}"
    return os.getpriority(os.PRIO_PROCESS, 0), None


def place(config, threads=None) -> Placement:
    """Apply affinity and nice from config; pick the ORT thread count; log each warning once.

    threads (a CLI flag) wins over config.threads; without either, one thread per allowed CPU.
    When CPUs of the affinity list are missing, threads shrinks to the CPUs the process may
    run on: the ones pinned, or (none of the list exists, e.g. a board's big cores 4-7 on a
    2-core host) the ones it was allowed before.
    """
    warnings = []
    affinity, warning = apply_affinity(config.affinity)
    if warning:
        warnings.append(warning)
    nice, warning = apply_nice(config.nice)
    if warning:
        warnings.append(warning)
    chosen = threads or config.threads or len(affinity)
    if config.affinity and len(affinity) < chosen and not set(config.affinity) <= set(affinity):
        warnings.append(f"threads: {chosen} -> {len(affinity)} to match the CPUs it may run on")
        chosen = len(affinity)
    workers, warning = choose_workers(config.workers, chosen)
    if warning:
        warnings.append(warning)
    for text in warnings:
        log.warning("tuning %s", text)
    log.info("placement affinity=%s threads=%d workers=%d spin=%s nice=%d", list(affinity), chosen,
             workers, config.spin, nice)
    return Placement(affinity, chosen, config.spin, nice, tuple(warnings), workers)
