"""GridTokenX's existing HTTP ingest contract, so meters and head-ends already speaking it can move over.

POST /v1/private-network/ingest (header X-API-KEY), body
  {"protocol": "dlms", "device_id": "<meter_id>", "payload": {"1.1.1.8.0.255": <import Wh>,
   "1.1.2.8.0.255": <export Wh>, "kwh": <net kWh>, "timestamp": "<RFC 3339, seconds>", "signature": "<base58>"}}
The device signs UTF-8 "{meter_id}:{kwh}:{timestamp_ms}" with kwh printed like Rust's f64 Display.
Status codes (as the GridTokenX bridge): 202 accepted, 400 malformed, 401 API key wrong or signature
could not be checked (unknown meter), 403 signature invalid or meter suspended/retired, 409 replayed
(timestamp not after the meter's last one); added: 429 when one client address exceeds its request rate.
GET /health answers {"status": "ok"}.

These are per-interval energies, stored directly as interval submissions (outbox). Rules this gateway
adds: Wh values must be whole (the oracle takes integer Wh; a fractional Wh is refused, never rounded);
the signature covers only the NET kWh, so the import/export split is accepted only if
export - import == kwh * 1000 exactly; timestamps strictly increase per meter, lie within the
acceptance window and not in the future beyond the skew; energy per interval is bounded by the meter's
rated power over the time since its previous reading. Every refusal is stored in the quarantine with its
reason and the original body, and counted.
"""

from __future__ import annotations

import hmac
import json
import math
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal

import base58
from aiohttp import web

from gateway.checks import Limits, TokenBucket
from gateway.intervals import map_role
from gateway.metrics import Metrics
from gateway.registry import MeterStatus, Registry
from gateway.store import RejectionRow, Store
from protocol import BadSignatureError, ProtocolError, VerifyKey
from protocol.identifiers import validate_device_id

INGEST_PATH = "/v1/private-network/ingest"
# Per client address: a head-end posting every meter of a feeder every 15 min stays far below this; a
# misbehaving client gets 429 instead of filling the quarantine.
DEFAULT_CLIENT_RATE_PER_S = 100.0
DEFAULT_CLIENT_BURST = 2000
DEFAULT_MAX_CLIENTS_TRACKED = 10_000
IMPORT_OBIS = "1.1.1.8.0.255"  # active energy imported (consumed) in the interval, Wh
EXPORT_OBIS = "1.1.2.8.0.255"  # active energy exported (generated) in the interval, Wh
_MS_PER_HOUR = 3_600_000
# Largest Wh value of one interval that is stored at all: SQLite integers are i64. (The oracle's own
# max_energy_value, read from chain, bounds what is submitted; the rated-power check bounds it physically.)
MAX_INTERVAL_WH = 2**63 - 1


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


def signed_message(meter_id: str, kwh: float, timestamp_s: int) -> bytes:
    return f"{meter_id}:{rust_f64_display(kwh)}:{timestamp_s * 1000}".encode()


class IngestRefused(Exception):
    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.reason, self.detail = status, reason, detail


def _whole_wh(name: str, v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, Decimal)):
        raise IngestRefused(400, "malformed", f"payload.{name}: must be a number of Wh")
    d = Decimal(v)
    if not d.is_finite() or not 0 <= d <= MAX_INTERVAL_WH:
        raise IngestRefused(400, "invalid_field", f"payload.{name}: must be in 0..{MAX_INTERVAL_WH} Wh (got {d})")
    if d != d.to_integral_value():
        raise IngestRefused(400, "non_integral_wh", f"payload.{name}: {d} Wh is not a whole Wh (never rounded)")
    return int(d)


def _kwh(v: object) -> float:
    """The signed net kWh as the f64 the device printed (the signature covers its Rust Display form)."""
    if isinstance(v, bool) or not isinstance(v, (int, Decimal)):
        raise IngestRefused(400, "malformed", "payload.kwh: must be a number")
    try:
        kwh = float(v)
    except OverflowError:  # an int beyond f64 range
        kwh = math.inf
    if not math.isfinite(kwh) or abs(kwh) * 1000 > MAX_INTERVAL_WH:
        raise IngestRefused(400, "invalid_field", f"payload.kwh: must be within +-{MAX_INTERVAL_WH // 1000} kWh")
    return kwh


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


