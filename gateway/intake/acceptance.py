"""Decides, for a group of received batch messages, what is accepted, held, dropped or quarantined.

Transport-free (MQTT lives in intake.py): `process()` takes (topic, message bytes) pairs and returns
the ack seq per meter AFTER everything is committed. Steps:
  1. decode the batch framing (framing errors quarantine the whole message);
  2. per-meter ingress token bucket, envelope checks against the registry snapshot (cheap; before any crypto);
  3. Ed25519 verification of the survivors in a pool of worker PROCESSES (`verify_pool`): PyNaCl releases
     the GIL inside libsodium, but its Python wrapper (~10 us per call) does not, so threads contend with
     the intake thread; processes scale with the cores. A chunk is sent as soon as its messages are decoded,
     and the next group is decoded while this one is committed (prepare/finish);
  4. one SQLite transaction: progress re-read (another gateway process of the share group may have
     moved it), envelope + progress checks in seq order, readings/rejections/gaps/progress written; a
     reading arriving late inside a recorded gap is checked against its neighbours and stored.
The ack seq of a meter is its highest authenticated seq: all at or below it is stored, quarantined or a recorded
gap, so the agent may delete it. A broken worker pool (a worker killed): verified inline, slower, never wrong.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import BrokenExecutor, Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass, field

from gateway.health import held_reason
from gateway.intake.checks import (
    ACCEPTED,
    NO_PROGRESS,
    Limits,
    Neighbors,
    Outcome,
    Progress,
    Reason,
    TokenBucket,
    Verdict,
    advance,
    check_envelope,
    check_late,
    check_progress,
    verify_signatures,
)
from gateway.metrics import Metrics
from gateway.registry import Meter, MeterStatus, Registry
from gateway.store.sqlite import BatchWrite, ReadingRow, RejectionRow, Store, quarantine_cost
from protocol import BatchItem, InvalidFieldError, ProtocolError, Reading, decode_batch
from protocol.canonical import reading_head
from protocol.topics import PREFIX, parse_meter_topic

log = logging.getLogger(__name__)

# Readings per verify task (at least; sent as soon as the decoded messages reach it): a process-pool task
# costs ~0.2 ms of IPC in this process and more in the worker, a verify ~45 us; 500 (one full agent batch)
# keeps that near 1 % while a 4000-reading group still spreads over 8 workers.
DEFAULT_VERIFY_CHUNK = 500
DEFAULT_INLINE_MAX = 100  # a group with fewer signatures is verified inline: the IPC would cost more than it saves
# Unauthenticated rejections (forged, unknown meter, malformed) are stored up to this rate; beyond it they
# are only counted, so a publisher flooding made-up topics cannot fill the disk (the broker's ACL is the
# first line of defence).
DEFAULT_FLOOD_RATE_PER_S = 200.0
DEFAULT_FLOOD_BURST = 20_000
# ... and up to this many BYTES (quarantine_cost: a bounded prefix of the message, its length and sha256, the
# detail): sustained 4 KiB/s is at most ~350 MB a day of a publisher's garbage; a burst absorbs an incident.
DEFAULT_QUARANTINE_BYTES_PER_S = 4096.0
DEFAULT_QUARANTINE_BURST_BYTES = 8 * 1024 * 1024
BAD_SIGNATURE = Verdict(Outcome.REJECT, Reason.BAD_SIGNATURE, "signature does not verify against the registered key")
INGRESS_RATE = Verdict(Outcome.REJECT, Reason.INGRESS_RATE, "per-meter ingress rate exceeded")


def verify_pool(workers: int) -> ProcessPoolExecutor:
    """Worker processes for signature checks ("spawn": safe with paho's threads; costs ~0.3 s once)."""
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    for f in [pool.submit(verify_signatures, []) for _ in range(workers)]:
        f.result()  # start the workers now, not on the first reading
    return pool


@dataclass
class IngressLimit:
    rate_per_s: float = 1000.0
    burst: int = 10000
    buckets: dict[str, TokenBucket] = field(default_factory=dict)

    def allow(self, meter_id: str, now_s: float, n: int = 1) -> int:
        """How many of `n` readings arriving now may pass (the first ones; the same as asking one at a time)."""
        b = self.buckets.get(meter_id) or TokenBucket(float(self.burst), now_s)
        b, _ = b.take(0, now_s, self.rate_per_s, self.burst)  # refill
        passed = min(n, int(b.tokens))
        self.buckets[meter_id], _ = b.take(passed, now_s, self.rate_per_s, self.burst)
        return passed


class QuarantineBudget:
    """What unauthenticated rejections may write: rows and bytes per second (token buckets). Beyond it a
    rejection is only counted (metrics + the store's quarantine_dropped hourly counter)."""

    def __init__(self, bytes_per_s: float, burst_bytes: int, now_s: float) -> None:
        self.bytes_per_s, self.burst_bytes = bytes_per_s, burst_bytes
        self._rows = TokenBucket(float(DEFAULT_FLOOD_BURST), now_s)
        self._bytes = TokenBucket(float(burst_bytes), now_s)

    def allows(self, nbytes: int, now_s: float) -> bool:
        rows, ok_rows = self._rows.take(1, now_s, DEFAULT_FLOOD_RATE_PER_S, DEFAULT_FLOOD_BURST)
        size, ok_bytes = self._bytes.take(nbytes, now_s, self.bytes_per_s, self.burst_bytes)
        if ok_rows and ok_bytes:
            self._rows, self._bytes = rows, size
            return True
        return False


@dataclass
class Prepared:
    """A group of messages decoded and envelope-checked, its signatures being verified."""

    items: list[_Item]
    meters: dict[str, Meter]
    now_ms: int
    todo: list[tuple[_Item, Meter]]
    futures: list[Future[list[bool]]] | None
    started: float


@dataclass(slots=True)
class _Item:
    topic_meter_id: str | None
    item: BatchItem | None
    raw: bytes  # the whole message when the framing failed
    verdict: Verdict | None = None  # decided before the transaction (envelope / signature)
    # A reading refused for a field value (invalid_field: a counter beyond 2^63-1) whose head names this topic's
    # registered meter: its seq, verified against the meter's key like any reading; None otherwise.
    head_seq: int | None = None
    head_verified: bool = False


class Acceptance:
    def __init__(self, store: Store, registry: Registry, limits: Limits, ingress: IngressLimit, metrics: Metrics,
                 pool: Executor | None = None, *, topic_prefix: str = PREFIX,
                 clock: Callable[[], float] = time.time,
                 quarantine_bytes_per_s: float = DEFAULT_QUARANTINE_BYTES_PER_S,
                 quarantine_burst_bytes: int = DEFAULT_QUARANTINE_BURST_BYTES) -> None:
        self.store, self.registry, self.limits, self.ingress = store, registry, limits, ingress
        self.metrics, self.pool, self.prefix, self.clock = metrics, pool, topic_prefix, clock
        self._meters: dict[str, Meter] = {}
        self._registry_version: tuple[int, int] | None = None
        self.budget = QuarantineBudget(quarantine_bytes_per_s, quarantine_burst_bytes, clock())

    def quarantine_failed(self, topic: str, message: bytes, detail: str) -> None:
        """Store a message whose processing raised (reason internal_error, `detail` = the error), with the
        meter_id and seq it names where they can be read; unauthenticated, so within the quarantine budget."""
        try:
            mid: str | None = parse_meter_topic(topic, "readings", self.prefix)
        except ProtocolError:
            mid = None
        meter_id, seq = None, None
        try:
            readings = [it.signed.reading for it in decode_batch(message) if it.signed is not None]
        except ProtocolError:
            readings = []
        if readings:
            meter_id, seq = readings[0].meter_id, readings[0].seq
            detail += f" (batch of {len(readings)} readings, seq {seq}..{max(r.seq for r in readings)})"
        now_ms = int(self.clock() * 1000)
        row = RejectionRow(now_ms, "mqtt", mid, meter_id, seq, "internal_error", detail, False, message, b"")
        if self.budget.allows(quarantine_cost(row), now_ms / 1000):
            self.store.write_rejections([row], now_ms)
        else:
            self.store.write_rejections([], now_ms, dropped=(1, len(message)))
            self.metrics.not_stored.inc()
            self.metrics.quarantine_bytes_not_stored.inc(len(message))

    def meters(self) -> dict[str, Meter]:
        v = self.registry.data_version()
        if v != self._registry_version:
            self._meters, self._registry_version = self.registry.snapshot(), v
        return self._meters

    def process(self, messages: Sequence[tuple[str, bytes]]) -> dict[str, int]:
        return self.finish(self.prepare(messages))

    def prepare(self, messages: Sequence[tuple[str, bytes]]) -> Prepared:
        """Decode and envelope-check, and START verification in the pool as soon as a chunk is ready (not
        awaited): the caller can finish the previous group while these signatures are checked (pipelining)."""
        now_s = self.clock()
        meters = self.meters()
        items: list[_Item] = []
        todo: list[tuple[_Item, Meter]] = []
        futures: list[Future[list[bool]]] | None = []
        sent = 0
        for topic, msg in messages:
            split = self._split(topic, msg)
            items += split
            self._envelope(split, meters, now_s, todo)
            if futures is not None and len(todo) - sent >= DEFAULT_VERIFY_CHUNK:
                futures, sent = self._submit(todo[sent:], futures), len(todo)
        if futures is not None and sent < len(todo):  # the rest; a small group alone is verified inline
            futures = self._submit(todo[sent:], futures) if futures or len(todo) >= DEFAULT_INLINE_MAX else None
        self.metrics.received.labels("mqtt").inc(len(items))
        return Prepared(items, meters, int(now_s * 1000), todo, futures or None, time.perf_counter())

    def _envelope(self, split: list[_Item], meters: dict[str, Meter], now_s: float,
                  todo: list[tuple[_Item, Meter]]) -> None:
        """Ingress cap and envelope checks of one message's items; those to verify are added to `todo`."""
        mid = split[0].topic_meter_id
        if split[0].item is None or mid is None:
            return  # framing or topic refused: verdict set
        meter = meters.get(mid)
        # buckets only for registered meters: made-up topics add none
        passed = self.ingress.allow(mid, now_s, len(split)) if meter is not None else len(split)
        for i, it in enumerate(split):
            if i >= passed:
                it.verdict = INGRESS_RATE
            elif it.item is not None:
                it.verdict = check_envelope(it.item, mid, meter, NO_PROGRESS, None)
                if it.verdict is None and meter is not None:
                    todo.append((it, meter))
                elif (meter is not None and meter.status is MeterStatus.ACTIVE and it.item.signed is None
                      and isinstance(it.item.error, InvalidFieldError)
                      and (head := reading_head(it.item.payload)) is not None
                      and head[:2] == (mid, meter.key_id)):
                    it.head_seq = head[2]
                    todo.append((it, meter))

    def finish(self, p: Prepared) -> dict[str, int]:
        """Wait for the signatures, then decide and commit everything in one transaction."""
        results: list[bool] | None = None
        if p.futures is not None:
            try:
                results = [ok for f in p.futures for ok in f.result()]
            except BrokenExecutor:
                self._pool_broken()
        if results is None:
            results = verify_signatures(_triples(p.todo))
        for (it, _), ok in zip(p.todo, results, strict=True):
            if it.head_seq is not None:
                it.head_verified = ok  # keeps its invalid_field verdict; authenticated if ok
            else:
                it.verdict = _VERIFIED if ok else BAD_SIGNATURE
        if p.todo:
            self.metrics.verify_seconds.observe(time.perf_counter() - p.started)
        return self._commit(p.items, p.meters, p.now_ms)

    def _submit(self, todo: list[tuple[_Item, Meter]], futures: list[Future[list[bool]]]
                ) -> list[Future[list[bool]]] | None:
        """One verify task for `todo`; None = no pool (any more): verify the whole group inline."""
        if self.pool is None:
            return None
        try:
            futures.append(self.pool.submit(verify_signatures, _triples(todo)))
        except BrokenExecutor:
            self._pool_broken()
            return None
        return futures

    def _pool_broken(self) -> None:
        log.error("signature worker pool broke (a worker died); verifying inline from now on")
        self.pool = None

    def _split(self, topic: str, message: bytes) -> list[_Item]:
        try:
            mid = parse_meter_topic(topic, "readings", self.prefix)
        except ProtocolError as exc:
            return [_Item(None, None, message, Verdict(Outcome.REJECT, Reason.INVALID_FIELD, str(exc)))]
        try:
            return [_Item(mid, bi, b"") for bi in decode_batch(message)]
        except ProtocolError as exc:
            reason = exc.reason if exc.reason in Reason.__members__.values() else Reason.MALFORMED.value
            return [_Item(mid, None, message, Verdict(Outcome.REJECT, Reason(reason), f"batch: {exc}"))]

    def _commit(self, items: list[_Item], meters: dict[str, Meter], now_ms: int) -> dict[str, int]:
        t0 = time.perf_counter()
        with self.store.transaction():
            mids = {it.topic_meter_id for it in items if it.topic_meter_id}
            progress = self.store.load_progress(mids)
            w = _Writer(now_ms, self.budget.allows)
            for it in items:
                self._decide(it, meters, progress, w)
            w.count_stored()
            self.store.write_batch(BatchWrite(w.readings, w.rejections, w.gaps, w.touched(progress, meters), w.counts,
                                              now_ms, (w.not_stored, w.not_stored_bytes)))
        self.metrics.commit_seconds.observe(time.perf_counter() - t0)
        self._count(w)
        open_after = now_ms - self.limits.gap_grace_ms
        acks = {m: self.store.ack_seq(m, progress[m].last_seq, open_after) for m in w.ack if m in progress}
        return {m: seq for m, seq in acks.items() if seq > 0}

    def _decide(self, it: _Item, meters: dict[str, Meter], progress: dict[str, Progress], w: _Writer) -> None:
        mid = it.topic_meter_id
        if it.head_verified and it.head_seq is not None and it.item is not None and mid is not None:
            self._authentic_invalid(it, it.item, mid, it.head_seq, progress, w)
            return
        if it.item is None or it.item.signed is None or mid is None:
            w.reject(it, it.verdict or Verdict(Outcome.REJECT, Reason.MALFORMED, "undecodable"), False)
            return
        r = it.item.signed.reading
        meter = meters.get(mid)
        prog = progress.get(mid, NO_PROGRESS)
        verdict = it.verdict
        if (verdict is _VERIFIED or verdict is None) and meter is not None:
            if r.seq <= prog.last_seq:  # only then can progress (re-read in this transaction) change the envelope
                stored = w.payloads.get((mid, r.seq)) or self.store.handled_payload(mid, r.seq)
                verdict = check_envelope(it.item, mid, meter, prog, stored) or verdict
                if verdict is _VERIFIED and self._late(it, r, mid, w):
                    return
            if verdict is _VERIFIED:
                verdict = check_progress(r, meter, prog, w.now_ms, self.limits)
        if verdict is ACCEPTED:  # the common case, in short: stored, acked, progress moves to it
            w.readings.append(w.row(it.item, r, verdict))
            w.ack.add(mid)
            w.payloads[(mid, r.seq)] = it.item.payload
            progress[mid] = advance(prog, r, verdict)
            return
        if verdict is None or verdict is _VERIFIED:  # not verified (e.g. became known mid-batch): refuse
            verdict = Verdict(Outcome.REJECT, Reason.UNKNOWN_METER, "meter registered while the batch was in flight")
        outcome = verdict.outcome
        if outcome is Outcome.DUPLICATE:
            w.count(mid, "duplicates")
            w.ack.add(mid)
            return
        authenticated = verdict.authenticated
        if outcome is Outcome.REJECT:
            w.reject(it, verdict, authenticated)
        else:
            w.readings.append(w.row(it.item, r, verdict))
        if authenticated:
            w.ack.add(mid)
            w.payloads[(mid, r.seq)] = it.item.payload
            if verdict.gap:
                w.gaps.append((mid, verdict.gap[0], verdict.gap[1], w.now_ms))
                w.count(mid, "missing", verdict.gap[1] - verdict.gap[0] + 1)
            progress[mid] = advance(prog, r, verdict)

    def _authentic_invalid(self, it: _Item, item: BatchItem, mid: str, seq: int, progress: dict[str, Progress],
                           w: _Writer) -> None:
        """The meter's own signed reading with a field no store can hold: an authenticated invalid_field rejection.
        Its seq is acked (the agent may drop it; there is nothing to re-send) and progress moves past it."""
        prog = progress.get(mid, NO_PROGRESS)
        w.ack.add(mid)
        if (w.payloads.get((mid, seq)) or self.store.handled_payload(mid, seq)) == item.payload:
            w.count(mid, "duplicates")  # a re-send of the same bytes
            return
        verdict = Verdict(Outcome.REJECT, Reason.INVALID_FIELD, f"{item.error} (signature verified)")
        w.reject(it, verdict, True, seq=seq, meter_id=mid)
        w.payloads[(mid, seq)] = item.payload
        if seq > prog.last_seq:
            if seq > prog.last_seq + 1:
                w.gaps.append((mid, prog.last_seq + 1, seq - 1, w.now_ms))
                w.count(mid, "missing", seq - 1 - prog.last_seq)
            progress[mid] = Progress(seq, prog.last_read_at_ms, prog.last_import_wh, prog.last_export_wh)

    def _late(self, it: _Item, r: Reading, mid: str, w: _Writer) -> bool:
        """A seq inside a recorded gap: checked against its neighbours, stored at once. True if handled."""
        gap = self.store.gap_containing(mid, r.seq)
        if gap is None or it.item is None:
            return False
        verdict = check_late(r, Neighbors(*self.store.neighbors(mid, r.seq)), w.now_ms, self.limits)
        w.ack.add(mid)
        w.payloads[(mid, r.seq)] = it.item.payload
        if verdict.outcome is Outcome.REJECT:  # authenticated and quarantined: that seq is decided as well
            w.reject(it, verdict, True)
            self.store.close_gap_seq(mid, r.seq, gap)
            return True
        self.store.fill_late(w.row(it.item, r, verdict), gap)
        if verdict.outcome is Outcome.ACCEPT:
            w.late += 1
        else:
            w.late_held_reasons.append(held_reason(verdict.reason, verdict.detail))
        return True

    def _count(self, w: _Writer) -> None:
        m = self.metrics
        for reason in [r.reason for r in w.rejections] + w.counts_only:
            m.rejected.labels("mqtt", reason).inc()
        if w.not_stored:
            m.not_stored.inc(w.not_stored)
            m.quarantine_bytes_not_stored.inc(w.not_stored_bytes)
            log.warning("unauthenticated input over the quarantine budget: %d rejections (%d bytes) counted, "
                        "not stored", w.not_stored, w.not_stored_bytes)
        n_acc = sum(1 for r in w.readings if r.status == "accepted") + w.late
        m.accepted.labels("mqtt").inc(n_acc)
        held = Counter(held_reason(r.reason, r.detail) for r in w.readings if r.status == "held")
        held.update(w.late_held_reasons)
        for reason, n in held.items():
            m.held.labels(reason).inc(n)
        newest: dict[str, int] = {}
        for r in w.readings:
            if r.read_at_ms > newest.get(r.meter_id, -1):
                newest[r.meter_id] = r.read_at_ms
        for read_at_ms in newest.values():
            m.intake_lag.observe(max(0, w.now_ms - read_at_ms) / 1000)
        m.duplicates.inc(sum(c.get("duplicates", 0) for c in w.counts.values()))
        m.gaps.inc(sum(c.get("missing", 0) for c in w.counts.values()))


_VERIFIED = Verdict(Outcome.ACCEPT, None, "signature verified")


def _triples(todo: list[tuple[_Item, Meter]]) -> list[tuple[bytes, bytes, bytes]]:
    return [(m.public_key, it.item.payload, it.item.signature) for it, m in todo if it.item is not None]


class _Writer:
    """Rows collected for one transaction."""

    def __init__(self, now_ms: int, budget_allows: Callable[[int, float], bool]) -> None:
        self.now_ms = now_ms
        self.budget_allows = budget_allows
        self.not_stored = 0
        self.not_stored_bytes = 0
        self.readings: list[ReadingRow] = []
        self.rejections: list[RejectionRow] = []
        self.gaps: list[tuple[str, int, int, int]] = []
        self.counts: dict[str, dict[str, int]] = {}
        self.ack: set[str] = set()
        self.counts_only: list[str] = []
        self.late = 0
        self.late_held_reasons: list[str] = []
        self.payloads: dict[tuple[str, int], bytes] = {}

    def count(self, mid: str, what: str, n: int = 1) -> None:
        c = self.counts.setdefault(mid, {})
        c[what] = c.get(what, 0) + n

    def touched(self, progress: dict[str, Progress], meters: dict[str, Meter]) -> dict[str, Progress]:
        """Progress rows to write: registered meters only (a flood of made-up topics adds no rows)."""
        return {m: progress.get(m, Progress()) for m in self.counts if m in meters}

    def reject(self, it: _Item, v: Verdict, authenticated: bool, *, seq: int | None = None,
               meter_id: str | None = None) -> None:
        signed = it.item.signed if it.item else None
        r = signed.reading if signed else None
        payload = it.item.payload if it.item else it.raw
        sig = it.item.signature if it.item else b""
        row = RejectionRow(self.now_ms, "mqtt", it.topic_meter_id, r.meter_id if r else meter_id,
                           r.seq if r else seq, str(v.reason or Reason.MALFORMED), v.detail, authenticated,
                           payload, sig)
        if not authenticated and not self.budget_allows(quarantine_cost(row), self.now_ms / 1000):
            self.not_stored += 1  # counted by reason in the metrics, not stored (flood of unauthenticated input)
            self.not_stored_bytes += len(payload)
            self.counts_only.append(row.reason)
            return
        self.rejections.append(row)
        if it.topic_meter_id is not None:
            self.count(it.topic_meter_id, "rejected")

    def row(self, item: BatchItem, r: Reading, v: Verdict) -> ReadingRow:
        if v is ACCEPTED:  # the common case: no reason, detail or rebaseline to spell out
            return ReadingRow(r.meter_id, r.seq, r.read_at_ms, r.energy_import_wh, r.energy_export_wh, int(r.quality),
                              True, r.instant.power_w, "accepted", None, None, False, item.payload, item.signature,
                              self.now_ms)  # accepted = good: clock synced, no flag but *_NOT_MEASURED
        return ReadingRow(
            r.meter_id, r.seq, r.read_at_ms, r.energy_import_wh, r.energy_export_wh, int(r.quality), r.clock_synced,
            r.instant.power_w, "held" if v.outcome is Outcome.HOLD else "accepted",
            str(v.reason) if v.reason else None, v.detail or None, v.rebaseline, item.payload, item.signature,
            self.now_ms)

    def count_stored(self) -> None:
        """Per-meter accepted / held counts of the rows collected (one pass at the end, not per reading)."""
        for (mid, status), n in Counter((row.meter_id, row.status) for row in self.readings).items():
            self.count(mid, status, n)
