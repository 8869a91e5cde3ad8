"""Decides, for a group of received batch messages, what is accepted, held, dropped or quarantined.

Transport-free (MQTT lives in mqtt.py): `process()` takes (topic, message bytes) pairs and returns
the ack seq per meter AFTER everything is committed. Steps:
  1. decode the batch framing (framing errors quarantine the whole message);
  2. envelope checks against the registry snapshot (cheap; before any crypto), then the verify gate
     (budgets.py): a topic's signature checks are bounded by what its meter's rate may pay for plus the topic's
     verify budget, which pays for every check no new authenticated reading paid for (failed, replayed, over
     the meter's rate). The meter's own ingress bucket is charged only for NEW readings whose signature
     verified, in step 4: forged readings on a meter's topic cannot spend it;
  3. Ed25519 verification of the survivors in worker processes (signatures.py): a chunk is sent as soon as its
     messages are decoded, and the next group is decoded while this one is committed (prepare/finish);
  4. one SQLite transaction: progress re-read (another gateway process of the share group may have
     moved it), envelope + progress checks in seq order, readings/rejections/gaps/progress written; a
     reading arriving late inside a recorded gap is checked against its neighbours and stored.
The ack seq of a meter is its highest authenticated seq: all at or below it is stored, quarantined or a recorded
gap, so the agent may delete it. A broken worker pool (a worker killed): verified inline, slower, never wrong.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

from gateway.health import held_reason
from gateway.intake.budgets import (
    DEFAULT_QUARANTINE_BURST_BYTES,
    DEFAULT_QUARANTINE_BYTES_PER_S,
    IngressLimit,
    QuarantineBudget,
    VerifyBudget,
    VerifyGate,
)
from gateway.intake.checks import (
    ACCEPTED,
    NO_PROGRESS,
    Limits,
    Neighbors,
    Outcome,
    Progress,
    Reason,
    Verdict,
    advance,
    check_envelope,
    check_late,
    check_progress,
)
from gateway.intake.group import GroupRows, Item
from gateway.intake.signatures import Verifier, Verifying
from gateway.metrics import Metrics
from gateway.registry import Meter, MeterStatus
from gateway.store.registry import Registry
from gateway.store.sqlite import BatchWrite, RejectionRow, Store, quarantine_cost
from protocol import BatchItem, InvalidFieldError, ProtocolError, Reading, decode_batch
from protocol.canonical import reading_head
from protocol.topics import PREFIX, parse_meter_topic

log = logging.getLogger(__name__)

BAD_SIGNATURE = Verdict(Outcome.REJECT, Reason.BAD_SIGNATURE, "signature does not verify against the registered key")
INGRESS_RATE = Verdict(Outcome.REJECT, Reason.INGRESS_RATE, "per-meter ingress rate exceeded")
VERIFY_BUDGET = Verdict(Outcome.REJECT, Reason.VERIFY_BUDGET, "this topic's signature checks are over budget "
                        "(forged, replayed or over-rate readings): not verified")
_VERIFIED = Verdict(Outcome.ACCEPT, None, "signature verified")
SOURCE_CONFLICT = Verdict(Outcome.REJECT, Reason.SOURCE_CONFLICT, "this meter's energy comes over the GridTokenX "
                          "HTTP ingest: one meter, one source (its submissions would collide on chain)")


@dataclass
class Prepared:
    """A group of messages decoded and envelope-checked, its signatures being verified."""

    items: list[Item]
    meters: dict[str, Meter]
    now_ms: int
    todo: list[Item]  # in the order of verifying's signatures
    verifying: Verifying
    started: float


class Acceptance:
    def __init__(self, store: Store, registry: Registry, limits: Limits, ingress: IngressLimit, metrics: Metrics,
                 pool: Executor | None = None, *, topic_prefix: str = PREFIX,
                 clock: Callable[[], float] = time.time,
                 quarantine_bytes_per_s: float = DEFAULT_QUARANTINE_BYTES_PER_S,
                 quarantine_burst_bytes: int = DEFAULT_QUARANTINE_BURST_BYTES,
                 verify_budget: VerifyBudget | None = None) -> None:
        self.store, self.registry, self.limits, self.ingress = store, registry, limits, ingress
        self.metrics, self.prefix, self.clock = metrics, topic_prefix, clock
        self.verifier = Verifier(pool)
        self._meters: dict[str, Meter] = {}
        self._registry_version: tuple[int, int] | None = None
        self.budget = QuarantineBudget(quarantine_bytes_per_s, quarantine_burst_bytes, clock())
        self.verify_budget = verify_budget or VerifyBudget(clock())

    @property
    def pool(self) -> Executor | None:
        """The signature worker pool; None without one, or once it broke."""
        return self.verifier.pool

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
        items: list[Item] = []
        todo: list[Item] = []
        verifying = Verifying(self.verifier)
        gate = VerifyGate(self.ingress, self.verify_budget, now_s)
        for topic, msg in messages:
            split = self._split(topic, msg)
            items += split
            self._envelope(split, meters, gate, todo, verifying)
        verifying.close()
        self.metrics.received.labels("mqtt").inc(len(items))
        return Prepared(items, meters, int(now_s * 1000), todo, verifying, time.perf_counter())

    def _envelope(self, split: list[Item], meters: dict[str, Meter], gate: VerifyGate, todo: list[Item],
                  verifying: Verifying) -> None:
        """Envelope checks and the verify gate of one message's items; those to verify are added to `todo`.
        (Registered meters only reach the gate: made-up topics cost no signature check and add no bucket.)"""
        mid = split[0].topic_meter_id
        if split[0].item is None or mid is None:
            return  # framing or topic refused: verdict set
        meter = meters.get(mid)
        for it in split:
            if it.item is None:
                continue
            it.verdict = check_envelope(it.item, mid, meter, NO_PROGRESS, None)
            if meter is None:
                continue
            if it.verdict is not None:
                it.head_seq = _own_head_seq(it.item, mid, meter)
                if it.head_seq is None:
                    continue  # refused before any crypto
            if gate.admit(mid):
                todo.append(it)
                verifying.add((meter.public_key, it.item.payload, it.item.signature))
            else:
                it.verdict, it.head_seq = VERIFY_BUDGET, None

    def finish(self, p: Prepared) -> dict[str, int]:
        """Wait for the signatures, then decide and commit everything in one transaction."""
        now_s = p.now_ms / 1000
        for it, ok in zip(p.todo, p.verifying.results(), strict=True):
            if not ok and it.topic_meter_id is not None:
                self.verify_budget.charge(it.topic_meter_id, now_s)  # a check no honest reading paid for
            if it.head_seq is not None:
                it.head_verified = ok  # keeps its invalid_field verdict; authenticated if ok
            else:
                it.verdict = _VERIFIED if ok else BAD_SIGNATURE
        if p.todo:
            self.metrics.verify_seconds.observe(time.perf_counter() - p.started)
        return self._commit(p.items, p.meters, p.now_ms)

    def _split(self, topic: str, message: bytes) -> list[Item]:
        try:
            mid = parse_meter_topic(topic, "readings", self.prefix)
        except ProtocolError as exc:
            return [Item(None, None, message, Verdict(Outcome.REJECT, Reason.INVALID_FIELD, str(exc)))]
        try:
            return [Item(mid, bi, b"") for bi in decode_batch(message)]
        except ProtocolError as exc:
            reason = exc.reason if exc.reason in Reason.__members__.values() else Reason.MALFORMED.value
            return [Item(mid, None, message, Verdict(Outcome.REJECT, Reason(reason), f"batch: {exc}"))]

    def _commit(self, items: list[Item], meters: dict[str, Meter], now_ms: int) -> dict[str, int]:
        t0 = time.perf_counter()
        with self.store.transaction():
            mids = {it.topic_meter_id for it in items if it.topic_meter_id}
            progress = self.store.load_progress(mids)
            http_sourced = self.store.http_sourced(mids) if mids else set()
            w = GroupRows(now_ms, self.budget.allows)
            for it in items:
                self._decide(it, meters, progress, w, http_sourced)
            w.count_stored()
            self.store.write_batch(BatchWrite(w.readings, w.rejections, w.gaps, w.touched(progress, meters), w.counts,
                                              now_ms, (w.not_stored, w.not_stored_bytes)))
        self.metrics.commit_seconds.observe(time.perf_counter() - t0)
        self._count(w)
        open_after = now_ms - self.limits.gap_grace_ms
        acks = {m: self.store.ack_seq(m, progress[m].last_seq, open_after) for m in w.ack if m in progress}
        return {m: seq for m, seq in acks.items() if seq > 0}

    def _decide(self, it: Item, meters: dict[str, Meter], progress: dict[str, Progress], w: GroupRows,
                http_sourced: set[str]) -> None:
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
            verdict = self._paid(mid, verdict, w)
            if verdict is _VERIFIED and mid in http_sourced:
                verdict = SOURCE_CONFLICT  # authenticated: acked, so the agent stops re-sending it
            if verdict is _VERIFIED and r.seq <= prog.last_seq and self._late(it, r, mid, w):
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

    def _paid(self, mid: str, verdict: Verdict | None, w: GroupRows) -> Verdict | None:
        """A verified reading: a new one is paid for by its meter's ingress bucket, or refused over the meter's
        rate (not acked: the agent re-sends it); a replay of a handled one (duplicate) by the topic's verify
        budget, like a reading over the rate."""
        if verdict is _VERIFIED and self.ingress.take(mid, w.now_ms / 1000):
            return verdict
        if verdict is _VERIFIED or (verdict is not None and verdict.outcome is Outcome.DUPLICATE):
            self.verify_budget.charge(mid, w.now_ms / 1000)
        return INGRESS_RATE if verdict is _VERIFIED else verdict

    def _authentic_invalid(self, it: Item, item: BatchItem, mid: str, seq: int, progress: dict[str, Progress],
                           w: GroupRows) -> None:
        """The meter's own signed reading with a field no store can hold: an authenticated invalid_field rejection.
        Its seq is acked (the agent may drop it; there is nothing to re-send) and progress moves past it."""
        prog = progress.get(mid, NO_PROGRESS)
        w.ack.add(mid)
        if (w.payloads.get((mid, seq)) or self.store.handled_payload(mid, seq)) == item.payload:
            w.count(mid, "duplicates")  # a re-send of the same bytes
            self.verify_budget.charge(mid, w.now_ms / 1000)
            return
        self.ingress.take(mid, w.now_ms / 1000)  # the meter's own reading: acked and decided whatever its rate
        verdict = Verdict(Outcome.REJECT, Reason.INVALID_FIELD, f"{item.error} (signature verified)")
        w.reject(it, verdict, True, seq=seq, meter_id=mid)
        w.payloads[(mid, seq)] = item.payload
        if seq > prog.last_seq:
            if seq > prog.last_seq + 1:
                w.gaps.append((mid, prog.last_seq + 1, seq - 1, w.now_ms))
                w.count(mid, "missing", seq - 1 - prog.last_seq)
            progress[mid] = Progress(seq, prog.last_read_at_ms, prog.last_import_wh, prog.last_export_wh)

    def _late(self, it: Item, r: Reading, mid: str, w: GroupRows) -> bool:
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

    def _count(self, w: GroupRows) -> None:
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


def _own_head_seq(item: BatchItem, mid: str, meter: Meter) -> int | None:
    """The seq of a reading refused for a field value (invalid_field) whose head names this topic's active meter
    and its key: worth verifying (the meter's own reading is acked, an authenticated refusal); else None."""
    if meter.status is not MeterStatus.ACTIVE or item.signed is not None or not isinstance(item.error,
                                                                                          InvalidFieldError):
        return None
    head = reading_head(item.payload)
    return head[2] if head is not None and head[:2] == (mid, meter.key_id) else None
