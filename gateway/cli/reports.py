"""`gridmeter gateway rejections|held|ingest-status|outbox`: read-only reports on what became of the readings."""

from __future__ import annotations

import argparse
import json
from typing import Any

from gateway.cli.output import fail, printable, ts
from gateway.cli.settings import open_registry, state_config


def rejections(args: argparse.Namespace) -> int:
    from gateway.store.api import open_store

    store = open_store(state_config(args))
    try:
        rows = store.rejections(args.meter, args.limit, max_payload_bytes=None)
    finally:
        store.close()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        who = printable(r["topic_meter_id"] or r["meter_id"] or "-")
        print(f"{ts(r['received_at_ms'])} {r['source']:<4} {who:<20} "
              f"seq {r['seq'] if r['seq'] is not None else '-':<8} {r['reason']:<24} {printable(r['detail'])}")
    return 0


def held(args: argparse.Namespace) -> int:
    from gateway.store.api import open_store

    store = open_store(state_config(args))
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
        print(f"  {ts(r['received_at_ms'])} {r['meter_id']:<24} seq {r['seq']:<8} {r['reason']:<16} "
              f"{printable(r['detail'] or '')}  (read at {ts(r['read_at_ms'])} by the meter's clock)")
    print(f"held interval submissions (never sent to the chain), newest first: {len(intervals)} shown")
    for i in intervals:
        print(f"  {ts(i['reading_timestamp'] * 1000)} {i['meter_id']:<24} produced {i['produced_wh']:>8} Wh "
              f"consumed {i['consumed_wh']:>8} Wh  {printable(i['reason'] or '')}")
    return 0


def ingest_status(args: argparse.Namespace) -> int:
    from gateway.store.api import open_store

    if not args.meter_id and not args.reading:
        return fail("ingest-status: give a METER_ID or --reading READING_ID")
    store, reg = open_store(state_config(args)), open_registry(args)
    try:
        if args.reading:
            doc = store.http_reading_status(reg, args.reading)
            if doc is None:
                return fail(f"reading {args.reading!r}: not found")
        else:
            meter = reg.get(args.meter_id)
            if meter is None:
                return fail(f"{args.meter_id!r}: not registered")
            doc = store.http_meter_status(meter)
    finally:
        store.close()
        reg.close()
    if args.json:
        print(json.dumps(doc, indent=2))
    elif args.reading:
        print(f"{doc['reading_id']} {doc['device_id']} {ts(doc['timestamp_ms'])}: {doc['status']} "
              f"({doc['meaning']}) {' '.join(doc['reasons'])}")
        for i in doc["intervals"]:
            print(f"  {i['key']:<44} {i['status']:<9} produced {i['produced_wh']} Wh consumed {i['consumed_wh']} Wh "
                  f"{i['reason'] or ''}")
    else:
        _print_meter_books(doc)
    return 0


def _print_meter_books(doc: dict[str, Any]) -> None:
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


def outbox(args: argparse.Namespace) -> int:
    from gateway.store.api import open_store
    from gateway.store.outbox import OutboxStatus

    status = None if args.status is None else OutboxStatus(args.status)
    store = open_store(state_config(args))
    try:
        rows = store.outbox_rows(args.meter, status, args.limit)
    finally:
        store.close()
    for r in rows:
        print(f"{ts(r.reading_timestamp * 1000)} {r.meter_id:<24} {r.status:<9} produced {r.produced_wh:>8} Wh "
              f"consumed {r.consumed_wh:>8} Wh  {r.reason or ''} {r.signature or ''}  [{r.key}]")
    return 0
