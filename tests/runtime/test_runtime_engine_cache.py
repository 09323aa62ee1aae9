"""The TensorRT engine cache: its key, the provider options the runtime builds, and a service that
says "building engine" while the session is built (no GPU here: an onnxruntime that offers
TensorRT and builds slowly is faked at the one seam where sessions are made)."""

import http.client
import json
import threading
import time
from pathlib import Path

import onnxruntime as ort
import pytest
from edge_runtime import engine_cache as ec
from edge_runtime.config import parse_config
from edge_runtime.model import OrtSessions
from edge_runtime.server import Service, make_server

pytestmark = pytest.mark.timeout(120)
TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
ORIN = ec.EngineFacts(ort="1.23.0", tensorrt="10.3.0", gpu="sm 8.7 nvidia,tegra234 (nvidia,p3767-0005; x)",
                      l4t="R36.4.0")
MODEL = {"model.onnx": "a" * 64}


@pytest.mark.parametrize("model, facts, options", [
    ({"model.onnx": "b" * 64}, ORIN, {}),
    ({**MODEL, "model.onnx.data": "c" * 64}, ORIN, {}),  # new weights beside the same graph
    (MODEL, ec.EngineFacts(**{**ORIN.__dict__, "ort": "1.22.0"}), {}),
    (MODEL, ec.EngineFacts(**{**ORIN.__dict__, "tensorrt": "10.7.0"}), {}),
    (MODEL, ec.EngineFacts(**{**ORIN.__dict__, "gpu": "sm 8.7 nvidia,tegra234 (nvidia,p3701-0005; y)"}), {}),
    (MODEL, ec.EngineFacts(**{**ORIN.__dict__, "l4t": "R36.3.0"}), {}),
    (MODEL, ORIN, {"trt_fp16_enable": "1"}),  # precision and profiles shape the engine
    (MODEL, ORIN, {"trt_profile_max_shapes": "input_ids:64x256"}),
])
def test_anything_an_engine_depends_on_changes_the_key(model, facts, options):
    assert ec.engine_key(model, facts, options) != ec.engine_key(MODEL, ORIN, {})


def test_the_same_inputs_give_the_same_key_and_paths_do_not_count():
    key = ec.engine_key(MODEL, ORIN, {"trt_fp16_enable": "1"})
    assert key == ec.engine_key(dict(MODEL), ec.EngineFacts(**ORIN.__dict__), {"trt_fp16_enable": "1"})
    assert key == ec.engine_key(MODEL, ORIN, {"trt_fp16_enable": "1", "trt_engine_cache_path": "/x",
                                              "trt_ep_context_file_path": "/y/model_ctx.onnx"})
    assert len(key) == ec.KEY_CHARS and int(key, 16) >= 0


@pytest.mark.parametrize("text, expected", [
    ("# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: Fri Sep 13\n", "R36.4.0"),
    ("# R35 (release), REVISION: 5.0, GCID: 35550185, BOARD: t186ref, EABI: aarch64\n", "R35.5.0"),
    ("", "unknown"), ("garbage", "unknown"),
])
def test_l4t_release(text, expected):
    assert ec.l4t_release(text) == expected


def test_tensorrt_version_takes_the_fullest_library_name():
    names = ["libnvinfer.so", "libnvinfer.so.10", "libnvinfer.so.10.3.0", "libnvinfer_plugin.so.10.3.0"]
    assert ec.tensorrt_version(names) == "10.3.0"
    assert ec.tensorrt_version(["libnvinfer.so.8.6.2", "libnvinfer.so.8.5.2"]) == "8.6.2"
    assert ec.tensorrt_version([]) == "unknown"


def test_facts_read_what_is_there_and_say_unknown_for_the_rest(tmp_path):
    empty = ec.read_facts(str(tmp_path), ort_version="1.23.0", nvidia_smi=lambda: "unknown")
    assert empty == ec.EngineFacts(ort="1.23.0")  # nothing there: no crash, unknown said truthfully
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 4.3, GCID: 1, BOARD: generic\n")
    libs = tmp_path / "usr/lib/aarch64-linux-gnu"
    libs.mkdir(parents=True)
    for name in ("libnvinfer.so.10", "libnvinfer.so.10.3.0"):
        (libs / name).write_bytes(b"")
    tree = tmp_path / "proc/device-tree"
    tree.mkdir(parents=True)
    (tree / "compatible").write_bytes(b"nvidia,p3768-0000+p3767-0005\0nvidia,p3767-0005\0nvidia,tegra234\0")
    (tree / "model").write_bytes(b"NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super\0")
    facts = ec.read_facts(str(tmp_path), ort_version="1.23.0", nvidia_smi=lambda: pytest.fail("not asked"))
    assert facts == ec.EngineFacts(ort="1.23.0", tensorrt="10.3.0", l4t="R36.4.3", gpu=(
        "sm 8.7 nvidia,tegra234 (nvidia,p3768-0000+p3767-0005; "
        "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super)"))


