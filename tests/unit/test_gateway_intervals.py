"""gateway.submit.intervals: role mapping, epochs, oracle mirror, splitting, exact conservation (property tests)."""

from __future__ import annotations

import random

import pytest

from gateway.store.outbox import OutboxSource, outbox_key
from gateway.submit.intervals import OracleLimits, Planned, PlanState, Point, oracle_verdict, plan, split_value
from protocol import MeterRole

E = 900  # epoch seconds
T = 1_780_000_200  # an epoch boundary (1780000200 % 900 == 0)
LIM = OracleLimits()  # initialize defaults: min 0, max 1e6, interval 60, ratio 1000, anomaly on


def pts(*rows: tuple[int, int, int]) -> list[Point]:
    """(seconds after T, import, export) -> Points with seq 1.."""
    return [Point(i + 1, (T + s) * 1000, imp, exp) for i, (s, imp, exp) in enumerate(rows)]


def subs(planned: list[Planned]) -> list[tuple[int, int, int]]:
    return [(p.produced_wh, p.consumed_wh, p.reading_timestamp) for p in planned]


@pytest.mark.parametrize(("role", "expected"), [
    (MeterRole.GRID, [(30, 100, T + 905)]),
    (MeterRole.PRODUCTION, [(30, 0, T + 905)]),
    (MeterRole.CONSUMPTION, [(0, 100, T + 905)]),
])
def test_role_mapping_baseline_and_epoch(role: MeterRole, expected: list[tuple[int, int, int]]) -> None:
    state, out = plan("M", role, PlanState(), pts((5, 1000, 500), (300, 1050, 510), (905, 1100, 530)), LIM, E)
    assert subs(out) == expected
    assert state.anchor_read_at_ms == (T + 905) * 1000


def test_oracle_verdict_mirrors_program() -> None:
    lim = OracleLimits(min_energy_value=10, max_energy_value=100, min_reading_interval=60,
                       max_production_consumption_ratio=1000)
    assert oracle_verdict(0, 0, 100, None, lim) is None
    assert oracle_verdict(5, 0, 100, None, lim) == "EnergyValueOutOfRange"  # non-zero below min
    assert oracle_verdict(10, 100, 100, None, lim) is None  # bounds inclusive
    assert oracle_verdict(101, 0, 100, None, lim) == "EnergyValueOutOfRange"
    assert oracle_verdict(100, 10, 100, None, lim) is None  # 100*100 <= 1000*10: inclusive
    assert oracle_verdict(100, 0, 100, None, lim) is None  # consumed 0 skips the ratio
    lim2 = OracleLimits(max_energy_value=10**6, max_production_consumption_ratio=1000)
    lim100x = OracleLimits(max_production_consumption_ratio=10_000)
    assert oracle_verdict(100, 1, 100, None, lim100x) is None
    assert oracle_verdict(101, 1, 100, None, lim100x) == "AnomalousReading"
    assert oracle_verdict(11, 1, 100, None, lim2) == "AnomalousReading"
    assert oracle_verdict(1, 1, 100, 100, lim) == "OutdatedReading"
    assert oracle_verdict(1, 1, 159, 100, lim) == "RateLimitExceeded"  # the program checks time before energy
    assert oracle_verdict(0, 0, 159, 100, lim) == "RateLimitExceeded"
    assert oracle_verdict(0, 0, 160, 100, lim) is None
    assert oracle_verdict(0, 0, 161, None, lim, chain_now_s=100) == "FutureReading"
    assert oracle_verdict(0, 0, 160, None, lim, chain_now_s=100) is None
    assert oracle_verdict(0, 0, 1, None, OracleLimits(active=False)) == "OracleInactive"
    assert oracle_verdict(2**60, 1, 1, None, OracleLimits(max_energy_value=2**64 - 1)) == "InvalidConfiguration"


def test_small_values_are_carried_not_dropped() -> None:
    lim = OracleLimits(min_energy_value=50)
    state, out = plan("M", MeterRole.GRID, PlanState(), pts((0, 0, 0), (900, 30, 100), (1800, 60, 100)), lim, E)
    # epoch 1: produced 100 ok, consumed 30 < 50 carried; epoch 2: consumed 60 submitted
    assert subs(out) == [(100, 0, T + 900), (0, 60, T + 1800)]
    assert state.sub_import_wh == 60 and state.sub_export_wh == 100


def test_split_above_max_spaced_by_min_interval() -> None:
    lim = OracleLimits(max_energy_value=1000, min_reading_interval=60)
    _, out = plan("M", MeterRole.CONSUMPTION, PlanState(), pts((0, 0, 0), (3600, 2500, 0)), lim, E)
    assert subs(out) == [(0, 834, T + 3480), (0, 833, T + 3540), (0, 833, T + 3600)]
    assert [p.part for p in out] == [0, 1, 2] and {p.parts for p in out} == {3}


