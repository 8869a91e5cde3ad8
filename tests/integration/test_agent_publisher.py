"""Store -> publisher -> real mosquitto -> testbed acker -> signed acks -> store deletes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.config import MqttSection
from agent.publisher import Publisher
from agent.store import Store
from protocol.canonical import Ack, encode_ack, sign_reading
from protocol.reading import Reading
from protocol.signing import SigningKey, VerifyKey
from protocol.topics import ack_topic
from testbed.acker import Acker
from testbed.broker import Broker
from tests.polling import until

pytestmark = pytest.mark.integration

DEVICE = SigningKey(bytes(range(32)))
GATEWAY = SigningKey(bytes(range(1, 33)))


def mqtt_cfg(broker: Broker, **kw: object) -> MqttSection:
    base = MqttSection(
        gateway_public_key=GATEWAY.public_key, host=broker.host, port=broker.port, client_id="agent-under-test",
        ack_timeout_s=2.0, batch_max=100, reconnect_min_s=0.1, reconnect_max_s=0.5,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def add(store: Store, meter: str, n: int) -> None:
    for _ in range(n):
        seq = store.allocate_seq(meter)
        r = Reading(meter_id=meter, key_id=DEVICE.key_id, seq=seq, read_at_ms=1_700_000_000_000 + seq * 10_000,
                    clock_synced=True, energy_import_wh=1000 + seq, energy_export_wh=0, profile_id="p")
        store.append(sign_reading(r, DEVICE))
    store.flush()



@pytest.fixture
async def running(tmp_path: Path, broker: Broker) -> AsyncIterator[tuple[Store, Publisher]]:
    store = Store(tmp_path / "agent.sqlite", max_readings=100_000)
    pub = Publisher(mqtt_cfg(broker), ["M1", "M2"], store, VerifyKey(GATEWAY.public_key))
    task = asyncio.create_task(pub.run())
    try:
        yield store, pub
    finally:
        await pub.stop()
        await task
        store.close()


def acker_for(broker: Broker, **kw: object) -> Acker:
    keys = {"M1": VerifyKey(DEVICE.public_key), "M2": VerifyKey(DEVICE.public_key)}
    return Acker(broker.host, broker.port, GATEWAY, keys, **kw)  # type: ignore[arg-type]


async def test_drain_in_order_and_acks_delete(running: tuple[Store, Publisher], broker: Broker) -> None:
    store, pub = running
    with acker_for(broker) as acker:
        add(store, "M1", 950)
        add(store, "M2", 30)
        pub.wake()
        await until(lambda: store.count() == 0, 20, "store drained")
        assert acker.stats.bad_signatures == 0 and acker.stats.malformed == 0
        assert acker.contiguous == {"M1": 950, "M2": 30}
        m1 = [s for m, s in acker.arrival if m == "M1"]
        assert m1 == list(range(1, 951))  # in order, nothing twice
        assert pub.stats.published_readings == 980 and pub.stats.puback_failures == 0
        assert store.acked_seq("M1") == 950


async def test_forged_ack_deletes_nothing_then_resend_after_timeout(
    running: tuple[Store, Publisher], broker: Broker
) -> None:
    store, pub = running
    forger = SigningKey(bytes(32))
    with acker_for(broker, ack=False) as silent:
        add(store, "M1", 10)
        pub.wake()
        await silent.wait(lambda a: a.contiguous.get("M1") == 10, 10, "10 readings received")
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="forger", protocol=MQTTProtocolVersion.MQTTv5)
        c.connect(broker.host, broker.port)
        c.loop_start()
        try:
            c.publish(ack_topic("M1"), encode_ack(Ack("M1", 10, 1), forger), qos=1).wait_for_publish(5)
            c.publish(ack_topic("M1"), b"garbage", qos=1).wait_for_publish(5)
            await until(lambda: pub.stats.acks_rejected == 2, 10, "two rejected acks")
        finally:
            c.disconnect()
            c.loop_stop()
        assert store.count() == 10
        assert store.rejected == {"ack_bad_signature": 1, "ack_malformed": 1}
        # no valid ack within ack_timeout (2 s): the same readings are re-sent
        await silent.wait(lambda a: a.stats.duplicates >= 10, 10, "resend after ack timeout")
        assert pub.stats.resends >= 1
    assert store.count() == 10


async def test_broker_down_then_full_drain(running: tuple[Store, Publisher], broker: Broker) -> None:
    store, pub = running
    await until(lambda: pub.stats.connected, 10, "connected")
    broker.stop()
    await until(lambda: not pub.stats.connected, 10, "disconnect noticed")
    add(store, "M1", 300)  # buffered while the broker is away
    pub.wake()
    await asyncio.sleep(0)
    broker.start()
    with acker_for(broker) as acker:
        await until(lambda: store.count() == 0, 30, "drain after broker restart")
        assert acker.contiguous == {"M1": 300}
        assert acker.stats.bad_signatures == 0
    assert pub.stats.connects >= 2


async def test_status_online_retained_and_offline_on_clean_stop(tmp_path: Path, broker: Broker) -> None:
    store = Store(tmp_path / "agent.sqlite", max_readings=1000)
    pub = Publisher(mqtt_cfg(broker), ["M1", "M2"], store, VerifyKey(GATEWAY.public_key))
    task = asyncio.create_task(pub.run())
    await until(lambda: pub.stats.connected, 10, "connected")
    got: dict[str, bytes] = {}
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="watcher", protocol=MQTTProtocolVersion.MQTTv5)
    c.on_message = lambda _c, _u, m: got.__setitem__(m.topic, bytes(m.payload))
    c.connect(broker.host, broker.port)
    c.subscribe([("gridmeter/v1/+/status", 1), ("gridmeter/v1/agent/+/status", 1)])
    c.loop_start()
    try:
        await until(lambda: len(got) == 3 and all(b'"online"' in v for v in got.values()), 10, "online status")
        await pub.stop()
        await task
        await until(lambda: all(b'"offline"' in v for v in got.values()), 10, "offline status")
    finally:
        c.disconnect()
        c.loop_stop()
        store.close()


async def test_broker_absent_at_start_then_appears(tmp_path: Path) -> None:
    from testbed.ports import free_port

    late = Broker(workdir=tmp_path / "late", port=free_port())
    store = Store(tmp_path / "agent.sqlite", max_readings=1000)
    add(store, "M1", 50)
    pub = Publisher(mqtt_cfg(late), ["M1"], store, VerifyKey(GATEWAY.public_key))
    task = asyncio.create_task(pub.run())
    try:
        await asyncio.sleep(0.5)  # deliberately give the client time to fail its first connection attempts
        assert not pub.stats.connected
        late.start()
        with acker_for(late) as acker:
            await until(lambda: store.count() == 0, 30, "drain once the broker appears")
            assert acker.contiguous == {"M1": 50}
    finally:
        await pub.stop()
        await task
        store.close()
        late.close()


async def test_store_read_failure_does_not_end_the_drain(
    running: tuple[Store, Publisher], broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store read that fails (locked past busy_timeout, I/O error) used to escape Publisher.run() and end
    the publisher task for good while the pollers kept reading: nothing was ever published again."""
    from agent.store import StoreError

    store, pub = running
    real_fetch = store.fetch
    failures = {"left": 3}

    def flaky_fetch(meter_id: str, after_seq: int, limit: int) -> list:  # type: ignore[type-arg]
        if failures["left"]:
            failures["left"] -= 1
            raise StoreError("database is locked")
        return real_fetch(meter_id, after_seq, limit)

    monkeypatch.setattr(store, "fetch", flaky_fetch)
    await until(lambda: pub.stats.connected, 10, "connected")
    with acker_for(broker) as acker:
        add(store, "M1", 120)
        pub.wake()
        await until(lambda: store.count() == 0, 20, "drain after the store recovered")
        assert acker.contiguous == {"M1": 120}
    assert pub.stats.store_errors == 3 and pub.stats.last_store_error == ""


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the simulated crash itself
async def test_dead_network_thread_ends_the_publisher_task(tmp_path: Path) -> None:
    """Seen under libfaketime: paho's reconnect wait raised inside its network thread, the thread died, and the
    agent kept reading and committing (and feeding the watchdog) with nothing ever published again. The
    publisher task must end with a reason so the service's supervision stops the agent for a restart."""
    from agent.publisher import PublisherError
    from testbed.ports import free_port

    absent = Broker(workdir=tmp_path / "absent", port=free_port())  # never started: paho keeps reconnecting
    store = Store(tmp_path / "agent.sqlite", max_readings=1000)
    pub = Publisher(mqtt_cfg(absent), ["M1"], store, VerifyKey(GATEWAY.public_key))

    def broken_wait() -> None:
        raise OSError(22, "Invalid argument")  # what time.sleep raised under libfaketime

    pub._client._reconnect_wait = broken_wait  # type: ignore[method-assign]
    task = asyncio.create_task(pub.run())
    try:
        await until(lambda: task.done(), 30, "publisher task ends when paho's thread dies")
        with pytest.raises(PublisherError, match="network thread died"):
            task.result()
    finally:
        await pub.stop()
        store.close()
