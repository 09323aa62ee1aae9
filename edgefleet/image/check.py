"""Test runtime images: the runtime's selftest in each platform's image, then embeddings compared.

Each platform runs the runtime's CLI `selftest`, then embeds the bundle's golden texts one per
call with the runtime's API (`edge_runtime.load(...).embed`), in one python process (imports
under emulation cost more than the model) in a throw-away container (docker-init as PID 1, no network, read-only
root, bundle mounted read-only, killed on timeout). A platform foreign to this host runs under qemu-user
with QEMU_CPU=neoverse-n1 (or the CPU model asked for); its results are marked `emulated` and
its latency is not judged. Other texts than the goldens (a text file) can be compared the same way.
"""

from __future__ import annotations

import json
import os
import platform as host
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgefleet import engine
from edgefleet.image.build import ImageError, ImageInputError, arch_of, resolve_ref

__all__ = ["CROSS_MIN_COSINE", "PlatformResult", "host_arch", "parse_selftest", "cross_cosines",
           "judge", "parse_check_output", "run_platform", "check_images", "texts_from_file"]

CROSS_MIN_COSINE = 0.9999
QEMU_CPU = "neoverse-n1"  # no SME: ORT would use it and QEMU emulates it far slower
TIMEOUT_S = {False: 180.0, True: 600.0}  # native, emulated
BUNDLE_MOUNT = "/bundle"
EMBED_MARKER = "=== edgefleet image.test: embed ==="
# argv: selftest args, "--", bundle dir, texts. The selftest is the CLI's; the embeddings come
# from the runtime's Python API one text per call (as the goldens and the health gate do: with
# dynamic INT8 a text's vector depends a little on what else is in its batch).
PROGRAM = f"""import json, sys
from edge_runtime import load
from edge_runtime.__main__ import main
args = sys.argv[1:]
cut = args.index("--")
status = main(args[:cut])
model = load(args[cut + 1])
print({EMBED_MARKER!r}, flush=True)
print(json.dumps({{"embeddings": [model.embed([text])[0].tolist() for text in args[cut + 2:]]}}))
sys.exit(status)
"""


@dataclass
class PlatformResult:
    """What one platform's image did."""

    platform: str
    image: str
    emulated: bool
    selftest_passed: bool
    selftest_reason: str
    golden_cosines: list[float]
    latency_ms: dict[str, float]
    embeddings: list[list[float]] = field(repr=False, default_factory=list)
    error: str = ""


def host_arch() -> str:
    """Return this machine's arch as docker names it."""
    machine = host.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def parse_selftest(stdout: str) -> tuple[list[float], dict[str, float], bool, str]:
    """Return (cosines, latency percentiles, passed, reason) from `selftest` output."""
    cosines = [float(v) for v in re.findall(r"^\w+\[\d+\] = (\S+)$", stdout, re.M)]
    latency = {k: float(v) for k, v in re.findall(r"(p\d+)=([\d.]+)", " ".join(
        line for line in stdout.splitlines() if line.startswith("latency_ms")))}
    verdict = re.search(r"^(PASS|FAIL): (.*)$", stdout, re.M)
    if verdict is None:
        return cosines, latency, False, "no PASS/FAIL line in the selftest output"
    return cosines, latency, verdict.group(1) == "PASS", verdict.group(2)


