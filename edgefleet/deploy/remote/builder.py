"""Build a venv release from objects already on the device: `python3 -c <source> SPEC_JSON`."""

from __future__ import annotations

import json
import sys

from edgefleet.deploy.remote.build import build  # host only


def main() -> None:
    build(json.loads(sys.argv[1]))


if __name__ == "__main__":
    main()
