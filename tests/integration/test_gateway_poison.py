"""Hostile input at the gateway intake through a real mosquitto (issue 8): a message that cannot be stored
never holds back anyone else's readings.

Reproduction: a u64 >= 2^63 (seq here) is legal on the wire but does not fit SQLite's signed INTEGER. Before
the fix, one such message from any client allowed to publish (no device key needed: the rejection row stores
the seq) rolled back its whole intake group, the gateway retried message by message with a sleep each, and
finally stored it as internal_error with meter_id and seq NULL. The retry pause is set to an hour here: a test
that passes proves no honest reading ever waited on it."""

from __future__ import annotations

import sqlite3
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

import gateway.intake.mqtt as intake_mod
from gateway.config import MqttSection
from gateway.intake.acceptance import Acceptance, IngressLimit, Prepared
from gateway.intake.checks import Limits
from gateway.intake.mqtt import Intake
from gateway.metrics import Metrics
from gateway.store.registry import Registry
from gateway.store.sqlite import Store
from protocol import SigningKey, VerifyKey, decode_ack
from protocol.canonical import BATCH_MAGIC, READING_MAGIC
from protocol.topics import readings_topic
from testbed.broker import Broker
from tests.gateway_support import batch, key_for, reading, record_for
from tests.polling import wait_for

pytestmark = pytest.mark.integration

HOUR_S = 3600.0


def poison(meter_id: str, seq: int, key: SigningKey) -> bytes:
    """A batch of one reading whose seq is `seq` (>= 2^63 is refused by every encoder: laid out by hand)."""
    mid = meter_id.encode()
    payload = (READING_MAGIC + bytes([len(mid)]) + mid + key.key_id
               + struct.pack("<QQBHQQ", seq, int(time.time() * 1000), 1, 0, 5, 0) + b"\x01p" + b"\0\0")
    return BATCH_MAGIC + b"\x01\x00" + struct.pack("<H", len(payload)) + payload + key.sign(payload)


@dataclass
class Rig:
    store: Store
    registry: Registry
    intake: Intake
    pub: mqtt.Client
    acks: dict[str, int]
    metrics: Metrics

    def publish(self, topic: str, payload: bytes) -> None:
        self.pub.publish(topic, payload, qos=1).wait_for_publish(10)


def make_rig(broker: Broker, tmp_path: Path, acceptance_cls: type[Acceptance] = Acceptance) -> Iterator[Rig]:
    store, registry = Store(tmp_path / "g.sqlite"), Registry(tmp_path / "r.sqlite")
    now = int(time.time() * 1000)
    registry.add(record_for("HOUSE-1", rated_w=20_000), now)
    registry.add(record_for("HOUSE-2"), now)
    gw_key, metrics = SigningKey.generate(), Metrics()
    acc = acceptance_cls(store, registry, Limits(), IngressLimit(), metrics)
    intake = Intake(MqttSection(port=broker.port, client_id="gw-poison"), acc, gw_key, metrics)
    acks: dict[str, int] = {}
    lock = threading.Lock()

    def on_ack(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        a = decode_ack(msg.payload, VerifyKey(gw_key.public_key))
        with lock:
            acks[a.meter_id] = max(acks.get(a.meter_id, 0), a.acked_seq)

    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="agents", protocol=MQTTProtocolVersion.MQTTv5)
    pub.on_message = on_ack
    pub.connect(broker.host, broker.port)
    pub.subscribe("gridmeter/v1/+/ack", qos=1)
    pub.loop_start()
    intake.start()
    try:
        intake.wait_ready()
        yield Rig(store, registry, intake, pub, acks, metrics)
    finally:
        intake.stop()
        pub.disconnect()
        pub.loop_stop()
        store.close()
        registry.close()


