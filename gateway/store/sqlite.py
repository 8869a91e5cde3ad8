"""Durable gateway state in SQLite (WAL): accepted readings, quarantine, per-meter progress, the outbox.

Durability order: a batch of readings is committed in ONE transaction (readings, rejections, gaps,
progress) before any ack is published, so an ack always describes what is on disk. (meter_id, seq) is
the primary key of the readings, so a resend after a crash cannot double-count.

The outbox's states, keys and SQL are gateway/store/outbox.py and the read-only views of the dashboard, the CLI and
the status endpoints gateway/store/fleet.py (both mixed in here); retention (what is pruned when) is
gateway/store/retention.py; the interface a second backend implements is gateway/store/api.py.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from gateway.store.api import UNCHECKED
from gateway.store.database import Transaction, connect
from gateway.store.fleet import FleetViews
from gateway.store.http_tables import HTTP_BOOKS, HTTP_METERS_UPSERT, HTTP_SCHEMA
from gateway.store.migrations import SqliteStep, apply_sqlite
from gateway.store.outbox import Outbox, OutboxSource
from gateway.store.planning import Planning
from gateway.store.records import Planned, PlanState, Point, Progress, http_point
from gateway.store.retention import DEFAULT_RETENTION_DAYS, Pruned, prune

_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    meter_id TEXT NOT NULL, seq INTEGER NOT NULL, read_at_ms INTEGER NOT NULL,
    import_wh INTEGER NOT NULL, export_wh INTEGER NOT NULL, quality INTEGER NOT NULL, clock_synced INTEGER NOT NULL,
    power_w INTEGER, status TEXT NOT NULL CHECK (status IN ('accepted', 'held')), reason TEXT, detail TEXT,
    rebaseline INTEGER NOT NULL DEFAULT 0, payload BLOB NOT NULL, signature BLOB NOT NULL,
    received_at_ms INTEGER NOT NULL, PRIMARY KEY (meter_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rejections (
    id INTEGER PRIMARY KEY AUTOINCREMENT, received_at_ms INTEGER NOT NULL, source TEXT NOT NULL,
    topic_meter_id TEXT, meter_id TEXT, seq INTEGER, reason TEXT NOT NULL, detail TEXT NOT NULL,
    authenticated INTEGER NOT NULL, payload BLOB NOT NULL, signature BLOB NOT NULL,
    payload_len INTEGER, payload_sha256 BLOB
);
CREATE INDEX IF NOT EXISTS rejections_meter ON rejections (meter_id, seq);
CREATE INDEX IF NOT EXISTS rejections_received ON rejections (received_at_ms);  -- fleet health: recent ones
CREATE INDEX IF NOT EXISTS readings_held ON readings (received_at_ms) WHERE status = 'held';  -- held listing
CREATE TABLE IF NOT EXISTS quarantine_dropped (
    hour_ms INTEGER PRIMARY KEY, messages INTEGER NOT NULL, bytes INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS gaps (
    meter_id TEXT NOT NULL, first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL, detected_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS progress (
    meter_id TEXT PRIMARY KEY, last_seq INTEGER NOT NULL, last_read_at_ms INTEGER, last_import_wh INTEGER,
    last_export_wh INTEGER, last_seen_ms INTEGER NOT NULL, accepted INTEGER NOT NULL DEFAULT 0,
    held INTEGER NOT NULL DEFAULT 0, rejected INTEGER NOT NULL DEFAULT 0, duplicates INTEGER NOT NULL DEFAULT 0,
    missing INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS plan_state (
    meter_id TEXT PRIMARY KEY, baseline_set INTEGER NOT NULL, last_seq INTEGER NOT NULL,
    anchor_read_at_ms INTEGER NOT NULL, sub_import_wh INTEGER NOT NULL, sub_export_wh INTEGER NOT NULL,
    last_import_wh INTEGER NOT NULL, last_export_wh INTEGER NOT NULL, last_read_at_ms INTEGER NOT NULL,
    last_ts INTEGER
);
CREATE TABLE IF NOT EXISTS outbox (
    key TEXT PRIMARY KEY, meter_id TEXT NOT NULL, zone_id INTEGER NOT NULL, produced_wh INTEGER NOT NULL,
    consumed_wh INTEGER NOT NULL, reading_timestamp INTEGER NOT NULL, closing_seq INTEGER, part INTEGER NOT NULL,
    parts INTEGER NOT NULL, source TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'sent', 'confirmed', 'held', 'rejected')),
    reason TEXT, signature TEXT, attempts INTEGER NOT NULL DEFAULT 0, created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL, next_attempt_ms INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_status ON outbox (status, meter_id, reading_timestamp);
CREATE TABLE IF NOT EXISTS outbox_pruned (meter_id TEXT PRIMARY KEY, confirmed INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS http_readings (
    meter_id TEXT NOT NULL, timestamp_ms INTEGER NOT NULL, body BLOB NOT NULL, received_at_ms INTEGER NOT NULL,
    PRIMARY KEY (meter_id, timestamp_ms)
) WITHOUT ROWID;
""" + HTTP_SCHEMA
_INSERT_READING = "INSERT INTO readings VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
_INSERT_REJECTION = ("INSERT INTO rejections (received_at_ms, source, topic_meter_id, meter_id, seq, reason, detail,"
                     " authenticated, payload, signature, payload_len, payload_sha256)"
                     " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)")
