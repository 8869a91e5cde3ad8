"""Property-based tests (hypothesis) of the wire protocol: every valid message round-trips exactly; every
mutation of a signed message is a ProtocolError or a different valid message whose signature fails; every
stored integer is bounded to what SQLite's signed INTEGER holds; nothing but ProtocolError ever escapes."""

from __future__ import annotations

import base64
import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import (
    Ack,
    BadSignatureError,
    Instantaneous,
    MeterRole,
    ProtocolError,
    Quality,
    Reading,
    Registration,
    SigningKey,
    VerifyKey,
    decode_ack,
    decode_batch,
    decode_reading,
    encode_ack,
    encode_batch,
    encode_reading,
    parse_registration,
    sign_reading,
    sign_registration,
    verify_signed,
)

I64_MAX = 2**63 - 1
U64_MAX = 2**64 - 1
KEY = SigningKey(bytes(range(32)))
VKEY = VerifyKey(KEY.public_key)
OTHER = SigningKey(bytes(range(1, 33)))
PROPS = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

meter_ids = st.from_regex(r"[A-Za-z0-9._-]{1,32}", fullmatch=True)
stored_u64 = st.integers(0, I64_MAX)  # what a wire integer that is stored may hold
i32 = st.integers(-(2**31), 2**31 - 1)
instants = st.builds(Instantaneous, *[st.none() | i32 for _ in Instantaneous.names()])
readings = st.builds(
    Reading, meter_id=meter_ids, key_id=st.just(KEY.key_id), seq=st.integers(1, I64_MAX), read_at_ms=stored_u64,
    clock_synced=st.booleans(), energy_import_wh=stored_u64, energy_export_wh=stored_u64,
    profile_id=st.text(max_size=20).filter(lambda s: len(s.encode()) <= 64),
    quality=st.integers(0, int(sum(Quality))).map(Quality), instant=instants)


@PROPS
@given(readings)
def test_reading_round_trips_exactly(r: Reading) -> None:
    payload = encode_reading(r)
    assert decode_reading(payload) == r
    assert encode_reading(decode_reading(payload)) == payload


@PROPS
@given(st.lists(readings, min_size=1, max_size=5))
def test_batch_round_trips_and_verifies(rs: list[Reading]) -> None:
    signed = [sign_reading(r, KEY) for r in rs]
    items = decode_batch(encode_batch(signed))
    assert [i.signed.reading for i in items if i.signed] == rs
    for i in items:
        assert i.error is None and i.signed is not None
        verify_signed(i.signed, VKEY)


def _check_mutant(message: bytes, original: list[bytes]) -> str:
    """Decode a mutated batch: only ProtocolError may escape; a decoded reading whose bytes differ from every
    original payload must fail its signature. Returns what happened."""
    try:
        items = decode_batch(message)
    except ProtocolError as exc:
        return exc.reason
    outcome = "same"
    for it in items:
        if it.error is not None:
            assert isinstance(it.error, ProtocolError)
            outcome = it.error.reason
            continue
        assert it.signed is not None
        r = it.signed.reading
        for v in (r.seq, r.read_at_ms, r.energy_import_wh, r.energy_export_wh):
            assert 0 <= v <= I64_MAX, f"decoded integer {v} does not fit SQLite INTEGER"
        if it.payload in original:
            try:
                verify_signed(it.signed, VKEY)
            except BadSignatureError:
                outcome = "bad_signature"  # the signature bytes were hit
            continue
        with pytest.raises(BadSignatureError):
            verify_signed(it.signed, VKEY)
        outcome = "bad_signature"
    return outcome


mutations = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(0, 7)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("set"), st.integers(0, 10**6), st.integers(0, 255)),
)


def mutate(message: bytes, op: tuple[str, int, int]) -> bytes:
    kind, pos, arg = op
    pos %= len(message)
    b = bytearray(message)
    if kind == "flip":
        b[pos] ^= 1 << arg
    elif kind == "truncate":
        del b[pos:]
    elif kind == "insert":
        b.insert(pos, arg)
    elif kind == "delete":
        del b[pos]
    else:
        b[pos] = arg
    return bytes(b)


@PROPS
@given(st.lists(readings, min_size=1, max_size=3), st.lists(mutations, min_size=1, max_size=4))
def test_every_mutation_is_an_error_or_fails_its_signature(rs: list[Reading], ops: list[tuple[str, int, int]]
                                                           ) -> None:
    signed = [sign_reading(r, KEY) for r in rs]
    message = encode_batch(signed)
    for op in ops:
        message = mutate(message, op) or b"\x00"
    _check_mutant(message, [s.payload for s in signed])


