"""`gridmeter gateway meters add|list|suspend|resume|retire`: the meter registry, and each meter's health."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING

from gateway.cli.output import age, fail, printable, ts
from gateway.cli.settings import open_registry, state_config

if TYPE_CHECKING:
    from gateway.config import GatewayConfig
    from gateway.health import Thresholds

# A registration record is one line of a few hundred bytes; refuse to read anything much larger.
MAX_RECORD_BYTES = 16 * 1024


def states(text: str) -> set[str]:
    """--state: meter states, comma-separated."""
    from gateway.health import State

    chosen = {s.strip() for s in text.split(",") if s.strip()}
    bad = chosen - {s.value for s in State}
    if not chosen or bad:
        raise argparse.ArgumentTypeError(f"unknown state {sorted(bad) or text!r} (known: "
                                         f"{', '.join(s.value for s in State)})")
    return chosen


def add(args: argparse.Namespace) -> int:
    from gateway.registry import RegistryError

    cfg = state_config(args)  # a bad config is reported before anything waits on stdin
    try:
        text = _read_record(args.record)
    except (OSError, ValueError) as exc:
        return fail(str(exc))
    reg = open_registry(args, cfg)
    try:
        meter, action = reg.add(text, int(time.time() * 1000))
    except RegistryError as exc:
        return fail(f"{exc} [{exc.reason}]")
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


def list_meters(args: argparse.Namespace) -> int:
    """Registry plus health: state, last seen (ISO and age), lag, expected interval, counts."""
    from gateway.store.api import open_store

    cfg = state_config(args)
    reg = open_registry(args, cfg)
    try:
        meters = {m.meter_id: m for m in reg.all()}
    finally:
        reg.close()
    store = open_store(cfg)
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
                     "last_seen": ts(h["last_seen_ms"]), "newest_read_at": ts(h["newest_read_at_ms"])})
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
        print(f"{r['meter_id']:<24} {printable(state)[:34]:<34} {r['last_seen']:<20} {age(r['heard_age_s']):>7} "
              f"{age(r['lag_s']):>7} {age(r['expected_interval_s']):>6} {r['accepted']:>9} {r['held']:>6} "
              f"{r['rejected']:>8} {r['missing']:>7}  {r['zone_id']:<5} {r['role']:<11} {r['rated_max_power_w']:>7}  "
              f"{r['profile']}  {r['key_id']}")
    return 0


def _thresholds(cfg: GatewayConfig) -> Thresholds:
    from gateway.health import Thresholds

    h = cfg.health
    return Thresholds(int(h.expected_interval_s * 1000), int(h.late_margin_s * 1000), int(h.silent_after_s * 1000))


def set_status(args: argparse.Namespace) -> int:
    from gateway.registry import MeterStatus, RegistryError

    status = {"suspend": MeterStatus.SUSPENDED, "resume": MeterStatus.ACTIVE, "retire": MeterStatus.RETIRED}
    reg = open_registry(args)
    try:
        m = reg.set_status(args.meter_id, status[args.status], int(time.time() * 1000))
    except RegistryError as exc:
        return fail(str(exc))
    finally:
        reg.close()
    print(f"{m.meter_id}: {m.status.value}")
    return 0


def import_file(args: argparse.Namespace) -> int:
    """A host's registry file into the fleet's PostgreSQL registry (moving a fleet to one registry)."""
    from pathlib import Path

    from gateway.store.postgres_registry import PostgresRegistry
    from gateway.store.registry import Registry

    cfg = state_config(args)
    if not cfg.gateway.postgres_dsn:
        return fail("meters import copies a registry file into the fleet's registry in PostgreSQL: "
                    "gateway.postgres_dsn is not set in this config")
    if not Path(args.file).is_file():
        return fail(f"{args.file}: no such registry file (a gateway's <state_dir>/registry.sqlite)")
    source, fleet_registry = Registry(args.file), PostgresRegistry(cfg.gateway.postgres_dsn)
    try:
        done = fleet_registry.import_meters(source, int(time.time() * 1000))
    finally:
        source.close()
        fleet_registry.close()
    for outcome in ("imported", "same", "differs", "invalid"):
        ids = getattr(done, outcome)
        print(f"{outcome}: {len(ids)}" + (f" ({', '.join(ids[:20])}{', ...' if len(ids) > 20 else ''})" if ids else ""))
    if done.differs:
        print("differs: already in the fleet's registry with another record or status, left as they are: compare "
              "with `meters list` and suspend, retire or add the newer record", file=sys.stderr)
    return 1 if done.invalid else 0
