"""Retention: the gateway database stays bounded over years of readings.

A row is pruned once it is DECIDED and older than the retention (default DEFAULT_RETENTION_DAYS, by the time the
gateway received or last changed it):
- readings: accepted ones already planned into intervals (seq <= the meter's planned seq) and held ones; the
  meter's newest reading is always kept (progress and the planner continue from it);
- outbox: confirmed, rejected and held intervals. A pending or sent row is NEVER pruned, however old: it is
  energy not yet on chain (or not yet known to be). Confirmed rows pruned are counted per meter in
  outbox_pruned, so the reconciliation with the chain's total_readings stays exact;
- rejections, gaps (declared lost long before), quarantine_dropped hours;
- GridTokenX ingest rows already planned (seq <= the planner's seq), except each meter's newest (it holds the
  running sums the next reading adds to); rows of the older http_readings table.
Within the retention, a re-sent reading is still recognised as a duplicate by its stored payload; after it,
by the meter's progress (its seq is below the last one). The agent deletes a reading once acked, so a resend
older than weeks does not happen.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from gateway.store.database import Transaction
from gateway.store.outbox import OutboxStatus

DEFAULT_RETENTION_DAYS = 30
DAY_MS = 86_400_000
DEFAULT_PRUNE_INTERVAL_S = 3600  # the service prunes once an hour (and at start)
_DECIDED = (OutboxStatus.CONFIRMED.value, OutboxStatus.REJECTED.value, OutboxStatus.HELD.value)


@dataclass(frozen=True, slots=True)
class Pruned:
    readings: int = 0
    outbox: int = 0
    rejections: int = 0
    gaps: int = 0
    http: int = 0

    @property
    def total(self) -> int:
        return self.readings + self.outbox + self.rejections + self.gaps + self.http


def prune(conn: sqlite3.Connection, now_ms: int, retention_days: int = DEFAULT_RETENTION_DAYS) -> Pruned:
    """Delete decided rows older than the retention, in one transaction. Returns rows deleted per table."""
    if retention_days < 1:
        raise ValueError(f"retention_days must be >= 1, got {retention_days}")
    cut = now_ms - retention_days * DAY_MS
    with Transaction(conn) as c:
        readings = c.execute(
            "DELETE FROM readings WHERE received_at_ms < ? AND seq < (SELECT p.last_seq FROM progress p "
            "WHERE p.meter_id = readings.meter_id) AND (status = 'held' OR seq <= COALESCE((SELECT s.last_seq "
            "FROM plan_state s WHERE s.meter_id = readings.meter_id), -1))", (cut,)).rowcount
        c.execute("INSERT INTO outbox_pruned SELECT meter_id, COUNT(*) FROM outbox WHERE status = ? AND "
                  "updated_at_ms < ? GROUP BY meter_id ON CONFLICT (meter_id) DO UPDATE SET "
                  "confirmed = outbox_pruned.confirmed + excluded.confirmed", (OutboxStatus.CONFIRMED.value, cut))
        outbox = c.execute("DELETE FROM outbox WHERE status IN (?,?,?) AND updated_at_ms < ?",
                           (*_DECIDED, cut)).rowcount
        rejections = c.execute("DELETE FROM rejections WHERE received_at_ms < ?", (cut,)).rowcount
        gaps = c.execute("DELETE FROM gaps WHERE detected_at_ms < ?", (cut,)).rowcount
        c.execute("DELETE FROM quarantine_dropped WHERE hour_ms < ?", (cut,))
        http = c.execute(
            "DELETE FROM http_ingest WHERE received_at_ms < ? AND seq < (SELECT m.last_seq FROM http_meters m "
            "WHERE m.meter_id = http_ingest.meter_id) AND seq <= COALESCE((SELECT s.last_seq FROM http_plan_state s "
            "WHERE s.meter_id = http_ingest.meter_id), -1)", (cut,)).rowcount
        http += c.execute("DELETE FROM http_readings WHERE received_at_ms < ?", (cut,)).rowcount
    return Pruned(readings, outbox, rejections, gaps, http)
