"""`gridmeter gateway` subcommands: run, check-config, keygen, authority-key, meters add|list|suspend|resume|retire,
rejections, held, ingest-status, outbox.

Only `run` needs the whole configuration (broker account, dashboard secret, API keys): the registry and
read-only commands read [gateway] (state_dir) and [health] only, so an operator can run them with a config
that has no secrets in it yet, and they never refuse because of a dashboard setting they do not use.
"""

from __future__ import annotations

import argparse
import json
import os
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
    from gateway.health import Thresholds
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

    run = cmd("run", "run the gateway service", _run)
    run.add_argument("--log-format", choices=("text", "json"), default=os.environ.get("GRIDMETER_LOG_FORMAT", "text"),
                     help="json: one JSON object per line, for journald/Loki (default text, or $GRIDMETER_LOG_FORMAT)")
    cmd("check-config", "validate the config and its key files; start nothing", _check_config)
    k = gsub.add_parser("keygen", help="create the gateway's ack-signing key file (0600); prints the public key "
                        "(hex) that agents pin as mqtt.gateway_public_key")
    k.add_argument("path")
    k.set_defaults(func=_guarded(_keygen))
    t = gsub.add_parser("gen-token", help="print a new random secret for dashboard.token, dashboard.password or "
                                          "an http.api_keys entry")
    t.set_defaults(func=_gen_token)
    a = gsub.add_parser("authority-key", help="create the chain_bridge authority key (Solana keypair, 0600) that "
                        "signs every oracle submission; prints its base58 public key",
                        description="Creates the keypair file chain.authority_key_file points at (solana-keygen "
                        "JSON) and prints the base58 public key the oracle's admin sets as chain_bridge "
                        "(`gridmeter chain serve --chain-bridge` locally). --show prints the key of an existing file.")
    a.add_argument("path", help="e.g. /etc/gridmeter/chain-bridge.json")
    a.add_argument("--show", action="store_true", help="do not create: print the public key of an existing file")
    a.set_defaults(func=_guarded(_authority_key))
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
            c.add_argument("--state", type=_states, default=None,
                           help="only meters in these states, comma-separated (ok,late,silent,held,rejecting,new,"
                                "suspended,retired)")
    for status in ("suspend", "resume", "retire"):
        c = msub.add_parser(status, help=f"{status} a meter")
        c.add_argument("meter_id")
        c.add_argument("--config", default=DEFAULT_CONFIG_PATH)
        c.set_defaults(func=_guarded(_meters_status), status=status)
    r = cmd("rejections", "show quarantined readings with their reasons", _rejections)
    r.add_argument("--meter")
    r.add_argument("--limit", type=_limit, default=50, help=f"1..{MAX_LIST_LIMIT} (default 50)")
    r.add_argument("--json", action="store_true")
    h = cmd("held", "show held readings and held interval submissions with their reasons", _held)
    h.add_argument("--meter")
    h.add_argument("--limit", type=_limit, default=50, help=f"1..{MAX_LIST_LIMIT} per list (default 50)")
    h.add_argument("--json", action="store_true")
    i = cmd("ingest-status", "GridTokenX HTTP ingest: a meter's energy books, or what became of one reading",
            _ingest_status)
    i.add_argument("meter_id", nargs="?", help="the meter (device_id)")
    i.add_argument("--reading", metavar="READING_ID", help="the reading_id the ingest answered with (202)")
    i.add_argument("--json", action="store_true")
    o = cmd("outbox", "show interval submissions", _outbox)
    o.add_argument("--meter")
    o.add_argument("--status", choices=("pending", "sent", "confirmed", "held", "rejected"))
    o.add_argument("--limit", type=_limit, default=50, help=f"1..{MAX_LIST_LIMIT} (default 50)")


def _states(text: str) -> set[str]:
    from gateway.health import State

    states = {s.strip() for s in text.split(",") if s.strip()}
    bad = states - {s.value for s in State}
    if not states or bad:
        raise argparse.ArgumentTypeError(f"unknown state {sorted(bad) or text!r} (known: "
                                         f"{', '.join(s.value for s in State)})")
    return states


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
            return _fail(str(exc))
        except OSError as exc:
            return _fail(f"{exc.filename or 'I/O'}: {exc.strerror or exc}")
        except Exception as exc:
            if not database_error(exc):
                raise
            return _fail(f"database problem in the state directory ({exc}); check gateway.state_dir and "
                         "its permissions")

    return handler


def _config(args: argparse.Namespace) -> GatewayConfig:
    from gateway.config import load_config

    return load_config(args.config)


