"""The regression gate: p95 against the release it replaces, judged only where speed is judged."""

import pytest

from edgefleet.deploy.regression import baseline_from_state, regression_verdict
from edgefleet.settings import HealthSettings

STATE = {"current": "r-b", "history": [
    {"release": "r-a", "healthy": True, "p95_ms": 5.0},
    {"release": "r-b", "healthy": True, "p95_ms": 8.0},
    {"release": "r-c", "healthy": False, "p95_ms": 50.0},
    {"release": "r-b", "healthy": True},  # a re-run that measured nothing
]}


@pytest.mark.parametrize("state, committed, expected", [
    (STATE, "r-b", 8.0), (STATE, "r-a", 5.0), (STATE, "r-c", None), (STATE, None, None),
    ({"history": "garbage"}, "r-b", None), ("garbage", "r-b", None),
    ({"history": [{"release": "r-b", "healthy": True, "p95_ms": "8"}]}, "r-b", None),
])
def test_baseline_from_state(state, committed, expected):
    assert baseline_from_state(state, committed) == expected


@pytest.mark.parametrize("p95, baseline, judged, failure, note", [
    (20.0, 10.0, True, "regression: p95 20.0 ms vs 10.0 ms for the release it replaces (+100%, limit +25%)", None),
    (12.0, 10.0, True, None, None),
    (3.0, 1.0, True, None, None),  # +200%, but within the probe's noise floor (2 ms)
    (20.0, 10.0, False, None, "regression seen: p95 20.0 ms vs 10.0 ms"),
    (20.0, None, True, None, None),  # nothing to compare with (first release, or none recorded)
])
def test_regression_verdict(p95, baseline, judged, failure, note):
    got_failure, got_note = regression_verdict(p95, baseline, 0.25, 2.0, judged, "emulated")
    assert got_failure == failure
    assert (note is None and got_note is None) or (note in got_note and got_note.endswith("(emulated)"))


def test_health_defaults():
    assert HealthSettings().max_regression == 0.25 and HealthSettings().regression_min_ms == 2.0