@pytest.mark.parametrize("field", ["seq", "read_at_ms", "energy_import_wh", "energy_export_wh"])
@pytest.mark.parametrize("value", [2**63, 2**64 - 1])
def test_integers_beyond_sqlite_are_invalid_field(field: str, value: int) -> None:
    """Legal u64 on the wire, but beyond what storage holds: refused at decode with invalid_field (issue 8 #1)."""
    base = Reading("M-1", KEY.key_id, 1, 1, True, 1, 1, "p")
    good = encode_reading(base)
    offsets = {"seq": 0, "read_at_ms": 8, "energy_import_wh": 19, "energy_export_wh": 27}
    at = len(b"gridmeter/reading/v1") + 1 + len("M-1") + 8 + offsets[field]
    payload = good[:at] + value.to_bytes(8, "little") + good[at + 8:]
    with pytest.raises(ProtocolError) as err:
        decode_reading(payload)
    assert err.value.reason == "invalid_field"
    items = decode_batch(encode_batch([(payload, KEY.sign(payload))]))
    assert items[0].signed is None and items[0].error is not None and items[0].error.reason == "invalid_field"


@PROPS
@given(st.binary(max_size=400))
def test_random_bytes_never_escape_protocol_error(data: bytes) -> None:
    text = "GMREG1:" + base64.urlsafe_b64encode(data).decode().rstrip("=")
    for decode in (decode_batch, decode_reading, lambda b: decode_ack(b, VKEY), lambda _b: parse_registration(text)):
        with contextlib.suppress(ProtocolError):
            decode(data)


@PROPS
@given(meter_ids, st.integers(0, I64_MAX), st.integers(0, I64_MAX), mutations)
def test_ack_round_trip_and_mutations(meter_id: str, seq: int, at: int, op: tuple[str, int, int]) -> None:
    body = encode_ack(Ack(meter_id, seq, at), KEY)
    assert decode_ack(body, VKEY) == Ack(meter_id, seq, at)
    with pytest.raises(BadSignatureError):
        decode_ack(body, VerifyKey(OTHER.public_key))
    mutant = mutate(body, op)
    if mutant != body:
        with pytest.raises(ProtocolError):
            decode_ack(mutant, VKEY)


registrations = st.builds(
    Registration, meter_id=meter_ids, public_key=st.just(KEY.public_key), profile=st.just("eastron-sdm630"),
    serial_number=st.from_regex(r"[A-Z0-9-]{1,20}", fullmatch=True), role=st.sampled_from(list(MeterRole)),
    zone_id=st.integers(0, 2**31 - 1), rated_max_power_w=st.integers(1, 2**32 - 1),
    installer_id=st.from_regex(r"[a-z0-9-]{1,20}", fullmatch=True), created_at_ms=st.integers(0, I64_MAX))


@PROPS
@given(registrations, mutations)
def test_registration_round_trip_and_mutations(reg: Registration, op: tuple[str, int, int]) -> None:
    text = sign_registration(reg, KEY).to_text()
    assert parse_registration(text).registration == reg
    mutant = mutate(text.encode(), op).decode("ascii", errors="replace")
    try:
        parsed = parse_registration(mutant)
    except ProtocolError:
        return
    # base64 slack bits or whitespace can leave the same record; anything else would have failed a signature
    assert parsed.registration == reg



@pytest.mark.parametrize("created", [2**63, 2**64 - 1])
def test_registration_created_at_beyond_sqlite_is_a_protocol_error(created: int) -> None:
    """A signed record with created_at_ms >= 2^63 (issue 8 #6): a ProtocolError naming the field, no traceback."""
    reg = Registration("M-1", KEY.public_key, "eastron-sdm630", "SN-1", MeterRole.GRID, 1, 1000, "inst", 5)
    signed = sign_registration(reg, KEY)
    body = bytearray(signed.body)
    at = len(body) - 1 - 8  # created_at_ms sits before has_previous (u8)
    assert int.from_bytes(body[at:at + 8], "little") == 5
    body[at:at + 8] = created.to_bytes(8, "little")
    raw = bytes(body) + KEY.sign(bytes(body))
    text = "GMREG1:" + base64.urlsafe_b64encode(raw).decode().rstrip("=")
    with pytest.raises(ProtocolError) as err:
        parse_registration(text)
    assert err.value.reason == "invalid_field"