def test_waits_when_too_soon_after_last_submission() -> None:
    lim = OracleLimits(min_reading_interval=600)
    rows = ((0, 0, 0), (890, 10, 0), (905, 20, 0), (1500, 30, 0))
    _, out = plan("M", MeterRole.CONSUMPTION, PlanState(), pts(*rows), lim, E, chain_last_ts=T + 500)
    # T+905 is only 405 s after the chain's last reading: waits; T+1500 closes with everything since baseline
    assert subs(out) == [(0, 30, T + 1500)]


def test_ratio_violation_is_held_with_reason() -> None:
    _, out = plan("M", MeterRole.GRID, PlanState(), pts((0, 0, 0), (900, 1, 5000)), LIM, E)
    assert [(p.held_reason, p.produced_wh, p.consumed_wh) for p in out] == [("anomalous_ratio", 5000, 1)]


def test_replacement_rebaselines() -> None:
    points = pts((0, 100, 0), (900, 200, 0), (1000, 250, 0))
    points.append(Point(4, (T + 1100) * 1000, 3, 0, rebaseline=True))
    points.append(Point(5, (T + 1900) * 1000, 13, 0))
    state, out = plan("M", MeterRole.CONSUMPTION, PlanState(), points, LIM, E)
    # old meter: 100 (epoch 1) + remainder 50 closed at its last reading; new meter: 10
    assert subs(out) == [(0, 100, T + 900), (0, 50, T + 1000), (0, 10, T + 1900)]
    assert state.sub_import_wh == 13


def test_replacement_remainder_below_minimum_is_held_not_dropped() -> None:
    """The old meter's last few Wh (below the oracle minimum, so carried) vanished at the rebaseline: no
    submission, no held row, and the new PlanState forgot the carry. Now they are held with the oracle's reason."""
    lim = OracleLimits(min_energy_value=50)
    points = pts((0, 100, 0), (900, 200, 0), (1000, 230, 0))
    points.append(Point(4, (T + 1100) * 1000, 3, 0, rebaseline=True))
    state, out = plan("M", MeterRole.CONSUMPTION, PlanState(), points, lim, E)
    assert [(p.consumed_wh, p.reading_timestamp, p.held_reason) for p in out] == [
        (100, T + 900, None), (30, T + 1000, "below_min_energy_value")]
    assert state.sub_import_wh == 3 and state.baseline_set


def test_split_value_bounds() -> None:
    lim = OracleLimits(min_energy_value=10, max_energy_value=15)
    assert split_value(16, 2, lim) is None  # 2 parts of >= 10 would need 20; 1 part of <= 15 cannot hold 16
    assert split_value(25, 2, lim) == [13, 12]
    assert split_value(12, 3, lim) == [12, 0, 0]
    assert split_value(0, 2, lim) == [0, 0]


LIMIT_SETS = [
    OracleLimits(),
    OracleLimits(min_energy_value=7, max_energy_value=120, min_reading_interval=60),
    OracleLimits(min_energy_value=1, max_energy_value=40, min_reading_interval=300,
                 max_production_consumption_ratio=50),
    OracleLimits(min_energy_value=0, max_energy_value=25, min_reading_interval=1, anomaly_detection_enabled=False),
]


@pytest.mark.parametrize("seed", range(40))
def test_property_conservation_and_oracle_acceptance(seed: int) -> None:
    rng = random.Random(seed)
    lim = LIMIT_SETS[seed % len(LIMIT_SETS)]
    role = list(MeterRole)[seed % 3]
    epoch = rng.choice([60, 300, 900])
    imp, exp, t = rng.randrange(10**6), rng.randrange(10**6), T * 1000 + rng.randrange(10**6)
    points, base = [], (imp, exp)
    for seq in range(1, rng.randrange(2, 400)):
        points.append(Point(seq, t, imp, exp))
        t += rng.choice([1000, 10_000, 10_000, 60_000, 3_600_000])
        imp += rng.choice([0, 0, 1, 3, 20, 200])
        exp += rng.choice([0, 1, 5, 50, 500])
    # feed in random chunks: incremental planning must equal one-shot planning
    state, planned, i = PlanState(), [], 0
    while i < len(points):
        n = rng.randrange(1, 30)
        state, out = plan("M", role, state, points[i : i + n], lim, epoch)
        planned += out
        i += n
    _, oneshot = plan("M", role, PlanState(), points, lim, epoch)
    assert planned == oneshot
    # exact conservation: planned (sent + held) + carry == counter movement of the mapped registers
    last = points[-1]
    prod = sum(p.produced_wh for p in planned)
    cons = sum(p.consumed_wh for p in planned)
    assert prod == state.sub_export_wh - base[1] if role is not MeterRole.CONSUMPTION else prod == 0
    assert cons == state.sub_import_wh - base[0] if role is not MeterRole.PRODUCTION else cons == 0
    assert state.sub_export_wh <= last.export_wh and state.sub_import_wh <= last.import_wh
    # everything not held passes the oracle, in order
    last_ts = None
    for p in planned:
        if p.held_reason is None:
            assert oracle_verdict(p.produced_wh, p.consumed_wh, p.reading_timestamp, last_ts, lim) is None, p
            last_ts = p.reading_timestamp
    assert len({outbox_key(OutboxSource.MQTT, p) for p in planned}) == len(planned)
