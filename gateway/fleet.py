"""Read-only fleet views for the dashboard and CLI (SQL over the gateway's database + registry)."""

from __future__ import annotations

import sqlite3
from typing import Any

from gateway.ingest_payload import wh_text
from gateway.registry import Meter, MeterStatus, Registry
from protocol import MeterRole

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
             "payload_hex": _blob(r[9]).hex(), "payload_bytes": r[10], "signature_hex": _blob(r[11]).hex()}
            for r in conn.execute(q, (cut, meter_id, meter_id, meter_id, limit))]


def _blob(b: bytes | None) -> bytes:
    """SQLite's substr() of an empty blob is NULL (an empty or oversized HTTP body is stored as x'')."""
    return b"" if b is None else bytes(b)


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


# ---- GridTokenX HTTP ingest: what became of a reading / a meter's energy (client status endpoints, CLI) ----
_OUTBOX_HTTP = ("SELECT key, produced_wh, consumed_wh, reading_timestamp, status, reason, signature FROM outbox "
                "WHERE meter_id = ? AND source = 'http' ")
_READING_MEANING = {
    "open": "in the meter's current interval: submitted once its market epoch is over",
    "queued": "its interval is planned and being submitted to the oracle",
    "on_chain": "its interval is confirmed on chain",
    "not_submitted": "its interval will not reach the chain: see reasons",
}


def role_unsubmitted(role: MeterRole, import_mwh: int, export_mwh: int) -> dict[str, str] | None:
    """The direction a meter's role does not submit (recorded and reported, never sent): a production meter's
    import (standby draw), a consumption meter's export."""
    if role is MeterRole.PRODUCTION and import_mwh:
        return {"import_wh": wh_text(import_mwh), "reason": "production meter: only export is submitted (produced)"}
    if role is MeterRole.CONSUMPTION and export_mwh:
        return {"export_wh": wh_text(export_mwh), "reason": "consumption meter: only import is submitted (consumed)"}
    return None


def _interval(r: tuple[Any, ...]) -> dict[str, Any]:
    return {"key": r[0], "produced_wh": r[1], "consumed_wh": r[2], "reading_timestamp": r[3], "status": r[4],
            "reason": r[5], "signature": r[6]}


def http_reading_status(conn: sqlite3.Connection, registry: Registry, reading_id: str) -> dict[str, Any] | None:
    """One accepted reading and the interval its energy was submitted in (the first planned at or after it;
    a sub-Wh remainder is carried to the next one). None if there is no such reading."""
    row = conn.execute("SELECT meter_id, seq, timestamp_ms, import_mwh, export_mwh, received_at_ms FROM http_ingest "
                       "WHERE reading_id = ?", (reading_id,)).fetchone()
    if row is None:
        return None
    mid, seq, ts_ms, imp, exp, received = row
    intervals = [_interval(r) for r in conn.execute(
        _OUTBOX_HTTP + "AND closing_seq = (SELECT MIN(closing_seq) FROM outbox WHERE meter_id = ? AND source = 'http' "
        "AND closing_seq >= ?) ORDER BY reading_timestamp", (mid, mid, seq))]
    meter = registry.get(mid)
    statuses = {i["status"] for i in intervals}
    reasons = sorted({i["reason"] for i in intervals if i["status"] in ("held", "rejected") and i["reason"]})
    if not intervals:
        status = "open"
        if meter is not None and meter.status is MeterStatus.RETIRED:
            status, reasons = "not_submitted", ["meter_retired"]
    elif statuses & {"held", "rejected"}:
        status = "not_submitted"
    else:
        status = "on_chain" if statuses == {"confirmed"} else "queued"
    doc: dict[str, Any] = {"reading_id": reading_id, "device_id": mid, "timestamp_ms": ts_ms,
                           "received_at_ms": received, "import_wh": wh_text(imp), "export_wh": wh_text(exp),
                           "status": status, "meaning": _READING_MEANING[status], "reasons": reasons,
                           "intervals": intervals, "meter_status": meter.status.value if meter else None}
    unsubmitted = role_unsubmitted(meter.role, imp, exp) if meter else None
    if unsubmitted is not None:
        doc["recorded_only"] = unsubmitted
    return doc


def http_meter_status(conn: sqlite3.Connection, meter: Meter) -> dict[str, Any]:
    """A meter's HTTP energy books, exact in mWh: per direction received = planned (Wh) * 1000 + waiting
    (the open interval and the sub-Wh carry); planned energy by outbox status; every interval not submitted."""
    mid = meter.meter_id
    n, imp, exp, last_ts, last_rcv = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(import_mwh), 0), COALESCE(SUM(export_mwh), 0), MAX(timestamp_ms), "
        "MAX(received_at_ms) FROM http_ingest WHERE meter_id = ?", (mid,)).fetchone()
    plan = conn.execute("SELECT sub_import_wh, sub_export_wh FROM http_plan_state WHERE meter_id = ?",
                        (mid,)).fetchone() or (0, 0)
    submits_import = meter.role is not MeterRole.PRODUCTION
    submits_export = meter.role is not MeterRole.CONSUMPTION
    directions = {}
    for name, received, planned, submitted, quantity in (("import", imp, plan[0], submits_import, "consumed"),
                                                         ("export", exp, plan[1], submits_export, "produced")):
        directions[name] = {"received_wh": wh_text(received), "submitted_as": quantity if submitted else None}
        if submitted:
            directions[name].update(planned_wh=planned, waiting_wh=wh_text(received - planned * 1000))
    outbox = {st: {"intervals": c, "produced_wh": p or 0, "consumed_wh": q or 0} for st, c, p, q in conn.execute(
        "SELECT status, COUNT(*), SUM(produced_wh), SUM(consumed_wh) FROM outbox WHERE meter_id = ? AND "
        "source = 'http' GROUP BY status", (mid,))}
    not_submitted = [_interval(r) for r in conn.execute(
        _OUTBOX_HTTP + "AND status IN ('held', 'rejected') ORDER BY reading_timestamp DESC LIMIT 100", (mid,))]
    return {"device_id": mid, "meter_status": meter.status.value, "role": meter.role.name.lower(), "readings": n,
            "last_timestamp_ms": last_ts, "last_received_at_ms": last_rcv, "energy": directions, "outbox": outbox,
            "not_submitted": not_submitted}
