"""gateway.intake.http_payload: the contract's numbers to exact mWh, the signed kWh, consistency (table tests)."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from gateway.intake.http_payload import (
    EXPORT_OBIS,
    IMPORT_OBIS,
    MWH_PER_KWH,
    MWH_PER_WH,
    IngestReading,
    IngestRefused,
    check_consistency,
    parse_body,
    to_mwh,
    wh_text,
)

SIG = "2oEXHHnEWjBZnXj3G65GErjavfqfmXw97JBN6yNnNdB53dyMVs3rN9ExzSJregWosM988uDvXkJPSeTd9xUX3Pcq"


@pytest.mark.parametrize(("text", "mwh"), [
    ("1.937", 1937), ("0", 0), ("0.000", 0), ("5000", 5_000_000), ("1.9370000", 1937),
    ("1.9369999999999998", 1937),  # 0.001937 * 1000 in floating point: noise, not precision
    ("276.00000000000006", 276_000), ("1e3", 1_000_000), ("0.001", 1),
    ("1e-999999999", 0),  # beyond Decimal's default exponent range: noise, not an Overflow escaping as HTTP 500
])
def test_wh_to_mwh_exact(text: str, mwh: int) -> None:
    assert to_mwh("x", Decimal(text), MWH_PER_WH, "Wh") == mwh


@pytest.mark.parametrize(("text", "mwh"), [
    ("0.019999999999999997", 20_000),  # 0.03 - 0.01
    ("-5", -5_000_000), ("-0.123456", -123_456), ("0.30000000000000004", 300_000), ("0", 0),
])
def test_kwh_to_mwh_exact(text: str, mwh: int) -> None:
    assert to_mwh("kwh", Decimal(text), MWH_PER_KWH, "kWh", signed=True) == mwh


@pytest.mark.parametrize("text", ["1.9375", "0.0005", "1.93701", "-1", "1e30", "1e999999999", "-1e999999999"])
def test_wh_refused_not_rounded(text: str) -> None:
    with pytest.raises(IngestRefused) as e:
        to_mwh("x", Decimal(text), MWH_PER_WH, "Wh")
    assert (e.value.status, e.value.reason) == (400, "invalid_field")


def body(**payload: object) -> bytes:
    p = {IMPORT_OBIS: 10.0, EXPORT_OBIS: 30.0, "kwh": 0.019999999999999997, "timestamp": "2026-06-06T08:30:00+00:00",
         "signature": SIG}
    p.update(payload)
    return json.dumps({"protocol": "dlms", "device_id": "METER-001", "payload": p}).encode()


def test_parse_body_reads_the_signed_kwh_as_printed() -> None:
    r, payload = parse_body(body())
    assert (r.meter_id, r.timestamp_s, r.import_mwh, r.export_mwh) == ("METER-001", 1780734600, 10_000, 30_000)
    assert r.kwh_text == "0.019999999999999997" and len(r.signature) == 64
    assert parse_body(body(kwh=-5.0))[0].kwh_text == "-5"  # serde writes -5.0; Rust's Display prints -5
    check_consistency(payload, r)


@pytest.mark.parametrize(("raw", "reason"), [
    (b"", "malformed"), (b"[]", "malformed"), (b"{not json", "malformed"),
    (body(**{IMPORT_OBIS: "10"}), "malformed"), (body(**{IMPORT_OBIS: True}), "malformed"),
    (body(**{IMPORT_OBIS: 1.9375}), "invalid_field"), (body(**{EXPORT_OBIS: -1.0}), "invalid_field"),
    (body(kwh=1e400), "malformed"),  # JSON parses it as Infinity: not a finite number
    (body(signature="0OIl"), "malformed"), (body(timestamp="2026-06-06T08:30:00.5+00:00"), "malformed"),
])
def test_parse_body_refusals(raw: bytes, reason: str) -> None:
    with pytest.raises(IngestRefused) as e:
        parse_body(raw)
    assert e.value.reason == reason


def reading(imp: int, exp: int, kwh: str) -> IngestReading:
    return IngestReading("M", 0, imp, exp, kwh, b"")


@pytest.mark.parametrize(("imp", "exp", "kwh", "extra", "reason"), [
    (10_000, 30_000, "0.019999999999999997", {}, None),
    (10_000, 30_000, "0.02", {"energy_generated": Decimal("0.03"), "energy_consumed": Decimal("0.01")}, None),
    (1937, 0, "-0.001937", {"energy_consumed": Decimal("0.0019369999999999998")}, None),
    (10_000, 30_000, "0.021", {}, "kwh_mismatch"),
    (10_000, 30_000, "0.0200005", {}, "kwh_mismatch"),  # more precise than the split can be
    (10_000, 30_000, "0.02", {"energy_generated": Decimal("0.031")}, "energy_mismatch"),
    (10_000, 30_000, "0.02", {"energy_consumed": Decimal("0")}, "energy_mismatch"),
    (10_000, 30_000, "0.02", {"energy_consumed": "0.01"}, "malformed"),
])
def test_consistency(imp: int, exp: int, kwh: str, extra: dict[str, object], reason: str | None) -> None:
    if reason is None:
        check_consistency(extra, reading(imp, exp, kwh))
        return
    with pytest.raises(IngestRefused) as e:
        check_consistency(extra, reading(imp, exp, kwh))
    assert e.value.reason == reason


def test_wh_text() -> None:
    assert [wh_text(v) for v in (0, 1, 1937, -250, 5_000_000)] == ["0.000", "0.001", "1.937", "-0.250", "5000.000"]
