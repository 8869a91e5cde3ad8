"""Per-meter glitch filter for cumulative energy counters (pure).

Cumulative counters briefly read 0, 0xFFFF.., 0x8000.., 2^31-1, or jump; downstream would book the whole
counter as fresh energy. A reading is GLITCH_SUSPECTED (signed and stored, but not good) when, compared to
the last GOOD reading of the same meter:
  - a counter decreased (this includes reading 0 after a non-zero value),
  - both counters read 0 with no history (the commonest glitch; a brand-new meter is flagged until it counts),
  - a counter grew faster than the meter's rated maximum power allows over the elapsed monotonic time,
  - a counter grew by more than one resolution step while no elapsed time is known (restart with the wall
    clock behind the last good reading: until the clock is past it again).
The next good reading compares against the last GOOD counters, so one glitch cannot poison the baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

from base.plausibility import rated_energy_mwh

# Meters publish energy with 0.01 or 0.1 kWh resolution; one resolution step (100 Wh) of slack keeps a
# counter that ticks just after a read from being called a jump.
DEFAULT_COUNTER_SLACK_WH = 100
# Register reads of one meter take up to ~1 s on a slow bus and timestamps are taken once per read:
# allow this much extra elapsed time in the rate bound.
DEFAULT_TIMING_SLACK_MS = 2000


@dataclass(frozen=True, slots=True)
class Baseline:
    """The last good counters of one meter. monotonic_ms is None when loaded from disk after a restart."""

    import_wh: int
    export_wh: int
    read_at_ms: int
    monotonic_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    good: bool
    reasons: tuple[str, ...]


def max_energy_wh(rated_max_power_w: int, elapsed_ms: int, slack_wh: int = DEFAULT_COUNTER_SLACK_WH) -> int:
    """Most energy a meter rated at rated_max_power_w can count in elapsed_ms (integer Wh, rounded up; the rule
    of base.plausibility with the read-timing slack and no margin)."""
    return -(-rated_energy_mwh(rated_max_power_w, elapsed_ms + DEFAULT_TIMING_SLACK_MS) // 1000) + slack_wh


def elapsed_since(prev: Baseline, monotonic_ms: int, read_at_ms: int) -> int | None:
    """Monotonic elapsed time when both ends are from this boot; else the wall delta if positive; else None."""
    if prev.monotonic_ms is not None:
        return max(0, monotonic_ms - prev.monotonic_ms)
    wall = read_at_ms - prev.read_at_ms
    return wall if wall > 0 else None


def check_counters(
    prev: Baseline | None,
    import_wh: int,
    export_wh: int,
    *,
    monotonic_ms: int,
    read_at_ms: int,
    rated_max_power_w: int,
) -> Verdict:
    reasons: list[str] = []
    if prev is None:
        if import_wh == 0 and export_wh == 0:
            reasons.append("zero_counters")
        return Verdict(not reasons, tuple(reasons))
    for name, now, before in (("import", import_wh, prev.import_wh), ("export", export_wh, prev.export_wh)):
        if now < before:
            reasons.append(f"{name}_zero" if now == 0 else f"{name}_decreased")
    elapsed = elapsed_since(prev, monotonic_ms, read_at_ms)
    # No elapsed time to judge a rise by (baseline from before a restart, wall clock now behind it): only the
    # resolution slack is believable. Accepting more would let one glitch become the baseline, after which
    # every honest reading looks like a decrease.
    limit = DEFAULT_COUNTER_SLACK_WH if elapsed is None else max_energy_wh(rated_max_power_w, elapsed)
    for name, now, before in (("import", import_wh, prev.import_wh), ("export", export_wh, prev.export_wh)):
        if now - before > limit:
            reasons.append(f"{name}_jump" if elapsed is not None else f"{name}_rise_elapsed_unknown")
    return Verdict(not reasons, tuple(reasons))
