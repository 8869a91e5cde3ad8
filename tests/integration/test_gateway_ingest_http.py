"""GridTokenX HTTP ingest over a real aiohttp server on 127.0.0.1: status codes, vector, quarantine, outbox."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import aiohttp
import base58
import pytest
from aiohttp.test_utils import TestServer

from gateway.intake import http as ingest_http
from gateway.intake.checks import Limits
from gateway.intake.http import INGEST_PATH, HttpIngest, rust_f64_display, signed_message
from gateway.metrics import Metrics
from gateway.registry import MeterStatus
from gateway.store.registry import Registry
from gateway.store.sqlite import Store
from protocol import SigningKey
from tests.gateway_support import record_for

pytestmark = pytest.mark.integration

VECTOR_SIG = "2oEXHHnEWjBZnXj3G65GErjavfqfmXw97JBN6yNnNdB53dyMVs3rN9ExzSJregWosM988uDvXkJPSeTd9xUX3Pcq"
KEY = SigningKey(hashlib.sha256(b"gridtokenx-sim:METER-001").digest())
NOW_S = 1780734600 + 120  # two minutes after the vector's timestamp


def body(ts: str = "2026-06-06T08:30:00+00:00", imp: str = "5000.000", exp: str = "0.000", kwh: str = "-5",
         sig: str = VECTOR_SIG, meter: str = "METER-001") -> bytes:
    return (f'{{"protocol":"dlms","device_id":"{meter}","payload":{{"1.1.1.8.0.255":{imp},'
            f'"1.1.2.8.0.255":{exp},"kwh":{kwh},"timestamp":"{ts}","signature":"{sig}",'
            f'"energy_generated":{Decimal(exp) / 1000:f},"energy_consumed":{Decimal(imp) / 1000:f},'
            f'"zone_code":"Z1"}}}}').encode()


def signed_body(ts_s: int, imp: int, exp: int) -> bytes:
    from datetime import UTC, datetime

    kwh = (exp - imp) / 1000
    sig = base58.b58encode(KEY.sign(signed_message("METER-001", rust_f64_display(kwh), ts_s))).decode()
    ts = datetime.fromtimestamp(ts_s, UTC).isoformat()
    return body(ts=ts, imp=f"{imp}.000", exp=f"{exp}.000", kwh=repr(kwh), sig=sig)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[str, Store, Registry]]:
    store = Store(tmp_path / "gateway.sqlite")
    registry = Registry(tmp_path / "registry.sqlite")
    registry.add(record_for("METER-001", key=KEY, zone=3, rated_w=30_000, created_ms=1_700_000_000_000), 0)
    ingest = HttpIngest(store, registry, Limits(), ["secret-key"], Metrics(), clock=lambda: NOW_S)
    srv = TestServer(ingest.app(), host="127.0.0.1")
    await srv.start_server()
    try:
        yield str(srv.make_url("")), store, registry
    finally:
        await srv.close()
        store.close()
        registry.close()


async def post(url: str, data: bytes, key: str = "secret-key") -> tuple[int, dict]:  # type: ignore[type-arg]
    async with aiohttp.ClientSession() as s, s.post(url + INGEST_PATH, data=data, headers={"X-API-KEY": key}) as r:
        return r.status, json.loads(await r.text())


async def test_vector_accepted_then_replay_409(server: tuple[str, Store, Registry]) -> None:
    url, store, _ = server
    async with aiohttp.ClientSession() as s, s.get(url + "/health") as r:
        assert r.status == 200 and (await r.json())["status"] == "ok"
    status, doc = await post(url, body())
    assert status == 202 and doc["status"] == "accepted"
    rows = store.conn.execute("SELECT meter_id, seq, reading_id, timestamp_ms, import_mwh, export_mwh, cum_import_mwh "
                              "FROM http_ingest").fetchall()
    assert rows == [("METER-001", 1, doc["reading_id"], 1780734600_000, 5_000_000, 0, 5_000_000)]
    assert store.conn.execute("SELECT COUNT(*) FROM outbox").fetchone() == (0,)  # the submitter plans intervals
    status, again = await post(url, body())
    assert (status, again["reason"], again["reading_id"]) == (409, "duplicate", doc["reading_id"])


async def test_zero_interval_is_stored_but_not_submitted(server: tuple[str, Store, Registry]) -> None:
    url, store, _ = server
    status, doc = await post(url, signed_body(1780734600, 0, 0))
    assert status == 202, doc
    assert store.conn.execute("SELECT COUNT(*) FROM http_ingest").fetchone() == (1,)
    assert store.conn.execute("SELECT COUNT(*) FROM outbox").fetchone() == (0,)
    status, doc = await post(url, signed_body(1780734600, 0, 0))
    assert (status, doc["reason"]) == (409, "duplicate")


async def test_refusals(server: tuple[str, Store, Registry]) -> None:
    url, store, _ = server
    assert (await post(url, body(), key="wrong"))[0] == 401
    status, doc = await post(url, body(imp="5000.0005", kwh="-5.0000005"))  # beyond the contract's mWh
    assert (status, doc["reason"]) == (400, "invalid_field") and "more than 3 decimals" in doc["error"]
    status, doc = await post(url, body(kwh="-4"))  # signature was made over -5
    assert (status, doc["reason"]) == (403, "bad_signature")
    status, doc = await post(url, body(imp="4000.000", exp="1000.000"))  # unsigned split contradicts the signed net
    assert (status, doc["reason"]) == (400, "kwh_mismatch")
    status, doc = await post(url, body(meter="METER-002"))
    assert (status, doc["reason"]) == (401, "unknown_meter")
    status, doc = await post(url, b"{not json")
    assert (status, doc["reason"]) == (400, "malformed")
    status, doc = await post(url, b"x" * 20000)
    assert (status, doc["reason"]) == (413, "oversized")
    reasons = [r[0] for r in store.conn.execute("SELECT reason FROM rejections ORDER BY id")]
    assert reasons[:2] == ["invalid_field", "bad_signature"]
    assert "unknown_meter" in reasons and "malformed" in reasons  # every refusal is quarantined (not the API key)


async def test_split_must_match_signed_net_and_time_order(server: tuple[str, Store, Registry]) -> None:
    url, _store, registry = server
    status, doc = await post(url, signed_body(NOW_S - 1800, 3000, 1000))
    assert status == 202, doc
    status, doc = await post(url, body(imp="6000.000", exp="0.000"))  # signed -5 kWh, claims 6 kWh import
    assert (status, doc["reason"]) == (400, "kwh_mismatch")
    status, doc = await post(url, signed_body(NOW_S - 2700, 100, 0))  # older than the last one
    assert (status, doc["reason"]) == (409, "read_at_not_increasing")
    status, doc = await post(url, signed_body(NOW_S - 900, 0, 50_000))  # 50 kWh in 15 min on a 30 kW meter
    assert (status, doc["reason"]) == (400, "implausible_energy")
    status, doc = await post(url, signed_body(NOW_S + 600, 10, 0))
    assert (status, doc["reason"]) == (400, "read_at_future")
    registry.set_status("METER-001", MeterStatus.SUSPENDED, 0)
    status, doc = await post(url, signed_body(NOW_S - 60, 10, 0))
    assert (status, doc["reason"]) == (403, "meter_suspended")


async def test_client_rate_limit(server: tuple[str, Store, Registry], monkeypatch: pytest.MonkeyPatch) -> None:
    url, store, _ = server
    monkeypatch.setattr(ingest_http, "DEFAULT_CLIENT_BURST", 3)
    statuses = [(await post(url, b"{}"))[0] for _ in range(5)]
    assert statuses == [400, 400, 400, 429, 429]
    assert store.conn.execute("SELECT COUNT(*) FROM rejections").fetchone()[0] == 3  # 429s are counted only


async def test_out_of_range_numbers_are_400_not_500(server: tuple[str, Store, Registry]) -> None:
    """A 400-digit kwh made float() raise OverflowError, and a signed Wh value beyond SQLite's i64 made the
    outbox insert raise: both escaped as HTTP 500 with nothing quarantined."""
    url, store, _ = server
    status, doc = await post(url, body(kwh="1" + "0" * 400))
    assert (status, doc["reason"]) == (400, "invalid_field") and "payload.kwh" in doc["error"]
    huge = 2**64  # net 0 kWh: the signature is valid, only the split is absurd
    sig = base58.b58encode(KEY.sign(signed_message("METER-001", "0", 1780734600))).decode()
    status, doc = await post(url, body(imp=str(huge), exp=str(huge), kwh="0", sig=sig))
    assert (status, doc["reason"]) == (400, "invalid_field") and "payload.1.1.1.8.0.255" in doc["error"]
    # a meter's FIRST interval had no energy bound at all: now at most rated power over the acceptance window
    status, doc = await post(url, body(imp=str(10**12), exp=str(10**12), kwh="0", sig=sig))
    assert (status, doc["reason"]) == (400, "implausible_energy")
    reasons = [r[0] for r in store.conn.execute("SELECT reason FROM rejections ORDER BY id")]
    assert reasons == ["invalid_field", "invalid_field", "implausible_energy"]
    assert store.conn.execute("SELECT COUNT(*) FROM http_ingest").fetchone()[0] == 0


async def test_non_utf8_api_key_header_is_401_not_500(server: tuple[str, Store, Registry]) -> None:
    import asyncio
    from urllib.parse import urlsplit

    url, store, _ = server
    u = urlsplit(url)
    data = body()
    reader, writer = await asyncio.open_connection(u.hostname, u.port)
    try:
        writer.write(b"POST " + INGEST_PATH.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     b"X-API-KEY: \xff\xfesecret-key\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
        await writer.drain()
        head = (await asyncio.wait_for(reader.read(), 10)).split(b"\r\n", 1)[0]
    finally:
        writer.close()
    assert head == b"HTTP/1.1 401 Unauthorized"
    assert store.conn.execute("SELECT COUNT(*) FROM rejections").fetchone()[0] == 0  # unauthenticated: counted only
