"""`python -m bench [NAME] [--json] [options]`: run one benchmark, or all of them, and print the result.

Each benchmark is bench/<NAME>.py exposing `run(args) -> dict` and optionally `add_arguments(parser)`.
With --json the result is printed as one JSON object on stdout (logs go to stderr). Without NAME every
benchmark runs with its defaults, one after the other, and the JSON object is keyed by benchmark name
(`python -m bench --json`; the footprint bench alone takes over 10 minutes). A benchmark that fails is reported
under its name as {"error": "..."} and the exit code is 1; the others still run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import pkgutil
import sys
import time
from pathlib import Path
from typing import Any


def _names() -> list[str]:
    here = Path(__file__).resolve().parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_"))


def _run_one(name: str, rest: list[str], as_json: bool) -> dict[str, Any]:
    module = importlib.import_module(f"bench.{name}")
    sub = argparse.ArgumentParser(prog=f"python -m bench {name}")  # its own --help
    sub.add_argument("--json", action="store_true")
    if hasattr(module, "add_arguments"):
        module.add_arguments(sub)
    args = sub.parse_args(rest + (["--json"] if as_json else []))
    result: dict[str, Any] = module.run(args)
    return result


def _print(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, sort_keys=True))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    names = _names()
    parser = argparse.ArgumentParser(prog="python -m bench", description="gridmeter benchmarks", add_help=False,
                                     epilog="python -m bench NAME --help lists that benchmark's options")
    parser.add_argument("name", nargs="?", choices=names, help="benchmark to run (default: all of them)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("-h", "--help", action="store_true", help="show this help (or NAME's) and exit")
    first, rest = parser.parse_known_args(argv)
    if first.help and first.name is None:
        parser.print_help()
        return 0
    if first.help:
        rest.append("--help")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if first.name is not None:
        _print(_run_one(first.name, rest, first.json), first.json)
        return 0
    if rest:
        parser.error(f"options {' '.join(rest)} need a benchmark NAME (running all uses each one's defaults)")
    results: dict[str, Any] = {}
    failed = False
    for name in names:
        print(f"bench: running {name} ...", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        try:
            results[name] = _run_one(name, [], first.json)
        except Exception as exc:  # one broken bench must not hide the others' figures
            failed = True
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"bench: {name} done in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    if first.json:
        print(json.dumps(results, sort_keys=True))
    else:
        for name, result in results.items():
            print(f"[{name}]")
            _print(result, False)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
