"""The only encoder/decoder of signed bytes.

Reading payload (all integers little-endian), signed as-is with Ed25519:

    magic            20  b"gridmeter/reading/v1"  (domain separation + version)
    meter_id         u8 len + UTF-8 (<= 32)
    key_id           8   first 8 bytes of sha256(device public key)
    seq              u64 strictly increasing per meter, from 1
    read_at_ms       u64 unix ms when the registers were read
    clock_synced     u8  0 / 1
    quality          u16 protocol.reading.Quality flags
    energy_import_wh u64 cumulative
    energy_export_wh u64 cumulative
    profile_id       u8 len + UTF-8 (<= 64)
    present          u16 bit i set = Instantaneous field i present (declaration order)
    values           i32 per present field, in declaration order

Every u64 that is stored (seq, read_at_ms, the energy counters; the ack's acked_seq and issued_at_ms) is at most
2^63-1 (protocol.wire.STORED_INT_MAX: SQLite's INTEGER is signed 64-bit); a larger value is invalid_field.

Batch message (what goes over MQTT; a single reading is a batch of one):

    magic  18 b"gridmeter/batch/v1", count u16 (1..MAX_BATCH_READINGS),
    then per reading: u16 payload length + payload + 64-byte signature.

Ack message (gateway -> agent, signed by the gateway key):

    magic 16 b"gridmeter/ack/v1", meter_id (u8 len + UTF-8), acked_seq u64 (highest contiguous
    seq durably stored), issued_at_ms u64; then the 64-byte signature over everything before it.
"""

from __future__ import annotations

import operator
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, fields

from protocol.errors import (
    DecodeError,
    InvalidFieldError,
    OversizedError,
    ProtocolError,
    UnsupportedVersionError,
)
from protocol.reading import (
    KEY_ID_BYTES,
    MAX_METER_ID_BYTES,
    MAX_PROFILE_ID_BYTES,
    METER_ID_RE,
    Instantaneous,
    Quality,
    Reading,
    SignedReading,
    validate_meter_id,
)
from protocol.signing import SIGNATURE_BYTES, SigningKey, VerifyKey
from protocol.wire import Reader, Writer, check_stored

READING_MAGIC = b"gridmeter/reading/v1"
BATCH_MAGIC = b"gridmeter/batch/v1"
ACK_MAGIC = b"gridmeter/ack/v1"
_FAMILY = b"gridmeter/"

MAX_READING_BYTES = 256  # largest possible payload is 20+33+8+8+8+1+2+8+8+65+2+36 = 199
MAX_BATCH_READINGS = 1000
MAX_BATCH_BYTES = len(BATCH_MAGIC) + 2 + MAX_BATCH_READINGS * (2 + MAX_READING_BYTES + SIGNATURE_BYTES)
# What a broker should carry at most (mosquitto message_size_limit): a full batch (~315 KiB) fits, nothing
# much larger does. The test/demo broker and provisioning's broker instructions use this value.
BROKER_MESSAGE_SIZE_LIMIT = 512 * 1024
assert BROKER_MESSAGE_SIZE_LIMIT >= MAX_BATCH_BYTES
_INSTANT_FIELDS = Instantaneous.names()
_AFTER_ID = struct.Struct("<8sQQBHQQB")  # key_id, seq, read_at_ms, clock_synced, quality, import, export, len
_PRESENT = struct.Struct("<H")
_KNOWN_QUALITY = int(sum(Quality))
_QUALITIES = tuple(Quality(q) for q in range(_KNOWN_QUALITY + 1))  # every known-flag combination (contiguous bits)
_NO_INSTANT = Instantaneous()
_MAGIC_LEN = len(READING_MAGIC)
_BATCH_HEAD = len(BATCH_MAGIC) + 2
_I32S = tuple(struct.Struct(f"<{n}i") for n in range(len(_INSTANT_FIELDS) + 1))  # present values, by count
_SPREADS: dict[int, Callable[[tuple[int | None, ...]], tuple[int | None, ...]]] = {}  # by present mask (< 512)
_SlotSetter = Callable[[object, object], None]
_INSTANT_SLOTS: dict[str, _SlotSetter] = {name: getattr(Instantaneous, name).__set__ for name in _INSTANT_FIELDS}
_READING_SLOTS: dict[str, _SlotSetter] = {f.name: getattr(Reading, f.name).__set__ for f in fields(Reading)}
_TEXT_MEMO_MAX = 4096  # distinct meter/profile ids remembered by the decoder; a flood of made-up ids resets it
_METER_IDS: dict[bytes, str | None] = {}
_PROFILE_IDS: dict[bytes, str | None] = {}


