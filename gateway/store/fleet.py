"""Read-only fleet views for the dashboard, the CLI and the HTTP status endpoints: `FleetViews`, mixed into
gateway.store.Store (so every caller goes through the store, gateway.store.api.GatewayStore lists them).
`PostgresFleetViews` holds the few statements whose SQL differs on PostgreSQL (gateway.store.postgres)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any, Protocol

from base.units import milli_text as wh_text
from gateway.health import SEVERITY, MeterFacts, State, Thresholds, held_reason, meter_health, observed_interval_ms
from gateway.registry import Meter, MeterStatus
from protocol import MeterRole

DEFAULT_REJECTIONS_LIMIT = 200
DEFAULT_READINGS_LIMIT = 720  # 2 h of 10-s readings for the chart
# A rejected MQTT message is stored whole (up to a full batch, ~320 kB): the dashboard lists 200 of them on
# every live update, so it shows the first bytes (a signed reading is < 256) and the stored size.
DEFAULT_PAYLOAD_SHOWN_BYTES = 512


class MeterLookup(Protocol):
    """What a reading's status needs of the registry: the meter by id."""

    def get(self, meter_id: str) -> Meter | None: ...


def _blob(b: bytes | None) -> bytes:
    """SQLite's substr() of an empty blob is NULL (an empty or oversized HTTP body is stored as x'')."""
    return b"" if b is None else bytes(b)


_FLEET_FACTS = """
SELECT p.meter_id, p.last_seq, p.last_read_at_ms, p.last_import_wh, p.last_export_wh, p.last_seen_ms, p.accepted,
       p.held, p.rejected, p.duplicates, p.missing, r.seq, r.read_at_ms, r.received_at_ms, r.status, r.reason,
       r.detail,
       (SELECT e.seq FROM readings e WHERE e.meter_id = p.meter_id AND e.seq <= r.seq - ? ORDER BY e.seq DESC
        LIMIT 1),
       (SELECT e.read_at_ms FROM readings e WHERE e.meter_id = p.meter_id AND e.seq <= r.seq - ?
        ORDER BY e.seq DESC LIMIT 1),
       (SELECT e.seq FROM readings e WHERE e.meter_id = p.meter_id AND e.seq < r.seq ORDER BY e.seq LIMIT 1),
       (SELECT e.read_at_ms FROM readings e WHERE e.meter_id = p.meter_id AND e.seq < r.seq ORDER BY e.seq LIMIT 1)
FROM progress p
LEFT JOIN readings r ON r.meter_id = p.meter_id
     AND r.seq = (SELECT MAX(x.seq) FROM readings x WHERE x.meter_id = p.meter_id)
WHERE CAST(? AS TEXT) IS NULL OR p.meter_id = ?
"""
# GridTokenX HTTP ingest: what became of a reading / a meter's energy (client status endpoints, CLI)
_OUTBOX_HTTP = ("SELECT key, produced_wh, consumed_wh, reading_timestamp, status, reason, signature FROM outbox "
                "WHERE meter_id = ? AND source = 'http' ")
_READING_MEANING = {
    "open": "in the meter's current interval: submitted once its market epoch is over",
    "queued": "its interval is planned and being submitted to the oracle",
    "on_chain": "its interval is confirmed on chain",
    "not_submitted": "its interval will not reach the chain: see reasons",
}


