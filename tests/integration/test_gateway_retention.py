"""Retention over a long simulated run: a real SQLite gateway store gets a year of readings (simulated clock),
planned by the real planner, confirmed; it is pruned once a simulated day. The live database size stays
bounded, a pending interval is never pruned however old, and the reconciliation count survives pruning."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.intake.checks import Progress
from gateway.store.outbox import OutboxStatus
from gateway.store.retention import DAY_MS, prune
from gateway.store.sqlite import BatchWrite, ReadingRow, Store
from gateway.submit.intervals import OracleLimits, plan
from protocol import MeterRole

METERS = [f"meter-{i:02d}" for i in range(8)]
READ_EVERY_MS = 30 * 60_000  # a reading every 30 simulated minutes
EPOCH_S = 3600
DAYS = 120
RETENTION_DAYS = 10
T0_MS = 1_780_000_000_000


def _live_bytes(store: Store) -> int:
    """Bytes of the pages in use (the file keeps freed pages for reuse; those are not growth)."""
    c = store.conn
    pages = c.execute("PRAGMA page_count").fetchone()[0] - c.execute("PRAGMA freelist_count").fetchone()[0]
    return int(pages * c.execute("PRAGMA page_size").fetchone()[0])


def _run(store: Store, days: int, *, prune_daily: bool, stuck_meter: str | None = None) -> dict[str, object]:
    seq = dict.fromkeys(METERS, 0)
    wh = dict.fromkeys(METERS, 1000)
    confirmed = dict.fromkeys(METERS, 0)
    sizes: list[int] = []
    per_day = DAY_MS // READ_EVERY_MS
    for day in range(days):
        day_ms = T0_MS + day * DAY_MS
        for k in range(per_day):
            now = day_ms + k * READ_EVERY_MS
            rows, progress = [], {}
            for m in METERS:
                seq[m] += 1
                wh[m] += 250
                rows.append(ReadingRow(m, seq[m], now, wh[m], 0, 0, True, None, "accepted", None, None, False,
                                       b"p" * 180, b"s" * 64, now))
                progress[m] = Progress(seq[m], now, wh[m], 0)
            with store.transaction():
                store.write_batch(BatchWrite(rows, [], [], progress, {m: {"accepted": 1} for m in METERS}, now))
        now = day_ms + DAY_MS - 1
        for m in store.meters_to_plan():
            state, points = store.plan_inputs(m)
            new_state, planned = plan(m, MeterRole.CONSUMPTION, state, points, OracleLimits(), EPOCH_S)
            store.save_plan(m, new_state, planned, 1, now)
        due = store.outbox_due(now, 100_000)
        done = [r for r in due if not (r.meter_id == stuck_meter and day > 0)]  # the stuck meter's stay pending
        for r in done:
            confirmed[r.meter_id] += 1
        store.set_outbox([r.key for r in done], OutboxStatus.CONFIRMED, now)
        if prune_daily:
            prune(store.conn, now, RETENTION_DAYS)
        sizes.append(_live_bytes(store))
    return {"sizes": sizes, "confirmed": confirmed, "seq": seq, "end_ms": T0_MS + days * DAY_MS}


def test_database_size_bounded_over_a_long_run(tmp_path: Path) -> None:
    store = Store(tmp_path / "gateway.sqlite")
    out = _run(store, DAYS, prune_daily=True)
    sizes: list[int] = out["sizes"]  # type: ignore[assignment]
    # once the retention has filled, the live size is flat: the last 100 days move it by < 10 %
    steady = sizes[2 * RETENTION_DAYS]
    assert max(sizes[2 * RETENTION_DAYS:]) <= steady * 1.10, (steady, max(sizes))
    # decided rows older than the retention are gone, newer ones stay
    cut = out["end_ms"] - RETENTION_DAYS * DAY_MS  # type: ignore[operator]
    c = store.conn
    assert c.execute("SELECT COUNT(*) FROM readings WHERE received_at_ms < ? - ?", (cut, DAY_MS)).fetchone()[0] == 0
    assert c.execute("SELECT COUNT(*) FROM outbox WHERE updated_at_ms < ? - ?", (cut, DAY_MS)).fetchone()[0] == 0
    assert c.execute("SELECT COUNT(*) FROM readings WHERE received_at_ms >= ?", (cut,)).fetchone()[0] \
        == len(METERS) * 48 * RETENTION_DAYS
    # the reconciliation's count of confirmed intervals includes the pruned ones, exactly
    confirmed: dict[str, int] = out["confirmed"]  # type: ignore[assignment]
    for m in METERS:
        assert store.confirmed_count(m) == confirmed[m] == DAYS * 24 - 1, m
    # each meter's newest reading is kept (progress and the planner continue from it)
    seq: dict[str, int] = out["seq"]  # type: ignore[assignment]
    for m in METERS:
        assert store.handled_payload(m, seq[m]) is not None
    store.close()


def test_pending_intervals_are_never_pruned(tmp_path: Path) -> None:
    """A meter whose intervals never get confirmed (chain refusing, oracle inactive): its pending rows stay,
    however old; its readings, already planned, are pruned like everyone's."""
    store = Store(tmp_path / "gateway.sqlite")
    stuck = METERS[0]
    days = 3 * RETENTION_DAYS
    out = _run(store, days, prune_daily=True, stuck_meter=stuck)
    pending = store.outbox_rows(stuck, OutboxStatus.PENDING, 100_000)
    assert len(pending) == (days - 1) * 24  # every interval after day 0, the oldest 29 days old
    assert min(r.created_at_ms for r in pending) < T0_MS + 2 * DAY_MS
    confirmed: dict[str, int] = out["confirmed"]  # type: ignore[assignment]
    assert store.confirmed_count(stuck) == confirmed[stuck] == 23
    cut = out["end_ms"] - RETENTION_DAYS * DAY_MS  # type: ignore[operator]
    assert store.conn.execute("SELECT COUNT(*) FROM readings WHERE meter_id = ? AND received_at_ms < ? - ?",
                              (stuck, cut, DAY_MS)).fetchone()[0] == 0
    store.close()


def test_without_pruning_the_same_run_grows(tmp_path: Path) -> None:
    """The reference: the same 40 days unpruned grow linearly, so the bound above is pruning's doing."""
    store = Store(tmp_path / "gateway.sqlite")
    sizes: list[int] = _run(store, 4 * RETENTION_DAYS, prune_daily=False)["sizes"]  # type: ignore[assignment]
    assert sizes[-1] > 3 * sizes[RETENTION_DAYS - 1]
    store.close()


def test_retention_refuses_zero_days(tmp_path: Path) -> None:
    store = Store(tmp_path / "gateway.sqlite")
    with pytest.raises(ValueError, match="retention_days must be >= 1"):
        prune(store.conn, T0_MS, 0)
    store.close()
