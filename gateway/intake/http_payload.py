"""Pure: one GridTokenX ingest body (bytes) -> an `IngestReading` in integer milli-Wh, or `IngestRefused`.

The contract (reference/gridtokenx-ingest.md) sends per-interval energies as JSON numbers: Wh with 3
decimals in the OBIS fields, kWh with 6 decimals in energy_generated / energy_consumed, and the signed net
`kwh` as an f64 (so 0.03 - 0.01 arrives as 0.019999999999999997). Both precisions are exactly one milli-Wh,
so the gateway's unit for this source is the integer mWh:
- numbers are parsed as exact decimals (json parse_float=Decimal), never through float, and scaled to mWh;
- digits beyond the contract's precision are accepted only as floating-point noise (at most 1 part in 10^12
  of the value, e.g. 1.9369999999999998 Wh = 1937 mWh); real extra precision (1.9375 Wh) is refused with
  `invalid_field`, never rounded away;
- the signature covers "{meter_id}:{kwh}:{timestamp_ms}" with kwh printed like Rust's f64 Display: the body's
  number is read as the f64 the device printed (correctly rounded, as serde does) and printed back; that
  string is what is verified, byte for byte, and the SAME string, as an exact decimal at 6 decimals, must
  equal export - import in mWh (`kwh_mismatch`);
- energy_generated / energy_consumed are optional; when present they must equal export / import in mWh
  (`energy_mismatch`): they are not signed, and a body contradicting itself is refused, not guessed at.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from decimal import MAX_EMAX, MIN_EMIN, ROUND_HALF_EVEN, Decimal, InvalidOperation, localcontext

import base58

from base.units import milli_text
from protocol import ProtocolError
from protocol.identifiers import validate_device_id

IMPORT_OBIS = "1.1.1.8.0.255"  # active energy imported (consumed) in the interval, Wh
EXPORT_OBIS = "1.1.2.8.0.255"  # active energy exported (generated) in the interval, Wh
REQUIRED_FIELDS = (IMPORT_OBIS, EXPORT_OBIS, "kwh", "timestamp", "signature")
MWH_PER_WH = 1000
MWH_PER_KWH = 1_000_000
# Largest mWh value of one reading: SQLite integers are i64 (the rated-power check bounds it physically, the
# oracle's max_energy_value bounds each submission).
MAX_READING_MWH = 2**63 - 1
# Digits beyond the contract's precision: accepted as float noise up to this fraction of the value.
NOISE_FRACTION = Decimal("1e-12")
_DECIMAL_PREC = 80  # exact for every value within the bounds above, whatever the number of digits sent
MAX_SIGNATURE_CHARS = 100  # base58 of 64 bytes is at most 88 characters


class IngestRefused(Exception):
    """A refusal: HTTP status, stable reason code (metric label, stored), a detail naming the field."""

    def __init__(self, status: int, reason: str, detail: str, extra: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.reason, self.detail = status, reason, detail
        self.extra = extra or {}  # more fields for the response (e.g. the reading_id of a duplicate)


@dataclass(frozen=True, slots=True)
class IngestReading:
    meter_id: str
    timestamp_s: int
    import_mwh: int
    export_mwh: int
    kwh_text: str  # the signed net kWh as the device printed it (Rust f64 Display)
    signature: bytes


def rust_f64_display(x: float) -> str:
    """Rust's `{}` for f64: shortest round-trip digits, never an exponent, integral values without ".0"."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    s = format(Decimal(repr(x)), "f")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s


def signed_message(meter_id: str, kwh_text: str, timestamp_s: int) -> bytes:
    return f"{meter_id}:{kwh_text}:{timestamp_s * 1000}".encode()


def _number(name: str, v: object) -> Decimal:
    if isinstance(v, bool) or not isinstance(v, (int, Decimal)):
        raise IngestRefused(400, "malformed", f"payload.{name}: must be a number")
    d = Decimal(v)
    if not d.is_finite():
        raise IngestRefused(400, "invalid_field", f"payload.{name}: must be finite")
    return d


def to_mwh(name: str, d: Decimal, mwh_per_unit: int, unit: str, *, signed: bool = False) -> int:
    """An exact decimal in Wh or kWh -> integer mWh at the contract's precision (digits beyond it only as
    float noise, see the module docstring)."""
    if not signed and d < 0:
        raise IngestRefused(400, "invalid_field", f"payload.{name}: must not be negative (got {d:.6g})")
    if d.copy_abs() > MAX_READING_MWH // mwh_per_unit:  # copy_abs: exact, whatever the exponent
        raise IngestRefused(400, "invalid_field", f"payload.{name}: beyond {MAX_READING_MWH // mwh_per_unit} {unit}")
    with localcontext() as ctx:
        ctx.prec, ctx.Emax, ctx.Emin = _DECIMAL_PREC, MAX_EMAX, MIN_EMIN  # 1e-999999999 is noise, not an error
        scaled = d * mwh_per_unit
        q = scaled.to_integral_value(ROUND_HALF_EVEN)
        if abs(scaled - q) > NOISE_FRACTION * max(Decimal(1), abs(scaled)):
            decimals = len(str(mwh_per_unit)) - 1
            raise IngestRefused(400, "invalid_field", f"payload.{name}: {d:.20g} {unit} has more than {decimals} "
                                                      "decimals (the contract's precision is 1 mWh; never rounded)")
    return int(q)


