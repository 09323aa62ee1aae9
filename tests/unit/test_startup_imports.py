"""What a deploy or a no-op re-run pays at start-up: the tasks import no model stack."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_tasks_import_no_numpy_onnxruntime_or_tokenizers():
    """Nor the docker SDK, paramiko/Fabric, rich or cryptography: each is imported by the code that
    uses it (a no-op re-run of 40 devices takes ~1.5 s; these were ~0.45 s of it)."""
    heavy = ('numpy', 'onnxruntime', 'tokenizers', 'onnx', 'torch', 'docker', 'paramiko', 'fabric', 'rich',
             'cryptography')
    code = ("import sys, tasks, edgefleet.rollout.run, edgefleet.deploy.gate; "
            f"print(' '.join(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{REPO}:{REPO / 'payload'}"})
    assert out.stdout.strip() == "", f"imported at start-up: {out.stdout.strip()}"


def test_edge_runtime_loads_its_model_module_on_first_use():
    code = ("import sys, edge_runtime; a = 'onnxruntime' in sys.modules; edge_runtime.load; "
            "print(a, 'onnxruntime' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO / "payload")})
    assert out.stdout.split() == ["False", "True"]
