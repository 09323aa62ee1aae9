"""The running service: placement, model, selftest gate, inference worker, thermal guard, info."""

from __future__ import annotations

import ctypes
import functools
import gc
import logging
import os
import re
import time
from concurrent.futures import CancelledError

from edge_runtime.batching import Decision, decide, job_size, run_grouped
from edge_runtime.config import RuntimeConfig
from edge_runtime.golden import ROUTES
from edge_runtime.heads import InputError
from edge_runtime.metrics import Metrics
from edge_runtime.model import ORT_SESSIONS, EmbeddingModel, OrtSessions, load, read_meta
from edge_runtime.selftest import rss_mib, selftest
from edge_runtime.sysfs import Sysfs, governor_drift
from edge_runtime.thermal import HARD, SOFT, STATES, ThermalGuard
from edge_runtime.tuning import Placement, place
from edge_runtime.validate import ApiError
from edge_runtime.worker import Abandoned, BatchPolicy, InferenceWorker, QueueFull

__all__ = ["Service", "release_id", "bundle_id", "rss_bytes"]

log = logging.getLogger("edge_runtime")
RELEASE_PATH = re.compile(r"/releases/([^/]+)/bundle/?$")
WAIT_S = 60.0
TRIM_TOKENS = 128  # after a call over this many tokens, hand freed memory back when idle
TASK_METHODS = {"embed": "embed", "classify": "classify", "qa": "answer"}
# A queue full for a moment is load; full for this long, the device is not serving in practice
QUEUE_FULL_S = 10.0


def release_id(bundle_dir) -> str | None:
    """Return <id> when the bundle resolves to .../releases/<id>/bundle, else None."""
    match = RELEASE_PATH.search(os.path.realpath(str(bundle_dir)))
    return match.group(1) if match else None


@functools.lru_cache(maxsize=8)  # a bundle's files never change under it: /v1/info hashes it once
def bundle_id(bundle_dir) -> str | None:
    """Return the bundle's identity: the sha256 of its bundle.json (which holds every file's), short.

    Two bundles with one directory name are told apart by it; deploys and rollouts show the same.
    """
    import hashlib  # here, not at import: the service's start-up imports stay small (test_runtime_http)

    try:
        with open(os.path.join(str(bundle_dir), "bundle.json"), "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()[:12]
    except OSError:
        return None


def rss_bytes() -> int:
    """Return this process's resident set size in bytes (0 if unknown)."""
    return int(rss_mib() * 1024 * 1024)


def _malloc_trim() -> None:
    """Hand memory freed while loading (the parsed ONNX protobuf) back to the OS (glibc only)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


MMAP_MAX_BYTES = 32 * 2**20  # glibc's own ceiling for its adaptive mmap threshold


def single_malloc_arena() -> bool:
    """Make glibc use one malloc arena for all threads (mallopt M_ARENA_MAX=1); call early.

    Measured with 3 batches of 8 x 256 tokens: RSS afterwards 104-105 MiB every time with one
    arena, 105-141 MiB with the default (per-thread arenas defeat malloc_trim), batch-1 p50 the
    same within noise.

    Also: blocks up to MMAP_MAX_BYTES come from the heap, not from mmap, and free() does not
    shrink the heap on its own (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD). Without ORT's arena every
    tensor is a malloc; a batch's larger tensors were mapped and unmapped, or the heap's top
    handed back, on every call, and the next call faulted the pages in again (120-250 minor
    faults a request for 16 concurrent 64-token requests, against 8 unbatched). The service's
    own malloc_trim (idle, settled) still hands the memory back when the load stops.
    Returns False when not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-8, 1)  # M_ARENA_MAX
                    and libc.mallopt(-3, MMAP_MAX_BYTES)  # M_MMAP_THRESHOLD
                    and libc.mallopt(-1, 2 * MMAP_MAX_BYTES))  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        return False


TRT = "TensorrtExecutionProvider"
BUILDING = "building_engine"


