"""Thermal guard: poll the thermal zones and decide ok / soft / hard.

soft (hottest zone above soft_c): the inference worker spaces inferences out, idling after each
one for as long as it took (a 50 % duty cycle). ORT's thread count is fixed per session, so
fewer threads would mean a second session (more RSS, a reload under heat); spacing is honest
and immediate. hard (above hard_c): new work is refused with 503 + Retry-After until the
hottest zone falls below soft_c (hysteresis, so the state does not flap at the limit).
"""

from __future__ import annotations

import logging
import math
import threading
import time

from edge_runtime.sysfs import Sysfs, Zone

__all__ = ["ThermalGuard", "next_state", "OK", "SOFT", "HARD"]

log = logging.getLogger("edge_runtime")
OK, SOFT, HARD = "ok", "soft", "hard"
STATES = (OK, SOFT, HARD)


def next_state(state: str, hottest_c: float | None, soft_c: float, hard_c: float) -> str:
    """Return the throttle state after reading the hottest temperature (None = unknown)."""
    if hottest_c is None:
        return state
    if state == HARD:
        return HARD if hottest_c >= soft_c else OK
    if hottest_c > hard_c:
        return HARD
    return SOFT if hottest_c > soft_c else OK


RESCAN_S = 60.0  # how often the guard looks the zones up again (zones rarely come and go)


class ThermalGuard:
    """Poll thermal zones under a sysfs root every poll_s; tick() is one poll (for tests)."""

    def __init__(self, sysfs: Sysfs, config):
        self.sysfs, self.config = sysfs, config
        self.state = OK
        self.zones: list[Zone] = []
        self.transitions = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._found: list | None = None
        self._found_at = 0.0

    @property
    def retry_after_s(self) -> int:
        """Return the Retry-After seconds to advise while hot (two polls, at least 1)."""
        return max(1, math.ceil(2 * self.config.poll_s))

    def hottest(self) -> float | None:
        """Return the highest temperature read in the last tick."""
        temps = [zone.temp_c for zone in self.zones if zone.temp_c is not None]
        return max(temps) if temps else None

    def tick(self) -> str:
        """Read the zones once, update and return the state.

        The zones are looked up once and again every RESCAN_S or when one stops reading; a
        tick in between reads only their `temp` files (a lookup globs and reads every zone's
        type: far more work, 24/7 on every board).
        """
        now = time.monotonic()
        if self._found is None or now - self._found_at > RESCAN_S:
            self._found, self._found_at = self.sysfs.find_zones(self.config.zones), now
        self.zones = self.sysfs.read_zones(self._found)
        if any(zone.temp_c is None for zone in self.zones):
            self._found = None  # a zone went away or is not readable: look them up again next tick
        before = self.state
        self.state = next_state(before, self.hottest(), self.config.soft_c, self.config.hard_c)
        if self.state != before:
            self.transitions += 1
            log.warning("thermal %s -> %s hottest_c=%s", before, self.state, self.hottest())
        return self.state

    def _run(self) -> None:
        while not self._stop.wait(self.config.poll_s):
            try:
                self.tick()
            except Exception:  # a broken sysfs read must not kill the guard
                log.exception("thermal_poll_failed")

    def start(self) -> ThermalGuard:
        """Tick once now, then poll in a daemon thread."""
        self.tick()
        self._thread = threading.Thread(target=self._run, name="thermal", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the polling thread."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
