"""`gridmeter gateway` subcommands."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("gateway", help="(under construction)")
    p.set_defaults(func=lambda _args: p.print_help() or 2)
