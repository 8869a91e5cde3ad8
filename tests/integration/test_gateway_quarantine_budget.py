"""Quarantine byte budget (issue 8): 100 garbage messages of 1 MB grew the gateway database by 100 MB in
0.5 s, because every unauthenticated rejection stored the whole message. Now such a row keeps a bounded
prefix, the length and the sha256; the bytes stored per time are capped and the excess is counted (metric and
the store's quarantine_dropped counter)."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

import gateway.store.sqlite as store_mod
from gateway.config import MqttSection
from gateway.intake.acceptance import Acceptance, IngressLimit
from gateway.intake.checks import Limits
from gateway.intake.mqtt import Intake
from gateway.metrics import Metrics
from gateway.store.registry import Registry
from gateway.store.sqlite import Store
from protocol import SigningKey, VerifyKey, decode_ack
from protocol.topics import readings_topic
from testbed.broker import Broker
from tests.gateway_support import batch, reading, record_for
from tests.polling import wait_for

pytestmark = pytest.mark.integration

MB = 1_000_000
PREFIX = 256  # bytes of an unauthenticated message kept (one whole signed reading)


def db_bytes(store: Store) -> int:
    """Size of the database once the WAL is folded in (the WAL itself is recycled at each checkpoint)."""
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return sum(p.stat().st_size for p in store.path.parent.glob(store.path.name + "*"))


@pytest.fixture
def wide_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker configured WITHOUT the project's message_size_limit (an operator's own broker): the gateway
    must hold on its own."""
    b = Broker(workdir=tmp_path / "broker")
    b.message_size_limit = 2 * MB
    with b:
        yield b


def _client(broker: Broker, name: str) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=MQTTProtocolVersion.MQTTv5)
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c


def test_hundred_garbage_megabytes_grow_the_database_by_kilobytes(wide_broker: Broker, tmp_path: Path) -> None:
    store, registry = Store(tmp_path / "g.sqlite"), Registry(tmp_path / "r.sqlite")
    registry.add(record_for("HOUSE-1"), int(time.time() * 1000))
    gw_key, metrics = SigningKey.generate(), Metrics()
    intake = Intake(MqttSection(port=wide_broker.port, client_id="gw"),
                    Acceptance(store, registry, Limits(), IngressLimit(), metrics), gw_key, metrics)
    acks: dict[str, int] = {}
    lock = threading.Lock()
    agent = _client(wide_broker, "agent")

    def on_ack(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with lock:
            a = decode_ack(msg.payload, VerifyKey(gw_key.public_key))
            acks[a.meter_id] = a.acked_seq

    agent.on_message = on_ack
    agent.subscribe("gridmeter/v1/+/ack", qos=1)
    attacker = _client(wide_broker, "attacker")
    intake.start()
    try:
        intake.wait_ready()
        before = db_bytes(store)
        garbage = [os.urandom(MB) for _ in range(4)]
        garbage[1] = b"gridmeter/batch/v1\x01\x00" + garbage[1][20:]  # framing-level garbage too
        topics = [readings_topic("HOUSE-1"), readings_topic("GHOST-7"), "gridmeter/v1/not a meter/readings"]
        for i in range(100):
            attacker.publish(topics[i % 3], garbage[i % 4], qos=1).wait_for_publish(30)
        t = int(time.time() * 1000) - 60_000
        agent.publish(readings_topic("HOUSE-1"), batch(reading("HOUSE-1", 1, t, 10)), qos=1).wait_for_publish(10)
        wait_for(lambda: acks.get("HOUSE-1") == 1, 60, "the honest reading acked after the garbage")
        wait_for(lambda: store.conn.execute("SELECT COUNT(*) FROM rejections").fetchone()[0] == 100, 30,
                 "100 rejections")
        grown = db_bytes(store) - before
        assert grown < 256 * 1024, f"database grew by {grown} bytes for 100 MB of garbage"
        assert getattr(store_mod, "QUARANTINE_PREFIX_BYTES", None) == PREFIX
        rows = store.conn.execute("SELECT payload, payload_len, payload_sha256, authenticated FROM rejections "
                                  "ORDER BY id").fetchall()
        for i, (payload, n, digest, authenticated) in enumerate(rows):
            whole = garbage[i % 4]
            assert (bytes(payload), n, bytes(digest), authenticated) == (
                whole[:PREFIX], MB, hashlib.sha256(whole).digest(), 0)
        print(f"\n100 x 1 MB garbage: database grew by {grown} bytes")
    finally:
        intake.stop()
        for c in (agent, attacker):
            c.disconnect()
            c.loop_stop()
        store.close()
        registry.close()


def test_quarantine_bytes_per_time_are_capped_and_the_excess_counted(tmp_path: Path) -> None:
    store, registry, metrics = Store(tmp_path / "g.sqlite"), Registry(tmp_path / "r.sqlite"), Metrics()
    registry.add(record_for("HOUSE-1"), 0)
    budget = 10_000
    now_s = 1_780_000_000.0
    acc = Acceptance(store, registry, Limits(), IngressLimit(), metrics, clock=lambda: now_s,
                     quarantine_bytes_per_s=0.001, quarantine_burst_bytes=budget)
    try:
        garbage = [(readings_topic(f"GHOST-{i}"), bytes([i]) * 5000) for i in range(100)]
        honest = (readings_topic("HOUSE-1"), batch(reading("HOUSE-1", 1, int(now_s * 1000) - 60_000, 10)))
        assert acc.process([*garbage[:50], honest, *garbage[50:]]) == {"HOUSE-1": 1}
        stored = store.conn.execute("SELECT COUNT(*), SUM(length(payload) + length(signature) + length(detail)) "
                                    "FROM rejections").fetchone()
        assert 0 < stored[0] < 100 and stored[1] < budget
        dropped = 100 - stored[0]
        assert store.quarantine_dropped() == (dropped, dropped * 5000)
        assert metrics.registry.get_sample_value("gridmeter_gateway_rejections_not_stored_total") == dropped
        assert metrics.registry.get_sample_value("gridmeter_gateway_quarantine_bytes_not_stored_total") == \
            dropped * 5000
        assert metrics.registry.get_sample_value("gridmeter_gateway_readings_rejected_total",
                                                 {"source": "mqtt", "reason": "malformed"}) == 100
        assert store.conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0] == 1
    finally:
        store.close()
        registry.close()


