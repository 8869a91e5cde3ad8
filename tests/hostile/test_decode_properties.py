"""Property-based tests (hypothesis) of agent.decode over every shipped profile: any register words decode to a
number in its field's domain or to an Invalid with a reason, never an exception; energy counters are bounded to
what the store's signed INTEGER holds (a glitched uint64/float register >= 2^63 is a read error, issue 8 #1);
and the decoder agrees exactly with the simulator's independent encoder (testbed.meter) on honest values."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.decode import Invalid, decode_identity, decode_image, decode_register
from firmware_config.loader import load_all
from firmware_config.schema import ENERGY_MEASUREMENTS, REGISTER_TYPES
from testbed.meter import encode_register

I64_MAX = 2**63 - 1
I32_MIN, I32_MAX = -(2**31), 2**31 - 1
PROFILES = load_all()
PROPS = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
words16 = st.integers(0, 0xFFFF)
# words that hit the interesting corners more often than uniform ones: all ones, sign bits, NaN/Inf patterns
corner_words = st.sampled_from([0, 1, 0x7FFF, 0x8000, 0xFFFF, 0x7F80, 0x7FC0, 0xFF80, 0x4F80, 0x5F00, 0x7F7F])
any_word = st.one_of(words16, corner_words)


def _in_domain(measurement: str, v: int) -> bool:
    if measurement in ENERGY_MEASUREMENTS:
        return 0 <= v <= I64_MAX
    return I32_MIN <= v <= I32_MAX


@PROPS
@given(st.sampled_from(sorted(PROFILES)), st.data())
def test_any_register_image_decodes_to_a_bounded_value_or_a_reason(profile_id: str, data: st.DataObject) -> None:
    profile = PROFILES[profile_id]
    image = {}
    for reg in profile.registers:
        for i in range(reg.words):
            image[(reg.function_code, reg.address + i)] = data.draw(any_word)
    decoded = decode_image(profile, image)
    for measurement, v in decoded.values.items():
        assert isinstance(v, int) and _in_domain(measurement, v), (profile_id, measurement, v)
    assert all(isinstance(r, str) and r for r in decoded.invalid.values())


@PROPS
@given(st.sampled_from(sorted(PROFILES)), st.data())
def test_energy_register_at_extremes_is_bounded(profile_id: str, data: st.DataObject) -> None:
    """Every energy register filled with the worst words (all ones, sign bit only, 2^63 patterns)."""
    profile = PROFILES[profile_id]
    for reg in profile.registers:
        if reg.measurement not in ENERGY_MEASUREMENTS:
            continue
        n = reg.words
        pattern = data.draw(st.sampled_from([[0xFFFF] * n, [0x8000] + [0] * (n - 1), [0x7FFF] + [0xFFFF] * (n - 1),
                                             [0x8000] + [0] * (n - 2) + [1] if n > 1 else [0x8000]]))
        if reg.word_order != "big":
            pattern = list(reversed(pattern))
        image = {(reg.function_code, reg.address + i): w for i, w in enumerate(pattern)}
        for other in profile.registers:  # scale factors of SunSpec profiles: 0
            if other.measurement is None:
                image[(other.function_code, other.address)] = 0
        v = decode_register(image, reg, profile)
        assert isinstance(v, Invalid) or 0 <= v <= I64_MAX, (profile_id, reg.name, pattern, v)


@PROPS
@given(st.sampled_from(sorted(PROFILES)), st.data())
def test_decoder_agrees_with_the_simulators_encoder(profile_id: str, data: st.DataObject) -> None:
    profile = PROFILES[profile_id]
    for reg in profile.registers:
        if reg.measurement is None or reg.scale_factor is not None:
            continue
        words_n, signed, kind = REGISTER_TYPES[reg.type]
        if reg.measurement in ENERGY_MEASUREMENTS:
            hi = 8_000_000 if kind == "float" and words_n == 2 else 10**12  # float32 kWh: exact below 8192 kWh
            value = data.draw(st.integers(0, hi))
        else:
            value = data.draw(st.integers(-30_000 if signed else 0, 30_000))
        try:
            words, back = encode_register(reg, value)
        except (OverflowError, ValueError):
            continue  # the value does not fit this register's raw width at its scale
        image = {(reg.function_code, reg.address + i): w for i, w in enumerate(words)}
        got = decode_register(image, reg, profile)
        if isinstance(got, Invalid):
            assert got.reason in ("not_implemented", "out_of_range", "negative"), (reg.name, value, got)
            continue
        assert got == back, (profile_id, reg.name, value, words, got, back)


@PROPS
@given(st.sampled_from(sorted(PROFILES)), st.lists(words16, min_size=1, max_size=32))
def test_identity_registers_never_raise(profile_id: str, words: list[int]) -> None:
    profile = PROFILES[profile_id]
    rules = list(profile.identify) + ([profile.serial_number] if profile.serial_number else [])
    for rule in rules:
        value = decode_identity(rule, (words * rule.words)[: rule.words])
        assert isinstance(value, (int, str))
