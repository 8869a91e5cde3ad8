"""`gridmeter` console command: dispatches to each package's own CLI module.

Every package exposes `register(subparsers)`, adding its subcommand with `func=handler` where
handler(args) -> int exit code. Heavy imports happen inside handlers so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

_SUBCOMMANDS = (
    ("agent", "agent.cli"),
    ("gateway", "gateway.cli"),
    ("provision", "provisioning.cli"),
    ("chain", "localchain.cli"),
    ("demo", "gridmeter.demo"),
)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """All subcommands, or only `only`'s: a service (`gridmeter agent run`) then never imports the other packages'
    CLIs and what they pull in (the Solana libraries alone are ~20 MB of RSS on the Pi)."""
    parser = argparse.ArgumentParser(
        prog="gridmeter",
        description="Meter edge of the GridTokenX energy market: read meters, sign, queue, verify, submit on chain.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module in _SUBCOMMANDS:
        if only is None or name == only:
            importlib.import_module(module).register(sub)
    return parser


def _command(argv: list[str]) -> str | None:
    first = next((a for a in argv if not a.startswith("-")), None)
    return first if first in {name for name, _ in _SUBCOMMANDS} else None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(_command(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2) if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        rc: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return rc


if __name__ == "__main__":
    sys.exit(main())
