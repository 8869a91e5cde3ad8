from __future__ import annotations

import pytest

from agent.plausibility import Baseline, check_counters, max_energy_wh

RATED = 23_000  # W: 100 A single phase
PREV = Baseline(import_wh=1_000_000, export_wh=5_000, read_at_ms=1_700_000_000_000, monotonic_ms=50_000)
# 10 s at 23 kW = 63.9 Wh; + 2 s timing slack = 76.7 -> 77 Wh; + 100 Wh resolution slack = 177 Wh
LIMIT_10S = 177


def test_limit_arithmetic_is_integer_and_rounded_up() -> None:
    assert max_energy_wh(RATED, 10_000) == LIMIT_10S
    assert max_energy_wh(3_600_000, 0) == 2_000 + 100
    assert max_energy_wh(1, 1) == 1 + 100


@pytest.mark.parametrize(
    "prev, imp, exp, mono, wall, good, reasons",
    [
        (None, 1_000_000, 5_000, 60_000, 0, True, ()),
        (None, 0, 0, 60_000, 0, False, ("zero_counters",)),
        (None, 0, 7, 60_000, 0, True, ()),  # export-only meter at zero import is fine
        (PREV, 1_000_000, 5_000, 60_000, 0, True, ()),  # no change
        (PREV, 1_000_000 + LIMIT_10S, 5_000, 60_000, 0, True, ()),  # exactly at the bound
        (PREV, 1_000_000 + LIMIT_10S + 1, 5_000, 60_000, 0, False, ("import_jump",)),
        (PREV, 1_000_000, 5_000 + LIMIT_10S + 1, 60_000, 0, False, ("export_jump",)),
        (PREV, 999_999, 5_000, 60_000, 0, False, ("import_decreased",)),
        (PREV, 0, 5_000, 60_000, 0, False, ("import_zero",)),
        (PREV, 0, 0, 60_000, 0, False, ("import_zero", "export_zero")),
        (PREV, 2**31 - 1, 5_000, 60_000, 0, False, ("import_jump",)),  # a glitched register
        # monotonic time going nowhere: only the slack is allowed
        (PREV, 1_000_000 + 100 + 13, 5_000, 50_000, 0, True, ()),
        (PREV, 1_000_000 + 100 + 14, 5_000, 50_000, 0, False, ("import_jump",)),
    ],
)
def test_verdict_table(prev, imp, exp, mono, wall, good, reasons) -> None:  # type: ignore[no-untyped-def]
    v = check_counters(
        prev, imp, exp, monotonic_ms=mono, read_at_ms=wall or 1_700_000_010_000,
        rated_max_power_w=RATED,
    )
    assert (v.good, v.reasons) == (good, reasons)


def test_baseline_from_disk_uses_positive_wall_delta_or_skips_rate() -> None:
    disk = Baseline(import_wh=1_000, export_wh=0, read_at_ms=1_700_000_000_000, monotonic_ms=None)
    one_hour_later = 1_700_000_000_000 + 3_600_000
    ok = check_counters(disk, 1_000 + 23_000, 0, monotonic_ms=5, read_at_ms=one_hour_later, rated_max_power_w=RATED)
    assert ok.good
    jump = check_counters(disk, 1_000 + 23_200, 0, monotonic_ms=5, read_at_ms=one_hour_later,
                          rated_max_power_w=RATED)
    assert jump.reasons == ("import_jump",)
    # wall clock behind the baseline (stale clock after a reboot): no rate can be judged, so only the resolution
    # slack is believed. (A rise to 10**9 used to pass as good and become the baseline: every honest reading
    # after it then looked like a decrease.)
    back = check_counters(disk, 10**9, 0, monotonic_ms=5, read_at_ms=1_600_000_000_000, rated_max_power_w=RATED)
    assert back.reasons == ("import_rise_elapsed_unknown",)
    small = check_counters(disk, 1_100, 0, monotonic_ms=5, read_at_ms=1_600_000_000_000, rated_max_power_w=RATED)
    assert small.good
    dec = check_counters(disk, 999, 0, monotonic_ms=5, read_at_ms=1_600_000_000_000, rated_max_power_w=RATED)
    assert dec.reasons == ("import_decreased",)


def test_next_good_reading_compares_against_last_good_not_the_glitch() -> None:
    """The filter itself is stateless: the caller keeps the last GOOD baseline. After a 0-glitch, a normal
    value (compared against PREV with the longer elapsed time) is good again."""
    glitch = check_counters(PREV, 0, 0, monotonic_ms=60_000, read_at_ms=1, rated_max_power_w=RATED)
    assert not glitch.good
    after = check_counters(PREV, 1_000_150, 5_000, monotonic_ms=70_000, read_at_ms=1, rated_max_power_w=RATED)
    assert after.good
