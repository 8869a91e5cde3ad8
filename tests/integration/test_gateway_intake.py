"""Gateway intake through a real mosquitto: accepted once, duplicates acked and dropped, every bad reading
quarantined with its reason and original signed bytes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway.config import MqttSection
from gateway.intake.acceptance import Acceptance, IngressLimit
from gateway.intake.checks import Limits
from gateway.intake.mqtt import Intake
from gateway.metrics import Metrics
from gateway.store.registry import Registry
from gateway.store.sqlite import Store
from protocol import Ack, Reading, SigningKey, VerifyKey, decode_ack, encode_reading
from protocol.topics import readings_topic
from testbed.broker import Broker
from tests.gateway_support import batch, key_for, reading, record_for
from tests.polling import wait_for

pytestmark = pytest.mark.integration



@dataclass
class Rig:
    store: Store
    registry: Registry
    intake: Intake
    gw_key: SigningKey
    pub: mqtt.Client
    acks: dict[str, list[Ack]]

    def publish(self, topic: str, payload: bytes) -> None:
        self.pub.publish(topic, payload, qos=1).wait_for_publish(5)


@pytest.fixture
def rig(broker: Broker, tmp_path: Path) -> Iterator[Rig]:
    store = Store(tmp_path / "gateway.sqlite")
    registry = Registry(tmp_path / "registry.sqlite")
    registry.add(record_for("HOUSE-1", rated_w=20_000), int(time.time() * 1000))
    registry.add(record_for("HOUSE-2"), int(time.time() * 1000))
    gw_key = SigningKey.generate()
    metrics = Metrics()
    pool = ThreadPoolExecutor(2)
    acc = Acceptance(store, registry, Limits(), IngressLimit(), metrics, pool)
    intake = Intake(MqttSection(port=broker.port, client_id="gw-test"), acc, gw_key, metrics)
    acks: dict[str, list[Ack]] = {}
    lock = threading.Lock()

    def on_ack(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        a = decode_ack(msg.payload, VerifyKey(gw_key.public_key))
        with lock:
            acks.setdefault(a.meter_id, []).append(a)

    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="agent-sim", protocol=MQTTProtocolVersion.MQTTv5)
    pub.on_message = on_ack
    pub.connect(broker.host, broker.port)
    pub.subscribe("gridmeter/v1/+/ack", qos=1)
    pub.loop_start()
    intake.start()
    try:
        intake.wait_ready()
        yield Rig(store, registry, intake, gw_key, pub, acks)
    finally:
        intake.stop()
        pub.disconnect()
        pub.loop_stop()
        pool.shutdown()
        store.close()
        registry.close()


def rejections(store: Store) -> list[tuple[str | None, int | None, str, bytes]]:
    return store.conn.execute("SELECT topic_meter_id, seq, reason, payload FROM rejections ORDER BY id").fetchall()


def test_honest_duplicates_and_bad_readings(rig: Rig) -> None:
    now = int(time.time() * 1000)
    t = now - 60_000
    honest = [reading("HOUSE-1", s, t + s * 10_000, 1000 + s, 5) for s in range(1, 6)]
    rig.publish(readings_topic("HOUSE-1"), batch(*honest))
    wait_for(lambda: rig.acks.get("HOUSE-1", [Ack("x", 0, 0)])[-1].acked_seq == 5, what="ack 5")
    stored = rig.store.conn.execute("SELECT seq, import_wh, status, payload FROM readings ORDER BY seq").fetchall()
    assert [(s, i, st) for s, i, st, _ in stored] == [(s, 1000 + s, "accepted") for s in range(1, 6)]
    assert [bytes(p) for *_, p in stored] == [h.payload for h in honest]  # the exact signed bytes

    # a replayed (re-published, captured) message: acked again, stored once
    rig.publish(readings_topic("HOUSE-1"), batch(*honest[2:]))
    wait_for(lambda: len(rig.acks["HOUSE-1"]) >= 2, what="second ack")
    assert rig.acks["HOUSE-1"][-1].acked_seq == 5
    assert rig.store.conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0] == 5
    assert rig.store.conn.execute("SELECT duplicates FROM progress WHERE meter_id = 'HOUSE-1'").fetchone()[0] == 3

    attacker = key_for("attacker")
    base = honest[-1].reading
    forged_reading = Reading("HOUSE-1", base.key_id, 6, t + 60_000, True, 99_999, 5, "x")
    forged_payload = encode_reading(forged_reading)
    forged = (forged_payload, attacker.sign(forged_payload))
    backdated = reading("HOUSE-1", 6, t + 15_000, 1010, 5)
    decreasing = reading("HOUSE-1", 7, t + 70_000, 900, 5)
    spoofed = reading("HOUSE-2", 1, t + 10_000, 50, 0)  # HOUSE-2's genuine reading on HOUSE-1's topic
    reset_agent = reading("HOUSE-1", 2, t + 80_000, 1100, 5)  # valid signature, old seq, new bytes
    rig.publish(readings_topic("HOUSE-1"), batch(forged, backdated, decreasing, spoofed, reset_agent))
    rig.publish(readings_topic("NOT-REGISTERED"), batch(reading("NOT-REGISTERED", 1, t, 1, 1)))
    rig.publish(readings_topic("HOUSE-1"), b"gridmeter/batch/v1\x05\x00garbage")
    wait_for(lambda: len(rejections(rig.store)) == 7, what="7 rejections")
    got = rejections(rig.store)
    assert [(m, s, r) for m, s, r, _ in got] == [
        ("HOUSE-1", 6, "bad_signature"),
        ("HOUSE-1", 6, "read_at_not_increasing"),
        ("HOUSE-1", 7, "counter_decreased"),
        ("HOUSE-1", 1, "topic_mismatch"),
        ("HOUSE-1", 2, "seq_not_increasing"),
        ("NOT-REGISTERED", 1, "unknown_meter"),
        ("HOUSE-1", None, "invalid_field"),  # payload length field 0x6167 > 256
    ]
    assert bytes(got[0][3]) == forged_payload and bytes(got[2][3]) == decreasing.payload
    # authenticated rejections (6, 7) advance the ack so the agent can drop them; the forgery does not
    wait_for(lambda: rig.acks["HOUSE-1"][-1].acked_seq == 7, what="ack 7")
    assert rig.store.conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0] == 5
    assert rig.store.conn.execute("SELECT last_seq, last_import_wh FROM progress WHERE meter_id='HOUSE-1'"
                                  ).fetchone() == (7, 1005)
    assert "NOT-REGISTERED" not in rig.acks


def test_gap_recorded_and_quality_held(rig: Rig) -> None:
    t = int(time.time() * 1000) - 60_000
    rig.publish(readings_topic("HOUSE-2"), batch(reading("HOUSE-2", 1, t, 10), reading("HOUSE-2", 4, t + 10_000, 12),
                                                 reading("HOUSE-2", 5, 1000, 0, synced=False)))
    # the ack stays below the open gap 2..3 (highest contiguous seq) so the agent keeps and re-sends them
    wait_for(lambda: rig.acks.get("HOUSE-2", [Ack("x", 0, 0)])[-1].acked_seq == 1, what="ack 1")
    assert rig.store.conn.execute("SELECT meter_id, first_seq, last_seq FROM gaps").fetchall() == [("HOUSE-2", 2, 3)]
    assert rig.store.conn.execute("SELECT seq, status, reason, detail FROM readings ORDER BY seq").fetchall() == [
        (1, "accepted", None, None), (4, "accepted", None, None), (5, "held", "quality", "clock_unsynced")]


def test_two_gateways_share_the_load(broker: Broker, tmp_path: Path) -> None:
    """Two gateway intakes in one share group, one database: every reading stored exactly once even when
    a meter's batches are processed out of order by the two; acks reach the highest seq."""
    registry_a, registry_b = Registry(tmp_path / "r.sqlite"), Registry(tmp_path / "r.sqlite")
    meters = [f"FLAT-{i}" for i in range(4)]
    now = int(time.time() * 1000)
    for m in meters:
        registry_a.add(record_for(m, rated_w=20_000), now)
    gw_key = SigningKey.generate()
    stores = [Store(tmp_path / "g.sqlite"), Store(tmp_path / "g.sqlite")]
    handled = {"gw-a": 0, "gw-b": 0}
    intakes = []
    for name, store, registry in (("gw-a", stores[0], registry_a), ("gw-b", stores[1], registry_b)):
        def counted(acks: dict[str, int], name: str = name) -> None:
            handled[name] += 1
        acc = Acceptance(store, registry, Limits(), IngressLimit(), Metrics())
        intakes.append(Intake(MqttSection(port=broker.port, client_id=name), acc, gw_key, Metrics(), on_batch=counted))
    acks: dict[str, int] = {}
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="agents", protocol=MQTTProtocolVersion.MQTTv5)

    def on_ack(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        a = decode_ack(msg.payload, VerifyKey(gw_key.public_key))
        acks[a.meter_id] = max(a.acked_seq, acks.get(a.meter_id, 0))

    pub.on_message = on_ack
    pub.connect(broker.host, broker.port)
    pub.subscribe("gridmeter/v1/+/ack", qos=1)
    pub.loop_start()
    try:
        for i in intakes:
            i.start()
        for i in intakes:
            i.wait_ready()
        infos = []
        t0 = now - 3_600_000
        for b in range(10):
            for m in meters:
                rs = [reading(m, s, t0 + s * 10_000, 1000 + s) for s in range(b * 10 + 1, b * 10 + 11)]
                infos.append(pub.publish(readings_topic(m), batch(*rs), qos=1))
        for info in infos:
            info.wait_for_publish(10)
        wait_for(lambda: all(acks.get(m) == 100 for m in meters), 20, "acks of seq 100")
        wait_for(lambda: stores[0].conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0] == 400, 20,
                 "400 readings")
        assert handled["gw-a"] > 0 and handled["gw-b"] > 0  # the share group split the messages
        assert stores[0].conn.execute("SELECT COUNT(*) FROM rejections").fetchone()[0] == 0
        assert stores[0].conn.execute("SELECT COUNT(*) FROM gaps").fetchone()[0] == 0
        assert stores[0].conn.execute("SELECT SUM(accepted), SUM(missing) FROM progress").fetchone() == (400, 0)
    finally:
        for i in intakes:
            i.stop()
        pub.disconnect()
        pub.loop_stop()
        for s in stores:
            s.close()
        registry_a.close()
        registry_b.close()


