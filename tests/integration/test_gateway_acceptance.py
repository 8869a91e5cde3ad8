"""gateway.intake.acceptance on real SQLite files (no broker): limits, replacement, crash-safe idempotence."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import gateway.intake.budgets as budgets_mod
from gateway.intake.acceptance import Acceptance, IngressLimit
from gateway.intake.checks import Limits
from gateway.intake.signatures import verify_pool
from gateway.metrics import Metrics
from gateway.store.registry import Registry
from gateway.store.sqlite import Store
from protocol.topics import readings_topic
from tests.gateway_support import batch, key_for, reading, record_for

pytestmark = pytest.mark.integration


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[Store, Registry, Metrics]]:
    store, registry = Store(tmp_path / "g.sqlite"), Registry(tmp_path / "r.sqlite")
    registry.add(record_for("HOUSE-1", rated_w=20_000, created_ms=1), 0)
    try:
        yield store, registry, Metrics()
    finally:
        store.close()
        registry.close()


def count(store: Store, sql: str) -> int:
    return int(store.conn.execute(sql).fetchone()[0])


def test_ingress_rate_cap_per_meter(parts: tuple[Store, Registry, Metrics]) -> None:
    store, registry, metrics = parts
    acc = Acceptance(store, registry, Limits(), IngressLimit(rate_per_s=0.001, burst=3), metrics, clock=lambda: 1e9)
    t = 10**12 - 100_000
    acks = acc.process([(readings_topic("HOUSE-1"), batch(*[reading("HOUSE-1", s, t + s * 2000, s) for s in
                                                             range(1, 6)]))])
    assert acks == {"HOUSE-1": 3}  # 4 and 5 verified but over the meter's rate: refused, not acked (re-sent later)
    assert [r[0] for r in store.conn.execute("SELECT reason FROM rejections")] == ["ingress_rate_exceeded"] * 2


def test_unauthenticated_flood_is_counted_not_stored(parts: tuple[Store, Registry, Metrics],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    store, registry, metrics = parts
    monkeypatch.setattr(budgets_mod, "DEFAULT_FLOOD_BURST", 5)
    monkeypatch.setattr(budgets_mod, "DEFAULT_FLOOD_RATE_PER_S", 0.001)
    acc = Acceptance(store, registry, Limits(), IngressLimit(), metrics)
    now = int(time.time() * 1000)
    acc.process([(readings_topic(f"FAKE-{i}"), batch(reading(f"FAKE-{i}", 1, now, 1))) for i in range(20)])
    assert count(store, "SELECT COUNT(*) FROM rejections") == 5
    assert metrics.registry.get_sample_value("gridmeter_gateway_readings_rejected_total",
                                             {"source": "mqtt", "reason": "unknown_meter"}) == 20
    assert metrics.registry.get_sample_value("gridmeter_gateway_rejections_not_stored_total") == 15
    assert count(store, "SELECT COUNT(*) FROM progress") == 0  # made-up meters leave no rows


def test_replacement_allows_counter_restart(parts: tuple[Store, Registry, Metrics]) -> None:
    store, registry, metrics = parts
    acc = Acceptance(store, registry, Limits(), IngressLimit(), metrics)
    now = int(time.time() * 1000)
    topic = readings_topic("HOUSE-1")
    acc.process([(topic, batch(reading("HOUSE-1", 1, now - 60_000, 50_000),
                               reading("HOUSE-1", 2, now - 50_000, 50_010)))])
    acc.process([(topic, batch(reading("HOUSE-1", 3, now - 40_000, 12)))])
    assert [r[0] for r in store.conn.execute("SELECT reason FROM rejections")] == ["counter_decreased"]
    registry.add(record_for("HOUSE-1", rated_w=20_000, serial="SN-NEW", created_ms=now - 35_000), now)
    acc.process([(topic, batch(reading("HOUSE-1", 4, now - 30_000, 12), reading("HOUSE-1", 5, now - 20_000, 20)))])
    rows = store.conn.execute("SELECT seq, status, rebaseline FROM readings ORDER BY seq").fetchall()
    assert rows == [(1, "accepted", 0), (2, "accepted", 0), (4, "accepted", 1), (5, "accepted", 0)]


def test_replayed_group_after_crash_is_idempotent(parts: tuple[Store, Registry, Metrics]) -> None:
    """The broker redelivers a message whose PUBACK was lost in a crash: nothing is stored twice."""
    store, registry, metrics = parts
    now = int(time.time() * 1000)
    msg = (readings_topic("HOUSE-1"), batch(*[reading("HOUSE-1", s, now - 100_000 + s * 10_000, 100 + s)
                                               for s in range(1, 8)]))
    first = Acceptance(store, registry, Limits(), IngressLimit(), metrics).process([msg])
    again = Acceptance(store, registry, Limits(), IngressLimit(), Metrics()).process([msg])  # a new process
    assert first == again == {"HOUSE-1": 7}
    assert count(store, "SELECT COUNT(*) FROM readings") == 7
    assert count(store, "SELECT duplicates FROM progress") == 7
    assert count(store, "SELECT COUNT(*) FROM rejections") == 0


def test_key_rotation_takes_effect(parts: tuple[Store, Registry, Metrics]) -> None:
    store, registry, metrics = parts
    acc = Acceptance(store, registry, Limits(), IngressLimit(), metrics)
    now = int(time.time() * 1000)
    new = key_for("HOUSE-1-new")
    registry.add(record_for("HOUSE-1", key=new, previous=key_for("HOUSE-1"), created_ms=now - 1000), now)
    topic = readings_topic("HOUSE-1")
    acc.process([(topic, batch(reading("HOUSE-1", 1, now - 20_000, 5)))])  # old key: refused
    acc.process([(topic, batch(reading("HOUSE-1", 1, now - 10_000, 5, key=new)))])
    assert [r[0] for r in store.conn.execute("SELECT reason FROM rejections")] == ["key_mismatch"]
    assert count(store, "SELECT COUNT(*) FROM readings") == 1


def test_two_gateway_processes_out_of_order(parts: tuple[Store, Registry, Metrics], tmp_path: Path) -> None:
    """Shared subscription: batch 2 of a meter is committed by gateway B before gateway A commits batch 1.
    Batch 1's readings are late arrivals inside the recorded gap: all stored, gap closed, nothing lost. While
    the gap is open the ack stays below it (highest CONTIGUOUS seq), so the agent keeps what is missing."""
    store, registry, metrics = parts
    store_b = Store(tmp_path / "g.sqlite")
    try:
        gw_a = Acceptance(store, registry, Limits(), IngressLimit(), metrics)
        gw_b = Acceptance(store_b, registry, Limits(), IngressLimit(), Metrics())
        now = int(time.time() * 1000)
        rs = [reading("HOUSE-1", s, now - 200_000 + s * 10_000, 1000 + 3 * s) for s in range(1, 11)]
        topic = readings_topic("HOUSE-1")
        assert gw_b.process([(topic, batch(*rs[5:]))]) == {}  # seqs 1..5 missing: nothing contiguous to ack
        assert store.conn.execute("SELECT first_seq, last_seq FROM gaps").fetchall() == [(1, 5)]
        assert gw_a.process([(topic, batch(*rs[:5]))]) == {"HOUSE-1": 10}
        assert [r[0] for r in store.conn.execute("SELECT seq FROM readings ORDER BY seq")] == list(range(1, 11))
        assert store.conn.execute("SELECT COUNT(*) FROM gaps").fetchone()[0] == 0
        assert store.conn.execute("SELECT accepted, missing FROM progress").fetchone() == (10, 0)
        assert store.conn.execute("SELECT COUNT(*) FROM rejections").fetchone()[0] == 0
        # a late reading that does not fit its neighbours is refused, with the reason
        gw_b.process([(topic, batch(reading("HOUSE-1", 12, now - 5_000, 1040)))])  # gap 11..11
        late_bad = reading("HOUSE-1", 11, now - 4_000, 1035)  # claims to be read after seq 12
        # the refused late reading is decided (quarantined): the gap closes and the ack moves past it at once,
        # instead of holding the meter below the gap for the whole gap grace
        assert gw_a.process([(topic, batch(late_bad))]) == {"HOUSE-1": 12}
        assert [r[0] for r in store.conn.execute("SELECT reason FROM rejections")] == ["read_at_not_increasing"]
        assert store.conn.execute("SELECT COUNT(*) FROM gaps").fetchone()[0] == 0
        assert store.conn.execute("SELECT missing FROM progress").fetchone() == (0,)
    finally:
        store_b.close()


def test_ack_holds_below_a_young_gap_and_moves_past_it_after_the_grace(
        parts: tuple[Store, Registry, Metrics]) -> None:
    store, registry, metrics = parts
    now = int(time.time() * 1000)
    rs = [reading("HOUSE-1", s, now - 200_000 + s * 10_000, 1000 + 3 * s) for s in range(1, 11)]
    topic = readings_topic("HOUSE-1")
    patient = Acceptance(store, registry, Limits(gap_grace_ms=600_000), IngressLimit(), metrics)
    assert patient.process([(topic, batch(*rs[:3]))]) == {"HOUSE-1": 3}
    assert patient.process([(topic, batch(*rs[6:]))]) == {"HOUSE-1": 3}  # 4..6 lost in transit: keep them
    assert patient.process([(topic, batch(rs[3]))]) == {"HOUSE-1": 4}  # a re-send fills part of the gap
    assert store.conn.execute("SELECT first_seq, last_seq FROM gaps").fetchall() == [(5, 6)]
    expired = Acceptance(store, registry, Limits(gap_grace_ms=0), IngressLimit(), metrics)
    assert expired.process([(topic, batch(rs[9]))]) == {"HOUSE-1": 10}  # duplicate; gap 5..6 declared lost
    assert store.conn.execute("SELECT missing FROM progress").fetchone() == (2,)


def test_broken_verify_pool_falls_back_inline(parts: tuple[Store, Registry, Metrics]) -> None:
    store, registry, metrics = parts
    pool = verify_pool(1)
    acc = Acceptance(store, registry, Limits(), IngressLimit(), metrics, pool)
    now = int(time.time() * 1000)
    rs = [reading("HOUSE-1", s, now - 900_000 + s * 1000, 10 + s) for s in range(1, 301)]
    prepared = acc.prepare([(readings_topic("HOUSE-1"), batch(*rs[:150]))])
    for proc in list(pool._processes.values()):  # a worker dies (OOM killer, operator)
        proc.kill()
    try:
        assert acc.finish(prepared) == {"HOUSE-1": 150}
        assert acc.process([(readings_topic("HOUSE-1"), batch(*rs[150:]))]) == {"HOUSE-1": 300}
    finally:
        pool.shutdown()
    assert count(store, "SELECT COUNT(*) FROM readings") == 300 and acc.pool is None
