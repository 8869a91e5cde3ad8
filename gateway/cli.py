"""`gridmeter gateway` subcommands: run, keygen, meters add|list|suspend|resume|retire, rejections, outbox."""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.config import DEFAULT_CONFIG_PATH

if TYPE_CHECKING:
    from gateway.config import GatewayConfig
    from gateway.registry import Registry

# A registration record is one line of a few hundred bytes; refuse to read anything much larger.
MAX_RECORD_BYTES = 16 * 1024
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

    cmd("run", "run the gateway service", _run)
    k = gsub.add_parser("keygen", help="create the gateway's ack-signing key file (0600)")
    k.add_argument("path")
    k.set_defaults(func=_guarded(_keygen))
    t = gsub.add_parser("gen-token", help="print a new random secret for dashboard.token, dashboard.password or "
                                          "an http.api_keys entry")
    t.set_defaults(func=_gen_token)
    m = gsub.add_parser("meters", help="the meter registry")
    msub = m.add_subparsers(dest="meters_command", metavar="COMMAND")
    msub.required = True
    for name, help_, func in (("add", "register a meter from a registration record (GMREG1:...)", _meters_add),
                              ("list", "list registered meters", _meters_list)):
        c = msub.add_parser(name, help=help_)
        c.add_argument("--config", default=DEFAULT_CONFIG_PATH)
        c.set_defaults(func=_guarded(func))
        if name == "add":
            c.add_argument("record", help="file holding the record text, or - for stdin")
        else:
            c.add_argument("--json", action="store_true")
    for status in ("suspend", "resume", "retire"):
        c = msub.add_parser(status, help=f"{status} a meter")
        c.add_argument("meter_id")
        c.add_argument("--config", default=DEFAULT_CONFIG_PATH)
        c.set_defaults(func=_guarded(_meters_status), status=status)
    r = cmd("rejections", "show quarantined readings with their reasons", _rejections)
    r.add_argument("--meter")
    r.add_argument("--limit", type=_limit, default=50, help=f"1..{MAX_LIST_LIMIT} (default 50)")
    r.add_argument("--json", action="store_true")
    o = cmd("outbox", "show interval submissions", _outbox)
    o.add_argument("--meter")
    o.add_argument("--status", choices=("pending", "sent", "confirmed", "held", "rejected"))
    o.add_argument("--limit", type=_limit, default=50, help=f"1..{MAX_LIST_LIMIT} (default 50)")


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

        try:
            return func(args)
        except ConfigError as exc:
            return _fail(str(exc))
        except sqlite3.Error as exc:
            return _fail(f"database problem in the state directory ({exc}); check gateway.state_dir and "
                         "its permissions")
        except OSError as exc:
            return _fail(f"{exc.filename or 'I/O'}: {exc.strerror or exc}")

    return handler


def _config(args: argparse.Namespace) -> GatewayConfig:
    from gateway.config import load_config

    return load_config(args.config)


def _fail(msg: str) -> int:
    print(f"gridmeter gateway: {msg}", file=sys.stderr)
    return 2


def _run(args: argparse.Namespace) -> int:
    import asyncio

    from gateway.config import ConfigError
    from gateway.keys import KeyFileError
    from gateway.oracle_errors import OracleClientError
    from gateway.service import run

    try:
        cfg = _config(args)
        return asyncio.run(run(cfg))
    except (ConfigError, KeyFileError, OracleClientError) as exc:  # startup problems: say what, exit non-zero
        return _fail(str(exc))
    except OSError as exc:  # e.g. the dashboard port is taken, the state directory is not writable
        return _fail(f"cannot start: {exc}")


def _keygen(args: argparse.Namespace) -> int:
    from gateway.keys import KeyFileError, create_key_file

    try:
        key = create_key_file(Path(args.path))
    except KeyFileError as exc:
        return _fail(str(exc))
    print(f"gateway public key (agents' mqtt.gateway_public_key): {key.public_key.hex()}")
    return 0


def _gen_token(_args: argparse.Namespace) -> int:
    from gateway.config import generate_token

    print(generate_token())
    return 0


