"""Command line: python -m edge_runtime serve|embed|classify|answer|selftest|profile --bundle DIR."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from edge_runtime.config import ConfigError, RuntimeConfig, read_config

log = logging.getLogger("edge_runtime")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m edge_runtime", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in [("serve", "serve the HTTP API"), ("embed", "embed texts (stdin lines)"),
                       ("classify", "label texts (stdin lines): label, probability, text"),
                       ("answer", "find the answer to --question in --context"),
                       ("selftest", "check golden outputs, print latency"),
                       ("profile", "per-node ORT profile and latency per length")]:
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--bundle", help="bundle directory (default: runtime.yaml 'bundle')")
        sub.add_argument("--config", help="runtime.yaml; flags win over its values")
        sub.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads")
        sub.add_argument("--max-seq-len", type=int, help="lower the bundle's max length")
        if name == "serve":
            sub.add_argument("--host", help="listen address (default 127.0.0.1)")
            sub.add_argument("--port", type=int, help="listen port (default 8080; 0 = any free)")
        if name in ("embed", "classify"):
            shape = '{"embeddings": [...]}' if name == "embed" else '{"results": [...]}'
            sub.add_argument("--json", action="store_true", help=f"print {shape}")
            sub.add_argument("texts", nargs="*", help="texts (default: one per stdin line)")
        if name == "answer":
            sub.add_argument("--question", required=True, help="the question")
            sub.add_argument("--context", help="the text to search (default: stdin)")
            sub.add_argument("--json", action="store_true",
                             help='print {"answer", "score", "start", "end"}')
        if name in ("selftest", "profile"):
            sub.add_argument("--runs", type=int, default=5, help="timed runs per text")
        if name == "profile":
            sub.add_argument("--top", type=int, default=15, help="nodes to list")
            sub.add_argument("--json", action="store_true",
                             help="print one JSON document (the host draws the chart from it)")
    return parser


def _pick(flag, value, default):
    return flag if flag is not None else (value if value is not None else default)


def _bundle(args, config: RuntimeConfig) -> str:
    bundle = _pick(args.bundle, config.bundle, None)
    if not bundle:
        raise ConfigError("no bundle: pass --bundle DIR or set 'bundle' in runtime.yaml")
    return bundle


def _load(args, config: RuntimeConfig):
    from edge_runtime.model import load
    from edge_runtime.tuning import place

    placement = place(config, args.threads)
    return load(_bundle(args, config), threads=placement.threads, spin=placement.spin,
                max_seq_len=_pick(args.max_seq_len, config.max_seq_len, None),
                providers=config.providers, provider_options=config.provider_options)


def _embed(args, config) -> int:
    texts = args.texts or [line.rstrip("\r\n") for line in sys.stdin]
    vectors = _load(args, config).embed(texts)
    if args.json:
        json.dump({"embeddings": vectors.tolist()}, sys.stdout)
        sys.stdout.write("\n")
    else:
        for row in vectors:
            print(" ".join(f"{value:.6f}" for value in row))
    return 0


def _classify(args, config) -> int:
    texts = args.texts or [line.rstrip("\r\n") for line in sys.stdin]
    results = _load(args, config).classify(texts)
    if args.json:
        json.dump({"results": results}, sys.stdout)
        sys.stdout.write("\n")
    else:
        for text, result in zip(texts, results, strict=True):
            print(f"{result['label']}\t{result['score']:.6f}\t{text}")
    return 0


def _answer(args, config) -> int:
    context = args.context if args.context is not None else sys.stdin.read()
    result = _load(args, config).answer(args.question, context)
    if args.json:
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(f"{result['answer']}\t{result['score']:.6f}")
    return 0


def _selftest(args, config) -> int:
    from edge_runtime.selftest import selftest

    result = selftest(_load(args, config), runs=args.runs)
    for line in result.lines():
        print(line)
    return 0 if result.passed else 1


def _profile(args, config) -> int:
    from edge_runtime.golden import items
    from edge_runtime.profiling import format_table, node_profile
    from edge_runtime.selftest import profile

    started = time.perf_counter()
    model = _load(args, config)
    load_seconds = time.perf_counter() - started
    lengths = profile(model, runs=args.runs)
    try:
        inputs = items(model.meta.get("golden") or {})
    except (KeyError, ValueError):
        inputs = []
    if not inputs:  # a bundle without goldens: one ~32-token input of its task
        text = "edge " * 30
        inputs = [("what is it?", text)] if model.task == "qa" else [text]
    rows = node_profile(model.bundle_dir, inputs, runs=args.runs, threads=model.threads,
                        spin=config.spin, max_seq_len=model.max_seq_len, top=args.top)
    if args.json:
        json.dump({"bundle": model.meta.get("name"), "task": model.task,
                   "load_seconds": round(load_seconds, 4), "threads": model.threads,
                   "inputs": len(inputs), "runs": args.runs, "latency_by_length": lengths,
                   "nodes": rows}, sys.stdout)
        sys.stdout.write("\n")
        return 0
    print(f"load_seconds {load_seconds:.3f} threads {model.threads}")
    for row in lengths:
        print(f"tokens {row['tokens']:4d}  p50 {row['p50']:8.2f} ms  p95 {row['p95']:8.2f} ms"
              f"  p99 {row['p99']:8.2f} ms")
    print(f"top {len(rows)} nodes by time ({len(inputs)} inputs x {args.runs} runs, batch 1):")
    for line in format_table(rows):
        print(line)
    return 0


def _serve(args, config) -> int:
    from edge_runtime.config import is_loopback
    from edge_runtime.server import Service, serve

    host = _pick(args.host, config.host, "127.0.0.1")
    if not is_loopback(host) and not config.token:
        raise ConfigError(f"--host {host} is not loopback: set 'token' in runtime.yaml "
                          "(or 'token_env' and that variable)")
    service = Service(_bundle(args, config), config, threads=args.threads,
                      max_seq_len=_pick(args.max_seq_len, config.max_seq_len, None))
    return serve(service, host, _pick(args.port, config.port, 8080))


def main(argv=None) -> int:
    """Parse arguments, read runtime.yaml if given, run the command; return the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        config = read_config(args.config) if args.config else RuntimeConfig()
        if config.log_level:
            logging.getLogger().setLevel(config.log_level.upper())
        run = {"serve": _serve, "embed": _embed, "classify": _classify, "answer": _answer,
               "selftest": _selftest, "profile": _profile}
        return run[args.command](args, config)
    except (ConfigError, ValueError, OSError) as error:
        log.error("error %s", error)
        return 2


if __name__ == "__main__":
    sys.exit(main())
