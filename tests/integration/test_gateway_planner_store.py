"""The planner's batched store calls (gateway/store/planning.py) on both backends: plan_inputs_many equals
plan_inputs per meter (limit included), meters_to_plan(epoch_s) picks exactly the meters whose latest reading
lies in a later epoch than their last close (and those without a plan), save_plans writes many meters' states
and outbox rows in one transaction."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gateway.intake.acceptance import Acceptance, IngressLimit
from gateway.intake.checks import Limits
from gateway.metrics import Metrics
from gateway.store.postgres import PostgresStore
from gateway.store.records import MeterPlan, Planned, PlanState
from gateway.store.registry import Registry
from gateway.store.sqlite import Store
from protocol.topics import readings_topic
from tests.gateway_support import batch, reading, record_for

pytestmark = pytest.mark.integration

EPOCH_MS = 60_000


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s = PostgresStore(request.getfixturevalue("pg_dsn")) if request.param == "postgres" else Store(tmp_path / "g.db")
    try:
        yield s
    finally:
        s.close()


def test_batched_planner_calls_match_the_per_meter_ones(store: Store, tmp_path: Path) -> None:
    registry = Registry(tmp_path / "r.sqlite")
    pool = ThreadPoolExecutor(1)
    try:
        now_ms = int(time.time() * 1000)
        base = (now_ms // EPOCH_MS - 5) * EPOCH_MS + 1_000
        meters = ["PL-A", "PL-B", "PL-C", "PL-D"]
        for m in meters:
            registry.add(record_for(m, rated_w=50_000), now_ms)
        acc = Acceptance(store, registry, Limits(), IngressLimit(), Metrics(), pool)
        # A: 3 readings in epoch 0; B: 2 in epoch 0 then 1 in epoch 1; C: 1 reading; D: none
        for mid, offsets in {"PL-A": [0, 10_000, 20_000], "PL-B": [0, 10_000, EPOCH_MS + 5_000], "PL-C": [0]}.items():
            msgs = batch(*[reading(mid, i + 1, base + off, 100 + 7 * i) for i, off in enumerate(offsets)])
            acc.process([(readings_topic(mid), msgs)])
        many = store.plan_inputs_many(meters)
        assert many == {m: store.plan_inputs(m) for m in meters}
        assert [len(many[m][1]) for m in meters] == [3, 3, 1, 0]
        assert store.plan_inputs_many(meters, limit=2) == {m: store.plan_inputs(m, limit=2) for m in meters}
        # no plan state yet: every meter with readings is to plan, with or without the epoch filter
        assert sorted(store.meters_to_plan(60)) == sorted(store.meters_to_plan()) == ["PL-A", "PL-B", "PL-C"]
        # baselines at the first reading, nothing consumed since, except B's close at its epoch-1 reading
        plans = [MeterPlan(m, PlanState(True, 1, base, 100, 0, 100, 0, base, None), [], 1) for m in meters[:3]]
        plans[1] = MeterPlan("PL-B", PlanState(True, 3, base + EPOCH_MS + 5_000, 114, 0, 114, 0,
                                               base + EPOCH_MS + 5_000, (base + EPOCH_MS + 5_000) // 1000),
                             [Planned("PL-B", 0, 14, (base + EPOCH_MS + 5_000) // 1000, 3)], 1)
        store.save_plans(plans, now_ms)
        assert store.plan_inputs_many(meters)["PL-B"] == (plans[1].state, [])
        assert [(r.meter_id, r.consumed_wh, r.status) for r in store.outbox_rows()] == [("PL-B", 14, "pending")]
        # A has unplanned readings, all in its anchor's epoch: only the unfiltered query names it
        assert store.meters_to_plan() == ["PL-A"]
        assert store.meters_to_plan(60) == []
        acc.process([(readings_topic("PL-A"), batch(reading("PL-A", 4, base + EPOCH_MS, 130)))])
        assert store.meters_to_plan(60) == ["PL-A"]
    finally:
        pool.shutdown()
        registry.close()