def _timestamp_s(v: object) -> int:
    if not isinstance(v, str) or len(v) > 40:
        raise IngestRefused(400, "malformed", "payload.timestamp: must be an RFC 3339 string")
    try:
        dt = datetime.fromisoformat(v)
    except ValueError:
        raise IngestRefused(400, "malformed", f"payload.timestamp: not RFC 3339 ({v!r})") from None
    if dt.tzinfo is None or dt.microsecond:
        raise IngestRefused(400, "malformed", "payload.timestamp: needs a UTC offset and whole seconds")
    return int(dt.timestamp())


def _kwh_text(v: object) -> str:
    """The signed net kWh as printed by the device: the body's number as the f64 it came from."""
    d = _number("kwh", v)
    try:
        kwh = float(d)
    except (OverflowError, InvalidOperation):
        kwh = math.inf
    if not math.isfinite(kwh) or abs(kwh) > MAX_READING_MWH / MWH_PER_KWH:
        raise IngestRefused(400, "invalid_field", f"payload.kwh: must be within +-{MAX_READING_MWH // MWH_PER_KWH} kWh")
    return rust_f64_display(kwh)


def _signature(v: object) -> bytes:
    try:
        sig = base58.b58decode(v) if isinstance(v, str) and len(v) <= MAX_SIGNATURE_CHARS else b""
    except ValueError:
        sig = b""
    if len(sig) != 64:
        raise IngestRefused(400, "malformed", "payload.signature: must be base58 of 64 bytes")
    return sig


def parse_body(body: bytes) -> tuple[IngestReading, dict[str, object]]:
    """Structure and values (and the payload object, for `check_consistency`); the signature is checked by
    the caller (it needs the registry)."""
    if not body:
        raise IngestRefused(400, "malformed", "body: empty (expected a JSON object)")
    try:
        doc = json.loads(body, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise IngestRefused(400, "malformed", f"body: not JSON ({str(exc)[:200]})") from None
    if not isinstance(doc, dict) or doc.get("protocol") != "dlms" or not isinstance(doc.get("payload"), dict):
        raise IngestRefused(400, "malformed", 'body: needs "protocol": "dlms", "device_id" and a "payload" object')
    try:
        meter_id = validate_device_id(doc.get("device_id"))
    except ProtocolError as exc:
        raise IngestRefused(400, "invalid_field", str(exc)) from None
    p: dict[str, object] = doc["payload"]
    for k in REQUIRED_FIELDS:
        if k not in p:
            raise IngestRefused(400, "malformed", f"payload.{k}: missing")
    imp = to_mwh(IMPORT_OBIS, _number(IMPORT_OBIS, p[IMPORT_OBIS]), MWH_PER_WH, "Wh")
    exp = to_mwh(EXPORT_OBIS, _number(EXPORT_OBIS, p[EXPORT_OBIS]), MWH_PER_WH, "Wh")
    return IngestReading(meter_id, _timestamp_s(p["timestamp"]), imp, exp, _kwh_text(p["kwh"]),
                         _signature(p["signature"])), p


def check_consistency(payload: dict[str, object], r: IngestReading) -> None:
    """After the signature verified: the unsigned split must agree with the signed net and with itself."""
    try:
        net: int | None = to_mwh("kwh", Decimal(r.kwh_text), MWH_PER_KWH, "kWh", signed=True)
    except IngestRefused:
        net = None  # more than 6 decimals beyond float noise: cannot equal a split given in mWh
    if net != r.export_mwh - r.import_mwh:
        raise IngestRefused(400, "kwh_mismatch", f"export {wh_text(r.export_mwh)} Wh - import {wh_text(r.import_mwh)}"
                                                 f" Wh != signed net {r.kwh_text} kWh (compared in mWh)")
    for name, mwh, obis in (("energy_generated", r.export_mwh, EXPORT_OBIS),
                            ("energy_consumed", r.import_mwh, IMPORT_OBIS)):
        if name in payload:
            d = _number(name, payload[name])
            if to_mwh(name, d, MWH_PER_KWH, "kWh") != mwh:
                raise IngestRefused(400, "energy_mismatch", f"payload.{name} {d} kWh != payload.{obis} "
                                                            f"{wh_text(mwh)} Wh")


def wh_text(mwh: int) -> str:
    """mWh as Wh with 3 decimals, exactly (for messages and status documents)."""
    return milli_text(mwh)