def _registry(args: argparse.Namespace) -> Registry:
    from gateway.registry import Registry, registry_path

    return Registry(registry_path(_config(args).gateway.state_dir))


def _meters_add(args: argparse.Namespace) -> int:
    from gateway.registry import RegistryError

    cfg = _config(args)  # a bad config is reported before anything waits on stdin
    try:
        text = _read_record(args.record)
    except (OSError, ValueError) as exc:
        return _fail(str(exc))
    from gateway.registry import Registry, registry_path

    reg = Registry(registry_path(cfg.gateway.state_dir))
    try:
        meter, action = reg.add(text, int(time.time() * 1000))
    except RegistryError as exc:
        return _fail(f"{exc} [{exc.reason}]")
    finally:
        reg.close()
    print(f"{meter.meter_id}: {action} (key_id {meter.key_id.hex()}, zone {meter.zone_id}, "
          f"{meter.role.name.lower()}, {meter.rated_max_power_w} W, status {meter.status.value})")
    return 0


def _read_record(name: str) -> str:
    """The record text from a file or stdin ("-"), at most MAX_RECORD_BYTES, UTF-8."""
    if name == "-":
        raw = sys.stdin.buffer.read(MAX_RECORD_BYTES + 1)
    else:
        with open(name, "rb") as f:
            raw = f.read(MAX_RECORD_BYTES + 1)
    if len(raw) > MAX_RECORD_BYTES:
        raise ValueError(f"{name}: over {MAX_RECORD_BYTES} bytes; a registration record is one GMREG1 line")
    return raw.decode("utf-8")


def _meters_list(args: argparse.Namespace) -> int:
    reg = _registry(args)
    try:
        meters = reg.all()
    finally:
        reg.close()
    rows = [{"meter_id": m.meter_id, "status": m.status.value, "role": m.role.name.lower(), "zone_id": m.zone_id,
             "profile": m.profile, "rated_max_power_w": m.rated_max_power_w, "serial_number": m.serial_number,
             "key_id": m.key_id.hex(), "public_key": m.public_key.hex()} for m in meters]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['meter_id']:<32} {r['status']:<9} {r['role']:<11} zone {r['zone_id']:<5} "
                  f"{r['rated_max_power_w']:>7} W  {r['profile']}  key {r['key_id']}")
    return 0


def _meters_status(args: argparse.Namespace) -> int:
    from gateway.registry import MeterStatus, RegistryError

    status = {"suspend": MeterStatus.SUSPENDED, "resume": MeterStatus.ACTIVE, "retire": MeterStatus.RETIRED}
    reg = _registry(args)
    try:
        m = reg.set_status(args.meter_id, status[args.status], int(time.time() * 1000))
    except RegistryError as exc:
        return _fail(str(exc))
    finally:
        reg.close()
    print(f"{m.meter_id}: {m.status.value}")
    return 0


def _ts(ms: int | None) -> str:
    return "-" if ms is None else datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _rejections(args: argparse.Namespace) -> int:
    from gateway import fleet
    from gateway.database import connect

    conn = connect(_config(args).db_path)
    try:
        rows = fleet.rejections(conn, args.meter, args.limit, max_payload_bytes=None)
    finally:
        conn.close()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        who = _printable(r["topic_meter_id"] or r["meter_id"] or "-")
        print(f"{_ts(r['received_at_ms'])} {r['source']:<4} {who:<20} "
              f"seq {r['seq'] if r['seq'] is not None else '-':<8} {r['reason']:<24} {_printable(r['detail'])}")
    return 0


def _printable(text: str) -> str:
    """Quarantined text may come from anyone (a claimed meter id, a topic): control characters are shown
    escaped, so they cannot drive the operator's terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _outbox(args: argparse.Namespace) -> int:
    from gateway.store import Store

    store = Store(_config(args).db_path)
    try:
        rows = store.outbox_rows(args.meter, args.status, args.limit)
    finally:
        store.close()
    for r in rows:
        print(f"{r.key:<44} {r.status:<9} produced {r.produced_wh:>8} Wh consumed {r.consumed_wh:>8} Wh "
              f"{r.reason or ''} {r.signature or ''}")
    return 0