def parse_check_output(stdout: str) -> tuple[tuple[list[float], dict[str, float], bool, str], list]:
    """Split PROGRAM's output into the parsed selftest and the embeddings (ImageError if cut short)."""
    selftest_out, marker, embed_out = stdout.partition(EMBED_MARKER)
    if not marker:
        raise ImageError("selftest did not finish:\n" + stdout[-1500:])
    try:
        embeddings = json.loads(embed_out)["embeddings"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ImageError(f"embed printed no embeddings ({exc}):\n{embed_out[-1500:]}") from exc
    return parse_selftest(selftest_out), embeddings


def cross_cosines(a: list[list[float]], b: list[list[float]]) -> list[float]:
    """Return the row-wise cosine of two platforms' embeddings of the same texts."""
    left, right = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if left.shape != right.shape or left.ndim != 2:
        raise ImageError(f"embeddings differ in shape: {left.shape} vs {right.shape}")
    left /= np.maximum(np.linalg.norm(left, axis=1, keepdims=True), 1e-12)
    right /= np.maximum(np.linalg.norm(right, axis=1, keepdims=True), 1e-12)
    return [float(v) for v in (left * right).sum(axis=1)]


def judge(results: list[PlatformResult], threshold: float = CROSS_MIN_COSINE) -> dict:
    """Return the report: per platform, every pair's cosines, and whether all passed."""
    pairs = []
    for i, first in enumerate(results):
        for second in results[i + 1:]:
            if first.embeddings and second.embeddings:
                values = cross_cosines(first.embeddings, second.embeddings)
                pairs.append({"a": first.platform, "b": second.platform, "cosines": values,
                              "min_cosine": min(values), "mean_cosine": float(np.mean(values)),
                              "passed": min(values) >= threshold})
            else:
                pairs.append({"a": first.platform, "b": second.platform, "cosines": [],
                              "min_cosine": None, "mean_cosine": None, "passed": False})
    platforms = {}
    for r in results:
        entry = asdict(r)
        entry.pop("embeddings")
        if r.emulated:
            entry["latency_ms"] = {"emulated": True, **r.latency_ms}
        platforms[r.platform] = entry
    passed = all(r.selftest_passed for r in results) and all(p["passed"] for p in pairs)
    return {"platforms": platforms, "cross": {"threshold": threshold, "pairs": pairs},
            "passed": passed}


def _golden_texts(bundle_dir: Path) -> list[str]:
    meta_path = bundle_dir / "bundle.json"
    try:
        texts = (json.loads(meta_path.read_text()).get("golden") or {}).get("texts") or []
    except (OSError, ValueError) as exc:
        raise ImageInputError(f"{meta_path}: cannot read golden texts ({exc})") from exc
    if not texts:
        raise ImageInputError(f"{meta_path}: no golden texts ('golden.texts')")
    return [str(t) for t in texts]


def texts_from_file(path: Path, first: int | None = None) -> list[str]:
    """Return the non-empty lines of a text file (the first `first` of them if given)."""
    try:
        texts = [line for line in Path(path).read_text(encoding="utf-8").splitlines()
                 if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ImageInputError(f"{path}: cannot read texts ({exc})") from exc
    if first is not None and first < 1:
        raise ImageInputError(f"first {first}: need at least one text")
    texts = texts[:first] if first else texts
    if not texts:
        raise ImageInputError(f"{path}: no texts (one a line)")
    return texts


def _spec(ref: str, platform: str, emulated: bool, bundle_dir: Path, command: list[str],
          purpose: str, qemu_cpu: str = QEMU_CPU) -> engine.ContainerSpec:
    from edgefleet.lab.plan import slot

    return engine.ContainerSpec(
        name=f"edgefleet-image-test{slot()}-{arch_of(platform)}-{purpose}-{os.getpid()}",
        image=ref, platform=platform, entrypoint=(command[0],), command=tuple(command[1:]),
        init=True, read_only=True,
        network_mode="none", labels={"edgefleet.image-test": str(slot())},
        environment={"QEMU_CPU": qemu_cpu} if emulated else {},
        tmpfs={"/tmp": "rw,nosuid,nodev,size=64m"},
        binds={str(bundle_dir.resolve()): {"bind": BUNDLE_MOUNT, "mode": "ro"}},
    )


def _run(spec: engine.ContainerSpec, timeout: float, what: str) -> str:
    code, out, err = engine.run_to_exit(spec, timeout)
    if code is None:
        raise ImageError(f"{what} in {spec.image} ({spec.platform}) timed out after {timeout:.0f} s "
                         f"and was killed:\n{err[-1500:]}")
    if code not in (0, 1):
        raise ImageError(f"{what} in {spec.image} ({spec.platform}) exited {code}:\n{err[-1500:]}")
    return out


def run_platform(ref: str, platform: str, bundle_dir: Path, runs: int = 1,
                 timeout: float | None = None, texts: list[str] | None = None,
                 qemu_cpu: str = QEMU_CPU) -> PlatformResult:
    """Run selftest and embed texts (default the golden texts) in one platform's image."""
    emulated = arch_of(platform) != host_arch()
    texts = texts or _golden_texts(bundle_dir)
    # emulated embeds are slow: allow for more texts than the 8 goldens
    timeout = timeout or TIMEOUT_S[emulated] + (3.0 if emulated else 0.5) * len(texts)
    result = PlatformResult(platform, ref, emulated, False, "", [], {})
    command = ["python3", "-c", PROGRAM, "selftest", "--bundle", BUNDLE_MOUNT, "--runs", str(runs),
               "--", BUNDLE_MOUNT, *texts]
    try:
        out = _run(_spec(ref, platform, emulated, bundle_dir, command, "check", qemu_cpu),
                   timeout, "selftest + embed")
        selftest, result.embeddings = parse_check_output(out)
        (result.golden_cosines, result.latency_ms, result.selftest_passed,
         result.selftest_reason) = selftest
    except ImageError as exc:
        result.error = str(exc)
        result.selftest_reason = result.selftest_reason or str(exc).splitlines()[0]
    return result


def check_images(tag: str, platforms: list[str], bundle_dir: Path, runs: int = 1,
                 min_cosine: float = CROSS_MIN_COSINE, texts: list[str] | None = None,
                 qemu_cpu: str = QEMU_CPU) -> dict:
    """Test each platform's image for `tag` and compare their embeddings of texts (default the
    bundle's golden texts); return the report."""
    refs = [(resolve_ref(tag, p), p) for p in platforms]
    results = []
    for ref, platform in refs:
        emulated = arch_of(platform) != host_arch()
        print(f"image.test: {platform} in {ref}"
              f"{f' (emulated, QEMU_CPU={qemu_cpu})' if emulated else ''}", file=sys.stderr,
              flush=True)
        results.append(run_platform(ref, platform, bundle_dir, runs=runs, texts=texts,
                                    qemu_cpu=qemu_cpu))
    report = judge(results, min_cosine)
    report["tag"] = tag
    report["bundle"] = str(bundle_dir)
    report["texts"] = "golden" if texts is None else len(texts)
    report["qemu_cpu"] = qemu_cpu
    return report
