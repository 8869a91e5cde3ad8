"""Table tests for agent.decode: word orders, signedness, exact scaling, sentinels, SunSpec scale factors."""

from __future__ import annotations

import struct
from dataclasses import replace
from fractions import Fraction

import pytest

from agent.decode import Invalid, decode_identity, decode_image, decode_number, identify_matches, image_from_block
from agent.decode import scale as scale_value
from firmware_config.loader import load_all
from firmware_config.schema import IdentifyRule, Register


def reg(rtype: str, measurement: str = "power_w", unit: str = "W", **kw: object) -> Register:
    return Register(name=measurement, measurement=measurement, address=0, type=rtype, function_code=4,
                    unit=unit, **kw)  # type: ignore[arg-type]


def f32(x: float) -> list[int]:
    b = struct.pack(">f", x)
    return [int.from_bytes(b[:2], "big"), int.from_bytes(b[2:], "big")]


NUMBER_CASES = [
    # (type, word_order, words, expected number)
    ("uint16", "big", [0xFFFE], 65534),
    ("int16", "big", [0xFFFE], -2),
    ("int16", "big", [0x7FFF], 32767),
    ("uint32", "big", [0x0001, 0x0002], 0x00010002),
    ("uint32", "little", [0x0002, 0x0001], 0x00010002),  # Carlo Gavazzi LSW first
    ("int32", "big", [0xFFFF, 0xFFFE], -2),
    ("int32", "little", [0xFFFE, 0xFFFF], -2),
    ("int64", "big", [0xFFFF, 0xFFFF, 0xFFFF, 0xFF00], -256),
    ("uint64", "big", [0, 0, 0x0001, 0x86A0], 100000),
    ("uint64", "little", [0x86A0, 0x0001, 0, 0], 100000),
    ("acc32", "big", [0x0000, 0x0010], 16),
    ("float32", "big", f32(230.5), Fraction(461, 2)),
    ("float32", "little", list(reversed(f32(-1.25))), Fraction(-5, 4)),
    ("float64", "big", [0x4059, 0x0000, 0x0000, 0x0000], 100),
]


@pytest.mark.parametrize(("rtype", "word_order", "words", "expected"), NUMBER_CASES)
def test_decode_number(rtype: str, word_order: str, words: list[int], expected: int | Fraction) -> None:
    assert decode_number(words, reg(rtype, word_order=word_order)) == expected


SENTINEL_CASES = [
    ("float32", [0x7FC0, 0x0000], (), Invalid("nan")),
    ("float32", [0xFFC0, 0x0000], (), Invalid("nan")),
    ("float32", [0x7F80, 0x0000], (), Invalid("infinite")),
    ("uint16", [0xFFFF], ("all_ones",), Invalid("not_implemented")),
    ("int16", [0x8000], ("signed_min",), Invalid("not_implemented")),
    ("int32", [0x7FFF, 0xFFFF], ("signed_max",), Invalid("not_implemented")),  # ABB signed invalid
    ("uint64", [0xFFFF] * 4, ("all_ones",), Invalid("not_implemented")),  # ABB export on import-only variants
    ("acc32", [0, 0], ("zero",), Invalid("not_implemented")),  # SunSpec acc32 not implemented
    ("int16", [0x8000], (), -32768),  # without the sentinel it is a number
]


@pytest.mark.parametrize(("rtype", "words", "sentinels", "expected"), SENTINEL_CASES)
def test_sentinels(rtype: str, words: list[int], sentinels: tuple[str, ...], expected: object) -> None:
    assert decode_number(words, reg(rtype, not_implemented=sentinels)) == expected


SCALE_CASES = [
    # (measurement, unit, scale, number, sf, expected)
    ("energy_import_wh", "kWh", Fraction(1), Fraction(struct.unpack(">f", struct.pack(">f", 1234.567))[0]), None,
     1234567),
    ("energy_import_wh", "kWh", Fraction(1, 100), 123456789, None, 1234567890),  # ABB uint64 x 0.01 kWh
    ("energy_import_wh", "Wh", Fraction(1), 42, 3, 42000),  # SunSpec acc32 x 10^3
    ("energy_import_wh", "kWh", Fraction(1), -1, None, Invalid("negative")),
    ("energy_export_wh", "Wh", Fraction(1), 2**64, None, Invalid("out_of_range")),
    ("power_w", "W", Fraction(1), Fraction(5, 2), None, 2),  # half to even
    ("power_w", "W", Fraction(1), Fraction(7, 2), None, 4),
    ("power_w", "W", Fraction(1), Fraction(-5, 2), None, -2),
    ("power_w", "kW", Fraction(1), Fraction(3, 2), None, 1500),  # Schneider kW
    ("power_w", "W", Fraction(-1), 1500, None, -1500),  # evcc SolarEdge sign inversion
    ("power_w", "W", Fraction(1, 10), 123456, None, 12346),  # Carlo Gavazzi x 0.1 W (12345.6)
    ("power_w", "W", Fraction(1), 2**31, None, Invalid("out_of_range")),
    ("voltage_l1_dv", "V", Fraction(1), Fraction(4601, 20), None, 2300),  # 230.05 V -> 2300.5 -> 2300 (even)
    ("voltage_l1_dv", "V", Fraction(1, 10), 2301, None, 2301),  # ABB x 0.1 V
    ("current_l1_ma", "A", Fraction(1, 1000), 7520, None, 7520),
    ("frequency_mhz", "Hz", Fraction(1, 100), 5001, None, 50010),
    ("frequency_mhz", "Hz", Fraction(1), 4998, -2, 49980),  # SunSpec Hz with Hz_SF = -2
    ("power_factor_milli", "ratio", Fraction(1), Fraction(-0.995), None, -995),
    ("power_factor_milli", "pct", Fraction(1), -9870, -2, -987),  # SunSpec PF percent, PF_SF -2
]