def _parse(body: bytes) -> tuple[str, dict[str, object]]:
    try:
        doc = json.loads(body, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise IngestRefused(400, "malformed", f"body: not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("protocol") != "dlms" or not isinstance(doc.get("payload"), dict):
        raise IngestRefused(400, "malformed", 'body: needs "protocol": "dlms", "device_id" and a "payload" object')
    try:
        meter_id = validate_device_id(doc.get("device_id"))
    except ProtocolError as exc:
        raise IngestRefused(400, "invalid_field", str(exc)) from None
    payload: dict[str, object] = doc["payload"]
    for k in (IMPORT_OBIS, EXPORT_OBIS, "kwh", "timestamp", "signature"):
        if k not in payload:
            raise IngestRefused(400, "malformed", f"payload.{k}: missing")
    return meter_id, payload


class HttpIngest:
    def __init__(self, store: Store, registry: Registry, limits: Limits, api_keys: list[str], metrics: Metrics,
                 *, max_body_bytes: int = 16384, clock: Callable[[], float] = time.time) -> None:
        self.store, self.registry, self.limits, self.metrics = store, registry, limits, metrics
        self.api_keys = [k.encode() for k in api_keys]
        self.max_body_bytes, self.clock = max_body_bytes, clock
        self.clients: dict[str, TokenBucket] = {}

    def _client_allowed(self, req: web.Request) -> bool:
        peer = req.remote or "?"
        now = self.clock()
        if peer not in self.clients and len(self.clients) >= DEFAULT_MAX_CLIENTS_TRACKED:
            self.clients.clear()  # bounded memory; a reset only makes the limit briefly more lenient
        bucket = self.clients.get(peer) or TokenBucket(float(DEFAULT_CLIENT_BURST), now)
        self.clients[peer], ok = bucket.take(1, now, DEFAULT_CLIENT_RATE_PER_S, DEFAULT_CLIENT_BURST)
        return ok

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body_bytes)
        app.router.add_post(INGEST_PATH, self.ingest)
        app.router.add_get("/health", self.health)
        return app

    async def health(self, _req: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "service": "gridmeter-gateway"})

    def _api_key_ok(self, req: web.Request) -> bool:
        # non-UTF-8 header bytes arrive as surrogates (aiohttp decodes with surrogateescape): just not equal
        given = req.headers.get("X-API-KEY", "").encode("utf-8", "surrogateescape")
        return any(hmac.compare_digest(given, k) for k in self.api_keys)

    async def ingest(self, req: web.Request) -> web.Response:
        self.metrics.received.labels("http").inc()
        body = b""
        try:
            if not self._client_allowed(req):
                self.metrics.rejected.labels("http", "client_rate_exceeded").inc()
                return web.json_response({"status": "rejected", "reason": "client_rate_exceeded"}, status=429)
            if not self._api_key_ok(req):
                raise IngestRefused(401, "bad_api_key", "X-API-KEY missing or not accepted")
            if req.content_length is not None and req.content_length > self.max_body_bytes:
                raise IngestRefused(400, "oversized", f"body over {self.max_body_bytes} bytes")
            try:
                body = await req.read()
            except web.HTTPRequestEntityTooLarge:
                raise IngestRefused(400, "oversized", f"body over {self.max_body_bytes} bytes") from None
            key = self._accept(body)
        except IngestRefused as exc:
            self._quarantine(body, exc)
            return web.json_response({"status": "rejected", "reason": exc.reason, "error": exc.detail},
                                     status=exc.status)
        self.metrics.accepted.labels("http").inc()
        return web.json_response({"status": "accepted", "reading_id": str(uuid.uuid4()), "key": key}, status=202)

    def _accept(self, body: bytes) -> str:
        meter_id, p = _parse(body)
        imp, exp = _whole_wh(IMPORT_OBIS, p[IMPORT_OBIS]), _whole_wh(EXPORT_OBIS, p[EXPORT_OBIS])
        ts = _timestamp_s(p["timestamp"])
        kwh = _kwh(p["kwh"])
        sig_text = p["signature"]
        try:
            sig = base58.b58decode(sig_text) if isinstance(sig_text, str) and len(sig_text) <= 100 else b""
        except ValueError:
            sig = b""
        if len(sig) != 64:
            raise IngestRefused(400, "malformed", "payload.signature: must be base58 of 64 bytes")
        meter = self.registry.get(meter_id)
        if meter is None:
            raise IngestRefused(401, "unknown_meter", f"{meter_id}: not registered, signature cannot be checked")
        try:
            VerifyKey(meter.public_key).verify(signed_message(meter_id, kwh, ts), sig)
        except BadSignatureError:
            raise IngestRefused(403, "bad_signature", "signature does not verify against the registered key") from None
        if meter.status is not MeterStatus.ACTIVE:
            raise IngestRefused(403, f"meter_{meter.status.value}", f"{meter_id} is {meter.status.value}")
        if Decimal(rust_f64_display(kwh)) * 1000 != exp - imp:
            raise IngestRefused(400, "kwh_mismatch", f"export {exp} Wh - import {imp} Wh != signed net {kwh} kWh")
        self._time_checks(meter_id, ts, imp, exp, meter.rated_max_power_w)
        produced, consumed = map_role(meter.role, imp, exp)
        if not self.store.add_http_interval(meter_id, meter.zone_id, produced, consumed, ts * 1000, body,
                                            int(self.clock() * 1000)):
            raise IngestRefused(409, "duplicate", f"{meter_id}: timestamp {ts} already ingested")
        return f"http:{meter_id}:{ts}"  # outbox key: distinct from MQTT intervals of the same meter and second

    def _time_checks(self, meter_id: str, ts: int, imp: int, exp: int, rated_w: int) -> None:
        now_ms = int(self.clock() * 1000)
        if ts * 1000 > now_ms + self.limits.future_skew_ms:
            raise IngestRefused(400, "read_at_future", f"timestamp {ts} is in the future")
        if ts * 1000 < now_ms - self.limits.acceptance_window_ms:
            raise IngestRefused(400, "read_at_too_old", f"timestamp {ts} is older than the acceptance window")
        last = self.store.last_http_timestamp_ms(meter_id)
        if last is not None and ts * 1000 == last:
            raise IngestRefused(409, "duplicate", f"{meter_id}: timestamp {ts} already ingested")
        if last is not None and ts * 1000 < last:
            raise IngestRefused(409, "read_at_not_increasing", f"timestamp {ts} is not after the last {last // 1000}")
        # A meter's first interval has no previous reading: it can span at most the acceptance window.
        dt_ms = ts * 1000 - last if last is not None else self.limits.acceptance_window_ms
        allowed = rated_w * dt_ms * (100 + self.limits.plausibility_margin_pct)
        allowed += self.limits.plausibility_slack_wh * 100 * _MS_PER_HOUR
        if max(imp, exp) * 100 * _MS_PER_HOUR > allowed:
            raise IngestRefused(400, "implausible_energy", f"{max(imp, exp)} Wh in {dt_ms // 1000} s exceeds "
                                                           f"rated {rated_w} W")

    def _quarantine(self, body: bytes, exc: IngestRefused) -> None:
        self.metrics.rejected.labels("http", exc.reason).inc()
        if exc.reason == "bad_api_key":
            return  # counted only: an unauthenticated client must not be able to fill the quarantine
        meter_id: str | None = None
        try:
            doc = json.loads(body, parse_float=Decimal)
            meter_id = str(doc.get("device_id"))[:64] if isinstance(doc, dict) else None
        except (ValueError, UnicodeDecodeError, RecursionError):
            pass
        self.store.add_rejection(RejectionRow(int(self.clock() * 1000), "http", None, meter_id, None, exc.reason,
                                              exc.detail, exc.reason not in _UNAUTHENTICATED, body, b""))


_UNAUTHENTICATED = {"malformed", "invalid_field", "oversized", "unknown_meter", "bad_signature", "non_integral_wh"}
