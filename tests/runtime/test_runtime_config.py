"""runtime.yaml: every key of the contract, and errors that name the file and the key."""

import pytest
from edge_runtime.config import ConfigError, LimitsConfig, RuntimeConfig, ThermalConfig, is_loopback, parse_config

CONTRACT = {
    "target": "pi5-01", "threads": 4, "affinity": [0, 1, 2, 3], "spin": False, "nice": -5,
    "host": "127.0.0.1", "port": 8080, "token": None, "max_seq_len": 256, "log_level": "info",
    "sysfs_root": "/sys", "governor": "performance",
    "thermal": {"zones": [], "soft_c": 75.0, "hard_c": 85.0, "poll_s": 2.0},
    "limits": {"max_body_bytes": 1048576, "max_texts": 64, "max_text_chars": 10000,
               "queue_depth": 16},
}


def test_contract_document_parses():
    assert parse_config(CONTRACT) == RuntimeConfig(
        target="pi5-01", threads=4, affinity=(0, 1, 2, 3), spin=False, nice=-5,
        host="127.0.0.1", port=8080, max_seq_len=256, log_level="info", sysfs_root="/sys",
        governor="performance", thermal=ThermalConfig(), limits=LimitsConfig())


@pytest.mark.parametrize("change, check", [
    ({"affinity": [4, 5, 6, 7]}, lambda c: c.affinity == (4, 5, 6, 7)),
    ({"affinity": [], "threads": 2}, lambda c: c.affinity == () and c.threads == 2),
    ({"spin": True}, lambda c: c.spin is True),
    ({"thermal": {"zones": ["cpu-thermal"], "soft_c": 60, "hard_c": 70, "poll_s": 0.5}},
     lambda c: c.thermal == ThermalConfig(("cpu-thermal",), 60.0, 70.0, 0.5)),
    ({"thermal": None, "limits": None}, lambda c: c.limits == LimitsConfig()),
    ({"limits": {"queue_depth": 2}}, lambda c: c.limits.queue_depth == 2
     and c.limits.max_texts == 64),
    ({"host": "0.0.0.0", "token": "t0k"}, lambda c: c.token == "t0k"),
    ({"host": "::1"}, lambda c: c.host == "::1"),
    ({"governor": None}, lambda c: c.governor is None),
    ({"governor": "schedutil"}, lambda c: c.governor == "schedutil"),
])
def test_contract_values(change, check):
    assert check(parse_config({**CONTRACT, **change}))


@pytest.mark.parametrize("change, expected", [
    ({"threads": 2}, r"key 'threads' \(2\) must equal the number of CPUs in 'affinity' \(4\)"),
    ({"affinity": [0, 0]}, "key 'affinity' must be a list of distinct CPU ids"),
    ({"affinity": "0-3"}, "key 'affinity' must be a list"),
    ({"affinity": [-1]}, "key 'affinity' must be a list"),
    ({"spin": "yes"}, "key 'spin' must be true or false"),
    ({"nice": -21}, r"key 'nice' must be in -20..19"),
    ({"nice": 1.5}, "key 'nice' must be an integer"),
    ({"host": "0.0.0.0"}, "key 'token' is required when 'host' \\(0.0.0.0\\)"),
    ({"host": "192.168.1.4", "token": ""}, "key 'token' must be a non-empty string"),
    ({"governor": "turbo"}, "key 'governor' must be one of"),
    ({"sysfs_root": 3}, "key 'sysfs_root' must be a non-empty string"),
    ({"thermal": {"soft_c": "hot"}}, "key 'thermal.soft_c' must be a number"),
    ({"thermal": {"soft_c": 90, "hard_c": 85}}, "key 'thermal.soft_c' .* must be below"),
    ({"thermal": {"poll_s": 0}}, r"key 'thermal.poll_s' must be in"),
    ({"thermal": {"zones": "cpu"}}, "key 'thermal.zones' must be a list"),
    ({"thermal": [1]}, "key 'thermal' must be a mapping"),
    ({"limits": {"queue_depth": 0}}, r"key 'limits.queue_depth' must be in 1..65536"),
    ({"limits": {"max_texts": "64"}}, "key 'limits.max_texts' must be an integer"),
    ({"limits": {"max_body_bytes": True}}, "key 'limits.max_body_bytes' must be an integer"),
])
def test_contract_errors_name_file_and_key(change, expected):
    with pytest.raises(ConfigError, match=expected) as error:
        parse_config({**CONTRACT, **change}, "/opt/edgefleet/current/runtime.yaml")
    assert str(error.value).startswith("/opt/edgefleet/current/runtime.yaml: ")


@pytest.mark.parametrize("host, expected", [
    ("127.0.0.1", True), ("127.5.0.1", True), ("::1", True), ("localhost", True),
    ("0.0.0.0", False), ("192.168.1.4", False), ("pi5-01.lan", False),
])
def test_is_loopback(host, expected):
    assert is_loopback(host) is expected


GOLDEN = sorted((__import__("pathlib").Path(__file__).parents[1] / "golden").glob(
    "*/runtime.yaml"))


@pytest.mark.parametrize("path", GOLDEN, ids=[p.parent.name for p in GOLDEN])
def test_rendered_golden_configs_parse(path):
    """Every runtime.yaml the templates render (tests/golden, issue 5) is accepted as is."""
    from edge_runtime.config import read_config

    config = read_config(path)
    assert not config.affinity or config.threads == len(config.affinity)
