#!/usr/bin/env bash
# The README's two commands. Installs whatever is missing (idempotent), then:
#   bash scripts/run.sh demo   export -> INT8 bundle -> lab device (arm64 under QEMU) -> deploy -> query
#   bash scripts/run.sh test   ruff and mypy, then every test tier: unit, integration (real sshd, docker, ORT), e2e
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
what="${1:-}"
case "$what" in
  demo|test) ;;
  *) echo "usage: bash scripts/run.sh demo|test" >&2; exit 2 ;;
esac
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
case "$what" in
  demo) exec .venv/bin/invoke demo ;;
  test)
    # lint and types first: any finding fails the run before the (long) test tiers start
    .venv/bin/ruff check edgefleet payload tasks.py
    .venv/bin/mypy
    exec .venv/bin/python -m pytest -p no:cacheprovider --timeout=2400 --durations=40 "${@:2}" ;;
esac