# Quarantine bounds. An unauthenticated rejection (anyone allowed to publish can cause one) keeps this much of
# the message, its length and its sha256: one whole signed reading (protocol MAX_READING_BYTES) stays complete
# evidence, a 1 MB garbage message costs a few hundred bytes. Authenticated ones (a registered device key
# signed them) are single readings and kept whole: they prove what a meter sent and detect changed resends.
QUARANTINE_PREFIX_BYTES = 256
MAX_DETAIL_CHARS = 512  # a detail may quote a hostile topic (MQTT allows 64 KiB)
ROW_OVERHEAD_BYTES = 96  # columns other than payload/signature/detail, hash, index entry (approximate)
HOUR_MS = 3_600_000


class ReadingRow(NamedTuple):
    """One stored (accepted or held) reading, in column order: a tuple, so executemany takes it as it is
    (the intake builds tens of thousands of these a second)."""

    meter_id: str
    seq: int
    read_at_ms: int
    import_wh: int
    export_wh: int
    quality: int
    clock_synced: bool
    power_w: int | None
    status: str
    reason: str | None
    detail: str | None
    rebaseline: bool
    payload: bytes
    signature: bytes
    received_at_ms: int


@dataclass(frozen=True, slots=True)
class RejectionRow:
    received_at_ms: int
    source: str
    topic_meter_id: str | None
    meter_id: str | None
    seq: int | None
    reason: str
    detail: str
    authenticated: bool
    payload: bytes
    signature: bytes


def quarantine_cost(r: RejectionRow) -> int:
    """Bytes a rejection row takes once stored (what the quarantine byte budget counts)."""
    payload = len(r.payload) if r.authenticated else min(len(r.payload), QUARANTINE_PREFIX_BYTES)
    return payload + len(r.signature) + min(len(r.detail), MAX_DETAIL_CHARS) + ROW_OVERHEAD_BYTES


def _rejection_params(r: RejectionRow) -> tuple[object, ...]:
    payload = bytes(r.payload)
    kept = payload if r.authenticated else payload[:QUARANTINE_PREFIX_BYTES]
    return (r.received_at_ms, r.source, r.topic_meter_id, r.meter_id, r.seq, r.reason, r.detail[:MAX_DETAIL_CHARS],
            int(r.authenticated), kept, bytes(r.signature)[:64], len(payload), hashlib.sha256(payload).digest())


@dataclass(frozen=True, slots=True)
class BatchWrite:
    """Everything one intake batch changes, written in one transaction."""

    readings: list[ReadingRow]
    rejections: list[RejectionRow]
    gaps: list[tuple[str, int, int, int]]  # meter_id, first, last, detected_at_ms
    progress: dict[str, Progress]
    counts: dict[str, dict[str, int]]  # meter_id -> {accepted, held, rejected, duplicates, missing}
    seen_ms: int
    dropped: tuple[int, int] = (0, 0)  # unauthenticated rejections over the quarantine budget: messages, bytes


