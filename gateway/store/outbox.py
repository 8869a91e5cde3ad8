"""The outbox: interval submissions waiting for, sent to, or decided by the oracle. The only code that writes
its SQL (gateway.store.Store inherits `Outbox`; the submitter and the dashboard call these methods).

States: pending -> sent -> confirmed | rejected; held = never sent (reason stored). `sent` is written BEFORE
the RPC call: after a crash, a `sent` row may or may not be on chain, and the submitter reconciles it with the
meter's on-chain last_reading_timestamp before resending anything.

Keys are built here once (`outbox_key`): "<meter>:<reading_timestamp>" for MQTT intervals, "http:" before it for
GridTokenX ingest intervals, ":held" after it for a held interval (never sent, so it cannot collide with the
sent interval of the same timestamp).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from gateway.store.database import Transaction
from gateway.store.records import Planned


class OutboxStatus(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    CONFIRMED = "confirmed"
    HELD = "held"
    REJECTED = "rejected"


UNDECIDED = (OutboxStatus.PENDING, OutboxStatus.SENT)  # never pruned (gateway.store.retention)
OUTBOX_STATUSES = tuple(s.value for s in OutboxStatus)


class OutboxSource(StrEnum):
    MQTT = "mqtt"
    HTTP = "http"


def outbox_key(source: OutboxSource, p: Planned) -> str:
    """Unique per meter and source: sent submissions have strictly increasing timestamps; a held one is marked."""
    base = f"{p.meter_id}:{p.reading_timestamp}" + (":held" if p.held_reason else "")
    return base if source is OutboxSource.MQTT else f"{source.value}:{base}"


@dataclass(frozen=True, slots=True)
class OutboxRow:
    key: str
    meter_id: str
    zone_id: int
    produced_wh: int
    consumed_wh: int
    reading_timestamp: int
    status: OutboxStatus
    reason: str | None
    signature: str | None
    attempts: int
    source: str
    created_at_ms: int


_COLS = ("key, meter_id, zone_id, produced_wh, consumed_wh, reading_timestamp, status, reason, signature,"
         " attempts, source, created_at_ms")


def _row(r: tuple[str, str, int, int, int, int, str, str | None, str | None, int, str, int]) -> OutboxRow:
    return OutboxRow(r[0], r[1], r[2], r[3], r[4], r[5], OutboxStatus(r[6]), r[7], r[8], r[9], r[10], r[11])


def status_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Rows by status, statuses without rows absent (an index scan: the dashboard caches it)."""
    return {st: int(n) for st, n in conn.execute("SELECT status, COUNT(*) FROM outbox GROUP BY status")}


def oldest_undecided_ms(conn: sqlite3.Connection) -> int | None:
    """created_at_ms of the oldest pending or sent row (None: none)."""
    r = conn.execute("SELECT MIN(created_at_ms) FROM outbox WHERE status IN (?, ?)", UNDECIDED).fetchone()[0]
    return None if r is None else int(r)


def outbox_stats(conn: sqlite3.Connection, now_ms: int) -> dict[str, object]:
    """{"counts": rows by every status, "oldest_age_s": age of the oldest undecided row (0.0: none)}."""
    counts = dict.fromkeys(OUTBOX_STATUSES, 0) | status_counts(conn)
    oldest = oldest_undecided_ms(conn)
    return {"counts": counts, "oldest_age_s": 0.0 if oldest is None else max(0, now_ms - oldest) / 1000}


class Outbox:
    """Outbox SQL over `self.conn` (mixed into gateway.store.Store)."""

    conn: sqlite3.Connection

    def add_planned(self, c: sqlite3.Connection, source: OutboxSource, planned: Sequence[Planned], zone_id: int,
                    now_ms: int) -> None:
        """New rows (pending, or held with the planner's reason), within the caller's transaction."""
        c.executemany(
            "INSERT INTO outbox (key, meter_id, zone_id, produced_wh, consumed_wh, reading_timestamp, closing_seq,"
            " part, parts, source, status, reason, created_at_ms, updated_at_ms) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [(outbox_key(source, p), p.meter_id, zone_id, p.produced_wh, p.consumed_wh, p.reading_timestamp,
              p.closing_seq, p.part, p.parts, source.value,
              (OutboxStatus.HELD if p.held_reason else OutboxStatus.PENDING).value, p.held_reason, now_ms, now_ms)
             for p in planned])

    def outbox_due(self, now_ms: int, limit: int = 5000) -> list[OutboxRow]:
        q = (f"SELECT {_COLS} FROM outbox WHERE status IN (?, ?) AND next_attempt_ms <= ? "
             "ORDER BY meter_id, reading_timestamp LIMIT ?")
        return [_row(r) for r in self.conn.execute(q, (*UNDECIDED, now_ms, limit))]

    def outbox_rows(self, meter_id: str | None = None, status: OutboxStatus | str | None = None,
                    limit: int = 1000) -> list[OutboxRow]:
        st = None if status is None else OutboxStatus(status).value
        q = (f"SELECT {_COLS} FROM outbox WHERE (CAST(? AS TEXT) IS NULL OR meter_id = ?) "
             "AND (CAST(? AS TEXT) IS NULL OR status = ?) ORDER BY meter_id, reading_timestamp LIMIT ?")
        return [_row(r) for r in self.conn.execute(q, (meter_id, meter_id, st, st, limit))]

    def set_outbox(self, keys: Sequence[str], status: OutboxStatus, now_ms: int, *, reason: str | None = None,
                   signature: str | None = None, next_attempt_ms: int = 0, attempt: bool = False) -> None:
        st = OutboxStatus(status).value
        with Transaction(self.conn) as c:
            c.executemany(
                "UPDATE outbox SET status = ?, reason = COALESCE(?, reason), signature = COALESCE(?, signature), "
                "updated_at_ms = ?, next_attempt_ms = ?, attempts = attempts + ? WHERE key = ?",
                [(st, reason, signature, now_ms, next_attempt_ms, int(attempt), k) for k in keys])

    def confirmed_count(self, meter_id: str) -> int:
        """Intervals of this meter confirmed on chain, including those pruned since (gateway.store.retention): what the
        reconciliation compares with the chain's total_readings."""
        n = self.conn.execute("SELECT COUNT(*) FROM outbox WHERE meter_id = ? AND status = ?",
                              (meter_id, OutboxStatus.CONFIRMED.value)).fetchone()[0]
        pruned = self.conn.execute("SELECT confirmed FROM outbox_pruned WHERE meter_id = ?", (meter_id,)).fetchone()
        return int(n) + (int(pruned[0]) if pruned else 0)

    def outbox_stats(self, now_ms: int) -> dict[str, object]:
        return outbox_stats(self.conn, now_ms)

    def outbox_status_counts(self) -> dict[str, int]:
        return status_counts(self.conn)

    def oldest_undecided_ms(self) -> int | None:
        return oldest_undecided_ms(self.conn)
