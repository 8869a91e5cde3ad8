"""Prometheus metrics of one gateway process (exported at /metrics by the dashboard).

Cardinality is bounded by design: labels are reason codes, states, sources and outbox statuses (fixed sets).
The one per-meter series is gridmeter_gateway_meter_last_seen_timestamp_seconds{meter_id}: an alert must name
WHICH meter went silent, and a timestamp changes its value, never its labels (no churn); its label values are
registered meter ids only (never taken from a topic or payload), one series per meter (10,000 meters: 10,000
series, about 1 MB of exposition). Everything else per meter (state, counts, lag) is on the dashboard and the
CLI, and exported only as counts per state / reason and a lag histogram.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.health import CHAIN_ERROR_REASONS, HELD_REASONS, ChainFacts, State

log = logging.getLogger(__name__)

# Buckets of the lag figures: seconds from a reading's read_at to its arrival / to now.
LAG_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 900, 3600, 6 * 3600, 86400)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter("gridmeter_gateway_readings_received", "Readings received", ["source"], registry=r)
        self.accepted = Counter("gridmeter_gateway_readings_accepted", "Readings accepted and stored",
                                ["source"], registry=r)
        self.held = Counter("gridmeter_gateway_readings_held",
                            "Readings stored but never submitted, by reason (first quality flag)", ["reason"],
                            registry=r)
        for reason in HELD_REASONS:
            self.held.labels(reason)
        self.intake_lag = Histogram(
            "gridmeter_gateway_intake_lag_seconds", "Per meter and intake batch: arrival time minus read_at of the "
            "newest stored reading (how stale the freshest data is when it arrives)", registry=r,
            buckets=LAG_BUCKETS)
        self.duplicates = Counter("gridmeter_gateway_readings_duplicate", "Byte-identical resends acked and dropped",
                                  registry=r)
        self.rejected = Counter("gridmeter_gateway_readings_rejected", "Readings rejected (quarantined) by reason",
                                ["source", "reason"], registry=r)
        self.not_stored = Counter("gridmeter_gateway_rejections_not_stored",
                                  "Unauthenticated rejections only counted (flood limit reached)", registry=r)
        self.quarantine_bytes_not_stored = Counter(
            "gridmeter_gateway_quarantine_bytes_not_stored",
            "Bytes of unauthenticated messages over the quarantine byte budget (counted, not stored)", registry=r)
        self.gaps = Counter("gridmeter_gateway_seq_missing", "Sequence numbers skipped by meters", registry=r)
        self.verify_seconds = Histogram(
            "gridmeter_gateway_verify_seconds", "Ed25519 verification time per batch of messages", registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0))
        self.commit_seconds = Histogram("gridmeter_gateway_commit_seconds", "SQLite commit time per batch",
                                        registry=r, buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0))
        self.acks = Counter("gridmeter_gateway_acks_published", "Signed acks published to agents", registry=r)
        self.tx_sent = Counter("gridmeter_gateway_transactions_sent", "Transactions that landed", registry=r)
        self.tx_failed = Counter("gridmeter_gateway_transactions_failed",
                                 "Submissions refused on chain or failed to land", ["error"], registry=r)
        self.readings_per_tx = Histogram("gridmeter_gateway_readings_per_transaction",
                                         "submit_meter_reading instructions per landed transaction", registry=r,
                                         buckets=(1, 2, 5, 10, 15, 20, 25, 30, 40, 50))
        self.submitted = Counter("gridmeter_gateway_submissions_confirmed", "Interval submissions confirmed",
                                 registry=r)

        self.epoch = Gauge("gridmeter_gateway_epoch_seconds", "Market epoch length (intervals.epoch_s)", registry=r)
        self.chain = ChainHealth(r)

    def add_fleet_collector(self, fleet: Callable[[], FleetFigures]) -> None:
        self.registry.register(_FleetCollector(fleet))

    def add_outbox_collector(self, stats: Callable[[], dict[str, object]]) -> None:
        self.registry.register(_OutboxCollector(stats))


class _OutboxCollector(Collector):
    def __init__(self, stats: Callable[[], dict[str, object]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily]:
        s = self._stats()
        depth = GaugeMetricFamily("gridmeter_gateway_outbox", "Outbox rows by status", labels=["status"])
        counts = s["counts"]
        assert isinstance(counts, dict)
        for status, n in counts.items():
            depth.add_metric([status], n)
        yield depth
        age = s["oldest_age_s"]
        assert isinstance(age, float)
        yield GaugeMetricFamily("gridmeter_gateway_outbox_oldest_age_seconds",
                                "Age of the oldest unconfirmed outbox row", value=age)


@dataclass(frozen=True)
class FleetFigures:
    """Fleet health at one moment, as /metrics exports it."""

    states: dict[str, int]
    held_by_reason: dict[str, int]
    lags_s: list[int]  # per heard-from, not retired meter: now - newest read_at
    last_seen_s: dict[str, float]  # meter_id -> last seen (unix s), not retired
    held_intervals_by_reason: dict[str, int] = field(default_factory=dict)  # outbox rows held, by reason code


class _FleetCollector(Collector):
    def __init__(self, fleet: Callable[[], FleetFigures]) -> None:
        self._fleet = fleet

    def collect(self) -> Iterator[Metric]:
        f = self._fleet()
        states = GaugeMetricFamily("gridmeter_gateway_meters", "Registered meters by health state", labels=["state"])
        for s in State:
            states.add_metric([s.value], f.states.get(s.value, 0))
        yield states
        held = GaugeMetricFamily("gridmeter_gateway_meters_held", "Meters whose newest reading is held, by reason",
                                 labels=["reason"])
        for reason in HELD_REASONS:
            held.add_metric([reason], f.held_by_reason.get(reason, 0))
        yield held
        held_iv = GaugeMetricFamily("gridmeter_gateway_intervals_held", "Interval submissions held back from the "
                                    "chain, by reason (the oracle check that would fail, reconcile_mismatch, ...)",
                                    labels=["reason"])
        for reason, n_held in sorted(f.held_intervals_by_reason.items()):
            held_iv.add_metric([reason], n_held)
        yield held_iv
        buckets, n = [], 0
        lags = sorted(f.lags_s)
        for le in LAG_BUCKETS:
            while n < len(lags) and lags[n] <= le:
                n += 1
            buckets.append((str(float(le)), n))
        buckets.append(("+Inf", len(lags)))
        yield GaugeHistogramMetricFamily("gridmeter_gateway_meter_lag_seconds",
                                         "Meters by age of their newest reading (now - read_at)", buckets=buckets,
                                         gsum_value=sum(lags))
        seen = GaugeMetricFamily("gridmeter_gateway_meter_last_seen_timestamp_seconds",
                                 "When the gateway last heard from each meter (one series per registered meter: "
                                 "the silent-meter alert names the meter)", labels=["meter_id"])
        for mid, t in f.last_seen_s.items():
            seen.add_metric([mid], t)
        yield seen


def chain_error_reason(exc: BaseException) -> str:
    """Bounded reason code of a failed submitter cycle (metric label)."""
    from gateway.oracle import rpc_failure_reason

    code = getattr(exc, "reason", None)
    if isinstance(code, str) and code in CHAIN_ERROR_REASONS:
        return code
    return rpc_failure_reason(exc) or "internal_error"


class ChainHealth:
    """The submitter's view of the chain, shared with the dashboard and /metrics (one process)."""

    def __init__(self, registry: CollectorRegistry, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._facts = ChainFacts(enabled=False)
        self.up = Gauge("gridmeter_gateway_chain_rpc_up", "1 if the last submitter cycle reached the chain's RPC "
                        "endpoint, 0 if not (absent while chain submission is off)", registry=registry)
        self.last_ok = Gauge("gridmeter_gateway_chain_last_success_timestamp_seconds",
                             "End of the last submitter cycle that completed without error", registry=registry)
        self.last_submission = Gauge("gridmeter_gateway_chain_last_submission_timestamp_seconds",
                                     "When a submission was last confirmed on chain", registry=registry)
        self.errors = Counter("gridmeter_gateway_chain_errors", "Failed submitter cycles by reason", ["reason"],
                              registry=registry)
        for reason in CHAIN_ERROR_REASONS:
            self.errors.labels(reason)
        self._registry = registry
        registry.unregister(self.up)  # exported only once a submitter runs in this process: 0 would mean "down"

    def start(self, epoch_s: int) -> None:
        with self._lock:
            self._facts = replace(self._facts, enabled=True, epoch_ms=epoch_s * 1000)
        self.up.set(1)
        with contextlib.suppress(ValueError):  # already registered (a second start)
            self._registry.register(self.up)

    def cycle_ok(self) -> None:
        now = self.clock()
        with self._lock:
            recovered = self._facts.failing_reason is not None
            self._facts = replace(self._facts, reachable=True, failing_reason=None, failing_message=None,
                                  failing_since_ms=None, last_ok_ms=int(now * 1000))
        if recovered:
            log.info("chain: submissions recovered")
        self.up.set(1)
        self.last_ok.set(now)

    def cycle_failed(self, exc: BaseException | str, reason: str | None = None) -> None:
        reason = reason or (chain_error_reason(exc) if isinstance(exc, BaseException) else "internal_error")
        message = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        now_ms = int(self.clock() * 1000)
        with self._lock:
            f = self._facts
            since = f.failing_since_ms if f.failing_reason is not None else now_ms
            self._facts = replace(f, reachable=reason != "rpc_unreachable", failing_reason=reason,
                                  failing_message=message[:300], failing_since_ms=since)
        self.errors.labels(reason).inc()
        self.up.set(0 if reason == "rpc_unreachable" else 1)

    def submitted(self, n: int) -> None:
        if n <= 0:
            return
        now = self.clock()
        with self._lock:
            self._facts = replace(self._facts, last_submission_ms=int(now * 1000))
        self.last_submission.set(now)

    def error_counts(self) -> dict[str, int]:
        """Failed cycles by reason since this process started."""
        return {smp.labels["reason"]: int(smp.value) for fam in self.errors.collect() for smp in fam.samples
                if smp.name.endswith("_total")}

    def facts(self) -> ChainFacts:
        with self._lock:
            return self._facts