def _check_magic(r: Reader, magic: bytes, what: str) -> None:
    head = r.take(what, len(magic))
    if head != magic:
        if head.startswith(_FAMILY) or magic.startswith(head[: len(_FAMILY)]):
            raise UnsupportedVersionError(f"{what}: unsupported format/version {head!r} (expected {magic!r})")
        raise DecodeError(f"{what}: not a gridmeter message (prefix {head[:12]!r})")


def encode_reading(reading: Reading) -> bytes:
    w = Writer().raw(READING_MAGIC)
    w.str8("meter_id", reading.meter_id, MAX_METER_ID_BYTES).raw(reading.key_id)
    w.u64("seq", reading.seq).u64("read_at_ms", reading.read_at_ms)
    w.u8("clock_synced", 1 if reading.clock_synced else 0).u16("quality", int(reading.quality))
    w.u64("energy_import_wh", reading.energy_import_wh).u64("energy_export_wh", reading.energy_export_wh)
    w.str8("profile_id", reading.profile_id, MAX_PROFILE_ID_BYTES)
    present = 0
    values: list[tuple[str, int]] = []
    for i, name in enumerate(_INSTANT_FIELDS):
        v = getattr(reading.instant, name)
        if v is not None:
            present |= 1 << i
            values.append((name, v))
    w.u16("present", present)
    for name, v in values:
        w.i32(name, v)
    return w.getvalue()


def decode_reading(payload: bytes) -> Reading:
    """Decode payload bytes; raises a ProtocolError subclass (never anything else) on bad input.

    A fast path handles well-formed payloads; anything it does not like is decoded again by the checked
    path, which accepts exactly the same bytes and names what is wrong (tests assert both agree)."""
    if len(payload) > MAX_READING_BYTES:
        raise OversizedError(f"reading: {len(payload)} bytes exceeds {MAX_READING_BYTES}")
    fast = _decode_fast(bytes(payload))
    return fast if fast is not None else _decode_checked(payload)


def _decode_fast(p: bytes) -> Reading | None:
    """None when the payload is not plainly well-formed (the checked decoder then explains why)."""
    try:
        if p[:_MAGIC_LEN] != READING_MAGIC:
            return None
        o = _MAGIC_LEN + 1 + p[_MAGIC_LEN]
        raw = p[_MAGIC_LEN + 1 : o]
        meter_id = _METER_IDS.get(raw) or _text(raw, MAX_METER_ID_BYTES, _METER_IDS, METER_ID_RE)
        key_id, seq, read_at, synced, quality, imp, exp, pn = _AFTER_ID.unpack_from(p, o)
        o += _AFTER_ID.size
        raw = p[o : o + pn]
        profile_id = _PROFILE_IDS.get(raw) or _text(raw, MAX_PROFILE_ID_BYTES, _PROFILE_IDS)
        o += pn
        (present,) = _PRESENT.unpack_from(p, o)
        o += _PRESENT.size
    except (IndexError, struct.error):
        return None
    if (meter_id is None or profile_id is None or seq == 0 or synced > 1 or quality & ~_KNOWN_QUALITY
            or (seq | read_at | imp | exp) >> 63  # beyond STORED_INT_MAX: the checked path names the field
            or present >> len(_INSTANT_FIELDS) or len(p) != o + 4 * present.bit_count()):
        return None
    if present:
        values = (*_I32S[present.bit_count()].unpack_from(p, o), None)
        instant = _new_instant((_SPREADS.get(present) or _spread(present))(values))
    else:
        instant = _NO_INSTANT
    return _new_reading(meter_id, key_id, seq, read_at, synced == 1, imp, exp, profile_id, _QUALITIES[quality], instant)


def _text(raw: bytes, max_len: int, memo: dict[bytes, str | None], pattern: re.Pattern[str] | None = None
          ) -> str | None:
    """UTF-8 meter_id / profile_id, None if invalid; remembered in `memo` (a batch repeats the same few ids;
    bounded: a flood of made-up ids resets it)."""
    try:
        text: str | None = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and (len(raw) > max_len or (pattern is not None and not pattern.fullmatch(text))):
        text = None
    if len(memo) >= _TEXT_MEMO_MAX:
        memo.clear()
    memo[raw] = text
    return text


def _spread(present: int) -> Callable[[tuple[int | None, ...]], tuple[int | None, ...]]:
    """Maps the present values (+ a trailing None) onto all Instantaneous fields, in declaration order."""
    spread = _SPREADS.get(present)
    if spread is None:
        n, order = present.bit_count(), []
        for i in range(len(_INSTANT_FIELDS)):
            order.append(bin(present & ((1 << i) - 1)).count("1") if present >> i & 1 else n)
        spread = _SPREADS[present] = operator.itemgetter(*order)
    return spread


