"""CPU a text by batch size and text length, in-process: where a batch stops paying.

    .venv/bin/python benchmarks/bench_batch_cost.py [--bundle DIR] [--threads 1] [--rounds 5]

For each length (16, 64, 128 tokens) and batch size (1, 2, 4, 8, 16) the runtime's own
`embed` runs for --seconds; the figure is process CPU ms per text (user + system), which moves
less with a shared machine's load than wall time. Cells run in an order that rotates each
round, and batch 1 is measured twice (`1` and `1 again`): their spread is the noise floor.
This is what `batching.max_tokens` (texts x padded length of one model call) is chosen from.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "payload"))
sys.path.insert(0, str(REPO / "benchmarks"))

import edge_runtime  # noqa: E402
from bench_runtime import DEFAULT_BUNDLE, text_of  # noqa: E402

LENGTHS = (16, 64, 128)
SIZES = ("1", "2", "4", "8", "16", "1 again")
WORDS = ("the quick brown fox jumps over the lazy dog near the river bank while edge boards "
         "serve small models to many clients at once").split()


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_per_text(model, texts: list[str], seconds: float) -> float:
    """Return CPU ms per text of model.embed(texts) run for about `seconds`."""
    model.embed(texts)
    done, started, wall = 0, cpu_s(), time.perf_counter()
    while time.perf_counter() - wall < seconds:
        model.embed(texts)
        done += len(texts)
    return (cpu_s() - started) / done * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.6, help="per cell and round")
    args = parser.parse_args()
    model = edge_runtime.load(Path(args.bundle), threads=args.threads)
    texts = {n: text_of(model.tokenizer, list(WORDS), n) for n in LENGTHS}
    cells: dict = {}
    for index in range(args.rounds):
        turn = index % len(SIZES)
        for n, (text, _) in texts.items():
            for size in SIZES[turn:] + SIZES[:turn]:
                batch = [text] * int(size.split()[0])
                cells.setdefault((n, size), []).append(cpu_per_text(model, batch, args.seconds))
        print(f"  round {index + 1}/{args.rounds} done", file=sys.stderr)
    print(f"CPU ms a text by batch size, {args.threads} thread(s), median of {args.rounds} rounds; "
          "ratio: batch 1 / batch n (> 1: the batch saves CPU); noise: |1 again / 1 - 1|")
    print(f"{'tokens':>6s} | " + " ".join(f"{'b' + s.split()[0] + (' again' if 'again' in s else ''):>9s}"
                                          for s in SIZES) + " | best   noise")
    for n, (_, got) in texts.items():
        med = {size: statistics.median(cells[(n, size)]) for size in SIZES}
        noise = abs(med["1 again"] / med["1"] - 1)
        best = min(SIZES[1:-1], key=med.__getitem__)
        print(f"{got:6d} | " + " ".join(f"{med[s]:9.2f}" for s in SIZES)
              + f" | b{best} {med['1'] / med[best]:.2f}x {noise:5.1%}"
              + f"  (b{best} = {int(best) * got} tokens a call)")


if __name__ == "__main__":
    main()
