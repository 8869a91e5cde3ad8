"""base.plausibility: the one rated-power rule (agent glitch filter, gateway MQTT checks, gateway HTTP ingest)."""

from __future__ import annotations

import pytest

from base.plausibility import max_rise_mwh, mean_power_w, rated_energy_mwh


@pytest.mark.parametrize(("rated_w", "elapsed_ms", "margin_pct", "mwh"), [
    (3_600, 1_000, 0, 1_000),  # 3.6 kW for 1 s = 1 Wh exactly
    (3_600, 1_000, 10, 1_100),
    (1, 1, 0, 1),  # 1/3,600,000 Wh: rounded UP to 1 mWh (in the meter's favour), never down to 0
    (23_000, 10_000, 0, 63_889),  # 63.888.. Wh
    (23_000, 0, 10, 0),
    (23_000, -5, 10, 0),  # a clock step back: no energy allowed beyond the slack
])
def test_rated_energy_is_integer_mwh_rounded_up(rated_w: int, elapsed_ms: int, margin_pct: int, mwh: int) -> None:
    assert rated_energy_mwh(rated_w, elapsed_ms, margin_pct) == mwh


def test_max_rise_adds_the_slack_and_matches_the_gateway_bound() -> None:
    # the gateway's former inline rule: delta_wh * 100 * 3.6e6 <= rated * dt * (100 + margin) + slack * 100 * 3.6e6
    for rated, dt, margin, slack in [(10_000, 2_000, 10, 100), (50_000, 900_000, 0, 0), (7, 3, 1000, 5)]:
        bound = max_rise_mwh(rated, dt, margin, slack)
        for delta_wh in range(max(0, bound // 1000 - 2), bound // 1000 + 3):
            old = delta_wh * 100 * 3_600_000 <= rated * dt * (100 + margin) + slack * 100 * 3_600_000
            assert (delta_wh * 1000 <= bound) == old, (rated, dt, margin, slack, delta_wh)
    assert mean_power_w(1_000, 1_000) == 3_600
