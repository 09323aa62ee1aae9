"""Which release `rollback` goes back to, from the device's state.json history (a table, no SSH)."""

from __future__ import annotations

import pytest

from edgefleet.deploy import previous_good
from edgefleet.deploy.health import HealthResult

OK_A = {"release": "r-a", "healthy": True, "active": "r-a"}
OK_B = {"release": "r-b", "healthy": True, "active": "r-b"}
BAD_C = {"release": "r-c", "healthy": False, "active": "r-b"}  # failed its gate, rolled back to r-b
BACK_A = {"release": "r-a", "healthy": True, "active": "r-a", "reason": "rollback: asked"}


@pytest.mark.parametrize("history, current, on_device, expected", [
    ([OK_A, OK_B], "r-b", {"r-a", "r-b"}, "r-a"),
    ([OK_A, OK_B, BAD_C], "r-b", {"r-a", "r-b", "r-c"}, "r-a"),   # r-b is current: skip it
    ([OK_A, OK_B], "r-b", {"r-b"}, None),                         # r-a was removed from the device
    ([OK_A], "r-a", {"r-a"}, None),                               # nothing earlier
    ([OK_A, OK_B, BACK_A], "r-a", {"r-a", "r-b"}, "r-b"),         # rolling back twice toggles
    ([], None, frozenset(), None),
])
def test_previous_good(history, current, on_device, expected):
    assert previous_good(history, current, frozenset(on_device)) == expected


@pytest.mark.parametrize("emulated, marked", [(True, True), (False, False)])
def test_health_summary_marks_emulated(emulated, marked):
    summary = HealthResult(True, "", min_cosine=0.99995, latency_ms=[900.0], emulated=emulated).summary()
    assert ("emulated: speed not judged" in summary) is marked