def _v1(c: sqlite3.Connection) -> None:
    """The schema, and the columns/rows that databases of versions before numbered migrations lack."""
    for stmt in re.sub(r"--[^\n]*", "", _SCHEMA).split(";"):  # executescript would COMMIT the migration's BEGIN
        if stmt.strip():
            c.execute(stmt)
    cols = {r[1] for r in c.execute("PRAGMA table_info(rejections)")}
    for col, typ in (("payload_len", "INTEGER"), ("payload_sha256", "BLOB")):
        if col not in cols:
            c.execute(f"ALTER TABLE rejections ADD COLUMN {col} {typ}")
    if c.execute("SELECT NOT EXISTS (SELECT 1 FROM http_meters) AND EXISTS (SELECT 1 FROM http_ingest)").fetchone()[0]:
        c.execute("INSERT OR IGNORE INTO http_meters SELECT meter_id, MAX(seq), MAX(received_at_ms) "
                  "FROM http_ingest GROUP BY meter_id")


SQLITE_MIGRATIONS: list[tuple[int, SqliteStep]] = [(1, _v1)]  # gateway/store/migrations.py


class Store(Outbox, Planning, FleetViews):
    """The gateway's durable state in SQLite (gateway.store.api.GatewayStore is the interface)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.conn = connect(path)
        try:
            apply_sqlite(self.conn, SQLITE_MIGRATIONS)
        except BaseException:
            self.conn.close()
            raise

    def close(self) -> None:
        self.conn.close()

    # ---- intake -------------------------------------------------------------------------------
    def load_progress(self, meter_ids: Iterable[str]) -> dict[str, Progress]:
        ids = list(set(meter_ids))
        out: dict[str, Progress] = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            q = ("SELECT meter_id, last_seq, last_read_at_ms, last_import_wh, last_export_wh FROM progress "
                 f"WHERE meter_id IN ({','.join('?' * len(chunk))})")
            for m, seq, at, imp, exp in self.conn.execute(q, chunk):
                out[m] = Progress(seq, at, imp, exp)
        return out

    def handled_payload(self, meter_id: str, seq: int) -> bytes | None:
        """The payload already handled (stored, or rejected after verification) for this (meter, seq)."""
        r = self.conn.execute("SELECT payload FROM readings WHERE meter_id = ? AND seq = ?", (meter_id, seq)).fetchone()
        if r is None:
            r = self.conn.execute("SELECT payload FROM rejections WHERE meter_id = ? AND seq = ? AND authenticated = 1"
                                  " ORDER BY id LIMIT 1", (meter_id, seq)).fetchone()
        return bytes(r[0]) if r else None

    def gap_containing(self, meter_id: str, seq: int) -> tuple[int, int, int] | None:
        """(first_seq, last_seq, detected_at_ms) of the recorded gap holding seq, if any."""
        r = self.conn.execute("SELECT first_seq, last_seq, detected_at_ms FROM gaps WHERE meter_id = ? "
                              "AND first_seq <= ? AND last_seq >= ? LIMIT 1", (meter_id, seq, seq)).fetchone()
        return (r[0], r[1], r[2]) if r else None

    def ack_seq(self, meter_id: str, last_seq: int, open_after_ms: int) -> int:
        """Highest contiguous seq: below the oldest gap detected after `open_after_ms` (still expected to be
        filled by a re-send), else the highest authenticated seq (older gaps are declared lost)."""
        r = self.conn.execute("SELECT MIN(first_seq) FROM gaps WHERE meter_id = ? AND detected_at_ms > ?",
                              (meter_id, open_after_ms)).fetchone()
        return last_seq if r is None or r[0] is None else min(last_seq, r[0] - 1)

    def neighbors(self, meter_id: str, seq: int) -> tuple[tuple[int, int, int] | None, tuple[int, int, int] | None]:
        """(read_at_ms, import_wh, export_wh) of the accepted readings just before and after seq."""
        q = ("SELECT read_at_ms, import_wh, export_wh FROM readings WHERE meter_id = ? AND seq {} ? "
             "AND status = 'accepted' ORDER BY seq {} LIMIT 1")
        prev = self.conn.execute(q.format("<", "DESC"), (meter_id, seq)).fetchone()
        nxt = self.conn.execute(q.format(">", "ASC"), (meter_id, seq)).fetchone()
        return (tuple(prev) if prev else None), (tuple(nxt) if nxt else None)  # type: ignore[return-value]

    def fill_late(self, row: ReadingRow, gap: tuple[int, int, int]) -> None:
        """Store a late reading now (within the caller's transaction) and shrink the gap it filled. The pieces
        keep the gap's detection time: filling one seq must not restart the grace period of the rest."""
        self.conn.execute(_INSERT_READING, row)
        self.close_gap_seq(row.meter_id, row.seq, gap)
        self.conn.execute("UPDATE progress SET accepted = accepted + ?, held = held + ? WHERE meter_id = ?",
                          (int(row.status == "accepted"), int(row.status == "held"), row.meter_id))

    def close_gap_seq(self, meter_id: str, seq: int, gap: tuple[int, int, int]) -> None:
        """`seq` of a recorded gap is decided (stored, or an authenticated reading quarantined): shrink the gap
        (within the caller's transaction). The pieces keep the detection time of the gap."""
        c = self.conn
        first, last, detected_at_ms = gap
        c.execute("DELETE FROM gaps WHERE meter_id = ? AND first_seq = ? AND last_seq = ?", (meter_id, first, last))
        rest = [(meter_id, a, b, detected_at_ms) for a, b in ((first, seq - 1), (seq + 1, last)) if a <= b]
        c.executemany("INSERT INTO gaps VALUES (?,?,?,?)", rest)
        c.execute("UPDATE progress SET missing = missing - 1 WHERE meter_id = ?", (meter_id,))

    def write_batch(self, w: BatchWrite) -> None:
        """Caller holds the transaction (see `transaction`)."""
        c = self.conn
        c.executemany(_INSERT_READING, map(tuple, w.readings))  # plain tuples bind ~1 us/row faster; bools as 0/1
        c.executemany(_INSERT_REJECTION, map(_rejection_params, w.rejections))
        if w.dropped[0]:
            c.execute("INSERT INTO quarantine_dropped VALUES (?,?,?) ON CONFLICT (hour_ms) DO UPDATE SET "
                      "messages = quarantine_dropped.messages + excluded.messages, "
                      "bytes = quarantine_dropped.bytes + excluded.bytes",
                      (w.seen_ms - w.seen_ms % HOUR_MS, *w.dropped))
        c.executemany("INSERT INTO gaps VALUES (?,?,?,?)", w.gaps)
        rows = []
        for m, p in w.progress.items():
            n = w.counts.get(m, {})
            rows.append((m, p.last_seq, p.last_read_at_ms, p.last_import_wh, p.last_export_wh, w.seen_ms,
                         n.get("accepted", 0), n.get("held", 0), n.get("rejected", 0), n.get("duplicates", 0),
                         n.get("missing", 0)))
        c.executemany(
            "INSERT INTO progress VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (meter_id) DO UPDATE SET "
            "last_seq=excluded.last_seq, last_read_at_ms=excluded.last_read_at_ms, "
            "last_import_wh=excluded.last_import_wh, last_export_wh=excluded.last_export_wh, "
            "last_seen_ms=excluded.last_seen_ms, accepted=progress.accepted+excluded.accepted, "
            "held=progress.held+excluded.held, "
            "rejected=progress.rejected+excluded.rejected, duplicates=progress.duplicates+excluded.duplicates, "
            "missing=progress.missing+excluded.missing", rows)

    def add_rejection(self, r: RejectionRow) -> None:
        self.write_rejections([r], r.received_at_ms)

    def write_rejections(self, rows: list[RejectionRow], now_ms: int, dropped: tuple[int, int] = (0, 0)) -> None:
        with Transaction(self.conn):
            self.write_batch(BatchWrite([], rows, [], {}, {}, now_ms, dropped))

    def quarantine_dropped(self, since_ms: int = 0) -> tuple[int, int]:
        """(messages, bytes) of unauthenticated rejections counted but not stored (quarantine budget) since."""
        r = self.conn.execute("SELECT COALESCE(SUM(messages), 0), COALESCE(SUM(bytes), 0) FROM quarantine_dropped "
                              "WHERE hour_ms >= ?", (since_ms - since_ms % HOUR_MS,)).fetchone()
        return int(r[0]), int(r[1])

    def transaction(self) -> Transaction:
        return Transaction(self.conn)

    def get_setting(self, name: str) -> str | None:
        r = self.conn.execute("SELECT value FROM settings WHERE name = ?", (name,)).fetchone()
        return r[0] if r else None

    def set_setting(self, name: str, value: str) -> None:
        with Transaction(self.conn) as c:
            c.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", (name, value))

    # ---- GridTokenX HTTP ingest ------------------------------------------------------------------------
    def lock_meter(self, meter_id: str) -> None:
        """Within the caller's transaction: this meter's intake decisions run one at a time across processes.
        SQLite: BEGIN IMMEDIATE already holds the database's one write lock (PostgreSQL: an advisory lock)."""

    def add_http_reading(self, meter_id: str, timestamp_ms: int, import_mwh: int, export_mwh: int, body: bytes,
                         reading_id: str, now_ms: int, *,
                         checked_last_ms: int | None = UNCHECKED) -> tuple[str, str | None]:
        """Store one accepted reading with its running sums, atomically with the per-meter order check.
        Returns ("stored" | "duplicate" | "source_conflict" | "not_increasing" | "overflow" | "moved", reading_id
        of a duplicate); source_conflict: the meter's readings come over MQTT (one meter, one source).
        checked_last_ms: the meter's last timestamp the caller's checks (order, energy over the time since it)
        were made against; "moved" when another process stored a reading of the meter since: check again."""
        with Transaction(self.conn) as c:
            self.lock_meter(meter_id)
            dup, legacy_dup, mqtt, legacy_last, prev_seq, prev_imp, prev_exp, prev_ts = c.execute(
                HTTP_BOOKS, (meter_id, timestamp_ms, meter_id, meter_id, meter_id, meter_id, timestamp_ms)).fetchone()
            if dup or legacy_dup:
                return "duplicate", dup
            if mqtt:  # decided under the meter's lock: an MQTT batch of it cannot slip in between
                return "source_conflict", None
            last = max((t for t in (prev_ts, legacy_last) if t is not None), default=None)
            if checked_last_ms != UNCHECKED and last != checked_last_ms:
                return "moved", None
            if last is not None and timestamp_ms < last:
                return "not_increasing", None
            seq, cum_imp, cum_exp = (prev_seq or 0) + 1, (prev_imp or 0) + import_mwh, (prev_exp or 0) + export_mwh
            if max(cum_imp, cum_exp) > 2**63 - 1:
                return "overflow", None
            self.insert_http(c, (meter_id, seq, reading_id, timestamp_ms, import_mwh, export_mwh, cum_imp, cum_exp,
                                 body, now_ms))
        return "stored", None

    def insert_http(self, c: sqlite3.Connection, row: tuple[object, ...]) -> None:
        """An accepted reading's http_ingest row and its meter's http_meters row (caller's transaction)."""
        c.execute("INSERT INTO http_ingest VALUES (?,?,?,?,?,?,?,?,?,?)", row)
        c.execute(HTTP_METERS_UPSERT, (row[0], row[1], row[9]))

    def last_http_timestamp_ms(self, meter_id: str) -> int | None:
        r = self.conn.execute("SELECT MAX(t) FROM (SELECT MAX(timestamp_ms) AS t FROM http_ingest WHERE meter_id = ? "
                              "UNION ALL SELECT MAX(timestamp_ms) FROM http_readings WHERE meter_id = ?) AS last",
                              (meter_id, meter_id)).fetchone()
        return r[0] if r else None

    def http_reading_id(self, meter_id: str, timestamp_ms: int) -> str | None:
        r = self.conn.execute("SELECT reading_id FROM http_ingest WHERE meter_id = ? AND timestamp_ms = ?",
                              (meter_id, timestamp_ms)).fetchone()
        return r[0] if r else None

    def http_sourced(self, meter_ids: Iterable[str]) -> set[str]:
        """Of these meters, the ones whose energy comes over the GridTokenX HTTP ingest (one meter, one source;
        http_readings: rows of older gateway versions)."""
        ids, out = list(set(meter_ids)), set()
        for i in range(0, len(ids), 250):
            chunk = ids[i : i + 250]
            marks = ",".join("?" * len(chunk))
            q = (f"SELECT meter_id FROM http_meters WHERE meter_id IN ({marks}) "
                 f"UNION SELECT DISTINCT meter_id FROM http_readings WHERE meter_id IN ({marks})")
            out |= {m for (m,) in self.conn.execute(q, chunk + chunk)}
        return out

    def has_mqtt_readings(self, meter_id: str) -> bool:
        return self.conn.execute("SELECT 1 FROM progress WHERE meter_id = ? AND last_read_at_ms IS NOT NULL",
                                 (meter_id,)).fetchone() is not None

    def http_meters_to_plan(self, now_ms: int, quiet_ms: int, epoch_s: int) -> list[str]:
        """HTTP meters with readings not planned yet, or whose open interval may be closed for being idle (energy
        received but not planned, the epoch of the last reading over, no reading for quiet_ms)."""
        q = ("SELECT m.meter_id, m.last_seq, m.last_received_ms, s.last_seq, s.last_read_at_ms, "
             "s.last_import_wh > s.sub_import_wh OR s.last_export_wh > s.sub_export_wh "
             "FROM http_meters m LEFT JOIN http_plan_state s ON s.meter_id = m.meter_id")
        out = []
        for mid, seq, received, planned_seq, last_read_ms, has_open in self.conn.execute(q):
            if planned_seq is None or planned_seq < seq or (
                    has_open and now_ms - received >= quiet_ms
                    and (last_read_ms // 1000 // epoch_s + 1) * epoch_s * 1000 <= now_ms):
                out.append(mid)
        return out

    def http_plan_inputs(self, meter_id: str, limit: int = 100_000) -> tuple[PlanState | None, list[Point], int]:
        """(planner state or None before the first plan, new points, received_at_ms of the newest reading)."""
        s = self.conn.execute("SELECT baseline_set, last_seq, anchor_read_at_ms, sub_import_wh, sub_export_wh, "
                              "last_import_wh, last_export_wh, last_read_at_ms, last_ts FROM http_plan_state "
                              "WHERE meter_id = ?", (meter_id,)).fetchone()
        state = PlanState(bool(s[0]), *s[1:]) if s else None
        pts = [http_point(*r) for r in self.conn.execute(
            "SELECT seq, timestamp_ms, cum_import_mwh, cum_export_mwh FROM http_ingest WHERE meter_id = ? AND seq > ? "
            "ORDER BY seq LIMIT ?", (meter_id, state.last_seq if state else 0, limit))]
        received = self.conn.execute("SELECT last_received_ms FROM http_meters WHERE meter_id = ?",
                                     (meter_id,)).fetchone()
        return state, pts, received[0] if received else 0

    def save_http_plan(self, meter_id: str, state: PlanState, planned: Sequence[Planned], zone_id: int,
                       now_ms: int) -> None:
        """Planner state and new outbox rows (keys "http:<meter>:<ts>") in one transaction."""
        with Transaction(self.conn) as c:
            c.execute("INSERT OR REPLACE INTO http_plan_state VALUES (?,?,?,?,?,?,?,?,?,?)",
                      (meter_id, int(state.baseline_set), state.last_seq, state.anchor_read_at_ms,
                       state.sub_import_wh, state.sub_export_wh, state.last_import_wh, state.last_export_wh,
                       state.last_read_at_ms, state.last_ts))
            self.add_planned(c, OutboxSource.HTTP, planned, zone_id, now_ms)

    def prune(self, now_ms: int, retention_days: int = DEFAULT_RETENTION_DAYS) -> Pruned:
        """Decided rows older than the retention deleted (gateway.store.retention)."""
        return prune(self.conn, now_ms, retention_days)