# Reading / Instantaneous built directly over their slots (the decoder has checked every field against the
# rules of their __post_init__ already): ~1 us less per reading than a loop over the fields,
# and gateway intake decodes tens of thousands of readings a second. A field added to either class must be added
# here too: the fast-vs-checked cross-check in tests/unit/test_protocol.py fails until it is.
def _new_reading(meter_id: str, key_id: bytes, seq: int, read_at_ms: int, clock_synced: bool, imp: int, exp: int,
                 profile_id: str, quality: Quality, instant: Instantaneous) -> Reading:
    s, r = _READING_SLOTS, object.__new__(Reading)
    s["meter_id"](r, meter_id)
    s["key_id"](r, key_id)
    s["seq"](r, seq)
    s["read_at_ms"](r, read_at_ms)
    s["clock_synced"](r, clock_synced)
    s["energy_import_wh"](r, imp)
    s["energy_export_wh"](r, exp)
    s["profile_id"](r, profile_id)
    s["quality"](r, quality)
    s["instant"](r, instant)
    return r


def _new_instant(v: tuple[int | None, ...]) -> Instantaneous:
    """`v` in declaration order."""
    s, i = _INSTANT_SLOTS, object.__new__(Instantaneous)
    s["power_w"](i, v[0])
    s["voltage_l1_dv"](i, v[1])
    s["voltage_l2_dv"](i, v[2])
    s["voltage_l3_dv"](i, v[3])
    s["current_l1_ma"](i, v[4])
    s["current_l2_ma"](i, v[5])
    s["current_l3_ma"](i, v[6])
    s["frequency_mhz"](i, v[7])
    s["power_factor_milli"](i, v[8])
    return i


def _decode_checked(payload: bytes) -> Reading:
    try:
        r = Reader(payload)
        _check_magic(r, READING_MAGIC, "reading")
        meter_id = r.str8("meter_id", MAX_METER_ID_BYTES)
        key_id = r.take("key_id", KEY_ID_BYTES)
        seq, read_at = r.stored_u64("seq", 1), r.stored_u64("read_at_ms")
        synced = r.u8("clock_synced")
        if synced > 1:
            raise InvalidFieldError(f"clock_synced: must be 0 or 1 (got {synced})")
        quality = r.u16("quality")
        imp, exp = r.stored_u64("energy_import_wh"), r.stored_u64("energy_export_wh")
        profile_id = r.str8("profile_id", MAX_PROFILE_ID_BYTES)
        present = r.u16("present")
        if present >> len(_INSTANT_FIELDS):
            raise InvalidFieldError(f"present: unknown instantaneous field bits 0x{present:04x}")
        inst = {name: r.i32(name) for i, name in enumerate(_INSTANT_FIELDS) if present & (1 << i)}
        r.expect_end("reading")
        unknown = quality & ~int(sum(Quality))
        if unknown:
            raise InvalidFieldError(f"quality: unknown flag bits 0x{unknown:04x}")
        return Reading(
            meter_id=meter_id,
            key_id=key_id,
            seq=seq,
            read_at_ms=read_at,
            clock_synced=bool(synced),
            energy_import_wh=imp,
            energy_export_wh=exp,
            profile_id=profile_id,
            quality=Quality(quality),
            instant=Instantaneous(**inst),
        )
    except ProtocolError:
        raise
    except (ValueError, TypeError, OverflowError) as exc:  # defensive: never let a foreign error escape
        raise DecodeError(f"reading: {exc}") from exc


def reading_head(payload: bytes) -> tuple[str, bytes, int] | None:
    """(meter_id, key_id, seq) of a reading payload whose head (magic .. seq) is well-formed and whose seq is in
    1..STORED_INT_MAX, else None. Lets the gateway authenticate a reading refused for a field further on (an
    energy counter beyond 2^63-1: a glitched register) and ack its seq, instead of leaving the agent to re-send
    it until the gap is declared lost."""
    try:
        r = Reader(payload)
        _check_magic(r, READING_MAGIC, "reading")
        meter_id = validate_meter_id(r.str8("meter_id", MAX_METER_ID_BYTES))
        key_id = r.take("key_id", KEY_ID_BYTES)
        return meter_id, key_id, r.stored_u64("seq", 1)
    except ProtocolError:
        return None


def sign_reading(reading: Reading, key: SigningKey) -> SignedReading:
    if reading.key_id != key.key_id:
        raise InvalidFieldError("key_id: reading names a different key than the one signing it")
    payload = encode_reading(reading)
    return SignedReading(payload=payload, signature=key.sign(payload), reading=reading)


def verify_signed(signed: SignedReading, key: VerifyKey) -> None:
    """Verify the exact received bytes. Raises BadSignatureError."""
    key.verify(signed.payload, signed.signature)


