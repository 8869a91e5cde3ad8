"""A small fleet in every health state, for the dashboard, /metrics and CLI tests (real store, real checks)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from gateway.intake.acceptance import Acceptance, IngressLimit
from gateway.intake.checks import Limits
from gateway.metrics import Metrics
from gateway.registry import MeterStatus
from gateway.store.registry import Registry
from gateway.store.sqlite import Store
from protocol.topics import readings_topic
from tests.gateway_support import batch, reading, record_for

STEP_MS = 10_000  # every meter here reads every 10 s (the fleet default too)


@dataclass
class Fleet:
    store: Store
    registry: Registry
    metrics: Metrics
    acceptance: Acceptance
    clock: list[float]  # the intake's clock (s); move it to make messages arrive "earlier"
    seqs: dict[str, int] = field(default_factory=dict)

    def now(self) -> float:
        return self.clock[0]

    def send(self, meter_id: str, n: int, *, ends_ago_s: float = 0.0, imp0: int = 1000, synced: bool = True,
             imp_step: int = 2) -> None:
        """n readings 10 s apart, the last one taken and received `ends_ago_s` before now."""
        real_now = self.clock[0]
        self.clock[0] = real_now - ends_ago_s
        first = self.seqs.get(meter_id, 0) + 1
        end_ms = int(self.clock[0] * 1000) - 500
        signed = [reading(meter_id, first + i, end_ms - (n - 1 - i) * STEP_MS, imp0 + (first + i) * imp_step, 7,
                          synced=synced) for i in range(n)]
        try:
            self.acceptance.process([(readings_topic(meter_id), batch(*signed))])
        finally:
            self.clock[0] = real_now
        self.seqs[meter_id] = first + n - 1

    def close(self) -> None:
        self.store.close()
        self.registry.close()


def open_fleet(state_dir: Path, metrics: Metrics | None = None) -> Fleet:
    store, registry = Store(state_dir / "gateway.sqlite"), Registry(state_dir / "registry.sqlite")
    metrics = metrics or Metrics()
    clock = [time.time()]
    acc = Acceptance(store, registry, Limits(), IngressLimit(), metrics, clock=lambda: clock[0])
    return Fleet(store, registry, metrics, acc, clock)


def every_state(f: Fleet) -> None:
    """OK-1 ok, LATE-1 stopped 2.5 min ago, SILENT-1 stopped 7 min ago, HELD-1 clock unsynced, REJ-1 its counter
    went backwards, NEW-1 never heard from, RET-1 retired."""
    now_ms = int(f.now() * 1000)
    for mid in ("OK-1", "LATE-1", "SILENT-1", "HELD-1", "REJ-1", "NEW-1", "RET-1"):
        f.registry.add(record_for(mid, rated_w=20_000), now_ms)
    f.send("OK-1", 9, ends_ago_s=2)
    f.send("LATE-1", 9, ends_ago_s=150)
    f.send("SILENT-1", 9, ends_ago_s=420)
    f.send("HELD-1", 3, ends_ago_s=60)
    f.send("HELD-1", 4, ends_ago_s=3, synced=False)
    f.send("REJ-1", 9, ends_ago_s=40)
    f.send("REJ-1", 1, ends_ago_s=2, imp0=0, imp_step=0)  # counter lower than before: counter_decreased
    f.registry.set_status("RET-1", MeterStatus.RETIRED, now_ms)


def hold_intervals(f: Fleet) -> None:
    """Two interval submissions the submitter held (as it records them: status held, reason)."""
    now_ms = int(f.now() * 1000)
    for key, reason in (("OK-1:1", "anomalous_ratio"), ("OK-1:2", "reconcile_mismatch: chain has 3 readings up to "
                                                                    "1780000000, gateway expected 2")):
        f.store.conn.execute("INSERT INTO outbox (key, meter_id, zone_id, produced_wh, consumed_wh, reading_timestamp,"
                             " part, parts, source, status, reason, created_at_ms, updated_at_ms) "
                             "VALUES (?, 'OK-1', 1, 5, 100, ?, 0, 1, 'mqtt', 'held', ?, ?, ?)",
                             (key, now_ms // 1000 - int(key[-1]) * 900, reason, now_ms, now_ms))