class FleetViews:
    """Read-only views over `self.conn` (mixed into gateway.store.Store). The SQL is SQLite's; where PostgreSQL
    differs, PostgresFleetViews (below) overrides one statement, never the logic around it."""

    conn: sqlite3.Connection

    # The newest rejection of each meter (claimed by topic or payload) since a time: SQLite returns the row of
    # MAX() for a bare column.
    _RECENT_REJECTIONS = ("SELECT COALESCE(topic_meter_id, meter_id) AS m, MAX(received_at_ms), reason "
                          "FROM rejections WHERE received_at_ms >= ? AND m IS NOT NULL GROUP BY m")
    # Held interval reasons are codes (oracle check names, below_min_energy_value, ...), some followed by
    # ": detail" (reconcile_mismatch: chain has ...): the code before the colon is the bounded label.
    _REASON_CODE = "CASE WHEN instr(reason, ':') > 0 THEN substr(reason, 1, instr(reason, ':') - 1) ELSE reason END"

    def data_version(self) -> object:
        """A value that changes whenever another connection committed a change to the database (the dashboard's
        cache key and live-update trigger)."""
        return self.conn.execute("PRAGMA data_version").fetchone()[0]

    def rejections(self, meter_id: str | None = None, limit: int = DEFAULT_REJECTIONS_LIMIT,
                   max_payload_bytes: int | None = DEFAULT_PAYLOAD_SHOWN_BYTES) -> list[dict[str, Any]]:
        """Newest first. Payloads are cut to max_payload_bytes (None: whole; the CLI's --json wants the evidence),
        with payload_bytes telling the size of the message received (an unauthenticated one is stored as a prefix:
        gateway.store.sqlite.QUARANTINE_PREFIX_BYTES, with its length and sha256)."""
        q = ("SELECT id, received_at_ms, source, topic_meter_id, meter_id, seq, reason, detail, authenticated, "
             "substr(payload, 1, ?), COALESCE(payload_len, length(payload)), signature FROM rejections "
             "WHERE (CAST(? AS TEXT) IS NULL OR meter_id = ? OR topic_meter_id = ?) ORDER BY id DESC LIMIT ?")
        cut = 2**31 - 1 if max_payload_bytes is None else max_payload_bytes  # SQLite blobs are < 2**31 bytes
        return [{"id": r[0], "received_at_ms": r[1], "source": r[2], "topic_meter_id": r[3], "meter_id": r[4],
                 "seq": r[5], "reason": r[6], "detail": r[7], "authenticated": bool(r[8]),
                 "payload_hex": _blob(r[9]).hex(), "payload_bytes": r[10], "signature_hex": _blob(r[11]).hex()}
                for r in self.conn.execute(q, (cut, meter_id, meter_id, meter_id, limit))]

    def rejection_counts(self) -> dict[str, int]:
        return {reason: int(n) for reason, n in self.conn.execute(
            "SELECT reason, COUNT(*) FROM rejections GROUP BY reason ORDER BY 2 DESC")}

    def meter_readings(self, meter_id: str, limit: int = DEFAULT_READINGS_LIMIT) -> list[dict[str, Any]]:
        """A meter's newest readings, oldest first (the chart)."""
        q = ("SELECT seq, read_at_ms, import_wh, export_wh, power_w, status, reason, detail FROM readings "
             "WHERE meter_id = ? ORDER BY seq DESC LIMIT ?")
        rows = [{"seq": r[0], "read_at_ms": r[1], "import_wh": r[2], "export_wh": r[3], "power_w": r[4],
                 "status": r[5], "reason": r[6], "detail": r[7]} for r in self.conn.execute(q, (meter_id, limit))]
        rows.reverse()
        return rows

    def meter_intervals(self, meter_id: str, limit: int = 500) -> list[dict[str, Any]]:
        q = ("SELECT key, produced_wh, consumed_wh, reading_timestamp, status, reason, signature, source FROM outbox "
             "WHERE meter_id = ? ORDER BY reading_timestamp DESC LIMIT ?")
        return [{"key": r[0], "produced_wh": r[1], "consumed_wh": r[2], "reading_timestamp": r[3], "status": r[4],
                 "reason": r[5], "signature": r[6], "source": r[7]} for r in self.conn.execute(q, (meter_id, limit))]

    def meter_gaps(self, meter_id: str) -> list[dict[str, Any]]:
        q = ("SELECT first_seq, last_seq, detected_at_ms FROM gaps WHERE meter_id = ? ORDER BY first_seq DESC "
             "LIMIT 100")
        return [{"first_seq": a, "last_seq": b, "detected_at_ms": t} for a, b, t in self.conn.execute(q, (meter_id,))]

    # ---- fleet health --------------------------------------------------------------------------------------------
    def _http_facts(self, meter_id: str, k: int) -> tuple[int, int, int, int | None] | None:
        """(seq, timestamp_ms, received_at_ms, cadence) of a GridTokenX HTTP meter's newest reading, or None."""
        newest = self.conn.execute("SELECT seq, timestamp_ms, received_at_ms FROM http_ingest WHERE meter_id = ? "
                                   "ORDER BY seq DESC LIMIT 1", (meter_id,)).fetchone()
        if newest is None:
            return None
        earlier = self.conn.execute("SELECT seq, timestamp_ms FROM http_ingest WHERE meter_id = ? AND seq <= ? "
                                    "ORDER BY seq DESC LIMIT 1", (meter_id, max(1, newest[0] - k))).fetchone()
        return newest[0], newest[1], newest[2], observed_interval_ms((newest[0], newest[1]), earlier)

    def fleet_health(self, meters: dict[str, Meter], now_ms: int, th: Thresholds) -> list[dict[str, Any]]:
        """Every registered meter with its health (gateway.health) and counts, in meter_id order. A few index
        seeks per meter (newest reading, one some seqs earlier), one pass over recent rejections."""
        only = next(iter(meters)) if len(meters) == 1 else None
        k = th.window_readings
        prog = {r[0]: r for r in self.conn.execute(_FLEET_FACTS, (k, k, only, only))}
        rejected = {m: (t, reason) for m, t, reason in self.conn.execute(self._RECENT_REJECTIONS,
                                                                         (now_ms - th.silent_after_ms,))}
        uses_http = self.conn.execute("SELECT 1 FROM http_ingest LIMIT 1").fetchone() is not None
        rows = []
        for mid, m in sorted(meters.items()):
            p = prog.get(mid)
            rej = rejected.get(mid)
            if p is not None:
                earlier = (p[17], p[18]) if p[17] is not None else ((p[19], p[20]) if p[19] is not None else None)
                newest = (p[11], p[12]) if p[11] is not None else None
                facts = MeterFacts(m.status.value, p[5], p[12], p[13], p[14], p[15], p[16],
                                   observed_interval_ms(newest, earlier), *(rej or (None, None)))
            elif uses_http and (hf := self._http_facts(mid, k)) is not None:
                _seq, ts, rcv, interval = hf
                facts = MeterFacts(m.status.value, rcv, ts, rcv, "accepted", observed_interval_ms=interval,
                                   last_rejection_ms=rej[0] if rej else None,
                                   last_rejection_reason=rej[1] if rej else None)
            else:
                facts = MeterFacts(m.status.value, *((None,) * 7), *(rej or (None, None)))
            h = meter_health(facts, now_ms, th)
            rows.append({
                "meter_id": mid, "status": m.status.value, "zone_id": m.zone_id, "role": m.role.name.lower(),
                "profile": m.profile, "rated_max_power_w": m.rated_max_power_w, "serial_number": m.serial_number,
                "state": h.state.value, "state_reason": h.reason, "state_text": h.text,
                "expected_interval_s": h.expected_interval_ms / 1000, "last_seen_ms": facts.last_seen_ms,
                "heard_age_s": None if h.heard_age_ms is None else h.heard_age_ms // 1000,
                "newest_read_at_ms": facts.newest_read_at_ms,
                "lag_s": None if h.lag_ms is None else h.lag_ms // 1000,
                "last_read_at_ms": p[2] if p else None, "last_seq": p[1] if p else 0,
                "import_wh": p[3] if p else None, "export_wh": p[4] if p else None,
                "accepted": p[6] if p else 0, "held": p[7] if p else 0, "rejected": p[8] if p else 0,
                "duplicates": p[9] if p else 0, "missing": p[10] if p else 0,
                "held_detail": facts.newest_detail if facts.newest_status == "held" else None,
            })
        return rows

    def outbox_by_meters(self, meter_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Outbox counts per meter for a page of meters (through the (status, meter_id) index)."""
        out: dict[str, dict[str, Any]] = {}
        for i in range(0, len(meter_ids), 500):
            chunk = meter_ids[i : i + 500]
            q = ("SELECT meter_id, status, COUNT(*), SUM(produced_wh), SUM(consumed_wh), MAX(reading_timestamp) "
                 "FROM outbox WHERE status IN ('pending','sent','confirmed','held','rejected') "
                 f"AND meter_id IN ({','.join('?' * len(chunk))}) GROUP BY meter_id, status")
            for mid, status, n, prod, cons, last_ts in self.conn.execute(q, chunk):
                d = out.setdefault(mid, {"confirmed": 0, "pending": 0, "sent": 0, "held": 0, "rejected": 0,
                                         "confirmed_produced_wh": 0, "confirmed_consumed_wh": 0,
                                         "last_confirmed_ts": None})
                d[status] = n
                if status == "confirmed":  # int(): PostgreSQL's SUM of BIGINT is NUMERIC (a Decimal)
                    d.update(confirmed_produced_wh=int(prod), confirmed_consumed_wh=int(cons),
                             last_confirmed_ts=last_ts)
        return out

    def held_readings(self, meter_id: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Held readings, newest first, with reason and detail (the quality flags)."""
        q = ("SELECT meter_id, seq, read_at_ms, received_at_ms, import_wh, export_wh, reason, detail FROM readings "
             "WHERE status = 'held' AND (CAST(? AS TEXT) IS NULL OR meter_id = ?) ORDER BY received_at_ms DESC "
             "LIMIT ?")
        return [{"meter_id": r[0], "seq": r[1], "read_at_ms": r[2], "received_at_ms": r[3], "import_wh": r[4],
                 "export_wh": r[5], "reason": held_reason(r[6], r[7]), "detail": r[7]}
                for r in self.conn.execute(q, (meter_id, meter_id, limit))]

    def held_interval_counts(self) -> dict[str, int]:
        """Held interval submissions by reason code (through the outbox status index: held rows only)."""
        q = f"SELECT COALESCE({self._REASON_CODE}, 'unknown'), COUNT(*) FROM outbox WHERE status = 'held' GROUP BY 1"
        return {str(code)[:64]: int(n) for code, n in self.conn.execute(q)}

    def held_intervals(self, meter_id: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Interval submissions held back from the chain, with the reason (oracle check name, reconcile_mismatch)."""
        q = ("SELECT key, meter_id, reading_timestamp, produced_wh, consumed_wh, reason, updated_at_ms FROM outbox "
             "WHERE status = 'held' AND (CAST(? AS TEXT) IS NULL OR meter_id = ?) ORDER BY updated_at_ms DESC "
             "LIMIT ?")
        return [{"key": r[0], "meter_id": r[1], "reading_timestamp": r[2], "produced_wh": r[3], "consumed_wh": r[4],
                 "reason": r[5], "updated_at_ms": r[6]} for r in self.conn.execute(q, (meter_id, meter_id, limit))]

    # ---- GridTokenX HTTP ingest --------------------------------------------------------------------------------
    def http_reading_status(self, registry: MeterLookup, reading_id: str) -> dict[str, Any] | None:
        """One accepted reading and the interval its energy was submitted in (the first planned at or after it;
        a sub-Wh remainder is carried to the next one). None if there is no such reading."""
        row = self.conn.execute("SELECT meter_id, seq, timestamp_ms, import_mwh, export_mwh, received_at_ms "
                                "FROM http_ingest WHERE reading_id = ?", (reading_id,)).fetchone()
        if row is None:
            return None
        mid, seq, ts_ms, imp, exp, received = row
        intervals = [_interval(r) for r in self.conn.execute(
            _OUTBOX_HTTP + "AND closing_seq = (SELECT MIN(closing_seq) FROM outbox WHERE meter_id = ? "
            "AND source = 'http' AND closing_seq >= ?) ORDER BY reading_timestamp", (mid, mid, seq))]
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

    def http_meter_status(self, meter: Meter) -> dict[str, Any]:
        """A meter's HTTP energy books, exact in mWh: per direction received = planned (Wh) * 1000 + waiting
        (the open interval and the sub-Wh carry); planned energy by outbox status; every interval not submitted."""
        mid = meter.meter_id
        n, imp, exp, last_ts, last_rcv = self.conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(import_mwh), 0), COALESCE(SUM(export_mwh), 0), MAX(timestamp_ms), "
            "MAX(received_at_ms) FROM http_ingest WHERE meter_id = ?", (mid,)).fetchone()
        imp, exp = int(imp), int(exp)  # PostgreSQL's SUM of BIGINT is NUMERIC (a Decimal)
        plan = self.conn.execute("SELECT sub_import_wh, sub_export_wh FROM http_plan_state WHERE meter_id = ?",
                                 (mid,)).fetchone() or (0, 0)
        submits_import = meter.role is not MeterRole.PRODUCTION
        submits_export = meter.role is not MeterRole.CONSUMPTION
        directions: dict[str, dict[str, Any]] = {}
        for name, received, planned, submitted, quantity in (("import", imp, plan[0], submits_import, "consumed"),
                                                             ("export", exp, plan[1], submits_export, "produced")):
            directions[name] = {"received_wh": wh_text(received), "submitted_as": quantity if submitted else None}
            if submitted:
                directions[name].update(planned_wh=planned, waiting_wh=wh_text(received - planned * 1000))
        outbox = {st: {"intervals": c, "produced_wh": int(p or 0), "consumed_wh": int(q or 0)}
                  for st, c, p, q in self.conn.execute(
                      "SELECT status, COUNT(*), SUM(produced_wh), SUM(consumed_wh) FROM outbox WHERE meter_id = ? "
                      "AND source = 'http' GROUP BY status", (mid,))}
        not_submitted = [_interval(r) for r in self.conn.execute(
            _OUTBOX_HTTP + "AND status IN ('held', 'rejected') ORDER BY reading_timestamp DESC LIMIT 100", (mid,))]
        return {"device_id": mid, "meter_status": meter.status.value, "role": meter.role.name.lower(),
                "readings": n, "last_timestamp_ms": last_ts, "last_received_at_ms": last_rcv, "energy": directions,
                "outbox": outbox, "not_submitted": not_submitted}


class PostgresFleetViews(FleetViews):
    """The statements whose SQL differs on PostgreSQL (mixed into gateway.store.postgres.PostgresStore)."""

    # No bare columns beside an aggregate: the newest row per meter with DISTINCT ON.
    _RECENT_REJECTIONS = ("SELECT DISTINCT ON (m) m, received_at_ms, reason FROM (SELECT COALESCE(topic_meter_id, "
                          "meter_id) AS m, received_at_ms, reason, id FROM rejections WHERE received_at_ms >= ?) x "
                          "WHERE m IS NOT NULL ORDER BY m, received_at_ms DESC, id DESC")
    _REASON_CODE = "split_part(reason, ':', 1)"

    def data_version(self) -> object:
        """The server's WAL insert position: it moves with every committed change, by any gateway host."""
        return self.conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]


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


# ---- sorting the fleet view (keys of /api/meters?sort=) ----

def _lag_key(r: dict[str, Any]) -> tuple[int, int]:
    return (r["lag_s"] is None, r["lag_s"] or 0)


SORT_KEYS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "state": lambda r: (SEVERITY[State(r["state"])], -(r["heard_age_s"] or 0), r["meter_id"]),
    "meter": lambda r: r["meter_id"],
    "lag": _lag_key,
    "last_seen": lambda r: (r["last_seen_ms"] is None, r["last_seen_ms"] or 0),
    "held": lambda r: (r["held"], r["meter_id"]),
    "rejected": lambda r: (r["rejected"], r["meter_id"]),
    "zone": lambda r: (r["zone_id"], r["meter_id"]),
}
