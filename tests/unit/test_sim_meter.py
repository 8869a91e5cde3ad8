"""testbed.meter: exact integer energy, and its register encoding (written independently of agent.decode)
decodes through agent.decode to the same values for every shipped profile (a cross-check of both sides)."""

from __future__ import annotations

import pytest

from agent.decode import decode_identity, decode_image, identify_matches
from firmware_config.loader import load_all
from testbed.meter import SimulatedMeter

PROFILES = load_all()


def test_advance_is_exact_integer_energy() -> None:
    m = SimulatedMeter(PROFILES["eastron-sdm120"], 1, import_wh=10, power_w=1)
    for _ in range(3599):
        m.advance(1000)
    assert m.import_wh == 10  # 3599 Ws < 1 Wh
    m.advance(1000)
    assert m.import_wh == 11
    m.set_power(-7200)
    m.advance(500)  # 7200 W x 0.5 s = 1 Wh export
    assert (m.import_wh, m.export_wh) == (11, 1)


def test_live_clock_advances_with_injected_time() -> None:
    now = [0]
    m = SimulatedMeter(PROFILES["eastron-sdm630"], 1, power_w=3_600_000, live=True, clock=lambda: now[0])
    now[0] = 250 * 1_000_000  # 250 ms at 3.6 MW = 250 Wh
    m.image(4)
    assert m.import_wh == 250 and m.served_import_wh == 250


@pytest.mark.parametrize("profile_id", sorted(PROFILES))
def test_served_registers_decode_to_served_values(profile_id: str) -> None:
    profile = PROFILES[profile_id]
    # a meter without an export counter (unsigned power) sits on a consumption-only circuit: it imports
    sign = -1 if "energy_export_wh" in profile.measurements else 1
    m = SimulatedMeter(profile, 3, import_wh=4_567_891, export_wh=12_345, power_w=sign * 2_345, voltage_dv=2311,
                       frequency_mhz=50_020, power_factor_milli=sign * 950, serial_number=20_240_001)
    image = {(fc, a): w for fc in m.function_codes() for a, w in m.image(fc).items()}
    decoded = decode_image(profile, image)
    assert decoded.invalid == {}
    assert decoded.values["energy_import_wh"] == m.served_import_wh
    if "energy_export_wh" in profile.measurements:
        assert decoded.values["energy_export_wh"] == m.served_export_wh
    # registers with a coarse resolution (e.g. 0.1 kWh) round; whole-kWh-exact profiles must be exact
    resolution = max(int(r.scale * r.unit_factor) for r in profile.registers if r.name == "energy_import_wh")
    assert abs(m.served_import_wh - 4_567_891) <= resolution // 2
    for name, want in (("power_w", sign * 2_345), ("voltage_l1_dv", 2311), ("frequency_mhz", 50_020),
                       ("power_factor_milli", sign * 950)):
        if name in decoded.values:
            reg = profile.register(name)
            step = max(1, int(abs(reg.scale) * reg.unit_factor))
            assert abs(decoded.values[name] - want) <= step, name
    for rule in profile.identify:
        fc = next(f for f in rule.function_codes if (f, rule.address) in image)
        words = [image[(fc, a)] for a in range(rule.address, rule.address + rule.words)]
        assert identify_matches(rule, decode_identity(rule, words))


def test_invalid_measurement_is_served_as_nan() -> None:
    profile = PROFILES["eastron-sdm630"]
    m = SimulatedMeter(profile, 1, invalid={"frequency_mhz"})
    d = decode_image(profile, {(4, a): w for a, w in m.image(4).items()})
    assert d.invalid == {"frequency_mhz": "nan"}
