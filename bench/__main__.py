"""`python -m bench NAME [--json] [options]`: run one benchmark, print its result.

Each benchmark is bench/<NAME>.py exposing `run(args) -> dict` and optionally `add_arguments(parser)`.
With --json the result is printed as one JSON object on stdout (logs go to stderr).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import pkgutil
import sys
from pathlib import Path


def _names() -> list[str]:
    here = Path(__file__).resolve().parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    names = _names()
    parser = argparse.ArgumentParser(prog="python -m bench", description="gridmeter benchmarks")
    parser.add_argument("name", choices=names, help="benchmark to run")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    first, rest = parser.parse_known_args(argv)
    module = importlib.import_module(f"bench.{first.name}")
    sub = argparse.ArgumentParser(prog=f"python -m bench {first.name}")
    sub.add_argument("--json", action="store_true")
    if hasattr(module, "add_arguments"):
        module.add_arguments(sub)
    args = sub.parse_args(rest + (["--json"] if first.json else []))
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    result = module.run(args)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
