"""One integer domain: every wire u64 that is stored is at most 2^63-1 (SQLite's INTEGER is signed 64-bit).

Each u64 field of a reading, an ack and a registration record is tried at 0, 2^63-1, 2^63 and 2^64-1: the
decoders accept exactly 0..2^63-1 (seq from 1) and refuse the rest as invalid_field naming the field, never
an OverflowError later at INSERT."""

from __future__ import annotations

import base64
import struct

import pytest

from protocol import (
    Ack,
    InvalidFieldError,
    ProtocolError,
    SigningKey,
    VerifyKey,
    decode_ack,
    decode_batch,
    decode_reading,
    encode_ack,
    parse_registration,
)
from protocol.canonical import ACK_MAGIC, READING_MAGIC
from protocol.registration import REGISTRATION_MAGIC, TEXT_PREFIX

STORED_INT_MAX = 2**63 - 1  # SQLite INTEGER is signed 64-bit

KEY = SigningKey(bytes(range(32)))
EDGES = [0, 2**63 - 1, 2**63, 2**64 - 1]
READING_U64 = ["seq", "read_at_ms", "energy_import_wh", "energy_export_wh"]


def raw_reading(**u64: int) -> bytes:
    """Reading bytes laid out by hand (the encoder refuses out-of-domain values, an attacker does not)."""
    v = {"seq": 7, "read_at_ms": 1_780_000_000_000, "energy_import_wh": 10, "energy_export_wh": 20, **u64}
    mid, prof = b"HOUSE-1", b"p"
    return (READING_MAGIC + bytes([len(mid)]) + mid + KEY.key_id
            + struct.pack("<QQBHQQ", v["seq"], v["read_at_ms"], 1, 0, v["energy_import_wh"], v["energy_export_wh"])
            + bytes([len(prof)]) + prof + struct.pack("<H", 0))


@pytest.mark.parametrize("field", READING_U64)
@pytest.mark.parametrize("value", EDGES)
def test_reading_u64_fields_are_bounded_at_decode(field: str, value: int) -> None:
    payload = raw_reading(**{field: value})
    if value <= STORED_INT_MAX and not (field == "seq" and value == 0):
        assert getattr(decode_reading(payload), field) == value
        return
    with pytest.raises(InvalidFieldError, match=field) as exc:
        decode_reading(payload)
    assert exc.value.reason == "invalid_field"
    if value > STORED_INT_MAX:
        assert "2^63-1" in str(exc.value)
    # inside a batch the item carries the same error (the gateway quarantines it alone)
    batch = b"gridmeter/batch/v1" + struct.pack("<H", 1) + struct.pack("<H", len(payload)) + payload + KEY.sign(payload)
    (item,) = decode_batch(batch)
    assert item.signed is None and isinstance(item.error, InvalidFieldError) and field in str(item.error)


def test_encoders_refuse_what_decoders_refuse() -> None:
    from tests.unit.test_protocol import _reading

    for field in READING_U64:
        with pytest.raises(InvalidFieldError, match=field):
            _reading(**{field: 2**63})
    with pytest.raises(InvalidFieldError, match="acked_seq"):
        encode_ack(Ack("M-1", 2**63, 1), KEY)


@pytest.mark.parametrize("field", ["acked_seq", "issued_at_ms"])
@pytest.mark.parametrize("value", EDGES)
def test_ack_u64_fields_are_bounded(field: str, value: int) -> None:
    v = {"acked_seq": 5, "issued_at_ms": 1_780_000_000_000, field: value}
    body = ACK_MAGIC + bytes([3]) + b"M-1" + struct.pack("<QQ", v["acked_seq"], v["issued_at_ms"])
    msg = body + KEY.sign(body)
    if value <= STORED_INT_MAX:
        assert getattr(decode_ack(msg, VerifyKey(KEY.public_key)), field) == value
    else:
        with pytest.raises(InvalidFieldError, match=field):
            decode_ack(msg, VerifyKey(KEY.public_key))


def registration_text(created_at_ms: int) -> str:
    body = (REGISTRATION_MAGIC + bytes([7]) + b"HOUSE-9" + KEY.public_key + bytes([1]) + b"p" + bytes([2]) + b"SN"
            + bytes([0]) + struct.pack("<iI", 1, 10_000) + bytes([1]) + b"i" + struct.pack("<Q", created_at_ms)
            + bytes([0]))
    return TEXT_PREFIX + base64.urlsafe_b64encode(body + KEY.sign(body)).decode().rstrip("=")


@pytest.mark.parametrize("value", EDGES)
def test_registration_created_at_is_bounded(value: int) -> None:
    if value <= STORED_INT_MAX:
        assert parse_registration(registration_text(value)).registration.created_at_ms == value
        return
    with pytest.raises(ProtocolError, match="created_at_ms") as exc:
        parse_registration(registration_text(value))
    assert exc.value.reason == "invalid_field"


def test_reading_head_names_meter_key_and_seq_of_a_refused_reading() -> None:
    from protocol.canonical import reading_head

    assert reading_head(raw_reading(energy_import_wh=2**63)) == ("HOUSE-1", KEY.key_id, 7)
    assert reading_head(raw_reading(seq=2**63)) is None  # the seq itself out of domain: nothing to ack
    assert reading_head(raw_reading(seq=0)) is None
    assert reading_head(raw_reading()[:40]) is None  # truncated before the seq
    assert reading_head(b"gridmeter/reading/v2" + raw_reading()[20:]) is None
    assert reading_head(raw_reading().replace(b"HOUSE-1", b"HOUSE\n1")) is None  # not a meter id
