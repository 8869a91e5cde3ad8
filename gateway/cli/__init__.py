"""`gridmeter gateway` subcommands: the command tree (this module) and, one module each, what they do:

run.py      run, check-config                         the service, and the check that it could start
keys.py     keygen, authority-key, gen-token          the gateway's key files and secrets
meters.py   meters add|list|suspend|resume|retire|import  the meter registry and each meter's health
reports.py  rejections, held, ingest-status, outbox   read-only reports on what became of the readings
settings.py how commands read the config (read-only commands need no secrets); output.py what operators see

Heavy imports happen inside the handlers, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from functools import wraps

from gateway.cli import keys, meters, reports, run
from gateway.cli.output import fail
from gateway.config import DEFAULT_CONFIG_PATH
from gateway.store.outbox import OutboxStatus

# Rows a listing prints at most: enough for a person, bounded for the database and the terminal.
MAX_LIST_LIMIT = 10_000
Handler = Callable[[argparse.Namespace], int]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("gateway", help="verify, check and queue signed readings; submit them to the oracle")
    gsub = p.add_subparsers(dest="gateway_command", metavar="COMMAND")
    gsub.required = True

    def cmd(name: str, help_: str, func: Handler) -> argparse.ArgumentParser:
        c = gsub.add_parser(name, help=help_)
        c.add_argument("--config", default=DEFAULT_CONFIG_PATH, help=f"gateway TOML (default {DEFAULT_CONFIG_PATH})")
        c.set_defaults(func=_guarded(func))
        return c

    r = cmd("run", "run the gateway service", run.run)
    r.add_argument("--log-format", choices=("text", "json"), default=os.environ.get("GRIDMETER_LOG_FORMAT", "text"),
                   help="json: one JSON object per line, for journald/Loki (default text, or $GRIDMETER_LOG_FORMAT)")
    cmd("check-config", "validate the config and its key files; start nothing", run.check_config)
    _key_commands(gsub)
    _meter_commands(gsub)
    r = cmd("rejections", "show quarantined readings with their reasons", reports.rejections)
    r.add_argument("--meter")
    r.add_argument("--limit", type=_limit, default=50, help=f"1..{MAX_LIST_LIMIT} (default 50)")
    r.add_argument("--json", action="store_true")
    h = cmd("held", "show held readings and held interval submissions with their reasons", reports.held)
    h.add_argument("--meter")
    h.add_argument("--limit", type=_limit, default=50, help=f"1..{MAX_LIST_LIMIT} per list (default 50)")
    h.add_argument("--json", action="store_true")
    i = cmd("ingest-status", "GridTokenX HTTP ingest: a meter's energy books, or what became of one reading",
            reports.ingest_status)
    i.add_argument("meter_id", nargs="?", help="the meter (device_id)")
    i.add_argument("--reading", metavar="READING_ID", help="the reading_id the ingest answered with (202)")
    i.add_argument("--json", action="store_true")
    o = cmd("outbox", "show interval submissions", reports.outbox)
    o.add_argument("--meter")
    o.add_argument("--status", choices=[s.value for s in OutboxStatus])
    o.add_argument("--limit", type=_limit, default=50, help=f"1..{MAX_LIST_LIMIT} (default 50)")


def _key_commands(gsub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    k = gsub.add_parser("keygen", help="create the gateway's ack-signing key file (0600); prints the public key "
                        "(hex) that agents pin as mqtt.gateway_public_key")
    k.add_argument("path")
    k.set_defaults(func=_guarded(keys.keygen))
    t = gsub.add_parser("gen-token", help="print a new random secret for dashboard.token, dashboard.password or "
                                          "an http.api_keys entry")
    t.set_defaults(func=keys.gen_token)
    a = gsub.add_parser("authority-key", help="create the chain_bridge authority key (Solana keypair, 0600) that "
                        "signs every oracle submission; prints its base58 public key",
                        description="Creates the keypair file chain.authority_key_file points at (solana-keygen "
                        "JSON) and prints the base58 public key the oracle's admin sets as chain_bridge "
                        "(`gridmeter chain serve --chain-bridge` locally). --show prints the key of an existing file.")
    a.add_argument("path", help="e.g. /etc/gridmeter/chain-bridge.json")
    a.add_argument("--show", action="store_true", help="do not create: print the public key of an existing file")
    a.set_defaults(func=_guarded(keys.authority_key))


def _meter_commands(gsub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    m = gsub.add_parser("meters", help="the meter registry")
    msub = m.add_subparsers(dest="meters_command", metavar="COMMAND")
    msub.required = True
    c = msub.add_parser("add", help="register a meter from a registration record (GMREG1:...)")
    c.add_argument("--config", default=DEFAULT_CONFIG_PATH)
    c.add_argument("record", help="file holding the record text, or - for stdin")
    c.set_defaults(func=_guarded(meters.add))
    c = msub.add_parser("list", help="list registered meters")
    c.add_argument("--config", default=DEFAULT_CONFIG_PATH)
    c.add_argument("--json", action="store_true")
    c.add_argument("--state", type=meters.states, default=None,
                   help="only meters in these states, comma-separated (ok,late,silent,held,rejecting,new,"
                        "suspended,retired)")
    c.set_defaults(func=_guarded(meters.list_meters))
    for status in ("suspend", "resume", "retire"):
        c = msub.add_parser(status, help=f"{status} a meter")
        c.add_argument("meter_id")
        c.add_argument("--config", default=DEFAULT_CONFIG_PATH)
        c.set_defaults(func=_guarded(meters.set_status), status=status)
    c = msub.add_parser("import", help="copy a gateway's registry file into the fleet's registry (PostgreSQL)")
    c.add_argument("file", help="the registry file, <state_dir>/registry.sqlite of a gateway host")
    c.add_argument("--config", default=DEFAULT_CONFIG_PATH)
    c.set_defaults(func=_guarded(meters.import_file))


def _limit(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_LIST_LIMIT:
        raise argparse.ArgumentTypeError(f"must be a whole number in 1..{MAX_LIST_LIMIT} (got {text!r})")
    return n


def _guarded(func: Handler) -> Handler:
    """Every subcommand: a bad config, an unreadable file or an unusable database is one line naming the
    problem and exit code 2, never a traceback."""

    @wraps(func)
    def handler(args: argparse.Namespace) -> int:
        from gateway.config import ConfigError
        from gateway.store.errors import database_error

        try:
            return func(args)
        except ConfigError as exc:
            return fail(str(exc))
        except OSError as exc:
            return fail(f"{exc.filename or 'I/O'}: {exc.strerror or exc}")
        except Exception as exc:
            if not database_error(exc):
                raise
            return fail(f"database problem in the state directory ({exc}); check gateway.state_dir and "
                        "its permissions")

    return handler
