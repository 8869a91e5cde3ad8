"""Unit constants shared by agent, gateway and the test bench (energy is integer Wh, time integer ms or s)."""

from __future__ import annotations

MS_PER_S = 1000
S_PER_HOUR = 3600
MS_PER_HOUR = MS_PER_S * S_PER_HOUR  # W x ms / MS_PER_HOUR = Wh


def milli_text(milli: int) -> str:
    """A count of thousandths as exact decimal text (mWh as Wh, Wh as kWh): 1234567 -> "1234.567"."""
    sign = "-" if milli < 0 else ""
    whole, frac = divmod(abs(milli), 1000)
    return f"{sign}{whole}.{frac:03d}"
