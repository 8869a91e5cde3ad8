"""Prometheus metrics of one gateway process (exported at /metrics by the dashboard)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter("gridmeter_gateway_readings_received", "Readings received", ["source"], registry=r)
        self.accepted = Counter("gridmeter_gateway_readings_accepted", "Readings accepted and stored",
                                ["source"], registry=r)
        self.held = Counter("gridmeter_gateway_readings_held", "Readings stored but never submitted (quality)",
                            registry=r)
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