@pytest.mark.parametrize(("measurement", "unit", "scale", "number", "sf", "expected"), SCALE_CASES)
def test_scale(measurement: str, unit: str, scale: Fraction, number: int | Fraction, sf: int | None,
               expected: object) -> None:
    assert scale_value(number, reg("int32", measurement, unit, scale=scale), sf) == expected


def test_float32_kwh_round_trips_to_exact_wh_below_8192_kwh() -> None:
    r = reg("float32", "energy_import_wh", "kWh")
    for wh in (0, 1, 999, 1_000_001, 4_194_303, 8_191_999):
        assert scale_value(decode_number(f32(wh / 1000), r), r) == wh  # type: ignore[arg-type]


def test_decode_image_sunspec_scale_factor() -> None:
    w = reg("int16", "power_w", "W", scale_factor="W_SF")
    w = replace(w, address=10, function_code=3)
    sf = Register(name="W_SF", measurement=None, address=11, type="sunssf", function_code=3,
                  not_implemented=("signed_min",))
    e = replace(reg("acc32", "energy_import_wh", "Wh", scale_factor="WH_SF"), address=12, function_code=3)
    esf = Register(name="WH_SF", measurement=None, address=14, type="sunssf", function_code=3)
    x = replace(reg("acc32", "energy_export_wh", "Wh", not_implemented=("zero",)), address=15, function_code=3)
    profile = replace(load_all()["eastron-sdm120"], registers=(w, sf, e, esf, x))
    image = image_from_block(3, 10, [0xFFF6, 0xFFFF, 0x0001, 0x0000, 0x0001, 0, 0])  # -10 W x 10^-1; 65536 x 10^1
    d = decode_image(profile, image)
    assert d.values == {"power_w": -1, "energy_import_wh": 655360}
    assert d.invalid == {"energy_export_wh": "not_implemented"}
    bad = image_from_block(3, 10, [100, 0x8000, 0, 1, 0, 0, 5])
    d = decode_image(profile, bad)
    assert d.values == {"energy_import_wh": 1, "energy_export_wh": 5}
    assert d.invalid == {"power_w": "scale_factor_invalid"}


def test_decode_image_missing_words() -> None:
    profile = load_all()["eastron-sdm120"]
    d = decode_image(profile, image_from_block(4, 0x48, f32(1.5) + f32(0.25)))
    assert d.values == {"energy_import_wh": 1500, "energy_export_wh": 250}
    assert set(d.invalid) == {"voltage_l1_dv", "current_l1_ma", "power_w", "power_factor_milli", "frequency_mhz"}
    assert set(d.invalid.values()) == {"missing"}


def test_identity() -> None:
    code = IdentifyRule(address=0xFC02, type="uint16", expected=(112, 121), function_codes=(3, 4))
    assert identify_matches(code, decode_identity(code, [121]))
    assert not identify_matches(code, decode_identity(code, [32]))
    abb = IdentifyRule(address=0x8960, type="string", length=6, expected=("B23", "B24"))
    value = decode_identity(abb, [0x4232, 0x3320, 0x3131, 0x3200, 0, 0])  # "B23 112" NUL padded
    assert value == "B23 112"
    assert identify_matches(abb, value)
    assert not identify_matches(abb, "B21 ")


def test_word_out_of_range_is_rejected() -> None:
    with pytest.raises(ValueError, match="out of range"):
        decode_number([0x10000], reg("uint16"))


@pytest.mark.parametrize(
    ("name", "words", "raw"),
    [("all_ones", 1, 0xFFFF), ("all_ones", 2, 0xFFFF_FFFF), ("signed_min", 1, 0x8000), ("signed_min", 2, 0x8000_0000),
     ("signed_max", 2, 0x7FFF_FFFF), ("signed_max", 4, 2**63 - 1), ("zero", 2, 0)],
)
def test_sentinel_raw_patterns(name: str, words: int, raw: int) -> None:
    """One definition of the sentinel patterns, shared by the decoder and the simulated meter."""
    from firmware_config.schema import sentinel_raw

    assert sentinel_raw(name, words) == raw