def test_runtime_options_for_tensorrt_and_the_users_win(tmp_path):
    profiles = ec.profile_shapes(["input_ids", "attention_mask"], 64, 256)
    assert profiles == {"trt_profile_min_shapes": "input_ids:1x1,attention_mask:1x1",
                        "trt_profile_opt_shapes": "input_ids:1x128,attention_mask:1x128",
                        "trt_profile_max_shapes": "input_ids:64x256,attention_mask:64x256"}
    dump = ec.trt_options({"trt_fp16_enable": True}, profiles, "1.23.0", tmp_path / "k", tmp_path / "t", True)
    assert dump == {**profiles, "trt_fp16_enable": True, "trt_engine_cache_enable": True,
                    "trt_timing_cache_enable": True, "trt_timing_cache_path": str(tmp_path / "t"),
                    # relative to the context model's directory while it is dumped (ORT's rule)
                    "trt_engine_cache_path": "engines", "trt_dump_ep_context_model": True,
                    "trt_ep_context_file_path": str(tmp_path / "k" / "model_ctx.onnx"),
                    "trt_ep_context_embed_mode": 1}
    later = ec.trt_options({}, profiles, "1.23.0", tmp_path / "k", tmp_path / "t", False)
    assert later["trt_engine_cache_path"] == str(tmp_path / "k" / "engines")
    assert "trt_dump_ep_context_model" not in later
    # the user's provider_options win where they set a key
    mine = ec.trt_options({"trt_ep_context_embed_mode": 0, "trt_engine_cache_enable": False}, profiles,
                          "1.23.0", tmp_path / "k", None, True)
    assert mine["trt_ep_context_embed_mode"] == 0 and mine["trt_engine_cache_enable"] is False
    # an older ORT refuses option names it does not know: none of 1.17's, no profiles before 1.15
    old = ec.trt_options({}, profiles, "1.16.3", tmp_path / "k", tmp_path / "t", True)
    assert set(old) == {*profiles, "trt_engine_cache_enable", "trt_timing_cache_enable", "trt_engine_cache_path"}
    assert "trt_profile_min_shapes" not in ec.trt_options({}, profiles, "1.14.1", None, None, True)


class SlowTensorRT(OrtSessions):
    """An onnxruntime that offers TensorRT and takes until `gate` is set to build an engine; it
    writes the context model where ORT would, and runs a CPU session in the engine's place."""

    def __init__(self, model_path: Path):
        self.model_path, self.gate, self.created = model_path, threading.Event(), []

    def available(self):
        return [TRT, CUDA, CPU]

    def create(self, source, options, providers):
        trt = dict(providers)[TRT]
        self.created.append((str(source), trt))
        if trt.get("trt_dump_ep_context_model") == "1":
            assert self.gate.wait(30), "the test never let the build finish"
            Path(trt["trt_ep_context_file_path"]).write_bytes(b"an engine-embedded model")
        return ort.InferenceSession(str(self.model_path), sess_options=options, providers=[CPU])


def _readyz(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/readyz")
        answer = conn.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        conn.close()


def test_readyz_says_building_engine_while_the_session_is_built_then_ready(tiny_bundle, fake_sysfs, tmp_path):
    config = parse_config({"sysfs_root": str(fake_sysfs.root), "threads": 1, "providers": [TRT, CUDA, CPU],
                           "provider_options": {TRT: {"trt_fp16_enable": True}},
                           "engine_cache_dir": str(tmp_path / "cache" / "trt")})
    slow = SlowTensorRT(Path(tiny_bundle) / "model.onnx")
    service = Service(tiny_bundle, config, sessions=slow)
    server = make_server(service, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    port = server.server_address[1]
    loader = threading.Thread(target=service.start, kwargs={"poll": False}, daemon=True)
    try:
        loader.start()
        deadline = time.monotonic() + 20
        while not slow.created and time.monotonic() < deadline:
            time.sleep(0.02)
        status, body = _readyz(port)  # the listener answers while the loader thread builds
        assert status == 503 and body["state"] == "building_engine", body
        assert body["reason"].startswith("building engine: TensorRT builds the engine for model"), body
        slow.gate.set()
        loader.join(30)
        status, body = _readyz(port)
        assert status == 200 and body["state"] == "ready", body
    finally:
        slow.gate.set()
        server.shutdown()
        server.server_close()
        service.worker.stop()

    source, options = slow.created[0]
    assert source.endswith("model.onnx") and options["trt_fp16_enable"] == "1"
    assert options["trt_profile_max_shapes"].startswith("input_ids:64x")
    cache_dir = Path(options["trt_ep_context_file_path"]).parent
    key = json.loads((cache_dir / "key.json").read_text())
    assert key["key"] == cache_dir.name and key["model_files"] == ec.model_files(tiny_bundle)
    assert key["context_model"] is True and isinstance(key["build_s"], float)
    assert service.info()["providers"]["engine_cache"]["dir"] == str(cache_dir)

    # a restart (or a config-only release, or a rollback to this model) loads the context model:
    # no build, so never "building engine"
    again = SlowTensorRT(Path(tiny_bundle) / "model.onnx")  # its gate stays shut: a build would hang
    restarted = Service(tiny_bundle, config, sessions=again)
    states = []
    real_load = restarted._load
    restarted._load = lambda placement: (states.append(restarted.state), real_load(placement))[1]
    restarted.start(poll=False)
    try:
        assert restarted.ready, restarted.status
        assert states == ["loading"]
        [(source, options)] = again.created
        assert source == str(cache_dir / "model_ctx.onnx") and "trt_dump_ep_context_model" not in options
        assert restarted.engine.source == "context model"
    finally:
        restarted.worker.stop()


def test_without_tensorrt_on_offer_nothing_is_keyed(tiny_bundle, fake_sysfs, tmp_path):
    config = parse_config({"sysfs_root": str(fake_sysfs.root), "threads": 1, "providers": [TRT, CUDA, CPU],
                           "engine_cache_dir": str(tmp_path / "trt")})
    service = Service(tiny_bundle, config)  # this host's onnxruntime: CPU only
    service.start(poll=False)
    try:
        assert service.ready and service.engine is None and not (tmp_path / "trt").exists()
        assert service.info()["providers"]["engine_cache"] is None
    finally:
        service.worker.stop()
