"""The rated-power plausibility rule, once, for the agent's glitch filter, the gateway's MQTT checks and its
HTTP ingest (pure, integers only).

A meter rated at P watts cannot count more than P x elapsed energy; with margin_pct on top (accuracy class)
and slack_wh (counters step in 10 or 100 Wh). The bound is computed in mWh, rounded up: in the meter's favour
by less than 1 mWh, never against it.
"""

from __future__ import annotations

from base.units import MS_PER_HOUR

_MWH_DIVISOR = 100 * MS_PER_HOUR // 1000  # W x ms x percent -> mWh


def rated_energy_mwh(rated_max_power_w: int, elapsed_ms: int, margin_pct: int = 0) -> int:
    """Most energy (mWh, rounded up) a meter rated at rated_max_power_w counts in elapsed_ms, plus margin_pct."""
    return -(-rated_max_power_w * max(elapsed_ms, 0) * (100 + margin_pct) // _MWH_DIVISOR)


def max_rise_mwh(rated_max_power_w: int, elapsed_ms: int, margin_pct: int, slack_wh: int) -> int:
    """The largest counter rise (mWh) over elapsed_ms that the rating allows, margin and slack included: a
    larger one is implausible. (One expression: the gateway evaluates it for every reading.)"""
    return -(-rated_max_power_w * max(elapsed_ms, 0) * (100 + margin_pct) // _MWH_DIVISOR) + slack_wh * 1000


def mean_power_w(delta_mwh: int, elapsed_ms: int) -> int:
    """Mean power over the interval (for error messages; integer W)."""
    return delta_mwh * MS_PER_HOUR // 1000 // max(elapsed_ms, 1)
