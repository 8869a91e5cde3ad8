"""SQLite store-and-forward of signed readings.

Durability order: a signed reading is committed here before anything publishes it, and deleted only when
a gateway ack (verified by the publisher with the gateway key) covers its seq. The MQTT client's memory
is never the store.

Choices, with reasons:
- WAL + synchronous=FULL. In WAL mode NORMAL may roll back the last transactions on power loss; those
  readings may already have been published and their seqs would then be allocated again to different
  readings, breaking "a seq is never reused". FULL fsyncs the WAL on every commit; the cost is paid once
  per *batch* because readings are grouped into one transaction (flush()), which also spares SD cards.
- One writer connection per process, busy_timeout so a concurrent reader (status, tests) never makes a
  write fail with SQLITE_BUSY.
- Seq allocation is persisted in its own table (`seqs.next_seq`), written in the same transaction as the
  readings, so deleting acked readings never lets a seq be reused. A seq allocated but not yet committed
  when the process dies was never published, so handing it out again after restart creates no duplicate.
- "Sent" state lives in memory only (no SD write per publish): after a restart everything unacked is
  simply re-sent and the gateway dedupes by (meter_id, seq).
- Acks are applied in memory at once (counts, fetch, the publisher's window) and written lazily: the DELETE of
  acked rows and the new acked_seq ride in the next flush() transaction instead of one transaction per ack
  (per meter, per batch: 71% of the WAL frames at 4 meters x 1 s before). A power cut between an ack and the
  next flush only means those readings are sent once more and the gateway drops them as duplicates; the order
  "committed before published" is untouched, and an ack never makes a reading durable anywhere but the gateway.
- Bounded by max_readings. drop_oldest deletes the oldest unacked readings (a visible seq gap at the
  gateway); stop_reading refuses new readings until acks free space (no energy is lost: counters are
  cumulative, only time resolution). Either way it is logged, counted (persisted) and recorded in `events`.

What lives where: this module is the Store; agent.store_schema opens the SQLite file (schema, pragmas) and maps
its failures to StoreError / StoreCorruptError; agent.store_recovery opens the store at start and moves a corrupt
file aside (open_or_replace).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Concatenate, Literal, NoReturn, ParamSpec, TypeVar

from agent.store_schema import STORE_FAILURES, StoreError, Transaction, open_store_db, store_error
from protocol.canonical import decode_ack
from protocol.errors import ProtocolError
from protocol.reading import SignedReading
from protocol.signing import VerifyKey
from protocol.wire import STORED_INT_MAX

log = logging.getLogger(__name__)

# Keep the event log bounded: it is a diagnostic trail, not a store.
MAX_EVENTS = 10_000
# Readings waiting in memory for a commit that keeps failing (disk full): beyond this, reading stops rather
# than growing memory without bound. 10,000 = ~17 min of 4 meters at 1 s; far above one normal flush.
MAX_PENDING = 10_000
# Rejected acks are counted always, but written to the event log at most once per reason per minute.
REJECT_RECORD_INTERVAL_S = 60.0


# What a SQLite INTEGER column holds (signed 64-bit); the wire's u64 values beyond it are refused before storing.
SQLITE_INT_MAX = STORED_INT_MAX
_P = ParamSpec("_P")
_R = TypeVar("_R")


def _store_errors(what: str) -> Callable[[Callable[Concatenate[Store, _P], _R]], Callable[Concatenate[Store, _P], _R]]:
    """Every failure of the wrapped Store method is a StoreError naming the store and `what` (a corrupt page is
    a StoreCorruptError), never a raw sqlite3 error or OverflowError."""
    def wrap(fn: Callable[Concatenate[Store, _P], _R]) -> Callable[Concatenate[Store, _P], _R]:
        @functools.wraps(fn)
        def guarded(self: Store, *args: _P.args, **kwargs: _P.kwargs) -> _R:
            try:
                return fn(self, *args, **kwargs)
            except STORE_FAILURES as exc:
                raise store_error(f"{self.path}: {what}", exc) from exc
        return guarded
    return wrap


class StoreFullError(StoreError):
    """overflow = stop_reading and the store holds max_readings."""


class AckRejectedError(Exception):
    """An ack message that deletes nothing: malformed, forged (bad signature), or naming seqs we never made."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class StoredReading:
    meter_id: str
    seq: int
    read_at_ms: int
    payload: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class LastGood:
    import_wh: int
    export_wh: int
    read_at_ms: int