def _state_config(args: argparse.Namespace) -> GatewayConfig:
    """The config of a registry or read-only command, checked as strictly as for `run`, except that the services
    it does not start (the dashboard, the HTTP ingest) need no secrets: it reads [gateway] state_dir, [health]
    and [intervals] only."""
    import tomllib

    from gateway.config import ConfigError, parse_config

    try:
        data = tomllib.loads(Path(args.config).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(str(args.config), f"cannot read config file ({exc.strerror})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(args.config), f"invalid TOML ({exc})") from exc
    for service in ("dashboard", "http"):
        section = data.setdefault(service, {})
        if isinstance(section, dict):  # else parse_config names the problem
            section["enabled"] = False
    return parse_config(data)


def _fail(msg: str) -> int:
    print(f"gridmeter gateway: {msg}", file=sys.stderr)
    return 2


def _run(args: argparse.Namespace) -> int:
    import asyncio

    from gateway.config import ConfigError
    from gateway.keys import KeyFileError
    from gateway.oracle.errors import OracleClientError
    from gateway.service import configure_logging, run

    configure_logging(args.log_format)
    try:
        cfg = _config(args)
        return asyncio.run(run(cfg))
    except (ConfigError, KeyFileError, OracleClientError) as exc:  # startup problems: say what, exit non-zero
        return _fail(str(exc))
    except OSError as exc:  # e.g. the dashboard port is taken, the state directory is not writable
        return _fail(f"cannot start: {exc}")


def _check_config(args: argparse.Namespace) -> int:
    from gateway.config import ConfigError
    from gateway.keys import KeyFileError, load_key_file
    from gateway.oracle.authority_key import load_authority_keypair
    from gateway.oracle.errors import OracleClientError

    try:
        cfg = _config(args)
        ack = load_key_file(cfg.gateway.ack_key_file)
        if cfg.chain.enabled:
            load_authority_keypair(cfg.chain.authority_key_file)
    except (ConfigError, KeyFileError, OracleClientError, ValueError, OSError) as exc:
        return _fail(str(exc))
    print(f"{args.config}: OK (gateway public key {ack.public_key.hex()}, chain "
          f"{cfg.chain.rpc_url if cfg.chain.enabled else 'disabled'}, MQTT {cfg.mqtt.host}:{cfg.mqtt.port})")
    return 0


def _keygen(args: argparse.Namespace) -> int:
    from gateway.keys import KeyFileError, create_key_file

    try:
        key = create_key_file(Path(args.path))
    except KeyFileError as exc:
        return _fail(str(exc))
    print(f"gateway ack public key, hex (agents' mqtt.gateway_public_key): {key.public_key.hex()}")
    return 0


def _authority_key(args: argparse.Namespace) -> int:
    from gateway.oracle.authority_key import create_authority_key_file, load_authority_keypair
    from gateway.oracle.errors import OracleClientError

    try:
        kp = load_authority_keypair(args.path) if args.show else create_authority_key_file(args.path)
    except OracleClientError as exc:
        return _fail(str(exc))
    if not args.show:
        print(f"created {args.path} (mode 0600; set chain.authority_key_file to it)", file=sys.stderr)
    print(f"chain_bridge public key (base58): {kp.pubkey()}")
    return 0


def _gen_token(_args: argparse.Namespace) -> int:
    from gateway.config import generate_token

    print(generate_token())
    return 0


def _registry(args: argparse.Namespace) -> Registry:
    from gateway.registry import Registry, registry_path

    return Registry(registry_path(_state_config(args).gateway.state_dir))


def _meters_add(args: argparse.Namespace) -> int:
    from gateway.registry import RegistryError

    cfg = _state_config(args)  # a bad config is reported before anything waits on stdin
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
    """Registry plus health: state, last seen (ISO and age), lag, expected interval, counts."""
    from gateway.registry import Registry, registry_path
    from gateway.store.sqlite import Store

    cfg = _state_config(args)
    reg = Registry(registry_path(cfg.gateway.state_dir))
    try:
        meters = {m.meter_id: m for m in reg.all()}
    finally:
        reg.close()
    store = Store(cfg.db_path)
    now_ms = int(time.time() * 1000)
    try:
        health = store.fleet_health(meters, now_ms, _thresholds(cfg))
    finally:
        store.close()
    rows = []
    for h in health:
        if args.state and h["state"] not in args.state:
            continue
        m = meters[h["meter_id"]]
        rows.append({**h, "key_id": m.key_id.hex(), "public_key": m.public_key.hex(),
                     "last_seen": _ts(h["last_seen_ms"]), "newest_read_at": _ts(h["newest_read_at_ms"])})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no meters" + (f" in state {','.join(sorted(args.state))}" if args.state else " registered"),
              file=sys.stderr)
        return 0
    print(f"{'METER':<24} {'STATE':<34} {'LAST SEEN':<20} {'AGO':>7} {'LAG':>7} {'EVERY':>6} {'ACCEPTED':>9} "
          f"{'HELD':>6} {'REJECTED':>8} {'MISSING':>7}  ZONE  ROLE        RATED W  PROFILE  KEY_ID")
    for r in rows:
        state = r["state"] + (f" ({r['state_reason']})" if r["state_reason"] else "")
        print(f"{r['meter_id']:<24} {_printable(state)[:34]:<34} {r['last_seen']:<20} {_age(r['heard_age_s']):>7} "
              f"{_age(r['lag_s']):>7} {_age(r['expected_interval_s']):>6} {r['accepted']:>9} {r['held']:>6} "
              f"{r['rejected']:>8} {r['missing']:>7}  {r['zone_id']:<5} {r['role']:<11} {r['rated_max_power_w']:>7}  "
              f"{r['profile']}  {r['key_id']}")
    return 0


def _thresholds(cfg: GatewayConfig) -> Thresholds:
    from gateway.health import Thresholds

    h = cfg.health
    return Thresholds(int(h.expected_interval_s * 1000), int(h.late_margin_s * 1000), int(h.silent_after_s * 1000))


def _age(seconds: float | None) -> str:
    from gateway.health import age_text

    return "-" if seconds is None else age_text(int(seconds * 1000))


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
    from gateway.store.sqlite import Store

    store = Store(_state_config(args).db_path)
    try:
        rows = store.rejections(args.meter, args.limit, max_payload_bytes=None)
    finally:
        store.close()
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


def _held(args: argparse.Namespace) -> int:
    from gateway.store.sqlite import Store

    store = Store(_state_config(args).db_path)
    try:
        readings = store.held_readings(args.meter, args.limit)
        intervals = store.held_intervals(args.meter, args.limit)
    finally:
        store.close()
    if args.json:
        print(json.dumps({"readings": readings, "intervals": intervals}, indent=2))
        return 0
    print(f"held readings (stored, never submitted), newest first: {len(readings)} shown")
    for r in readings:
        print(f"  {_ts(r['received_at_ms'])} {r['meter_id']:<24} seq {r['seq']:<8} {r['reason']:<16} "
              f"{_printable(r['detail'] or '')}  (read at {_ts(r['read_at_ms'])} by the meter's clock)")
    print(f"held interval submissions (never sent to the chain), newest first: {len(intervals)} shown")
    for i in intervals:
        print(f"  {_ts(i['reading_timestamp'] * 1000)} {i['meter_id']:<24} produced {i['produced_wh']:>8} Wh "
              f"consumed {i['consumed_wh']:>8} Wh  {_printable(i['reason'] or '')}")
    return 0


def _ingest_status(args: argparse.Namespace) -> int:
    from gateway.store.sqlite import Store

    if not args.meter_id and not args.reading:
        return _fail("ingest-status: give a METER_ID or --reading READING_ID")
    store, reg = Store(_state_config(args).db_path), _registry(args)
    try:
        if args.reading:
            doc = store.http_reading_status(reg, args.reading)
            if doc is None:
                return _fail(f"reading {args.reading!r}: not found")
        else:
            meter = reg.get(args.meter_id)
            if meter is None:
                return _fail(f"{args.meter_id!r}: not registered")
            doc = store.http_meter_status(meter)
    finally:
        store.close()
        reg.close()
    if args.json:
        print(json.dumps(doc, indent=2))
    elif args.reading:
        print(f"{doc['reading_id']} {doc['device_id']} {_ts(doc['timestamp_ms'])}: {doc['status']} "
              f"({doc['meaning']}) {' '.join(doc['reasons'])}")
        for i in doc["intervals"]:
            print(f"  {i['key']:<44} {i['status']:<9} produced {i['produced_wh']} Wh consumed {i['consumed_wh']} Wh "
                  f"{i['reason'] or ''}")
    else:
        print(f"{doc['device_id']} ({doc['role']}, {doc['meter_status']}): {doc['readings']} readings")
        for name, d in doc["energy"].items():
            rest = (f"planned {d['planned_wh']} Wh as {d['submitted_as']}, waiting {d['waiting_wh']} Wh"
                    if d["submitted_as"] else "recorded only (not an oracle quantity for this role)")
            print(f"  {name}: received {d['received_wh']} Wh; {rest}")
        for st, o in sorted(doc["outbox"].items()):
            print(f"  {st}: {o['intervals']} intervals, produced {o['produced_wh']} Wh, consumed {o['consumed_wh']} Wh")
        for i in doc["not_submitted"]:
            print(f"  NOT SUBMITTED {i['key']} produced {i['produced_wh']} Wh consumed {i['consumed_wh']} Wh: "
                  f"{i['reason']}")
    return 0


def _outbox(args: argparse.Namespace) -> int:
    from gateway.store.sqlite import Store

    store = Store(_state_config(args).db_path)
    try:
        rows = store.outbox_rows(args.meter, args.status, args.limit)
    finally:
        store.close()
    for r in rows:
        print(f"{_ts(r.reading_timestamp * 1000)} {r.meter_id:<24} {r.status:<9} produced {r.produced_wh:>8} Wh "
              f"consumed {r.consumed_wh:>8} Wh  {r.reason or ''} {r.signature or ''}  [{r.key}]")
    return 0
