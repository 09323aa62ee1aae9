"""Pure pieces of edge_runtime: config parsing, pooling, normalization, percentiles, meta."""

import json
import logging

import numpy as np
import pytest
from edge_runtime.config import ConfigError, RuntimeConfig, parse_config, read_config
from edge_runtime.model import BundleFormatError, l2_normalize, mean_pool, read_meta
from edge_runtime.selftest import cosines, percentiles


@pytest.mark.parametrize("data, expected", [
    (None, RuntimeConfig()),
    ({}, RuntimeConfig()),
    ({"threads": 4, "port": 8081, "host": "0.0.0.0", "log_level": "INFO", "token": "s3cret"},
     RuntimeConfig(threads=4, port=8081, host="0.0.0.0", log_level="info", token="s3cret")),
    ({"threads": None, "max_seq_len": 128, "release": 20240101},
     RuntimeConfig(max_seq_len=128, release="20240101")),
])
def test_parse_config(data, expected):
    assert parse_config(data) == expected


@pytest.mark.parametrize("data, expected", [
    ({"port": "80"}, "key 'port' must be an integer"),
    ({"port": 70000}, "key 'port' must be in 0..65535"),
    ({"threads": True}, "key 'threads' must be an integer"),
    ({"threads": 0}, "key 'threads' must be in"),
    ({"log_level": "loud"}, "key 'log_level' must be one of"),
    ({"bundle": ""}, "key 'bundle' must be a non-empty string"),
    ([1, 2], "expected a mapping"),
])
def test_parse_config_errors_name_file_and_key(data, expected):
    with pytest.raises(ConfigError, match=expected) as error:
        parse_config(data, "/etc/runtime.yaml")
    assert str(error.value).startswith("/etc/runtime.yaml: ")


def test_read_config_file_errors(tmp_path, caplog):
    with pytest.raises(ConfigError, match="not found"):
        read_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("port: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_config(tmp_path / "bad.yaml")
    (tmp_path / "ok.yaml").write_text("port: 9000\ncolour: blue\n")
    with caplog.at_level(logging.WARNING):
        assert read_config(tmp_path / "ok.yaml").port == 9000
    assert "key=colour" in caplog.text


@pytest.mark.parametrize("hidden, mask, expected", [
    ([[[1, 1], [3, 3]]], [[1, 1]], [[2, 2]]),
    ([[[1, 1], [3, 3], [100, 100]]], [[1, 1, 0]], [[2, 2]]),
    ([[[2, 0], [9, 9]], [[4, 4], [6, 8]]], [[1, 0], [1, 1]], [[2, 0], [5, 6]]),
])
def test_mean_pool_ignores_padding(hidden, mask, expected):
    out = mean_pool(np.array(hidden, dtype=np.float32), np.array(mask))
    np.testing.assert_allclose(out, expected)


@pytest.mark.parametrize("rows, expected", [
    ([[3, 4]], [[0.6, 0.8]]),
    ([[0, 0]], [[0, 0]]),
    ([[2, 0], [0, -5]], [[1, 0], [0, -1]]),
])
def test_l2_normalize(rows, expected):
    np.testing.assert_allclose(l2_normalize(np.array(rows, dtype=np.float32)), expected)


def test_cosines_and_percentiles():
    np.testing.assert_allclose(cosines(np.array([[1.0, 0], [0, 2]]), np.array([[2.0, 0], [1, 0]])),
                               [1.0, 0.0])
    assert percentiles([1, 2, 3, 4, 100])["p50"] == 3


META = {"format": 1, "task": "embed", "max_seq_len": 8, "inputs": ["input_ids"],
        "outputs": ["last_hidden_state"], "pooling": "mean", "normalize": True}


@pytest.mark.parametrize("change, expected", [
    ({"max_seq_len": "8"}, "key 'max_seq_len' must be int"),
    ({"max_seq_len": True}, "key 'max_seq_len' must be int"),
    ({"normalize": None}, "key 'normalize' must be bool"),
    ({"task": "translate"}, "key 'task' must be one of embed, classify, qa"),
    ({"task": "qa"}, "key 'max_answer_len' must be int"),
    ({"task": "classify", "labels": []}, "key 'labels' must be a non-empty list"),
    ({"pooling": "max"}, "unsupported"),
])
def test_read_meta_errors_name_file_and_key(tmp_path, change, expected):
    (tmp_path / "bundle.json").write_text(json.dumps({**META, **change}))
    with pytest.raises(BundleFormatError, match=expected) as error:
        read_meta(tmp_path)
    assert str(tmp_path / "bundle.json") in str(error.value)
