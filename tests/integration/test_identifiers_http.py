"""HTTP ingest device_id goes through protocol.identifiers: a real aiohttp server on 127.0.0.1.

Reproduction: device_id "METER-001\\n" passed the meter_id check (re.match with `$`) and was looked up as a meter.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.intake.checks import Limits
from gateway.intake.http import INGEST_PATH, HttpIngest
from gateway.metrics import Metrics
from gateway.store.registry import Registry
from gateway.store.sqlite import Store

pytestmark = pytest.mark.integration

HOSTILE_DEVICE_IDS = ["METER-001\n", "METER-001\r\n", "METER\n001", "METER-001\u0000", "METER+001", "METER#001",
                      "METER/001", "METER 001", "\u041cETER-001", "METER-\u0661", "M" * 33, ""]


@pytest.fixture
async def url(tmp_path: Path) -> AsyncIterator[str]:
    store = Store(tmp_path / "gateway.sqlite")
    registry = Registry(tmp_path / "registry.sqlite")
    ingest = HttpIngest(store, registry, Limits(), ["secret-key"], Metrics(), clock=lambda: 1780734720)
    srv = TestServer(ingest.app(), host="127.0.0.1")
    await srv.start_server()
    try:
        yield str(srv.make_url(""))
    finally:
        await srv.close()
        store.close()
        registry.close()


@pytest.mark.parametrize("device_id", HOSTILE_DEVICE_IDS)
async def test_hostile_device_id_refused_as_invalid_field(url: str, device_id: str) -> None:
    body = json.dumps({"protocol": "dlms", "device_id": device_id, "payload": {
        "1.1.1.8.0.255": 5000.0, "1.1.2.8.0.255": 0.0, "kwh": -5, "timestamp": "2026-06-06T08:30:00+00:00",
        "signature": "1" * 88}}).encode()
    async with aiohttp.ClientSession() as s, s.post(url + INGEST_PATH, data=body,
                                                    headers={"X-API-KEY": "secret-key"}) as r:
        status, doc = r.status, json.loads(await r.text())
    assert (status, doc["reason"]) == (400, "invalid_field")
    assert doc["error"].startswith("device_id: 1-32 characters") and repr(device_id) in doc["error"]
