"""Execution providers: from runtime.yaml, those the installed onnxruntime offers, CPU last;
/v1/info and /metrics say which were asked for, which run, and the share of nodes on each."""

import onnxruntime as ort
import pytest
from edge_runtime.config import ConfigError, parse_config
from edge_runtime.providers import choose_providers, node_shares
from edge_runtime.service import Service

ORIN = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.mark.parametrize("requested, available, active, missing", [
    (ORIN, ["CPUExecutionProvider"], ["CPUExecutionProvider"],
     ["TensorrtExecutionProvider", "CUDAExecutionProvider"]),
    (ORIN, ["CUDAExecutionProvider", "CPUExecutionProvider"],
     ["CUDAExecutionProvider", "CPUExecutionProvider"], ["TensorrtExecutionProvider"]),
    (ORIN, ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"], ORIN, []),
    # what the runtime was not asked for is never used, even when onnxruntime offers it
    (["CPUExecutionProvider"], ["AzureExecutionProvider", "CUDAExecutionProvider",
                                "CPUExecutionProvider"], ["CPUExecutionProvider"], []),
    # CPU is always there, and last, even when runtime.yaml forgot it
    (["CUDAExecutionProvider"], ["CPUExecutionProvider"], ["CPUExecutionProvider"],
     ["CUDAExecutionProvider"]),
    ([], ["CPUExecutionProvider"], ["CPUExecutionProvider"], []),
])
def test_choose_providers_keeps_order_and_cpu_last(requested, available, active, missing):
    choice = choose_providers(requested, {}, available)
    assert [name for name, _ in choice.session_providers] == active
    assert choice.missing == missing


def test_provider_options_go_with_their_provider_as_strings():
    choice = choose_providers(ORIN, {"TensorrtExecutionProvider": {"trt_fp16_enable": True,
                                                                   "trt_max_workspace_size": 1 << 30}},
                              ORIN)
    assert choice.session_providers[0] == ("TensorrtExecutionProvider",
                                           {"trt_fp16_enable": "1",
                                            "trt_max_workspace_size": str(1 << 30)})
    assert choice.session_providers[-1] == ("CPUExecutionProvider", {})


def test_node_shares_count_nodes_per_provider():
    events = [{"cat": "Node", "name": "a_kernel_time", "args": {"provider": "CUDAExecutionProvider"}},
              {"cat": "Node", "name": "a_kernel_time", "args": {"provider": "CUDAExecutionProvider"}},
              {"cat": "Node", "name": "b_kernel_time", "args": {"provider": "CPUExecutionProvider"}},
              {"cat": "Node", "name": "c_kernel_time", "args": {"provider": "CUDAExecutionProvider"}},
              {"cat": "Session", "name": "model_run", "args": {}}]
    assert node_shares(events) == {"CUDAExecutionProvider": 2 / 3, "CPUExecutionProvider": 1 / 3}
    assert node_shares([]) == {}


@pytest.mark.parametrize("change, expected", [
    ({"providers": "CPUExecutionProvider"}, "key 'providers' must be a list of provider names"),
    ({"providers": ["CPUExecutionProvider", ""]}, "key 'providers' must be a list of provider names"),
    ({"provider_options": {"CUDAExecutionProvider": [1]}},
     "key 'provider_options.CUDAExecutionProvider' must be a mapping of option names to values"),
    ({"require_providers": ["CUDAExecutionProvider"]},
     "key 'require_providers': CUDAExecutionProvider is not in 'providers'"),
])
def test_provider_keys_errors_name_the_key(change, expected):
    with pytest.raises(ConfigError, match=expected):
        parse_config({"providers": ["CPUExecutionProvider"], **change})


def test_orin_config_on_cpu_only_onnxruntime_falls_back_and_says_so(tiny_bundle):
    config = parse_config({"providers": ORIN, "require_providers": ["CUDAExecutionProvider"],
                           "provider_options": {"TensorrtExecutionProvider": {"trt_fp16_enable": True}}})
    service = Service(tiny_bundle, config, threads=1)
    service.start(poll=False)
    try:
        assert service.ready, service.status
        providers = service.info()["providers"]
        offered = set(ort.get_available_providers())
        assert providers["requested"] == ORIN
        assert providers["active"] == [p for p in ORIN if p in offered]
        assert providers["missing"] == [p for p in ORIN if p not in offered]
        assert providers["required"] == ["CUDAExecutionProvider"]
        assert providers["node_share"]["CPUExecutionProvider"] == 1.0
        text = service.metrics.render(service.gauges())
        assert 'edge_provider_active{provider="CPUExecutionProvider"} 1' in text
        assert 'edge_provider_active{provider="TensorrtExecutionProvider"} 0' in text
        assert 'edge_provider_node_share{provider="CPUExecutionProvider"} 1.0' in text
    finally:
        service.worker.stop()
        service.guard.stop()


def test_default_config_runs_on_cpu(tiny_bundle):
    service = Service(tiny_bundle, parse_config({}), threads=1)
    service.start(poll=False)
    try:
        assert service.info()["providers"]["active"] == ["CPUExecutionProvider"]
        assert service.model.session.get_providers() == ["CPUExecutionProvider"]
    finally:
        service.worker.stop()
        service.guard.stop()
