"""tune: the choice rule, the device report's parser, and the recorded choice applied to targets."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from edgefleet.errors import InputError
from edgefleet.inventory import load_inventory
from edgefleet.tune.choose import MIN_NOISE, choose
from edgefleet.tune.recorded import apply_tuning, read_tuning
from edgefleet.tune.records import TuneDataError, parse_measurement
from edgefleet.tune.run import bundle_set

REPO = Path(__file__).resolve().parents[2]
SPEC = {"candidates": {"int8": "/x/int8", "fp32": "/x/fp32", "fp16": "/x/fp16"}, "threads": [1, 2],
        "lengths": [16, 64], "rounds": 5}


def _config(variant: str, threads: int, p50: float | None, passed: bool = True, status: str = "measured") -> dict:
    times = {} if p50 is None else {"16": p50 / 2, "64": p50, "golden": p50}
    return {"variant": variant, "threads": threads, "cores": list(range(threads)), "status": status,
            "reason": "" if passed else "goldens: 8 of 8 golden texts below cosine 0.999",
            "golden_passed": passed, "golden_reason": "", "providers": ["CPUExecutionProvider"],
            "p50_ms": times, "p90_ms": times, "samples": 5 if times else 0}


def _report(configs: list[dict], control_p50: float | None = 10.0, control_of=("int8", 2)) -> dict:
    control = None if control_p50 is None else _config(*control_of, control_p50)
    return {"format": 1, "onnxruntime": "1.23.2", "python": "3.11.2", "machine": "aarch64", "available_providers": [],
            "usable_cores": [0, 1], "rounds": 5, "seconds": 3.5, "configs": configs, "control": control}


def _measure(report: dict, device: str = "pi5-01"):
    return parse_measurement(device, json.dumps(report), SPEC)


# (configs as (variant, threads, p50 ms, goldens pass), control p50, emulated,
#  chosen (variant, threads) or None, reason)
CHOICES = [
    # a lead well outside the noise floor: the fastest wins
    ([("int8", 2, 10.0, True), ("fp32", 2, 7.0, True)], 10.1, False, ("fp32", 2), "fastest at 64 tokens: fp32/2"),
    # a lead within the floor (never under MIN_NOISE): the default (int8 at the service's threads) stays
    ([("int8", 2, 10.0, True), ("fp32", 2, 9.9, True)], 10.0, False, ("int8", 2), "the default int8/2"),
    # the default is the fastest: it stays, whatever is within the floor of it
    ([("int8", 2, 9.9, True), ("fp32", 2, 10.0, True)], 10.0, False, ("int8", 2), "int8/2 9.90 ms, the default"),
    # the control's spread is the floor: 20% apart is noise when the twin is 25% off itself
    ([("int8", 2, 10.0, True), ("fp32", 2, 8.0, True)], 12.5, False, ("int8", 2), "noise floor (25%)"),
    # the fastest leads the default variant at other threads by less than the floor: int8 (the variant) stays
    ([("int8", 2, 20.0, True), ("fp32", 1, 10.0, True), ("int8", 1, 10.2, True)], 20.0, False, ("int8", 1),
     "int8/1: the default variant, within the noise floor"),
    # the fastest failed its goldens on the device: never chosen, whatever its speed
    ([("int8", 2, 10.0, True), ("fp32", 2, 2.0, False)], 10.0, False, ("int8", 2), "fastest at 64 tokens: int8/2"),
    # every candidate failed: no choice, and the file says why
    ([("int8", 2, 10.0, False), ("fp32", 2, 2.0, False)], 10.0, False, None, "no candidate was measured"),
    # emulated: measured, never chosen by speed
    ([("int8", 2, 10.0, True), ("fp32", 2, 2.0, True)], 10.0, True, None, "is emulated"),
    # no control measured: no noise floor, no choice
    ([("int8", 2, 10.0, True), ("fp32", 2, 2.0, True)], None, False, None, "no noise floor"),
    # fewer threads faster by far: threads are chosen too
    ([("int8", 1, 5.0, True), ("int8", 2, 10.0, True)], 10.0, False, ("int8", 1), "fastest at 64 tokens: int8/1"),
]


@pytest.mark.parametrize("configs, control, emulated, chosen, reason", CHOICES)
def test_choice_rule(configs, control, emulated, chosen, reason):
    measurement = _measure(_report([_config(v, t, p, ok) for v, t, p, ok in configs], control))
    choice = choose(measurement, "64", default_threads=2, emulated=emulated)
    assert (None if choice.variant is None else (choice.variant, choice.threads)) == chosen, choice
    assert reason in choice.reason
    assert choice.noise_floor >= MIN_NOISE


def good() -> dict:
    return _report([_config("int8", 1, 12.0), _config("int8", 2, 10.0), _config("fp32", 2, 8.0),
                    _config("fp16", 1, None, status="skipped")])


def _with(path: str, value):
    report = good()
    where, *keys = path.split(".")
    node = report if where == "top" else report["configs"][int(where)] if where.isdigit() else report[where]
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value
    return report


# (the device's report, what the error names)
HOSTILE = [
    ("not json {", "is not JSON"),
    ("[1, 2]", "must be a JSON object"),
    ('{"format": 1, "error": "ModuleNotFoundError: No module named \'onnxruntime\'"}', "failed on the device: Module"),
    (_with("top.format", 2), "format 2"),
    (_with("top.onnxruntime", "1.2; rm -rf /"), "key 'onnxruntime' is not a version"),
    (_with("top.rounds", 10**9), "key 'rounds' must be 0..5"),
    (_with("0.variant", "int4"), "'int4' at 1 threads, which was not asked for"),
    (_with("0.threads", 64), "at 64 threads, which was not asked for"),
    (_with("0.threads", True), "key 'configs[0].threads' must be int"),
    (_with("1.p50_ms.64", -1.0), "key 'configs[1].p50_ms.64' must be a latency in ms"),
    (_with("1.p50_ms.64", "fast"), "key 'configs[1].p50_ms.64' must be a latency in ms"),
    (_with("1.p50_ms.9999", 1.0), "has a length that was not asked for"),
    (_with("1.status", "chosen"), "key 'configs[1].status' must be one of"),
    (_with("1.golden_passed", "yes"), "key 'configs[1].golden_passed' must be bool"),
    (_with("2.providers", ["x" * 500]), "key 'configs[2].providers' must be a short list"),
    (_with("top.configs", [_config("int8", 1, 1.0)] * 2), "names a configuration twice"),
    (_with("top.configs", [_config("int8", 1, 1.0)] * 7), "more than were asked for"),
    (_with("top.usable_cores", ["0"]), "key 'usable_cores' must be a list of core numbers"),
    ({k: v for k, v in good().items() if k != "configs"}, "has no key 'configs'"),
    (_with("control.samples", 99), "key 'control.samples' must be 0..5"),
    ("x" * (300 * 1024), "is larger than 256 KB"),
]


@pytest.mark.parametrize("report, named", HOSTILE)
def test_a_hostile_or_malformed_report_is_refused_naming_device_and_step(report, named):
    text = report if isinstance(report, str) else json.dumps(report)
    with pytest.raises(TuneDataError) as error:
        parse_measurement("pi5-01", text, SPEC)
    assert str(error.value).startswith("pi5-01: measure")
    assert named in str(error.value)
    assert len(str(error.value)) < 700  # bounded, whatever the device sent


def test_a_good_report_parses_into_typed_records():
    m = _measure(good())
    assert [c.key for c in m.configs] == ["int8/1", "int8/2", "fp32/2", "fp16/1"]
    assert m.configs[2].p50_ms == {"16": 4.0, "64": 8.0, "golden": 8.0}
    assert m.noise_floor("64") == 0.0 and m.noise_floor("128") is None


@pytest.fixture
def fleet(tmp_path):
    """pi5 devices: one with nothing of its own, one whose group pins the variant, one pinning its threads."""
    shutil.copytree(REPO / "targets" / "boards", tmp_path / "targets" / "boards")
    (tmp_path / "targets" / "fleet.yaml").write_text(
        "groups:\n  pinned: {vars: {bundle: {precision: int8}}}\n"
        "devices:\n"
        "  pi5-free: {board: pi5, host: 192.0.2.1}\n"
        "  pi5-variant-pinned: {board: pi5, host: 192.0.2.2, groups: [pinned]}\n"
        "  pi5-threads-pinned: {board: pi5, host: 192.0.2.3, runtime: {affinity: [0, 1, 2]}}\n"
        "  qemu-free: {board: qemu-virt, host: 192.0.2.4}\n")
    build = tmp_path / "build"
    (build / "tuning").mkdir(parents=True)
    return load_inventory(tmp_path / "targets"), build


def _record(build: Path, board: str, choice) -> Path:
    path = build / "tuning" / f"{board}.json"
    path.write_text(json.dumps({"format": 1, "board": board, "choice": choice, "reason": "measured"}))
    return path


def test_the_recorded_choice_applies_unless_the_inventory_pins_the_value(fleet):
    inventory, build = fleet
    _record(build, "pi5", {"variant": "fp32", "threads": 2})
    free, tuned = apply_tuning(inventory.target("pi5-free"), build)
    assert (free.settings.bundle.precision, free.settings.threads, free.settings.affinity) == ("fp32", 2, [0, 1])
    assert tuned is not None and "variant fp32 (tuned: " in tuned.note and tuned.note.count("pi5.json") == 1

    variant_pinned, tuned = apply_tuning(inventory.target("pi5-variant-pinned"), build)
    assert variant_pinned.settings.bundle.precision == "int8"  # the group's pin wins
    assert variant_pinned.settings.threads == 2  # the threads were not pinned: tuned
    assert "pinned: bundle.precision set by group pinned" in tuned.note

    threads_pinned, tuned = apply_tuning(inventory.target("pi5-threads-pinned"), build)
    assert threads_pinned.settings.affinity == [0, 1, 2] and threads_pinned.settings.bundle.precision == "fp32"
    assert "threads 3 (pinned: runtime.affinity set by device pi5-threads-pinned" in tuned.note


def test_no_file_or_no_choice_leaves_the_board_defaults(fleet):
    inventory, build = fleet
    target = inventory.target("pi5-free")
    assert apply_tuning(target, build) == (target, None)
    _record(build, "pi5", None)  # e.g. only an emulated device was measured
    same, tuned = apply_tuning(target, build)
    assert same is target and tuned is not None and "no tuned choice" in tuned.note
    _record(build, "qemu-virt", {"variant": "int8", "threads": 1})  # no big cores: runtime.threads
    assert apply_tuning(inventory.target("qemu-free"), build)[0].settings.threads == 1


@pytest.mark.parametrize("choice, named", [
    ({"variant": "int4", "threads": 2}, "key 'choice.variant' must be one of"),
    ({"variant": "fp32", "threads": 0}, "key 'choice.threads' must be a thread count"),
    ("fp32", "key 'choice' must be an object or null"),
])
def test_a_broken_tuning_file_is_an_input_error_naming_it(fleet, choice, named):
    _, build = fleet
    path = _record(build, "pi5", choice)
    with pytest.raises(InputError, match=named) as error:
        read_tuning(path)
    assert str(path) in str(error.value)


def test_the_bundle_set_is_found_from_any_member(tmp_path):
    for name, meta in (("m-int8", {"quantization": {"method": "dynamic"}}),
                       ("m-int8-static", {"quantization": {"method": "static"}}),
                       ("m-fp32", {"precision": "fp32"}), ("m-other", {})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "bundle.json").write_text(json.dumps({"name": name, **meta}))
    assert list(bundle_set(tmp_path / "m-fp32")) == ["int8-static", "int8", "fp32"]
    (tmp_path / "m-fp16").mkdir()  # named fp16, but an int8 bundle
    (tmp_path / "m-fp16" / "bundle.json").write_text(json.dumps({"name": "m-fp16", "precision": "int8"}))
    with pytest.raises(InputError, match="m-fp16/bundle.json: variant int8, but its name says fp16"):
        bundle_set(tmp_path / "m-int8")


def test_render_and_status_see_the_target_a_tuned_deploy_renders(fleet):
    """The fleet tasks' targets carry the recorded choice: status compares a device with what its deploy gave it."""
    from invoke import Config, Context

    from edgefleet.render import render_target
    from edgefleet.tasks.fleet import _target, _targets

    inventory, build = fleet
    _record(build, "pi5", {"variant": "fp32", "threads": 1})
    c = Context(Config(overrides={"edgefleet": {"targets_dir": str(build.parent / "targets"),
                                                "build_dir": str(build)}}))
    target = _target(c, "pi5-free", "render")
    assert (target.settings.bundle.precision, target.settings.affinity) == ("fp32", [0])
    assert [t.settings.threads for t in _targets(c, None, "pinned")] == [1]
    runtime_yaml = next(f for f in render_target(target) if f.name == "runtime.yaml").text
    assert "threads: 1\naffinity: [0]" in runtime_yaml


def test_a_real_device_is_tried_before_an_emulated_one(fleet):
    from edgefleet.tune.run import pick_devices

    inventory, _ = fleet
    targets = [inventory.target(n) for n in ("pi5-free", "pi5-variant-pinned", "qemu-free")]
    emulated = dataclasses.replace(targets[0], name="pi5-aa-emulated",
                                   settings=targets[0].settings.model_copy(update={"emulated": True}))
    order = pick_devices([emulated, *targets])
    assert {board: [t.name for t in ts] for board, ts in order.items()} == {
        "pi5": ["pi5-free", "pi5-variant-pinned", "pi5-aa-emulated"], "qemu-virt": ["qemu-free"]}
