"""The device env leaves out what the runtime image leaves out (docker/runtime/prune.txt)."""

from edgefleet import device_env as env


def test_prune_tree_removes_matches_whole_and_keeps_the_rest(tmp_path):
    site = tmp_path / "site"
    files = ["onnxruntime/__init__.py", "onnxruntime/capi/onnxruntime_pybind11_state.so",
             "onnxruntime/capi/libonnxruntime.so.1.32.0", "onnxruntime/transformers/x/y.py",
             "numpy/tests/test_a.py", "numpy/_core/tests/test_b.py", "numpy/_core/multiarray.py",
             "tokenizers/__init__.pyi", "yaml/py.typed", "yaml/__init__.py"]
    for name in files:
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text(name)
    env._prune_tree(site, env.runtime_prune())
    left = sorted(p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file())
    assert left == ["numpy/_core/multiarray.py", "onnxruntime/__init__.py",
                    "onnxruntime/capi/onnxruntime_pybind11_state.so", "yaml/__init__.py"]
    assert not (site / "onnxruntime" / "transformers").exists()


def test_the_prune_list_is_part_of_the_env_key():
    plain = env._key("numpy==2.2.6", "arm64", "3.11")
    assert env._key("numpy==2.2.6", "arm64", "3.11", prune=["numpy/tests"]) != plain
    assert env._key("numpy==2.2.6", "arm64", "3.11", prune=[]) == plain
