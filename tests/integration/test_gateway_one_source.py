"""One meter, one source (issue 12): a meter whose energy comes over the GridTokenX HTTP ingest is refused over
MQTT, and a meter that sends over MQTT is refused over HTTP (both would submit intervals of the same meter to the
oracle, and they would collide on chain). The MQTT refusal is authenticated: stored and counted as
source_conflict and ACKED, so the agent does not re-send it forever. Real mosquitto, real aiohttp server, one
SQLite store."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import base58
import paho.mqtt.client as mqtt
import pytest
from aiohttp.test_utils import TestServer
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway.config import MqttSection
from gateway.intake.acceptance import Acceptance, IngressLimit
from gateway.intake.checks import Limits
from gateway.intake.http import INGEST_PATH, HttpIngest, rust_f64_display, signed_message
from gateway.intake.mqtt import Intake
from gateway.metrics import Metrics
from gateway.store.registry import Registry
from gateway.store.sqlite import Store
from protocol import SigningKey, VerifyKey, decode_ack, decode_batch
from protocol.topics import readings_topic
from testbed.broker import Broker
from tests.gateway_support import batch, key_for, reading, record_for

pytestmark = pytest.mark.integration

NOW_S = 1_780_734_720
API_KEY = "one-source-api-key-Qz8k4Wm2"
HTTP_METER, MQTT_METER = "HTTPM-1", "MQTTM-1"


def http_body(meter: str, ts_s: int, imp_wh: int) -> bytes:
    kwh = -imp_wh / 1000
    sig = base58.b58encode(key_for(meter).sign(signed_message(meter, rust_f64_display(kwh), ts_s))).decode()
    ts = datetime.fromtimestamp(ts_s, UTC).isoformat()
    return (f'{{"protocol":"dlms","device_id":"{meter}","payload":{{"1.1.1.8.0.255":{imp_wh}.000,'
            f'"1.1.2.8.0.255":0.000,"kwh":{kwh!r},"timestamp":"{ts}","signature":"{sig}",'
            f'"energy_generated":0,"energy_consumed":{imp_wh / 1000},"zone_code":"Z1"}}}}').encode()


class Acks:
    def __init__(self, gw_key: VerifyKey) -> None:
        self.gw_key, self.seen = gw_key, {}  # type: ignore[var-annotated]
        self.cv = threading.Condition()

    def on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        ack = decode_ack(bytes(msg.payload), self.gw_key)
        with self.cv:
            self.seen.setdefault(ack.meter_id, []).append(ack.acked_seq)
            self.cv.notify_all()

    def wait(self, meter: str, count: int, timeout_s: float = 30) -> list[int]:
        with self.cv:
            assert self.cv.wait_for(lambda: len(self.seen.get(meter, [])) >= count, timeout_s), self.seen
            return list(self.seen[meter])


@pytest.fixture
async def rig(tmp_path: Path, broker: Broker) -> AsyncIterator[tuple[str, Store, Metrics, mqtt.Client, Acks]]:
    store, registry, metrics = Store(tmp_path / "gateway.sqlite"), Registry(tmp_path / "registry.sqlite"), Metrics()
    for m in (HTTP_METER, MQTT_METER):
        registry.add(record_for(m, rated_w=30_000, created_ms=1_700_000_000_000), 0)
    gw_key = SigningKey.generate()
    ingest = HttpIngest(store, registry, Limits(), [API_KEY], metrics, clock=lambda: NOW_S)
    srv = TestServer(ingest.app(), host="127.0.0.1")
    await srv.start_server()
    acc = Acceptance(Store(tmp_path / "gateway.sqlite"), registry, Limits(), IngressLimit(), metrics,
                     clock=lambda: NOW_S)
    intake = Intake(MqttSection(port=broker.port, client_id="gw"), acc, gw_key, metrics)
    acks = Acks(VerifyKey(gw_key.public_key))
    agent = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="agent", protocol=MQTTProtocolVersion.MQTTv5)
    agent.on_message = acks.on_message
    agent.connect(broker.host, broker.port)
    agent.subscribe("gridmeter/v1/+/ack", qos=1)
    agent.loop_start()
    intake.start()
    try:
        await asyncio.to_thread(intake.wait_ready)
        yield str(srv.make_url("")), store, metrics, agent, acks
    finally:
        intake.stop()
        agent.disconnect()
        agent.loop_stop()
        await srv.close()
        acc.store.close()
        store.close()
        registry.close()


async def post(url: str, data: bytes) -> tuple[int, dict]:  # type: ignore[type-arg]
    async with aiohttp.ClientSession() as s, s.post(url + INGEST_PATH, data=data, headers={"X-API-KEY": API_KEY}) as r:
        return r.status, json.loads(await r.text())


def rejected(metrics: Metrics, source: str, reason: str) -> float:
    return metrics.registry.get_sample_value("gridmeter_gateway_readings_rejected_total",
                                             {"source": source, "reason": reason}) or 0


async def test_http_meter_refused_over_mqtt_with_an_ack(rig: tuple[str, Store, Metrics, mqtt.Client, Acks]) -> None:
    url, store, metrics, agent, acks = rig
    status, doc = await post(url, http_body(HTTP_METER, NOW_S - 900, 1_500))
    assert status == 202, doc
    msg = batch(reading(HTTP_METER, 1, NOW_S * 1000 - 60_000, 10_000))
    agent.publish(readings_topic(HTTP_METER), msg, qos=1)
    assert await asyncio.to_thread(acks.wait, HTTP_METER, 1) == [1]  # acked: the agent may drop it
    rows = store.conn.execute("SELECT source, meter_id, seq, reason, authenticated FROM rejections").fetchall()
    assert rows == [("mqtt", HTTP_METER, 1, "source_conflict", 1)]
    payload, detail = store.conn.execute("SELECT payload, detail FROM rejections").fetchone()
    assert bytes(payload) == decode_batch(msg)[0].payload and "GridTokenX HTTP ingest" in detail
    assert rejected(metrics, "mqtt", "source_conflict") == 1
    assert store.conn.execute("SELECT COUNT(*) FROM readings").fetchone() == (0,)
    # the agent re-sends it (its ack was lost): acked again as a duplicate, nothing stored twice
    agent.publish(readings_topic(HTTP_METER), msg, qos=1)
    assert await asyncio.to_thread(acks.wait, HTTP_METER, 2) == [1, 1]
    assert store.conn.execute("SELECT COUNT(*) FROM rejections").fetchone() == (1,)
    assert metrics.registry.get_sample_value("gridmeter_gateway_readings_duplicate_total") == 1
    # the refused MQTT reading did not make it an MQTT meter: its HTTP readings still flow
    assert not store.has_mqtt_readings(HTTP_METER)
    status, doc = await post(url, http_body(HTTP_METER, NOW_S - 600, 1_700))
    assert status == 202, doc


async def test_mqtt_meter_refused_over_http(rig: tuple[str, Store, Metrics, mqtt.Client, Acks]) -> None:
    url, store, metrics, agent, acks = rig
    agent.publish(readings_topic(MQTT_METER), batch(reading(MQTT_METER, 1, NOW_S * 1000 - 60_000, 10_000)), qos=1)
    assert await asyncio.to_thread(acks.wait, MQTT_METER, 1) == [1]
    assert store.conn.execute("SELECT meter_id, seq, status FROM readings").fetchall() == [(MQTT_METER, 1, "accepted")]
    status, doc = await post(url, http_body(MQTT_METER, NOW_S - 900, 1_500))
    assert (status, doc["reason"]) == (409, "source_conflict"), doc
    assert rejected(metrics, "http", "source_conflict") == 1
    assert store.conn.execute("SELECT COUNT(*) FROM http_ingest").fetchone() == (0,)


def test_http_sourced_counts_rows_of_older_gateway_versions(tmp_path: Path) -> None:
    """A meter whose only HTTP readings are in the older table http_readings is an HTTP meter as well."""
    store = Store(tmp_path / "gateway.sqlite")
    try:
        store.conn.execute("INSERT INTO http_readings VALUES (?, ?, ?, ?)", ("OLD-1", 1_000, b"{}", 1_000))
        store.add_http_reading("NEW-1", 2_000, 5, 0, b"{}", "9f0c1a52-0000-4000-8000-000000000001", 2_000)
        assert store.http_sourced(["OLD-1", "NEW-1", "MQTT-9"]) == {"OLD-1", "NEW-1"}
        assert store.http_sourced([]) == set()
    finally:
        store.close()