@pytest.fixture
def rig(broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    monkeypatch.setattr(intake_mod, "DEFAULT_RETRY_S", HOUR_S)
    yield from make_rig(broker, tmp_path)


def rows(store: Store, sql: str) -> list[tuple[object, ...]]:
    return store.conn.execute(sql).fetchall()


def test_poison_seq_beyond_2_63_never_delays_honest_acks(rig: Rig) -> None:
    """Unauthenticated poison (unregistered meter, registered meter with a stranger's key, a forged signature)
    interleaved with an honest agent's batches: every honest batch is acked, each poison message is one
    invalid_field rejection that keeps its topic's meter_id, nothing is internal_error."""
    stranger = key_for("stranger")
    t0 = int(time.time() * 1000) - 600_000
    poisons = [(readings_topic("GHOST-1"), poison("GHOST-1", 2**63, stranger)),
               (readings_topic("HOUSE-2"), poison("HOUSE-2", 2**64 - 1, stranger)),
               (readings_topic("HOUSE-2"), poison("HOUSE-2", 2**63, key_for("HOUSE-2"))[:-1] + b"\0")]
    for b in range(15):
        topic, bad = poisons[b % len(poisons)]
        rig.publish(topic, bad)
        seqs = range(b * 10 + 1, b * 10 + 11)
        rig.publish(readings_topic("HOUSE-1"), batch(*[reading("HOUSE-1", s, t0 + s * 2000, 100 + s) for s in seqs]))
        wait_for(lambda last=seqs[-1]: rig.acks.get("HOUSE-1", 0) >= last, 30, f"ack of seq {seqs[-1]}")
    assert rows(rig.store, "SELECT COUNT(*), MIN(seq), MAX(seq) FROM readings WHERE status = 'accepted'") == [
        (150, 1, 150)]
    wait_for(lambda: rows(rig.store, "SELECT COUNT(*) FROM rejections") == [(15,)], 10, "15 rejections")
    got = rows(rig.store, "SELECT topic_meter_id, reason, detail, authenticated FROM rejections ORDER BY id")
    assert [(m, r, a) for m, r, _, a in got] == [(t.split("/")[2], "invalid_field", 0) for t, _ in poisons] * 5
    assert all("seq:" in d and "2^63-1" in d for _, _, d, _ in got)
    assert rows(rig.store, "SELECT COUNT(*) FROM progress WHERE meter_id = 'HOUSE-2'") == [(1,)]
    assert rows(rig.store, "SELECT rejected FROM progress WHERE meter_id = 'HOUSE-2'") == [(10,)]
    assert rig.metrics.registry.get_sample_value("gridmeter_gateway_readings_rejected_total",
                                                 {"source": "mqtt", "reason": "internal_error"}) is None


class _Gate(Acceptance):
    """Holds the first group back until the test has queued the next messages (so they form one group), and
    raises for messages on `poisoned` topics as a storage bug would."""

    poisoned: tuple[str, ...] = ()
    failure: type[Exception] = OverflowError

    def __init__(self, *a: object, **kw: object) -> None:
        super().__init__(*a, **kw)  # type: ignore[arg-type]
        self.entered, self.release = threading.Event(), threading.Event()
        self.groups: list[int] = []

    def prepare(self, messages: Sequence[tuple[str, bytes]]) -> Prepared:
        self.entered.set()
        self.release.wait(30)
        self.groups.append(len(messages))
        return super().prepare(messages)

    def finish(self, p: Prepared) -> dict[str, int]:
        if any(it.topic_meter_id in self.poisoned for it in p.items):
            raise self.failure("Python int too large to convert to SQLite INTEGER")
        return super().finish(p)


def test_unstorable_message_is_isolated_and_quarantined_with_its_reason(
        broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever storage error a message provokes (a bug, a type SQLite refuses), the other messages of its
    group are committed and acked without waiting; it alone is quarantined as internal_error with the error as
    detail and its meter_id and seq."""
    monkeypatch.setattr(intake_mod, "DEFAULT_RETRY_S", HOUR_S)
    monkeypatch.setattr(_Gate, "poisoned", ("HOUSE-2",))
    rig_iter = make_rig(broker, tmp_path, _Gate)
    rig = next(rig_iter)
    try:
        acc = rig.intake.acceptance
        assert isinstance(acc, _Gate)
        t0 = int(time.time() * 1000) - 600_000
        rig.publish(readings_topic("HOUSE-1"), batch(reading("HOUSE-1", 1, t0, 100)))  # held in prepare
        assert acc.entered.wait(10)
        msgs = [readings_topic("HOUSE-1"), readings_topic("HOUSE-2")] * 4
        for i, topic in enumerate(msgs):
            mid = topic.split("/")[2]
            s = i // 2 + (2 if mid == "HOUSE-1" else 1)
            rig.publish(topic, batch(reading(mid, s, t0 + s * 2000, 100 + s)))
        wait_for(lambda: rig.intake._queue.qsize() == len(msgs), 10, "messages queued behind the first")
        acc.release.set()
        wait_for(lambda: rig.acks.get("HOUSE-1", 0) == 5, 30, "HOUSE-1 acked to seq 5")
        wait_for(lambda: rows(rig.store, "SELECT COUNT(*) FROM rejections") == [(4,)], 30, "4 quarantined")
        assert max(acc.groups) > 1  # the poisoned messages did share a group with honest ones
        assert rows(rig.store, "SELECT seq FROM readings ORDER BY seq") == [(s,) for s in range(1, 6)]
        got = rows(rig.store, "SELECT topic_meter_id, meter_id, seq, reason, detail FROM rejections ORDER BY seq")
        assert [g[:4] for g in got] == [("HOUSE-2", "HOUSE-2", s, "internal_error") for s in range(1, 5)]
        assert all(g[4].startswith("OverflowError: Python int too large") for g in got)
        assert "HOUSE-2" not in rig.acks  # nothing of HOUSE-2 was stored: nothing to ack
    finally:
        acc.release.set()
        next(rig_iter, None)


def test_transient_storage_error_is_retried_not_quarantined(
        broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A locked or full database is the storage's problem, not the message's: the group is retried after a
    pause, nothing is acked or quarantined meanwhile, everything is stored once it recovers."""
    monkeypatch.setattr(intake_mod, "DEFAULT_RETRY_S", 0.05)
    failures = {"left": 3}

    class Locked(Acceptance):
        def finish(self, p: Prepared) -> dict[str, int]:
            if failures["left"] > 0:
                failures["left"] -= 1
                raise sqlite3.OperationalError("database is locked")
            return super().finish(p)

    rig_iter = make_rig(broker, tmp_path, Locked)
    rig = next(rig_iter)
    try:
        t0 = int(time.time() * 1000) - 600_000
        rig.publish(readings_topic("HOUSE-1"), batch(*[reading("HOUSE-1", s, t0 + s * 2000, s) for s in range(1, 4)]))
        wait_for(lambda: rig.acks.get("HOUSE-1", 0) == 3, 30, "ack 3")
        assert failures["left"] == 0
        assert rows(rig.store, "SELECT COUNT(*) FROM readings") == [(3,)]
        assert rows(rig.store, "SELECT COUNT(*) FROM rejections") == [(0,)]
    finally:
        next(rig_iter, None)


def genuine(meter_id: str, seq: int, read_at_ms: int, imp: int) -> bytes:
    """The meter's OWN signed reading with an import counter no store can hold (a glitched uint64 register)."""
    key = key_for(meter_id)
    mid = meter_id.encode()
    payload = (READING_MAGIC + bytes([len(mid)]) + mid + key.key_id
               + struct.pack("<QQBHQQ", seq, read_at_ms, 1, 0, imp, 0) + b"\x01p" + b"\0\0")
    return BATCH_MAGIC + b"\x01\x00" + struct.pack("<H", len(payload)) + payload + key.sign(payload)


def test_genuine_counter_beyond_2_63_is_acked_not_stalled(rig: Rig) -> None:
    """A glitched counter >= 2^63 in a reading the meter really signed stalled that meter for good (the insert
    overflowed on every re-send). It is now an authenticated invalid_field rejection: stored with its seq, acked
    at once, the next readings go on; a forged one (stranger's signature) stays unauthenticated and unacked."""
    t0 = int(time.time() * 1000) - 600_000
    rig.publish(readings_topic("HOUSE-1"), genuine("HOUSE-1", 1, t0, 2**63))  # the meter's first reading
    rig.publish(readings_topic("HOUSE-1"), batch(reading("HOUSE-1", 2, t0 + 10_000, 500)))
    wait_for(lambda: rig.acks.get("HOUSE-1", 0) == 2, 30, "ack 2 (past the glitched reading)")
    forged = genuine("HOUSE-2", 1, t0, 2**64 - 1)[:-64] + key_for("stranger").sign(b"x")
    rig.publish(readings_topic("HOUSE-2"), forged)
    rig.publish(readings_topic("HOUSE-1"), genuine("HOUSE-1", 3, t0 + 20_000, 2**63))  # re-sent: once
    rig.publish(readings_topic("HOUSE-1"), genuine("HOUSE-1", 3, t0 + 20_000, 2**63))
    rig.publish(readings_topic("HOUSE-1"), batch(reading("HOUSE-1", 4, t0 + 30_000, 510)))
    wait_for(lambda: rig.acks.get("HOUSE-1", 0) == 4, 30, "ack 4")
    wait_for(lambda: rows(rig.store, "SELECT COUNT(*) FROM rejections") == [(3,)], 10, "3 rejections")
    got = rows(rig.store, "SELECT topic_meter_id, meter_id, seq, reason, authenticated FROM rejections ORDER BY id")
    assert got == [("HOUSE-1", "HOUSE-1", 1, "invalid_field", 1), ("HOUSE-2", None, None, "invalid_field", 0),
                   ("HOUSE-1", "HOUSE-1", 3, "invalid_field", 1)]
    assert rows(rig.store, "SELECT seq, import_wh FROM readings ORDER BY seq") == [(2, 500), (4, 510)]
    assert rows(rig.store, "SELECT COUNT(*) FROM gaps") == [(0,)]
    assert rows(rig.store, "SELECT last_seq, rejected, duplicates FROM progress WHERE meter_id = 'HOUSE-1'") == [
        (4, 2, 1)]
    assert "HOUSE-2" not in rig.acks
