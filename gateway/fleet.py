"""Read-only fleet views for the dashboard and CLI (SQL over the gateway's database + registry)."""

from __future__ import annotations

import sqlite3
from typing import Any

from gateway.registry import Meter

DEFAULT_REJECTIONS_LIMIT = 200
DEFAULT_READINGS_LIMIT = 720  # 2 h of 10-s readings for the chart
# A rejected MQTT message is stored whole (up to a full batch, ~320 kB): the dashboard lists 200 of them on
# every live update, so it shows the first bytes (a signed reading is < 256) and the stored size.
DEFAULT_PAYLOAD_SHOWN_BYTES = 512


def _outbox_by_meter(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    q = ("SELECT meter_id, status, COUNT(*), SUM(produced_wh), SUM(consumed_wh), MAX(reading_timestamp) "
         "FROM outbox GROUP BY meter_id, status")
    for mid, status, n, prod, cons, last_ts in conn.execute(q):
        d = out.setdefault(mid, {"confirmed": 0, "pending": 0, "sent": 0, "held": 0, "rejected": 0,
                                 "confirmed_produced_wh": 0, "confirmed_consumed_wh": 0, "last_confirmed_ts": None})
        d[status] = n
        if status == "confirmed":
            d.update(confirmed_produced_wh=prod, confirmed_consumed_wh=cons, last_confirmed_ts=last_ts)
    return out


def meters_overview(conn: sqlite3.Connection, meters: dict[str, Meter], now_ms: int) -> list[dict[str, Any]]:
    prog = {r[0]: r for r in conn.execute(
        "SELECT meter_id, last_seq, last_read_at_ms, last_import_wh, last_export_wh, last_seen_ms, accepted, held, "
        "rejected, duplicates, missing FROM progress")}
    ob = _outbox_by_meter(conn)
    rows = []
    for mid, m in sorted(meters.items()):
        p = prog.get(mid)
        last_read = p[2] if p else None
        rows.append({
            "meter_id": mid, "status": m.status.value, "zone_id": m.zone_id, "role": m.role.name.lower(),
            "profile": m.profile, "rated_max_power_w": m.rated_max_power_w, "serial_number": m.serial_number,
            "last_seq": p[1] if p else 0, "last_read_at_ms": last_read, "last_seen_ms": p[5] if p else None,
            "lag_s": None if last_read is None else max(0, now_ms - last_read) // 1000,
            "import_wh": p[3] if p else None, "export_wh": p[4] if p else None,
            "accepted": p[6] if p else 0, "held": p[7] if p else 0, "rejected": p[8] if p else 0,
            "duplicates": p[9] if p else 0, "missing": p[10] if p else 0,
            "chain": ob.get(mid, {}),
        })
    return rows


def rejections(conn: sqlite3.Connection, meter_id: str | None = None, limit: int = DEFAULT_REJECTIONS_LIMIT,
               max_payload_bytes: int | None = DEFAULT_PAYLOAD_SHOWN_BYTES) -> list[dict[str, Any]]:
    """Newest first. Payloads are cut to max_payload_bytes (None: whole; the CLI's --json wants the evidence),
    with payload_bytes telling the size of the message received (an unauthenticated one is stored as a prefix:
    gateway.store.QUARANTINE_PREFIX_BYTES, with its length and sha256)."""
    q = ("SELECT id, received_at_ms, source, topic_meter_id, meter_id, seq, reason, detail, authenticated, "
         "substr(payload, 1, ?), COALESCE(payload_len, length(payload)), signature FROM rejections "
         "WHERE (? IS NULL OR meter_id = ? OR topic_meter_id = ?) ORDER BY id DESC LIMIT ?")
    cut = 2**31 - 1 if max_payload_bytes is None else max_payload_bytes  # SQLite blobs are < 2**31 bytes
    return [{"id": r[0], "received_at_ms": r[1], "source": r[2], "topic_meter_id": r[3], "meter_id": r[4],
             "seq": r[5], "reason": r[6], "detail": r[7], "authenticated": bool(r[8]),
             "payload_hex": bytes(r[9]).hex(), "payload_bytes": r[10], "signature_hex": bytes(r[11]).hex()}
            for r in conn.execute(q, (cut, meter_id, meter_id, meter_id, limit))]


def rejection_counts(conn: sqlite3.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT reason, COUNT(*) FROM rejections GROUP BY reason ORDER BY 2 DESC").fetchall())


def meter_readings(conn: sqlite3.Connection, meter_id: str,
                   limit: int = DEFAULT_READINGS_LIMIT) -> list[dict[str, Any]]:
    q = ("SELECT seq, read_at_ms, import_wh, export_wh, power_w, status, reason, detail FROM readings "
         "WHERE meter_id = ? ORDER BY seq DESC LIMIT ?")
    rows = [{"seq": r[0], "read_at_ms": r[1], "import_wh": r[2], "export_wh": r[3], "power_w": r[4], "status": r[5],
             "reason": r[6], "detail": r[7]} for r in conn.execute(q, (meter_id, limit))]
    rows.reverse()
    return rows


def meter_intervals(conn: sqlite3.Connection, meter_id: str, limit: int = 500) -> list[dict[str, Any]]:
    q = ("SELECT key, produced_wh, consumed_wh, reading_timestamp, status, reason, signature, source FROM outbox "
         "WHERE meter_id = ? ORDER BY reading_timestamp DESC LIMIT ?")
    return [{"key": r[0], "produced_wh": r[1], "consumed_wh": r[2], "reading_timestamp": r[3], "status": r[4],
             "reason": r[5], "signature": r[6], "source": r[7]} for r in conn.execute(q, (meter_id, limit))]


def gaps(conn: sqlite3.Connection, meter_id: str) -> list[dict[str, Any]]:
    q = "SELECT first_seq, last_seq, detected_at_ms FROM gaps WHERE meter_id = ? ORDER BY first_seq DESC LIMIT 100"
    return [{"first_seq": a, "last_seq": b, "detected_at_ms": t} for a, b, t in conn.execute(q, (meter_id,))]
