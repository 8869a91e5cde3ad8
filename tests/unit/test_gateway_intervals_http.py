"""gateway.submit.intervals for interval-energy sources (GridTokenX HTTP ingest): exact mWh accumulation, epochs,
min_reading_interval by construction, sub-Wh carry, idle close, retired meters (table + property tests)."""

from __future__ import annotations

import random

import pytest

from gateway.store.records import Planned, PlanState, Point, http_point
from gateway.submit.intervals import OracleLimits, oracle_verdict, plan_http
from protocol import MeterRole

E = 900
T = 1_780_000_200  # an epoch boundary
LIM = OracleLimits()


def points(rows: list[tuple[int, int, int]], seq0: int = 0, cum: tuple[int, int] = (0, 0)) -> list[Point]:
    """(seconds after T, import mWh, export mWh) of each reading -> points of the running sums."""
    out, imp, exp = [], cum[0], cum[1]
    for i, (s, di, de) in enumerate(rows):
        imp, exp = imp + di, exp + de
        out.append(http_point(seq0 + i + 1, (T + s) * 1000, imp, exp))
    return out


def subs(planned: list[Planned]) -> list[tuple[int, int, int]]:
    return [(p.produced_wh, p.consumed_wh, p.reading_timestamp - T) for p in planned]


def test_first_reading_counts_and_epoch_closes_at_next_epoch() -> None:
    pts = points([(15, 1937, 250), (30, 1937, 250), (900, 1937, 250), (915, 1000, 0)])
    state, out = plan_http("M", MeterRole.GRID, None, pts, LIM, E, T + 920, quiet=False)
    assert subs(out) == [(0, 5, 900)]  # 5.811 Wh import -> 5 (0.811 carried), 0.750 Wh export -> 0 (carried)
    assert (state.sub_import_wh, state.sub_export_wh, state.last_seq) == (5, 0, 4)


@pytest.mark.parametrize(("role", "expected"), [
    (MeterRole.GRID, [(2, 10, 900)]), (MeterRole.PRODUCTION, [(2, 0, 900)]), (MeterRole.CONSUMPTION, [(0, 10, 900)]),
])
def test_roles(role: MeterRole, expected: list[tuple[int, int, int]]) -> None:
    _, out = plan_http("M", role, None, points([(15, 5000, 1000), (900, 5000, 1000)]), LIM, E, T + 900, quiet=False)
    assert subs(out) == expected


def test_idle_close_only_after_the_epoch_and_when_quiet() -> None:
    pts = points([(15, 2500, 0), (30, 2500, 0)])
    _, out = plan_http("M", MeterRole.GRID, None, pts, LIM, E, T + 899, quiet=True)
    assert out == []  # the epoch is not over
    _, out = plan_http("M", MeterRole.GRID, None, pts, LIM, E, T + 2000, quiet=False)
    assert out == []  # the client is still posting
    state, out = plan_http("M", MeterRole.GRID, None, pts, LIM, E, T + 900, quiet=True)
    assert subs(out) == [(0, 5, 30)]  # at the last reading's timestamp
    # a late reading of the same epoch goes into the next submission, min_reading_interval after the last
    state, out = plan_http("M", MeterRole.GRID, state, points([(45, 1000, 0)], 2, (5000, 0)), LIM, E, T + 901,
                           quiet=True)
    assert subs(out) == [(0, 1, 90)]


def test_idle_close_waits_for_min_reading_interval() -> None:
    st = PlanState(True, 1, (T + 900) * 1000, 0, 0, 0, 0, (T + 900) * 1000, T + 900)
    pts = points([(905, 3000, 0)], 1)
    st, out = plan_http("M", MeterRole.GRID, st, pts, LIM, E, T + 1805, quiet=True)
    assert subs(out) == [(0, 3, 960)]
    st2 = PlanState(True, 1, (T + 900) * 1000, 0, 0, 0, 0, (T + 900) * 1000, T + 1790)  # chain: just submitted
    _, out = plan_http("M", MeterRole.GRID, st2, pts, LIM, E, T + 1805, quiet=True)
    assert out == []  # T+1850 would be in the future: waits, nothing held


def test_retired_meter_holds_what_is_open() -> None:
    pts = points([(15, 2500, 0), (900, 2500, 0), (915, 3300, 0)])
    state, out = plan_http("M", MeterRole.GRID, None, pts, LIM, E, T + 920, quiet=False, retired=True)
    assert [(p.consumed_wh, p.held_reason) for p in out] == [(5, "meter_retired"), (3, "meter_retired")]
    assert state.sub_import_wh == 8


@pytest.mark.parametrize("seed", range(20))
def test_property_conservation_spacing_no_rate_limit(seed: int) -> None:
    """Random clients (posting every 1-60 s, in bursts, pausing; fractional mWh) and random chain settings:
    every planned submission passes the oracle's order and rate checks in sequence, each epoch closes at most
    once per min_reading_interval, and received mWh = planned Wh * 1000 + what is still open, exactly."""
    rnd = random.Random(seed)
    lim = OracleLimits(max_energy_value=rnd.choice([1_000_000, 50]), min_reading_interval=rnd.choice([1, 60, 300]),
                       anomaly_detection_enabled=False)
    role = rnd.choice(list(MeterRole))
    state: PlanState | None = None
    t, seq, imp, exp = 7, 0, 0, 0
    sent: list[Planned] = []
    for _ in range(40):
        batch = []
        for _ in range(rnd.randint(0, 30)):
            t += rnd.choice([1, 15, 15, 15, 60, 400])
            di, de = rnd.randint(0, 3000), rnd.randint(0, 3000)
            imp, exp = imp + di, exp + de
            seq += 1
            batch.append(http_point(seq, (T + t) * 1000, imp, exp))
        now = T + t + rnd.randint(0, 2000)
        state, out = plan_http("M", role, state, batch, lim, E, now, quiet=rnd.random() < 0.5)
        assert all(p.held_reason is None for p in out)
        sent += out
    assert state is not None
    # the client stops: once quiet after its last epoch, everything but the sub-Wh carry is planned
    state, out = plan_http("M", role, state, [], lim, E, T + t + 2 * E + 10 * lim.min_reading_interval, quiet=True)
    sent += out
    last = None
    for p in sent:
        assert oracle_verdict(p.produced_wh, p.consumed_wh, p.reading_timestamp, last, lim) is None
        last = p.reading_timestamp
    got_c, got_p = sum(p.consumed_wh for p in sent), sum(p.produced_wh for p in sent)
    want_c = imp // 1000 if role is not MeterRole.PRODUCTION else 0
    want_p = exp // 1000 if role is not MeterRole.CONSUMPTION else 0
    assert (got_c, got_p) == (want_c, want_p)  # on chain = sent, within 1 Wh (the carry: imp % 1000 mWh)
