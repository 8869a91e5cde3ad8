"""Unit constants shared by agent, gateway and the test bench (energy is integer Wh, time integer ms or s)."""

from __future__ import annotations

MS_PER_S = 1000
S_PER_HOUR = 3600
MS_PER_HOUR = MS_PER_S * S_PER_HOUR  # W x ms / MS_PER_HOUR = Wh