def test_poison_message_is_quarantined_not_stuck(broker: Broker, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A message whose processing raises (a bug) is quarantined as internal_error with its bytes, the error as
    detail and the meter_id / seq it names; the consumer keeps going with the next messages."""
    import gateway.intake.mqtt as intake_mod

    monkeypatch.setattr(intake_mod, "DEFAULT_RETRY_S", 0.01)

    class Buggy(Acceptance):
        def prepare(self, messages):  # type: ignore[no-untyped-def]
            if any(t.endswith("HOUSE-2/readings") for t, _ in messages):
                raise RuntimeError("simulated bug")
            return super().prepare(messages)

    store, registry = Store(tmp_path / "g.sqlite"), Registry(tmp_path / "r.sqlite")
    now = int(time.time() * 1000)
    registry.add(record_for("HOUSE-1"), now)
    registry.add(record_for("HOUSE-2"), now)
    intake = Intake(MqttSection(port=broker.port, client_id="gw-poison"),
                    Buggy(store, registry, Limits(), IngressLimit(), Metrics()), SigningKey.generate(), Metrics())
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="p", protocol=MQTTProtocolVersion.MQTTv5)
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    try:
        intake.start()
        intake.wait_ready()
        poison = batch(reading("HOUSE-2", 1, now - 5000, 1))
        pub.publish(readings_topic("HOUSE-2"), poison, qos=1).wait_for_publish(5)
        pub.publish(readings_topic("HOUSE-1"), batch(reading("HOUSE-1", 1, now - 5000, 1)), qos=1).wait_for_publish(5)
        wait_for(lambda: store.conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0] == 1, 10, "HOUSE-1 stored")
        wait_for(lambda: store.conn.execute("SELECT COUNT(*) FROM rejections").fetchone()[0] == 1, 10, "quarantine")
        assert store.conn.execute("SELECT reason, payload, meter_id, seq, topic_meter_id FROM rejections"
                                  ).fetchone() == ("internal_error", poison, "HOUSE-2", 1, "HOUSE-2")
        detail = store.conn.execute("SELECT detail FROM rejections").fetchone()[0]
        assert detail.startswith("RuntimeError: simulated bug (batch of 1 readings, seq 1..1)")
    finally:
        intake.stop()
        pub.disconnect()
        pub.loop_stop()
        store.close()
        registry.close()
