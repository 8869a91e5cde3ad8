"""Signed-reading wire format: frozen vectors, round trip, tamper, bounds, batch, ack, registration."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

import protocol
from protocol import (
    Ack,
    BadSignatureError,
    DecodeError,
    Instantaneous,
    InvalidFieldError,
    MeterRole,
    OversizedError,
    ProtocolError,
    Quality,
    Reading,
    Registration,
    SigningKey,
    TruncatedError,
    UnsupportedVersionError,
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
    topics,
    verify_signed,
)
from protocol.wire import STORED_INT_MAX

VECTORS = json.loads((Path(__file__).parent.parent / "vectors" / "reading_v1.json").read_text())
KEY = SigningKey(bytes.fromhex(VECTORS["seed_hex"]))


def _reading(**kw: object) -> Reading:
    base: dict[str, object] = dict(
        meter_id="M-1",
        key_id=KEY.key_id,
        seq=1,
        read_at_ms=1_780_000_000_000,
        clock_synced=True,
        energy_import_wh=10,
        energy_export_wh=20,
        profile_id="eastron-sdm120",
    )
    base.update(kw)
    return Reading(**base)  # type: ignore[arg-type]


def test_public_api_is_curated() -> None:
    assert len(set(protocol.__all__)) == len(protocol.__all__)
    exported = {n for n in dir(protocol) if (not n.startswith("_") and n[0].isupper()) or n in protocol.__all__}
    modules = {"canonical", "errors", "reading", "registration", "signing", "topics", "wire"}
    assert exported - modules == set(protocol.__all__)


@pytest.mark.parametrize("case", VECTORS["readings"], ids=lambda c: str(c["fields"]["seq"]))
def test_frozen_vectors_decode_verify_and_reencode(case: dict) -> None:
    payload, sig = bytes.fromhex(case["payload_hex"]), bytes.fromhex(case["signature_hex"])
    VerifyKey(bytes.fromhex(VECTORS["public_key_hex"])).verify(payload, sig)
    f = case["fields"]
    beyond = [k for k in ("seq", "read_at_ms", "energy_import_wh", "energy_export_wh") if f[k] > STORED_INT_MAX]
    if beyond:  # a v1 layout with a u64 no store can hold: refused at decode, naming the field (issue 8)
        with pytest.raises(InvalidFieldError, match=beyond[0]):
            decode_reading(payload)
        return
    r = decode_reading(payload)
    assert r.meter_id == f["meter_id"] and r.key_id.hex() == f["key_id_hex"]
    assert (r.seq, r.read_at_ms, r.clock_synced, int(r.quality)) == (
        f["seq"], f["read_at_ms"], f["clock_synced"], f["quality"]
    )
    assert (r.energy_import_wh, r.energy_export_wh, r.profile_id) == (
        f["energy_import_wh"], f["energy_export_wh"], f["profile_id"]
    )
    assert {k: getattr(r.instant, k) for k in Instantaneous.names()} == f["instant"]
    assert encode_reading(r) == payload  # canonical: one encoding per reading
    assert sign_reading(r, KEY).signature == sig  # Ed25519 is deterministic


def test_vector_byte_layout_is_what_the_docs_say() -> None:
    payload = bytes.fromhex(VECTORS["readings"][0]["payload_hex"])
    assert payload.startswith(b"gridmeter/reading/v1")
    off = 20
    assert payload[off] == len(b"HOUSE-0042") and payload[off + 1 : off + 11] == b"HOUSE-0042"
    off += 11 + 8
    seq, read_at = struct.unpack_from("<QQ", payload, off)
    assert (seq, read_at) == (1234567, 1_780_734_600_123)
    off += 16
    assert payload[off] == 1  # clock_synced
    imp, exp = struct.unpack_from("<QQ", payload, off + 3)
    assert (imp, exp) == (5_123_456, 987_654)


def test_batch_vector_splits_into_the_two_readings() -> None:
    items = decode_batch(bytes.fromhex(VECTORS["batch_hex"]))
    assert [i.signed.reading.seq for i in items if i.signed] == [1234567]
    # the second carries energy_import_wh = 2^64-1: framed fine, refused alone as invalid_field
    assert items[0].error is None and isinstance(items[1].error, InvalidFieldError)
    assert items[1].payload == bytes.fromhex(VECTORS["readings"][1]["payload_hex"])


def test_every_single_byte_flip_breaks_the_signature_or_the_decode() -> None:
    s = sign_reading(_reading(instant=Instantaneous(power_w=5)), KEY)
    vk = VerifyKey(KEY.public_key)
    for i in range(len(s.payload)):
        tampered = bytearray(s.payload)
        tampered[i] ^= 0x01
        with pytest.raises(ProtocolError):
            decode_reading(bytes(tampered))
            vk.verify(bytes(tampered), s.signature)
    verify_signed(s, vk)


def test_wrong_key_fails_verification() -> None:
    s = sign_reading(_reading(), KEY)
    with pytest.raises(BadSignatureError):
        verify_signed(s, VerifyKey(SigningKey.generate().public_key))


def test_every_truncation_is_a_decode_error_never_a_crash() -> None:
    payload = encode_reading(_reading(instant=Instantaneous(power_w=1, current_l3_ma=-7)))
    for n in range(len(payload)):
        with pytest.raises(DecodeError):
            decode_reading(payload[:n])


def test_unknown_version_oversized_and_trailing_bytes() -> None:
    payload = encode_reading(_reading())
    with pytest.raises(UnsupportedVersionError):
        decode_reading(b"gridmeter/reading/v2" + payload[20:])
    with pytest.raises(OversizedError):
        decode_reading(payload + b"\0" * 300)
    with pytest.raises(InvalidFieldError, match="trailing"):
        decode_reading(payload + b"\0")
    with pytest.raises(DecodeError, match="not a gridmeter message"):
        decode_reading(b"{" + payload[1:])


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"meter_id": "M" * 33}, "meter_id"),
        ({"meter_id": "a/b"}, "meter_id"),
        ({"meter_id": ""}, "meter_id"),
        ({"seq": 0}, "seq"),
        ({"seq": 2**64}, "seq"),
        ({"energy_import_wh": -1}, "energy_import_wh"),
        ({"energy_export_wh": 1.5}, "energy_export_wh"),
        ({"key_id": b"short"}, "key_id"),
    ],
)
def test_reading_fields_are_validated(kw: dict, match: str) -> None:
    with pytest.raises(InvalidFieldError, match=match):
        _reading(**kw)


def test_meter_id_of_32_bytes_round_trips() -> None:
    r = _reading(meter_id="M" * 32, energy_import_wh=2**63 - 1)  # the largest stored integer
    assert decode_reading(encode_reading(r)) == r


def test_good_means_synced_and_unflagged() -> None:
    assert _reading().good
    assert not _reading(clock_synced=False).good
    assert not _reading(quality=Quality.GLITCH_SUSPECTED).good


def test_batch_bounds_and_per_item_errors() -> None:
    good = sign_reading(_reading(), KEY)
    with pytest.raises(InvalidFieldError):
        encode_batch([])
    msg = encode_batch([good, (b"garbage-payload", b"\0" * 64)])
    items = decode_batch(msg)
    assert items[0].signed is not None and items[0].error is None
    assert items[1].signed is None and isinstance(items[1].error, DecodeError)
    for n in range(len(msg)):
        with pytest.raises(DecodeError):
            decode_batch(msg[:n])
    with pytest.raises(UnsupportedVersionError):
        decode_batch(b"gridmeter/batch/v9" + msg[18:])
    with pytest.raises(OversizedError):
        decode_batch(b"\0" * (protocol.MAX_BATCH_BYTES + 1))


def test_ack_round_trip_and_forgery() -> None:
    gw = SigningKey.generate()
    msg = encode_ack(Ack("M-1", 41, 1_780_000_000_000), gw)
    assert decode_ack(msg, VerifyKey(gw.public_key)) == Ack("M-1", 41, 1_780_000_000_000)
    forger = SigningKey.generate()
    with pytest.raises(BadSignatureError):
        decode_ack(encode_ack(Ack("M-1", 10**9, 1), forger), VerifyKey(gw.public_key))
    tampered = bytearray(msg)
    tampered[-70] ^= 1  # inside acked_seq
    with pytest.raises(BadSignatureError):
        decode_ack(bytes(tampered), VerifyKey(gw.public_key))
    with pytest.raises(DecodeError):
        decode_ack(msg[:30], VerifyKey(gw.public_key))


def _registration(key: SigningKey, prev: bytes | None = None) -> Registration:
    return Registration(
        meter_id="HOUSE-0042",
        public_key=key.public_key,
        profile="eastron-sdm630",
        serial_number="21034567",
        role=MeterRole.GRID,
        zone_id=3,
        rated_max_power_w=43_000,
        installer_id="inst-7",
        created_at_ms=1_780_000_000_000,
        previous_public_key=prev,
    )


def test_registration_text_round_trip_and_proof_of_possession() -> None:
    key = SigningKey.generate()
    signed = sign_registration(_registration(key), key)
    parsed = parse_registration(signed.to_text())
    assert parsed.registration == _registration(key)
    with pytest.raises(InvalidFieldError):
        sign_registration(_registration(key), SigningKey.generate())  # must be signed by the key it registers
    text = signed.to_text()
    forged = text[:-10] + ("A" if text[-10] != "A" else "B") + text[-9:]
    with pytest.raises(ProtocolError):
        parse_registration(forged)


def test_registration_rotation_needs_the_old_key() -> None:
    old, new = SigningKey.generate(), SigningKey.generate()
    rec = sign_registration(_registration(new, prev=old.public_key), new, previous=old)
    parsed = parse_registration(rec.to_text())
    assert parsed.registration.previous_public_key == old.public_key
    assert parsed.rotation_signature is not None
    impostor = SigningKey.generate()
    with pytest.raises(InvalidFieldError):
        sign_registration(_registration(new, prev=old.public_key), new, previous=impostor)


def test_registration_bad_inputs() -> None:
    with pytest.raises(DecodeError):
        parse_registration("hello")
    with pytest.raises(UnsupportedVersionError):
        parse_registration("GMREG2:abcd")
    with pytest.raises(TruncatedError):
        parse_registration("GMREG1:Z3JpZG1ldGVy")
    with pytest.raises(InvalidFieldError):
        MeterRole.parse("battery")


def test_topics() -> None:
    assert topics.readings_topic("M-1") == "gridmeter/v1/M-1/readings"
    assert topics.parse_meter_topic("gridmeter/v1/M-1/readings", "readings") == "M-1"
    assert topics.shared_readings_filter("gw") == "$share/gw/gridmeter/v1/+/readings"
    assert topics.agent_status_topic("gridmeter-agent-pi4") == "gridmeter/v1/agent/gridmeter-agent-pi4/status"
    with pytest.raises(InvalidFieldError):
        topics.agent_status_topic("a/b")
    for bad in ("gridmeter/v1/+/readings", "gridmeter/v1/a/b/readings", "other/v1/M-1/readings"):
        with pytest.raises(InvalidFieldError):
            topics.parse_meter_topic(bad, "readings")


def test_fast_and_checked_decoders_agree_on_mutated_payloads() -> None:
    """decode_reading's fast path must accept exactly what the checked path accepts, with equal results."""
    import random

    from protocol.canonical import _decode_checked, _decode_fast

    rng = random.Random(20261122)
    seeds = [encode_reading(_reading(instant=Instantaneous(power_w=-5, current_l3_ma=7))), encode_reading(_reading()),
             bytes.fromhex(VECTORS["readings"][1]["payload_hex"])]
    checked_ok = 0
    for i in range(20_000):
        p = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            op = rng.random()
            if op < 0.6 and p:
                p[rng.randrange(len(p))] = rng.randrange(256)
            elif op < 0.8 and p:
                del p[rng.randrange(len(p)) :]
            else:
                p.insert(rng.randrange(len(p) + 1), rng.randrange(256))
        payload = bytes(p)
        fast = _decode_fast(payload)
        try:
            slow = _decode_checked(payload)
        except ProtocolError:
            assert fast is None, (i, payload.hex())
            continue
        checked_ok += 1
        assert fast is None or fast == slow, (i, payload.hex())
        assert decode_reading(payload) == slow
    assert checked_ok > 1000  # the mutations must exercise the accepting side too


def test_fast_and_checked_batch_splitters_agree_on_mutated_batches() -> None:
    import random

    from protocol.canonical import _split_checked, _split_fast

    rng = random.Random(7)
    good = encode_batch([sign_reading(_reading(seq=s), KEY) for s in range(1, 6)])
    accepted = 0
    for i in range(5_000):
        m = bytearray(good)
        for _ in range(rng.randint(1, 2)):
            if rng.random() < 0.7:
                m[rng.randrange(min(len(m), 60))] = rng.randrange(256)  # framing bytes live near the front
            else:
                del m[rng.randrange(len(m)) :]
        msg = bytes(m)
        fast = _split_fast(msg)
        try:
            slow = _split_checked(msg)
        except ProtocolError:
            assert fast is None, (i, msg.hex())
            continue
        accepted += 1
        assert fast is None or fast == slow, (i, msg.hex())
    assert accepted > 100