def test_project_broker_refuses_oversized_messages(broker: Broker, tmp_path: Path) -> None:
    """The broker config the project writes carries message_size_limit: a 1 MB message never reaches the
    gateway, the next honest one does."""
    store, registry = Store(tmp_path / "g.sqlite"), Registry(tmp_path / "r.sqlite")
    registry.add(record_for("HOUSE-1"), int(time.time() * 1000))
    metrics = Metrics()
    intake = Intake(MqttSection(port=broker.port, client_id="gw"),
                    Acceptance(store, registry, Limits(), IngressLimit(), metrics), SigningKey.generate(), metrics)
    attacker, agent = _client(broker, "attacker"), _client(broker, "agent")
    intake.start()
    try:
        intake.wait_ready()
        assert "message_size_limit 524288" in (Path(broker.workdir or "") / "mosquitto.conf").read_text()
        attacker.publish(readings_topic("HOUSE-1"), os.urandom(MB), qos=1)
        t = int(time.time() * 1000) - 60_000
        agent.publish(readings_topic("HOUSE-1"), batch(reading("HOUSE-1", 1, t, 10)), qos=1).wait_for_publish(10)
        wait_for(lambda: store.conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0] == 1, 30, "honest stored")
        assert store.conn.execute("SELECT COUNT(*) FROM rejections").fetchone()[0] == 0
        assert metrics.registry.get_sample_value("gridmeter_gateway_readings_received_total", {"source": "mqtt"}) == 1
    finally:
        intake.stop()
        for c in (agent, attacker):
            c.disconnect()
            c.loop_stop()
        store.close()
        registry.close()


def test_provisioning_tells_the_broker_admin_the_size_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    from gridmeter.cli import main

    assert main(["provision", "mqtt-credentials", "--meter-id", "HOUSE-1", "--out-dir", str(tmp_path)]) == 0
    assert "message_size_limit 524288" in capsys.readouterr().out
