"""Registration record: binds a meter_id to a device key. Crosses from provisioning to the gateway.

Signed bytes (little-endian):
    magic 25 b"gridmeter/registration/v1", meter_id (u8 len), public_key 32, profile (u8 len),
    serial_number (u8 len), role u8 (MeterRole), zone_id i32, rated_max_power_w u32,
    installer_id (u8 len), created_at_ms u64 (<= 2^63-1: stored), has_previous u8, [previous_public_key 32]
then signature (64) by the new key: proof of possession; if has_previous, rotation_signature (64) by the
previous key over the same bytes: a new key is accepted only if the old one vouches for it.

Text form (file and QR code): "GMREG1:" + base64url(signed bytes + signature(s)), no padding.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from enum import IntEnum

from protocol.errors import DecodeError, InvalidFieldError, UnsupportedVersionError
from protocol.reading import MAX_METER_ID_BYTES, MAX_PROFILE_ID_BYTES, validate_meter_id
from protocol.signing import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, SigningKey, VerifyKey
from protocol.wire import I32_MAX, Reader, Writer, check_range, check_stored

REGISTRATION_MAGIC = b"gridmeter/registration/v1"
TEXT_PREFIX = "GMREG1:"
MAX_TEXT_CHARS = 1024


class MeterRole(IntEnum):
    """How the gateway maps counters to oracle produced/consumed."""

    GRID = 0  # bidirectional grid meter: produced = export, consumed = import
    PRODUCTION = 1  # PV production meter: produced = generation (the export counter)
    CONSUMPTION = 2  # consumption meter: consumed = import

    @classmethod
    def parse(cls, text: str) -> MeterRole:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise InvalidFieldError(f"role: one of grid, production, consumption (got {text!r})") from None


@dataclass(frozen=True, slots=True)
class Registration:
    meter_id: str
    public_key: bytes
    profile: str
    serial_number: str
    role: MeterRole
    zone_id: int
    rated_max_power_w: int
    installer_id: str
    created_at_ms: int
    previous_public_key: bytes | None = None

    def __post_init__(self) -> None:
        validate_meter_id(self.meter_id)
        if len(self.public_key) != PUBLIC_KEY_BYTES:
            raise InvalidFieldError("public_key: must be 32 bytes")
        if self.previous_public_key is not None and len(self.previous_public_key) != PUBLIC_KEY_BYTES:
            raise InvalidFieldError("previous_public_key: must be 32 bytes")
        check_range("zone_id", self.zone_id, 0, I32_MAX)
        check_range("rated_max_power_w", self.rated_max_power_w, 1, 2**32 - 1)
        check_stored("created_at_ms", self.created_at_ms)


def _body(reg: Registration) -> bytes:
    w = Writer().raw(REGISTRATION_MAGIC).str8("meter_id", reg.meter_id, MAX_METER_ID_BYTES)
    w.raw(reg.public_key).str8("profile", reg.profile, MAX_PROFILE_ID_BYTES)
    w.str8("serial_number", reg.serial_number, 64).u8("role", int(reg.role))
    w.i32("zone_id", reg.zone_id).u32("rated_max_power_w", reg.rated_max_power_w)
    w.str8("installer_id", reg.installer_id, 64).u64("created_at_ms", reg.created_at_ms)
    if reg.previous_public_key is None:
        w.u8("has_previous", 0)
    else:
        w.u8("has_previous", 1).raw(reg.previous_public_key)
    return w.getvalue()


@dataclass(frozen=True, slots=True)
class SignedRegistration:
    registration: Registration
    body: bytes
    signature: bytes
    rotation_signature: bytes | None

    def to_text(self) -> str:
        raw = self.body + self.signature + (self.rotation_signature or b"")
        return TEXT_PREFIX + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def sign_registration(reg: Registration, key: SigningKey, previous: SigningKey | None = None) -> SignedRegistration:
    if key.public_key != reg.public_key:
        raise InvalidFieldError("public_key: the record must be signed by the key it registers")
    if (previous is None) != (reg.previous_public_key is None):
        raise InvalidFieldError("previous_public_key: rotation needs both the old key and its public key")
    if previous is not None and previous.public_key != reg.previous_public_key:
        raise InvalidFieldError("previous_public_key: does not match the old signing key")
    body = _body(reg)
    return SignedRegistration(reg, body, key.sign(body), previous.sign(body) if previous else None)


def parse_registration(text: str) -> SignedRegistration:
    """Parse and verify a registration record's text form. Raises a ProtocolError subclass."""
    text = text.strip()
    if len(text) > MAX_TEXT_CHARS:
        raise DecodeError(f"registration: longer than {MAX_TEXT_CHARS} characters")
    if not text.startswith(TEXT_PREFIX):
        if text.startswith("GMREG"):
            raise UnsupportedVersionError(f"registration: unsupported version {text[:7]!r}")
        raise DecodeError("registration: not a gridmeter registration record (expected GMREG1:...)")
    b64 = text[len(TEXT_PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))
    except (binascii.Error, ValueError) as exc:
        raise DecodeError(f"registration: bad base64 ({exc})") from exc
    r = Reader(raw)
    if r.take("magic", len(REGISTRATION_MAGIC)) != REGISTRATION_MAGIC:
        raise UnsupportedVersionError("registration: unknown magic/version")
    meter_id = r.str8("meter_id", MAX_METER_ID_BYTES)
    public_key = r.take("public_key", PUBLIC_KEY_BYTES)
    profile = r.str8("profile", MAX_PROFILE_ID_BYTES)
    serial = r.str8("serial_number", 64)
    role_raw = r.u8("role")
    zone, rated = r.i32("zone_id"), r.u32("rated_max_power_w")
    installer, created = r.str8("installer_id", 64), r.stored_u64("created_at_ms")
    has_prev = r.u8("has_previous")
    prev = r.take("previous_public_key", PUBLIC_KEY_BYTES) if has_prev == 1 else None
    if has_prev > 1:
        raise InvalidFieldError("has_previous: must be 0 or 1")
    body_len = len(raw) - r.remaining
    sig = r.take("signature", SIGNATURE_BYTES)
    rot = r.take("rotation_signature", SIGNATURE_BYTES) if prev is not None else None
    r.expect_end("registration")
    try:
        role = MeterRole(role_raw)
    except ValueError:
        raise InvalidFieldError(f"role: unknown value {role_raw}") from None
    reg = Registration(meter_id, public_key, profile, serial, role, zone, rated, installer, created, prev)
    body = raw[:body_len]
    VerifyKey(public_key).verify(body, sig)
    if prev is not None and rot is not None:
        VerifyKey(prev).verify(body, rot)
    return SignedRegistration(reg, body, sig, rot)