class Service:
    """The model, its readiness ("loading" | "building_engine" | "ready" | "failed") and everything around it.

    `sessions`: the seam where ONNX Runtime sessions are made (model.OrtSessions).
    """

    def __init__(self, bundle_dir, config: RuntimeConfig | None = None, threads=None,
                 max_seq_len=None, sessions: OrtSessions | None = None):
        self.bundle_dir, self.config = bundle_dir, config or RuntimeConfig()
        self.threads, self.max_seq_len = threads, max_seq_len or self.config.max_seq_len
        self.model: EmbeddingModel | None = None
        self.state, self.status = "loading", "loading"
        self.placement: Placement | None = None
        self.started = time.monotonic()
        self.sysfs = Sysfs(self.config.sysfs_root)
        self.guard = ThermalGuard(self.sysfs, self.config.thermal)
        self.metrics = Metrics()
        self._trim = False
        self.full_since: float | None = None  # when new work was first refused for a full queue
        self.batching = Decision(False, "not loaded")
        self.sessions = sessions or ORT_SESSIONS
        self.engine = None  # engine_cache.EngineCache when TensorRT is asked for and offered
        self.worker = self._new_worker(1)  # start() gives it the placement's workers

    @property
    def ready(self) -> bool:
        """Return True once the model is loaded and the selftest passed."""
        return self.state == "ready"

    def serving(self) -> tuple[str, str]:
        """Return (state, reason): whether the service takes inference now, and if not, why.

        States: "ready" (serving; soft throttling only slows it), "loading", "building_engine"
        (TensorRT builds its engine: minutes on a Jetson, not a failure), "failed" (load or
        selftest), "too_hot" (the thermal guard refuses new work), "overloaded" (the queue has
        refused work for QUEUE_FULL_S). /readyz answers from this, so the host's status and
        health gate see the same refusals a client of /v1/embed does.
        """
        if self.state != "ready":
            return self.state, self.status
        if self.guard.state == HARD:
            t = self.config.thermal
            return "too_hot", (f"too hot: {self.guard.hottest()} °C above the hard limit {t.hard_c:g} °C, "
                               f"refusing inference until below {t.soft_c:g} °C")
        since = self.full_since
        if since is not None and self.worker.depth >= self.config.limits.queue_depth \
                and time.monotonic() - since >= QUEUE_FULL_S:
            return "overloaded", (f"inference queue full ({self.config.limits.queue_depth}) for "
                                  f"{time.monotonic() - since:.0f} s, refusing new work")
        return "ready", self.status

    def place(self) -> Placement:
        """Apply affinity and nice; call from the main thread before any other thread starts.

        sched_setaffinity(0) pins the calling thread; threads started later inherit it.
        """
        self.placement = place(self.config, self.threads)
        return self.placement

    def start(self, poll: bool = True) -> None:
        """Place (unless done), load, selftest, then start the worker and the guard's thread."""
        try:
            placement = self.placement or self.place()
            self.guard.start() if poll else self.guard.tick()
            started = time.perf_counter()
            self.engine = self._engine_cache()
            self.model = model = self._load(placement)
            if model.providers and model.providers.missing:
                log.warning("providers_fallback missing=%s active=%s", ",".join(model.providers.missing),
                            ",".join(model.providers.names))
            log.info("model_loaded bundle=%s seconds=%.3f", self.bundle_dir,
                     time.perf_counter() - started)
            result = selftest(model)
            engine = self.engine
            if not result.passed and engine is not None and engine.source == "context model":
                # an engine that loads but answers wrong: build from model.onnx instead, once
                engine.discard_context_model(f"selftest failed: {result.reason}")
                self.state, self.status = BUILDING, self._building_reason(engine)
                self.model = model = self._load(placement)
                result = selftest(model)
            gc.collect()
            gc.freeze()  # the model's objects live forever: keep them out of every GC pass
            _malloc_trim()
            if result.passed:
                if placement.workers != self.worker.workers:
                    self.worker = self._new_worker(placement.workers)
                self._batch_if_safe(model)
                self.worker.start()
            self.state = "ready" if result.passed else "failed"
            self.status = result.reason
            log.log(logging.INFO if result.passed else logging.ERROR,
                    "selftest passed=%s worst_%s=%.6f %s rss_mib=%.1f", result.passed,
                    result.metric, result.worst, result.reason, rss_bytes() / 2**20)
        except Exception as error:  # the service stays up, not ready, and says why
            self.state, self.status = "failed", f"load failed: {error}"
            log.error("load_failed error=%s", error)

    def _new_worker(self, workers: int) -> InferenceWorker:
        return InferenceWorker(self._run, self.config.limits.queue_depth,
                               observe=self.metrics.inferred, spacing=self._spacing,
                               idle=self._idle, settled=self._settled, workers=workers)

    def _engine_cache(self):
        """Return the engine cache when TensorRT is asked for and offered (else None), and say
        "building engine" while a start has to build one."""
        if TRT not in self.config.providers or TRT not in self.sessions.available():
            return None
        from edge_runtime import engine_cache  # only where TensorRT runs: hashing and /proc reads

        meta = read_meta(self.bundle_dir)
        limit = min(self.max_seq_len or meta["max_seq_len"], meta["max_seq_len"])
        max_batch = max(self.config.limits.max_texts, self.config.batching.max_batch)
        cache = engine_cache.prepare(self.bundle_dir, self.config.engine_cache_dir,
                                     dict(self.config.provider_options.get(TRT) or {}), list(meta["inputs"]),
                                     max_batch, limit, engine_cache.read_facts())
        log.info("engine_cache dir=%s key=%s facts=%s engine=%s", cache.dir, cache.key, cache.facts,
                 "cached" if cache.has_engine() else "to build")
        if not cache.has_engine():
            self.state, self.status = BUILDING, self._building_reason(cache)
        return cache

    @staticmethod
    def _building_reason(cache) -> str:
        return (f"building engine: TensorRT builds the engine for model "
                f"{cache.model.get('model.onnx', '?')[:12]} (cache {cache.dir}); the first start on a "
                "device takes minutes, later ones load it")

    def _load(self, placement: Placement) -> EmbeddingModel:
        return load(self.bundle_dir, threads=placement.threads, max_seq_len=self.max_seq_len,
                    spin=placement.spin, providers=self.config.providers,
                    provider_options=self.config.provider_options, profile_nodes=True,
                    sessions=self.sessions, engine=self.engine)

    def _run(self, job):
        task, args = job
        result = getattr(self.model, TASK_METHODS[task])(*args)
        self._trim = self._trim or self.model.last_tokens > TRIM_TOKENS
        return result

    def _batch_if_safe(self, model: EmbeddingModel) -> None:
        """Give the worker a batch policy when batching.py's rule allows it for this bundle."""
        settings = self.config.batching
        self.batching = decide(settings, model.meta)
        log.info("batching enabled=%s max_batch=%d max_tokens=%d max_wait_ms=%s (%s)", self.batching.enabled,
                 settings.max_batch, settings.max_tokens, settings.max_wait_ms, self.batching.reason)
        if self.batching.enabled and settings.max_batch > 1:
            self.worker.batch = BatchPolicy(size=job_size, run_many=self._run_many,
                                            max_items=settings.max_batch,
                                            max_wait_s=settings.max_wait_ms / 1e3,
                                            max_cost=settings.max_tokens)

    def _run_many(self, jobs: list, costs: list[int] | None = None) -> list:
        """Run several queued jobs of one task as few model calls as padding allows; costs are
        their tokens as counted at submit (texts x the longest), so nothing is tokenized twice."""
        model = self.model
        task = jobs[0][0]
        if model is None or any(job[0] != task for job in jobs):
            return [self._outcome(job) for job in jobs]
        costs = costs if costs is not None else [self._tokens(job) for job in jobs]
        lengths = [cost // max(job_size(job), 1) for job, cost in zip(jobs, costs, strict=True)]
        outcomes = run_grouped(getattr(model, TASK_METHODS[task]), jobs, lengths,
                               self.config.batching.max_tokens)
        self._trim = self._trim or model.last_tokens > TRIM_TOKENS
        return outcomes

    def _outcome(self, job):
        try:
            return self._run(job)
        except Exception as error:
            return error

    def _idle(self) -> None:
        """After long inputs, return glibc's freed blocks to the OS (off the answer path):
        without it RSS stays at its peak (207 MiB after 8 x 256 tokens, 99 MiB with it).

        Not while clients are concurrent: the queue is empty for a moment after each of their
        batches, and the next batch faults the same memory straight back in (a trim after every
        batch cost 10-25% more CPU a text, benchmarks/RESULTS.md). Then the trim waits for
        _settled, as do short inputs' leftovers (~2-3 MiB after a burst of requests)."""
        if self._trim and not self.worker.concurrent:
            self._trim = False
            _malloc_trim()

    def _settled(self) -> None:
        """No job came for the worker's settle time: hand freed memory back."""
        self._trim = False
        _malloc_trim()

    def _spacing(self, took_s: float) -> float:
        return took_s if self.guard.state == SOFT else 0.0

    def embed(self, texts: list[str], wanted=None):
        """Embed texts on the worker (see infer)."""
        return self.infer("embed", texts, wanted=wanted)

    def infer(self, task: str, *args, wanted=None):
        """Queue one model call for the worker and wait for its result.

        503 when not ready, too hot or the queue is full; 409 when the bundle was built for
        another task; 400 when the model cannot take the input (e.g. the question is too long).
        wanted() is asked before the call runs: False drops it and raises Abandoned.
        """
        model = self.model
        if not self.ready or model is None:  # ready implies a model
            raise ApiError(503, f"not ready: {self.status}", state=self.state)
        if task != model.task:
            raise ApiError(409, f"this runtime serves a {model.task!r} bundle (POST "
                                f"{ROUTES[model.task]}); {ROUTES[task]} needs a {task!r} "
                                "bundle", task=model.task)
        if self.guard.state == HARD:
            retry = self.guard.retry_after_s
            raise ApiError(503, f"too hot ({self.guard.hottest()} °C): refusing new work",
                           headers={"Retry-After": str(retry)}, throttle=HARD)
        try:
            future = self.worker.submit((task, args), wanted, self._tokens((task, args)))
        except QueueFull as error:
            self.full_since = self.full_since or time.monotonic()
            raise ApiError(503, str(error), headers={"Retry-After": "1"}) from None
        self.full_since = None
        try:
            return future.result(timeout=WAIT_S)
        except InputError as error:
            raise ApiError(400, str(error)) from None
        except CancelledError:
            raise Abandoned(f"client gone before its {task} call ran") from None

    def _tokens(self, job) -> int:
        """Return a batched job's padded tokens (texts x the longest), counted on the caller's
        thread, so a worker knows how much of the queue its batch can take (0: not batched,
        or a text the tokenizer refuses, which then meets its own error on the worker)."""
        model = self.model
        if self.worker.batch is None or model is None or not job_size(job):
            return 0
        texts = job[1][0]
        try:
            return len(texts) * max(model.token_lengths(texts))
        except Exception:
            return 0

    def info(self) -> dict:
        """Return bundle, release, placement, governors with drift, temperatures, throttle."""
        policies = self.sysfs.policies()
        try:
            meta = read_meta(self.bundle_dir)
        except ValueError:
            meta = {}
        placement = self.placement
        return {
            "bundle": meta.get("name") or os.path.basename(os.path.normpath(str(self.bundle_dir))),
            "bundle_id": bundle_id(self.bundle_dir),
            "task": meta.get("task"),
            **({"labels": meta["labels"]} if meta.get("task") == "classify" else {}),
            **({"max_answer_len": meta["max_answer_len"]} if meta.get("task") == "qa" else {}),
            "max_seq_len": self.model.max_seq_len if self.model else None,
            "bundle_dir": str(self.bundle_dir),
            "release": release_id(self.bundle_dir) or self.config.release,
            "target": self.config.target,
            "state": self.state,
            "serving": dict(zip(("state", "reason"), self.serving(), strict=True)),
            "threads": placement.threads if placement else None,
            "workers": placement.workers if placement else self.config.workers,
            "affinity": list(placement.affinity) if placement else None,
            "spin": placement.spin if placement else self.config.spin,
            "nice": placement.nice if placement else None,
            "tuning_warnings": list(placement.warnings) if placement else [],
            "governor": {"wanted": self.config.governor,
                         "policies": {p.name: {"governor": p.governor, "cpus": list(p.cpus),
                                               "cur_khz": p.cur_khz, "max_khz": p.max_khz}
                                      for p in policies},
                         "drift": governor_drift(policies, self.config.governor)},
            "temperatures": {z.name: {"type": z.type, "temp_c": z.temp_c}
                             for z in self.guard.zones},
            "throttle": {"state": self.guard.state, "soft_c": self.config.thermal.soft_c,
                         "hard_c": self.config.thermal.hard_c},
            "providers": self.providers(),
            "queue_depth": self.worker.depth,
            "batching": {"enabled": self.batching.enabled, "reason": self.batching.reason,
                         "max_batch": self.config.batching.max_batch,
                         "max_tokens": self.config.batching.max_tokens,
                         "max_wait_ms": self.config.batching.max_wait_ms},
            "rss_bytes": rss_bytes(),
            "uptime_s": round(time.monotonic() - self.started, 3),
        }

    def providers(self) -> dict:
        """Return the execution providers: requested, active (the session's), missing, required,
        and the share of graph nodes each active one runs."""
        model = self.model
        active = model.session.get_providers() if model else []
        return {"requested": list(self.config.providers), "active": active,
                "missing": [p for p in self.config.providers if model and p not in active],
                "required": list(self.config.require_providers),
                "node_share": dict(model.node_share) if model else {},
                "engine_cache": self.engine.describe() if self.engine is not None else None}

    def gauges(self) -> list:
        """Return the gauges for /metrics: queue, temperatures, throttle, governor drift."""
        policies = self.sysfs.policies()
        drift = set(governor_drift(policies, self.config.governor))
        return [
            ("edge_queue_depth", "Inference jobs waiting or running.", [({}, self.worker.depth)]),
            ("edge_ready", "1 when the model is loaded and the selftest passed.",
             [({}, int(self.ready))]),
            ("edge_temperature_celsius", "Thermal zone temperature.",
             [({"zone": z.name, "type": z.type}, z.temp_c) for z in self.guard.zones
              if z.temp_c is not None]),
            ("edge_throttle_state", "1 for the thermal guard's current state.",
             [({"state": s}, int(s == self.guard.state)) for s in STATES]),
            ("edge_governor_drift", "1 when a cpufreq policy's governor differs from config.",
             [({"policy": p.name, "governor": p.governor or "", "wanted":
                self.config.governor or ""}, int(p.name in drift)) for p in policies]),
            ("edge_resident_memory_bytes", "Resident set size.", [({}, rss_bytes())]),
            *self._provider_gauges(),
        ]

    def _provider_gauges(self) -> list:
        providers = self.providers()
        names = list(dict.fromkeys([*providers["requested"], *providers["active"]]))
        return [("edge_provider_active", "1 when the session runs on this execution provider "
                 "(requested or active).", [({"provider": p}, int(p in providers["active"]))
                                            for p in names]),
                ("edge_provider_node_share", "Share of graph nodes this provider ran (profiled "
                 "once at load).", [({"provider": p}, float(share))
                                    for p, share in sorted(providers["node_share"].items())])]
