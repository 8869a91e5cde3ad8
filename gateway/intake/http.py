"""GridTokenX's existing HTTP ingest contract, so meters and head-ends already speaking it can move over.

POST /v1/private-network/ingest (header X-API-KEY), body
  {"protocol": "dlms", "device_id": "<meter_id>", "payload": {"1.1.1.8.0.255": <import Wh>,
   "1.1.2.8.0.255": <export Wh>, "kwh": <net kWh>, "timestamp": "<RFC 3339, seconds>", "signature": "<base58>",
   "energy_generated": <kWh>, "energy_consumed": <kWh>, ...}}
The device signs UTF-8 "{meter_id}:{kwh}:{timestamp_ms}" with kwh printed like Rust's f64 Display. Values,
precision and consistency rules: gateway/ingest_payload.py.
Status codes (as the GridTokenX bridge): 202 accepted, 400 malformed, 401 API key wrong or signature could not
be checked (unknown meter), 403 signature invalid or meter suspended/retired, 409 replayed (timestamp not
after the meter's last one); added: 408 body not received within DEFAULT_BODY_READ_TIMEOUT_S, 413 body over
http.max_body_bytes, 429 when one client address exceeds its request rate, 503 `busy` when other gateways
of a fleet kept storing readings of the meter while this one was checked (MAX_CHECK_ROUNDS), 503
`store_unavailable` (Retry-After) when the database failed (counted and logged; nothing to quarantine it in).
GET /health answers {"status": "ok"}.

What 202 means here: the reading is committed, and its energy will reach the chain or its status will say why
not. Readings are interval energies; each is added, in integer mWh, to its meter's running sums, and the
submitter's interval planner (intervals.plan_http, the same planner as for MQTT counters) bins them in market
epochs, submits whole Wh at most once per epoch (so the oracle's min_reading_interval holds by construction)
and carries the sub-Wh remainder into the next interval. (GridTokenX's own bridge also binned in 15-minute
windows, but applied no rate, order, bounds or anomaly check and never called the oracle: its 202 promised
nothing about the chain.) Status, with the same X-API-KEY:
  GET /v1/private-network/readings/{reading_id}   one reading: open / queued / on_chain / not_submitted + reasons
  GET /v1/private-network/meters/{device_id}      the meter's books in mWh and every interval not submitted
Rules this gateway adds: timestamps strictly increase per meter, lie within the acceptance window and not in
the future beyond the skew; energy per reading is bounded by the meter's rated power over the time since its
previous reading; a meter feeds the chain from one source (a meter with MQTT readings is refused here:
`source_conflict`). Every refusal is stored in the quarantine with its reason and the original body, and
counted (a wrong API key is only counted).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from aiohttp import web

from gateway.intake.checks import Limits, TokenBucket, implausible_energy, read_at_window
from gateway.intake.http_payload import (
    EXPORT_OBIS,
    IMPORT_OBIS,
    IngestReading,
    IngestRefused,
    check_consistency,
    parse_body,
    rust_f64_display,
    signed_message,
    wh_text,
)
from gateway.metrics import Metrics
from gateway.registry import MeterStatus
from gateway.store.errors import retryable
from gateway.store.fleet import role_unsubmitted
from gateway.store.registry import Registry
from gateway.store.sqlite import RejectionRow, Store
from protocol import BadSignatureError, MeterRole, ProtocolError, VerifyKey
from protocol.identifiers import validate_device_id

__all__ = ["EXPORT_OBIS", "IMPORT_OBIS", "INGEST_PATH", "HttpIngest", "IngestRefused", "rust_f64_display",
           "signed_message"]

log = logging.getLogger(__name__)

INGEST_PATH = "/v1/private-network/ingest"
READING_STATUS_PATH = "/v1/private-network/readings/{reading_id}"
METER_STATUS_PATH = "/v1/private-network/meters/{device_id}"
# Per client address: a head-end posting every meter of a feeder every 15 min stays far below this; a
# misbehaving client gets 429 instead of filling the quarantine.
DEFAULT_CLIENT_RATE_PER_S = 100.0
DEFAULT_CLIENT_BURST = 2000
DEFAULT_MAX_CLIENTS_TRACKED = 10_000
# A body is < 1 KiB: a client that has not sent all of it within this time stalled (or is holding
# connections open on purpose). It gets 408 and the connection is closed.
DEFAULT_BODY_READ_TIMEOUT_S = 10.0
STORE_RETRY_AFTER_S = 5  # Retry-After of a 503 store_unavailable
# Checks made against a meter's last reading are made again when another gateway stored one in between
# (gateway.store add_http_reading "moved"); this many rounds at most.
MAX_CHECK_ROUNDS = 5


class HttpIngest:
    def __init__(self, store: Store, registry: Registry, limits: Limits, api_keys: list[str], metrics: Metrics,
                 *, max_body_bytes: int = 16384, clock: Callable[[], float] = time.time,
                 body_read_timeout_s: float = DEFAULT_BODY_READ_TIMEOUT_S) -> None:
        self.store, self.registry, self.limits, self.metrics = store, registry, limits, metrics
        self.api_keys = [k.encode() for k in api_keys]
        self.max_body_bytes, self.clock, self.body_read_timeout_s = max_body_bytes, clock, body_read_timeout_s
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
        app.router.add_get(READING_STATUS_PATH, self.reading_status)
        app.router.add_get(METER_STATUS_PATH, self.meter_status)
        app.router.add_get("/health", self.health)
        return app

    async def health(self, _req: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "service": "gridmeter-gateway"})

    def _api_key_ok(self, req: web.Request) -> bool:
        # non-UTF-8 header bytes arrive as surrogates (aiohttp decodes with surrogateescape): just not equal
        given = req.headers.get("X-API-KEY", "").encode("utf-8", "surrogateescape")
        return any(hmac.compare_digest(given, k) for k in self.api_keys)

    # ---- ingest ---------------------------------------------------------------------------------------
    async def ingest(self, req: web.Request) -> web.Response:
        try:
            return await self._ingest(req)
        except Exception as exc:
            if not retryable(exc):
                raise
            # the storage failed, not the reading (a fleet's database failing over, a locked or full disk)
            self.metrics.rejected.labels("http", "store_unavailable").inc()
            log.warning("HTTP ingest: the store failed (%s: %s): answered 503", type(exc).__name__, exc)
            return web.json_response({"status": "rejected", "reason": "store_unavailable",
                                      "error": "the gateway's database is not available: send the reading again "
                                               "(one already stored is answered 409 duplicate with its reading_id)"},
                                     status=503, headers={"Retry-After": str(STORE_RETRY_AFTER_S)})

    async def _ingest(self, req: web.Request) -> web.Response:
        self.metrics.received.labels("http").inc()
        body = b""
        try:
            if not self._client_allowed(req):
                self.metrics.rejected.labels("http", "client_rate_exceeded").inc()
                return web.json_response({"status": "rejected", "reason": "client_rate_exceeded"}, status=429)
            if not self._api_key_ok(req):
                raise IngestRefused(401, "bad_api_key", "X-API-KEY missing or not accepted")
            body = await self._read_body(req)
            accepted = self._accept(body)
        except IngestRefused as exc:
            self._quarantine(body, exc)
            resp = web.json_response({"status": "rejected", "reason": exc.reason, "error": exc.detail, **exc.extra},
                                     status=exc.status)
            if exc.status in (408, 413):
                resp.force_close()  # the rest of the body is not read: the connection cannot be reused
            return resp
        self.metrics.accepted.labels("http").inc()
        return web.json_response(accepted, status=202)

    async def _read_body(self, req: web.Request) -> bytes:
        too_big = IngestRefused(413, "oversized", f"body over {self.max_body_bytes} bytes")
        if req.content_length is not None and req.content_length > self.max_body_bytes:
            raise too_big
        try:
            async with asyncio.timeout(self.body_read_timeout_s):
                return await req.read()
        except TimeoutError:
            raise IngestRefused(408, "body_timeout", f"body not received within {self.body_read_timeout_s:g} s"
                                ) from None
        except web.HTTPRequestEntityTooLarge:  # chunked, no Content-Length: counted while reading
            raise too_big from None

    def _accept(self, body: bytes) -> dict[str, Any]:
        r, payload = parse_body(body)
        meter = self.registry.get(r.meter_id)
        if meter is None:
            raise IngestRefused(401, "unknown_meter", f"{r.meter_id}: not registered, signature cannot be checked")
        try:
            VerifyKey(meter.public_key).verify(signed_message(r.meter_id, r.kwh_text, r.timestamp_s), r.signature)
        except BadSignatureError:
            raise IngestRefused(403, "bad_signature", "signature does not verify against the registered key") from None
        if meter.status is not MeterStatus.ACTIVE:
            raise IngestRefused(403, f"meter_{meter.status.value}", f"{r.meter_id} is {meter.status.value}")
        check_consistency(payload, r)
        if self.store.has_mqtt_readings(r.meter_id):
            raise _source_conflict(r.meter_id)
        reading_id = str(uuid.uuid4())
        for _ in range(MAX_CHECK_ROUNDS):  # another gateway may store a reading of this meter meanwhile
            last = self._time_checks(r, meter.rated_max_power_w)
            outcome, original = self.store.add_http_reading(r.meter_id, r.timestamp_s * 1000, r.import_mwh,
                                                            r.export_mwh, body, reading_id, int(self.clock() * 1000),
                                                            checked_last_ms=last)
            if outcome != "moved":
                break
        else:
            raise IngestRefused(503, "busy", f"{r.meter_id}: its readings kept changing while this one was checked; "
                                             "send it again")
        if outcome == "source_conflict":  # an MQTT reading of it was accepted since the check above
            raise _source_conflict(r.meter_id)
        if outcome == "duplicate":
            raise IngestRefused(409, "duplicate", f"{r.meter_id}: timestamp {r.timestamp_s} already ingested",
                                _original_id(original))
        if outcome == "not_increasing":
            raise IngestRefused(409, "read_at_not_increasing", f"timestamp {r.timestamp_s} is not after the last one")
        if outcome == "overflow":
            raise IngestRefused(400, "invalid_field", f"{r.meter_id}: running energy sum beyond 2^63 mWh")
        return _accepted_doc(reading_id, r, meter.role)

    def _time_checks(self, r: IngestReading, rated_w: int) -> int | None:
        """Window, order and plausibility against the meter's last stored timestamp (returned: what was checked)."""
        now_ms, ts_ms = int(self.clock() * 1000), r.timestamp_s * 1000
        if window := read_at_window(ts_ms, now_ms, self.limits):
            raise IngestRefused(400, window[0].value, f"timestamp {r.timestamp_s}: {window[1]}")
        last = self.store.last_http_timestamp_ms(r.meter_id)
        if last is not None and ts_ms == last:
            raise IngestRefused(409, "duplicate", f"{r.meter_id}: timestamp {r.timestamp_s} already ingested",
                                _original_id(self.store.http_reading_id(r.meter_id, ts_ms)))
        if last is not None and ts_ms < last:
            raise IngestRefused(409, "read_at_not_increasing", f"timestamp {r.timestamp_s} is not after the last "
                                                               f"{last // 1000}")
        # A meter's first reading has no previous one: it can span at most the acceptance window.
        dt_ms = ts_ms - last if last is not None else self.limits.acceptance_window_ms
        for name, mwh in (("import", r.import_mwh), ("export", r.export_mwh)):
            if problem := implausible_energy(name, mwh, dt_ms, rated_w, self.limits):
                raise IngestRefused(400, "implausible_energy", problem)
        return last

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

    # ---- status ---------------------------------------------------------------------------------------
    async def reading_status(self, req: web.Request) -> web.Response:
        if not self._client_allowed(req):
            return web.json_response({"error": "client_rate_exceeded"}, status=429)
        if not self._api_key_ok(req):
            return web.json_response({"error": "X-API-KEY missing or not accepted"}, status=401)
        try:
            reading_id = str(uuid.UUID(req.match_info["reading_id"]))
        except ValueError:
            return web.json_response({"error": "reading_id: not a UUID"}, status=400)
        doc = self.store.http_reading_status(self.registry, reading_id)
        if doc is None:
            return web.json_response({"error": f"reading {reading_id} not found"}, status=404)
        return web.json_response(doc)

    async def meter_status(self, req: web.Request) -> web.Response:
        if not self._client_allowed(req):
            return web.json_response({"error": "client_rate_exceeded"}, status=429)
        if not self._api_key_ok(req):
            return web.json_response({"error": "X-API-KEY missing or not accepted"}, status=401)
        try:
            meter_id = validate_device_id(req.match_info["device_id"])
        except ProtocolError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        meter = self.registry.get(meter_id)
        if meter is None:
            return web.json_response({"error": f"{meter_id} is not registered"}, status=404)
        return web.json_response(self.store.http_meter_status(meter))


def _source_conflict(meter_id: str) -> IngestRefused:
    return IngestRefused(409, "source_conflict", f"{meter_id} already sends readings over MQTT: one meter, one source "
                                                 "(its submissions would collide on chain)")


def _original_id(reading_id: str | None) -> dict[str, str] | None:
    return {"reading_id": reading_id} if reading_id else None


def _accepted_doc(reading_id: str, r: IngestReading, role: MeterRole) -> dict[str, Any]:
    doc: dict[str, Any] = {"status": "accepted", "reading_id": reading_id, "device_id": r.meter_id,
                           "timestamp_ms": r.timestamp_s * 1000, "import_wh": wh_text(r.import_mwh),
                           "export_wh": wh_text(r.export_mwh),
                           "status_url": READING_STATUS_PATH.format(reading_id=reading_id)}
    unsubmitted = role_unsubmitted(role, r.import_mwh, r.export_mwh)
    if unsubmitted is not None:
        doc["recorded_only"] = unsubmitted
    return doc


# Refusals decided before the signature was verified: not attributable to the meter.
_UNAUTHENTICATED = {"malformed", "invalid_field", "oversized", "unknown_meter", "bad_signature", "body_timeout"}