def encode_batch(items: list[SignedReading] | list[tuple[bytes, bytes]]) -> bytes:
    if not 1 <= len(items) <= MAX_BATCH_READINGS:
        raise InvalidFieldError(f"batch: 1..{MAX_BATCH_READINGS} readings (got {len(items)})")
    w = Writer().raw(BATCH_MAGIC).u16("count", len(items))
    for item in items:
        payload, sig = (item.payload, item.signature) if isinstance(item, SignedReading) else item
        if len(sig) != SIGNATURE_BYTES:
            raise InvalidFieldError(f"signature: must be {SIGNATURE_BYTES} bytes")
        w.bytes16("payload", payload, MAX_READING_BYTES).raw(sig)
    return w.getvalue()


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One entry of a batch: decoded reading, or the error that made it unreadable (kept for quarantine)."""

    payload: bytes
    signature: bytes
    signed: SignedReading | None
    error: ProtocolError | None


def decode_batch(message: bytes) -> list[BatchItem]:
    """Split a batch message. Framing errors raise; a bad reading inside good framing is returned as an
    item with `error` set so the gateway can quarantine it alone."""
    if len(message) > MAX_BATCH_BYTES:
        raise OversizedError(f"batch: {len(message)} bytes exceeds {MAX_BATCH_BYTES}")
    message = bytes(message)
    out: list[BatchItem] = []
    for payload, sig in _split_fast(message) or _split_checked(message):
        reading = _decode_fast(payload)
        if reading is None:
            try:
                reading = _decode_checked(payload)
            except ProtocolError as exc:
                out.append(BatchItem(payload, sig, None, exc))
                continue
        out.append(BatchItem(payload, sig, SignedReading(payload, sig, reading), None))
    return out


def _split_fast(m: bytes) -> list[tuple[bytes, bytes]] | None:
    """(payload, signature) pairs by slicing; None when the framing is not plainly well-formed (the checked
    splitter then names the error, or accepts exactly the same pairs)."""
    if m[: len(BATCH_MAGIC)] != BATCH_MAGIC or len(m) < _BATCH_HEAD:
        return None
    count = m[_BATCH_HEAD - 2] | m[_BATCH_HEAD - 1] << 8
    if not 1 <= count <= MAX_BATCH_READINGS:
        return None
    out = []
    o, end = _BATCH_HEAD, len(m)
    try:
        for _ in range(count):
            n = m[o] | m[o + 1] << 8
            p = o + 2 + n
            o = p + SIGNATURE_BYTES
            if n > MAX_READING_BYTES or o > end:
                return None
            out.append((m[p - n : p], m[p:o]))
    except IndexError:
        return None
    return out if o == end else None


def _split_checked(message: bytes) -> list[tuple[bytes, bytes]]:
    r = Reader(message)
    _check_magic(r, BATCH_MAGIC, "batch")
    count = r.u16("count")
    if not 1 <= count <= MAX_BATCH_READINGS:
        raise InvalidFieldError(f"batch count: 1..{MAX_BATCH_READINGS} (got {count})")
    out = [(r.bytes16("payload", MAX_READING_BYTES), r.take("signature", SIGNATURE_BYTES)) for _ in range(count)]
    r.expect_end("batch")
    return out


@dataclass(frozen=True, slots=True)
class Ack:
    meter_id: str
    acked_seq: int
    issued_at_ms: int


def encode_ack(ack: Ack, key: SigningKey) -> bytes:
    validate_meter_id(ack.meter_id)
    check_stored("acked_seq", ack.acked_seq)
    check_stored("issued_at_ms", ack.issued_at_ms)
    body = (
        Writer()
        .raw(ACK_MAGIC)
        .str8("meter_id", ack.meter_id, MAX_METER_ID_BYTES)
        .u64("acked_seq", ack.acked_seq)
        .u64("issued_at_ms", ack.issued_at_ms)
        .getvalue()
    )
    return body + key.sign(body)


def decode_ack(message: bytes, key: VerifyKey) -> Ack:
    """Decode and verify a gateway ack. Raises DecodeError / BadSignatureError."""
    if len(message) > 16 + 33 + 16 + SIGNATURE_BYTES:
        raise OversizedError(f"ack: {len(message)} bytes is too long")
    if len(message) < SIGNATURE_BYTES:
        raise DecodeError(f"ack: {len(message)} bytes is too short")
    body, sig = message[:-SIGNATURE_BYTES], message[-SIGNATURE_BYTES:]
    r = Reader(body)
    _check_magic(r, ACK_MAGIC, "ack")
    meter_id = r.str8("meter_id", MAX_METER_ID_BYTES)
    acked, issued = r.u64("acked_seq"), r.u64("issued_at_ms")
    r.expect_end("ack")
    key.verify(body, sig)  # first: a forged ack is bad_signature whatever its fields say
    check_stored("acked_seq", acked)
    check_stored("issued_at_ms", issued)
    return Ack(meter_id=validate_meter_id(meter_id), acked_seq=acked, issued_at_ms=issued)
