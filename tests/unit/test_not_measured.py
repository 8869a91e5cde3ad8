"""Readings of consumption-only and production-only meters (IMPORT/EXPORT_NOT_MEASURED): wire format, gateway checks
and intervals handle them exactly (no energy invented, none lost). Pure table tests."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.intake.checks import Limits, Outcome, Progress, advance, check_progress
from gateway.registry import Meter, MeterStatus
from gateway.submit.intervals import OracleLimits, PlanState, Point, plan
from protocol import MeterRole, Quality, decode_reading, key_id
from protocol.reading import NOT_MEASURED
from tests.gateway_support import T0_MS, key_for, reading

MID = "HOUSE-1"
KEY = key_for(MID)
LIM = Limits(min_read_spacing_ms=1000, plausibility_margin_pct=10, plausibility_slack_wh=2)
VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "reading_v1.json"


def meter(role: MeterRole = MeterRole.GRID) -> Meter:
    return Meter(MID, KEY.public_key, key_id(KEY.public_key), 1, "p", role, MeterStatus.ACTIVE, 30_000, "SN", "i",
                 T0_MS - 10**9, None, "GMREG1:x")


def test_flags_round_trip_and_keep_the_reading_good() -> None:
    for q in (Quality.EXPORT_NOT_MEASURED, Quality.IMPORT_NOT_MEASURED):
        s = reading(MID, 1, T0_MS, 1000, 0, quality=q)
        r = decode_reading(s.payload)
        assert r.quality == q and r.good
    held = reading(MID, 1, T0_MS, 1000, 0, quality=Quality.EXPORT_NOT_MEASURED | Quality.PARTIAL).reading
    assert not held.good  # other flags still hold a reading
    assert int(NOT_MEASURED) == 0b110_0000


def test_frozen_vectors_do_not_use_the_new_bits() -> None:
    cases = json.loads(VECTORS.read_text())["readings"]
    for c in cases:
        assert c["fields"]["quality"] & int(NOT_MEASURED) == 0
        if c["fields"]["energy_import_wh"] < 2**63:  # the 2^64-1 vector is refused at decode (one integer domain)
            assert decode_reading(bytes.fromhex(c["payload_hex"])).quality == c["fields"]["quality"]


def test_gateway_accepts_import_only_readings_and_counts_only_import() -> None:
    prog = Progress()
    m = meter()
    counters = [(1_000_000, 0), (1_000_004, 0), (1_000_009, 0)]
    for i, (imp, exp) in enumerate(counters):
        r = reading(MID, i + 1, T0_MS + i * 2000, imp, exp, quality=Quality.EXPORT_NOT_MEASURED).reading
        v = check_progress(r, m, prog, T0_MS + 10_000, LIM)
        assert v.outcome is Outcome.ACCEPT, v
        prog = advance(prog, r, v)
    assert (prog.last_import_wh, prog.last_export_wh) == (1_000_009, 0)


def test_export_measured_again_books_movement_since_last_measured_value() -> None:
    """A counter not measured repeats its last measured value: when it is measured again, what it moved in between
    is booked once (nothing lost), and never twice (nothing invented)."""
    pts = [Point(1, 1_000, 500, 70), Point(2, 61_000, 520, 70), Point(3, 1_000_000, 560, 75)]
    state, out = plan(MID, MeterRole.GRID, PlanState(), pts, OracleLimits(min_reading_interval=1), 900)
    assert [(p.produced_wh, p.consumed_wh) for p in out] == [(5, 60)]
    assert state.sub_export_wh == 75


def test_production_only_meter_intervals() -> None:
    pts = [Point(1, 1_000, 0, 9_000), Point(2, 1_000_000, 0, 9_450)]  # import not measured: stays 0
    _s, out = plan(MID, MeterRole.GRID, PlanState(), pts, OracleLimits(min_reading_interval=1), 900)
    assert [(p.produced_wh, p.consumed_wh) for p in out] == [(450, 0)]