class Store:
    def __init__(
        self,
        path: Path,
        *,
        max_readings: int,
        overflow: Literal["drop_oldest", "stop_reading"] = "drop_oldest",
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.path, self.max_readings, self.overflow, self._wall_ms = Path(path), max_readings, overflow, wall_ms
        self._db = open_store_db(self.path)
        self._ack_dirty: set[str] = set()  # meters whose ack is applied in memory, not yet on disk
        try:
            self._next = dict(self._db.execute("SELECT meter_id, next_seq FROM seqs").fetchall())
            self._acked = dict(self._db.execute("SELECT meter_id, acked_seq FROM seqs").fetchall())
            self._recount()
        except STORE_FAILURES as exc:
            self._db.close()
            raise store_error(f"{self.path}: cannot open store", exc) from exc
        self._pending: list[SignedReading] = []
        self._dirty_seqs: set[str] = set()
        self._pending_good: dict[str, LastGood] = {}
        self._pending_reset_done: set[str] = set()
        self.rejected: dict[str, int] = {}  # ack rejections by reason (since start)
        self._reject_recorded: dict[str, float] = {}

    def _recount(self) -> None:
        """Per-meter counts of unacked rows, kept in memory afterwards so /health and /metrics never scan the
        table. Rows an ack covered but the next flush has not deleted yet are not counted."""
        self._per_meter: dict[str, int] = {
            m: n for m, n in self._db.execute("SELECT meter_id, COUNT(*) FROM readings GROUP BY meter_id")
        }
        for m in self._ack_dirty:
            self._per_meter[m] = self._per_meter.get(m, 0) - self._covered(m, 0, self._acked[m])
        self._count = sum(self._per_meter.values())

    def _covered(self, meter_id: str, after_seq: int, upto_seq: int) -> int:
        """Stored rows of meter_id with after_seq < seq <= upto_seq (an index range count, no table scan)."""
        row = self._db.execute("SELECT COUNT(*) FROM readings WHERE meter_id = ? AND seq > ? AND seq <= ?",
                               (meter_id, after_seq, upto_seq)).fetchone()
        return int(row[0])

    # -- writing --------------------------------------------------------------------------------

    def accepting(self) -> bool:
        """False when overflow = stop_reading and the store is full, or when commits keep failing (disk full,
        I/O error) and MAX_PENDING readings wait in memory: the caller must not read/sign."""
        if len(self._pending) >= MAX_PENDING:
            return False
        return self.overflow != "stop_reading" or self._count + len(self._pending) < self.max_readings

    def allocate_seq(self, meter_id: str) -> int:
        """Next seq for meter_id, strictly increasing; persisted with the next flush()."""
        if not self.accepting():
            with contextlib.suppress(StoreError), self._tx():  # the refusal matters, not counting it
                self._bump("refused_full", 1)
            raise StoreFullError(f"store holds {self._count} readings + {len(self._pending)} uncommitted "
                                 f"(max {self.max_readings}, overflow {self.overflow}, max pending {MAX_PENDING})")
        seq = self._next.get(meter_id, 1)
        self._next[meter_id] = seq + 1
        self._dirty_seqs.add(meter_id)
        return seq

    def append(self, signed: SignedReading, *, good: LastGood | None = None, clears_reset: bool = False) -> None:
        """Queue a signed reading for the next flush(). `good`: new last-good counters for the glitch filter;
        `clears_reset`: this reading carries COUNTER_RESET, so the pending reset request is done."""
        r = signed.reading
        if r.seq >= self._next.get(r.meter_id, 1):
            raise StoreError(f"{r.meter_id} seq {r.seq} was not allocated by this store")
        ints = {"seq": r.seq, "read_at_ms": r.read_at_ms}
        if good is not None:
            ints |= {"last good import_wh": good.import_wh, "last good export_wh": good.export_wh,
                     "last good read_at_ms": good.read_at_ms}
        beyond = [f"{k}={v}" for k, v in ints.items() if not 0 <= v <= SQLITE_INT_MAX]
        if beyond:  # refused here: queued, it would fail every later commit of every meter
            raise StoreError(f"{r.meter_id} seq {r.seq}: not stored, {', '.join(beyond)} beyond 0..{SQLITE_INT_MAX}")
        self._pending.append(signed)
        if good is not None:
            self._pending_good[r.meter_id] = good
        if clears_reset:
            self._pending_reset_done.add(r.meter_id)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def flush(self) -> int:
        """Commit queued readings and the deletes of acked ones in one transaction; apply the overflow policy.
        Returns readings committed."""
        if not self._pending and not self._dirty_seqs and not self._ack_dirty:
            return 0
        rows = [
            (s.reading.meter_id, s.reading.seq, s.reading.read_at_ms, s.payload, s.signature) for s in self._pending
        ]
        acked = [(m, self._acked[m]) for m in self._ack_dirty]
        try:
            with self._tx():
                self._db.executemany("DELETE FROM readings WHERE meter_id = ? AND seq <= ?", acked)
                self._db.executemany("UPDATE seqs SET acked_seq = MAX(acked_seq, ?) WHERE meter_id = ?",
                                     [(a, m) for m, a in acked])
                self._db.executemany(
                    "INSERT INTO readings (meter_id, seq, read_at_ms, payload, signature) VALUES (?,?,?,?,?)", rows
                )
                self._db.executemany(
                    "INSERT INTO seqs (meter_id, next_seq) VALUES (?, ?) ON CONFLICT(meter_id) "
                    "DO UPDATE SET next_seq = MAX(next_seq, excluded.next_seq)",
                    [(m, self._next[m]) for m in self._dirty_seqs],
                )
                self._db.executemany(
                    "INSERT OR REPLACE INTO meter_state VALUES (?,?,?,?)",
                    [(m, g.import_wh, g.export_wh, g.read_at_ms) for m, g in self._pending_good.items()],
                )
                self._db.executemany("DELETE FROM counter_resets WHERE meter_id = ?",
                                     [(m,) for m in self._pending_reset_done])
                self._count += len(rows)
                for s in self._pending:
                    m = s.reading.meter_id
                    self._per_meter[m] = self._per_meter.get(m, 0) + 1
                dropped = self._apply_overflow()
        except (*STORE_FAILURES, StoreError) as exc:  # type: ignore[misc]  # mypy: no starred except tuple
            with contextlib.suppress(*STORE_FAILURES):  # the commit failed; counts are re-read if the file allows
                self._recount()
            raise store_error(f"{self.path}: cannot commit {len(rows)} readings", exc) from exc
        self._pending.clear()
        self._ack_dirty.clear()
        self._dirty_seqs.clear()
        self._pending_good.clear()
        self._pending_reset_done.clear()
        if dropped:
            log.warning("store full (%d readings): dropped %d oldest unacked readings", self.max_readings, dropped)
        return len(rows)

    def _apply_overflow(self) -> int:
        excess = self._count - self.max_readings
        if excess <= 0 or self.overflow != "drop_oldest":
            return 0
        victims = self._db.execute(
            "SELECT meter_id, MIN(seq), MAX(seq), COUNT(*) FROM "
            "(SELECT meter_id, seq FROM readings ORDER BY id LIMIT ?) GROUP BY meter_id",
            (excess,),
        ).fetchall()
        self._db.execute("DELETE FROM readings WHERE id IN (SELECT id FROM readings ORDER BY id LIMIT ?)", (excess,))
        for meter_id, lo, hi, n in victims:
            self._per_meter[meter_id] -= n
            self._event("overflow_drop_oldest", meter_id, f"dropped {n} unacked readings seq {lo}..{hi}")
        self._count -= excess
        self._bump("dropped_overflow", excess)
        return excess

    def _tx(self) -> Transaction:
        return Transaction(self._db)

    def _bump(self, name: str, n: int) -> None:
        self._db.execute(
            "INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, n),
        )

    def _event(self, kind: str, meter_id: str | None, detail: str) -> None:
        self._db.execute(
            "INSERT INTO events (at_ms, kind, meter_id, detail) VALUES (?,?,?,?)",
            (self._wall_ms(), kind, meter_id, detail),
        )
        self._db.execute("DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - ?", (MAX_EVENTS,))

    @_store_errors("recording an event")
    def record_event(self, kind: str, meter_id: str | None, detail: str, *, counter: str | None = None) -> None:
        """Durably record something an operator must be able to find later (and count it)."""
        with self._tx():
            self._event(kind, meter_id, detail)
            if counter:
                self._bump(counter, 1)

    # -- acks -----------------------------------------------------------------------------------

    @_store_errors("applying an ack")
    def apply_ack(self, meter_id: str, message: bytes, gateway_key: VerifyKey) -> int:
        """Verify a gateway ack received on meter_id's ack topic and delete what it covers.

        Raises AckRejectedError (recorded as an event, counted) for anything but a valid ack from the
        gateway key for this meter. A valid ack beyond what this store allocated resyncs the seqs (_resync).
        Returns rows deleted.
        """
        try:
            ack = decode_ack(message, gateway_key)
        except ProtocolError as exc:
            self._reject(meter_id, f"ack_{exc.reason}", f"ack rejected: {exc}")
        if ack.meter_id != meter_id:
            self._reject(meter_id, "ack_wrong_meter", f"ack for {ack.meter_id!r} arrived on {meter_id!r}'s topic")
        if ack.acked_seq > self.last_allocated(meter_id):
            return self._resync(meter_id, ack.acked_seq)
        return self.ack(meter_id, ack.acked_seq)

    def _resync(self, meter_id: str, acked_seq: int) -> int:
        """A genuine gateway ack covers seqs this store never allocated: the gateway accepted readings signed
        with this meter's key up to acked_seq in an earlier life of the store (state dir lost, SD card
        re-imaged). Our seqs at or below it can never be accepted (the gateway drops them as duplicates and
        keeps acking acked_seq), so without this the store would never drain again. Continue after acked_seq,
        drop what the gateway will never take, and record it. Returns readings dropped."""
        stale = [s for s in self._pending if s.reading.meter_id == meter_id and s.reading.seq <= acked_seq]
        detail = (f"gateway acked seq {acked_seq} but this store allocated only up to "
                  f"{self.last_allocated(meter_id)} (store lost or replaced?): seqs continue at {acked_seq + 1}")
        with self._tx():
            live = self._covered(meter_id, self._acked.get(meter_id, 0), acked_seq)  # not yet acked in memory
            self._db.execute("DELETE FROM readings WHERE meter_id = ? AND seq <= ?", (meter_id, acked_seq))
            self._db.execute(
                "INSERT INTO seqs (meter_id, next_seq, acked_seq) VALUES (?, ?, ?) ON CONFLICT(meter_id) DO UPDATE "
                "SET next_seq = MAX(next_seq, excluded.next_seq), acked_seq = MAX(acked_seq, excluded.acked_seq)",
                (meter_id, acked_seq + 1, acked_seq),
            )
            self._event("seq_resync", meter_id, f"{detail}; dropped {live + len(stale)} unpublishable")
            self._bump("seq_resyncs", 1)
        log.warning("%s: %s", meter_id, detail)
        self._pending = [s for s in self._pending if s not in stale]
        self._next[meter_id] = acked_seq + 1
        self._acked[meter_id] = acked_seq
        self._count -= live
        self._per_meter[meter_id] = self._per_meter.get(meter_id, 0) - live
        return live + len(stale)

    def _reject(self, meter_id: str, reason: str, detail: str) -> NoReturn:
        """Count every rejection; write it to disk at most once per reason per REJECT_RECORD_INTERVAL_S, so a
        flood of forged acks cannot wear out the SD card."""
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        now = time.monotonic()
        if now - self._reject_recorded.get(reason, -REJECT_RECORD_INTERVAL_S) >= REJECT_RECORD_INTERVAL_S:
            log.warning("%s: %s (%d so far)", meter_id, detail, self.rejected[reason])
            self._reject_recorded[reason] = now
            self.record_event(reason, meter_id, f"{detail} ({self.rejected[reason]} so far)")
        raise AckRejectedError(reason, detail)

    @_store_errors("applying an ack")
    def ack(self, meter_id: str, acked_seq: int) -> int:
        """meter_id's readings with seq <= acked_seq are acked (the ack was verified): gone from counts and
        fetch() at once, deleted on disk by the next flush(). Returns the stored readings it covered."""
        old = self._acked.get(meter_id, 0)
        if acked_seq <= old:
            return 0  # repeated or stale ack: nothing to do, no write
        covered = self._covered(meter_id, old, acked_seq)
        self._acked[meter_id] = acked_seq
        self._ack_dirty.add(meter_id)
        self._count -= covered
        self._per_meter[meter_id] = self._per_meter.get(meter_id, 0) - covered
        return covered

    def acked_seq(self, meter_id: str) -> int:
        return self._acked.get(meter_id, 0)

    def last_allocated(self, meter_id: str) -> int:
        return self._next.get(meter_id, 1) - 1

    # -- reading --------------------------------------------------------------------------------

    @_store_errors("reading readings")
    def fetch(self, meter_id: str, after_seq: int, limit: int) -> list[StoredReading]:
        """Committed, unacked readings of meter_id with seq > after_seq, in seq order."""
        rows = self._db.execute(
            "SELECT seq, read_at_ms, payload, signature FROM readings WHERE meter_id = ? AND seq > ? "
            "ORDER BY seq LIMIT ?",
            (meter_id, max(after_seq, self._acked.get(meter_id, 0)), limit),
        ).fetchall()
        return [StoredReading(meter_id, s, r, p, g) for s, r, p, g in rows]

    @_store_errors("reading the backlog")
    def backlog(self) -> dict[str, tuple[int, int, int]]:
        """meter_id -> (count, min seq, max seq) of committed, unacked readings (index lookups, no scan)."""
        out = {}
        for m, n in self._per_meter.items():
            if n > 0:
                acked = self._acked.get(m, 0)
                lo = self._db.execute("SELECT MIN(seq) FROM readings WHERE meter_id = ? AND seq > ?",
                                      (m, acked)).fetchone()[0]
                hi = self._db.execute("SELECT MAX(seq) FROM readings WHERE meter_id = ?", (m,)).fetchone()[0]
                out[m] = (n, lo, hi)
        return out

    def per_meter(self) -> dict[str, int]:
        return {m: n for m, n in self._per_meter.items() if n > 0}

    def count(self) -> int:
        return self._count

    @_store_errors("reading the oldest reading")
    def oldest_read_at_ms(self) -> int | None:
        """read_at of the oldest unacked stored reading by arrival (rowid order; one index lookup per meter)."""
        if not self._ack_dirty:
            row = self._db.execute("SELECT read_at_ms FROM readings ORDER BY id LIMIT 1").fetchone()
            return row[0] if row else None
        firsts = [
            self._db.execute("SELECT id, read_at_ms FROM readings WHERE meter_id = ? AND seq > ? ORDER BY seq "
                             "LIMIT 1", (m, self._acked.get(m, 0))).fetchone()
            for m, n in self._per_meter.items() if n > 0
        ]
        found = [f for f in firsts if f is not None]
        return min(found)[1] if found else None

    @_store_errors("reading counters")
    def counters(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT name, value FROM counters").fetchall())

    @_store_errors("reading events")
    def events(self, limit: int = 100) -> list[tuple[int, str, str | None, str]]:
        return self._db.execute(
            "SELECT at_ms, kind, meter_id, detail FROM events ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()

    @_store_errors("recording a counter reset")
    def request_counter_reset(self, meter_id: str, reason: str) -> None:
        """A meter was replaced or reset (provisioning): forget its last good counters; the agent's next
        reading of it carries Quality.COUNTER_RESET and starts a new baseline. Takes effect at agent start."""
        with self._tx():
            self._db.execute("INSERT OR REPLACE INTO counter_resets VALUES (?,?,?)",
                             (meter_id, self._wall_ms(), reason))
            self._db.execute("DELETE FROM meter_state WHERE meter_id = ?", (meter_id,))
            self._event("counter_reset_requested", meter_id, reason)

    @_store_errors("reading counter resets")
    def pending_counter_resets(self) -> set[str]:
        return {m for (m,) in self._db.execute("SELECT meter_id FROM counter_resets")}

    @_store_errors("reading last good counters")
    def last_good(self) -> dict[str, LastGood]:
        rows = self._db.execute("SELECT meter_id, import_wh, export_wh, read_at_ms FROM meter_state")
        return {m: LastGood(i, e, t) for m, i, e, t in rows}

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._db.close()
