"""One group of received MQTT messages as acceptance sees it: its items (`Item`: a signed reading, or a message
whose framing or topic was refused), and the rows and counts its one transaction writes (`GroupRows`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from gateway.intake.checks import ACCEPTED, Outcome, Progress, Reason, Verdict
from gateway.registry import Meter
from gateway.store.sqlite import ReadingRow, RejectionRow, quarantine_cost
from protocol import BatchItem, Reading


@dataclass(slots=True)
class Item:
    topic_meter_id: str | None
    item: BatchItem | None
    raw: bytes  # the whole message when the framing failed
    verdict: Verdict | None = None  # decided before the transaction (envelope / signature)
    # A reading refused for a field value (invalid_field: a counter beyond 2^63-1) whose head names this topic's
    # registered meter: its seq, verified against the meter's key like any reading; None otherwise.
    head_seq: int | None = None
    head_verified: bool = False


class GroupRows:
    """Rows and counts collected for one transaction. Unauthenticated rejections are stored only within the
    quarantine budget (`budget_allows`); beyond it they are counted by reason (`counts_only`), not stored."""

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

    def reject(self, it: Item, v: Verdict, authenticated: bool, *, seq: int | None = None,
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
