"""Shared subscription with a stopped gateway (issue 8, real mosquitto 2.0.x).

Reproduction: gateway B of a two-gateway share group stopped while its persistent session (clean_start=False,
session expiry 1 day) stayed in the group; mosquitto kept handing B its share of the readings, queued for
nobody, so the live gateway A got every second seq, recorded gaps and held its acks for the gap grace.
The intake's session now ends with its connection (clean start, session expiry 0): a stopped or killed
gateway leaves the group at once. Nothing is lost by that: what was in flight at the stopped gateway is
not acked, and the agents re-send whatever the gateways have not acked."""

from __future__ import annotations

import threading
import time
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
from protocol import SigningKey, VerifyKey, decode_ack
from protocol.topics import readings_topic
from testbed.broker import Broker
from tests.gateway_support import batch, reading, record_for
from tests.polling import wait_for

pytestmark = pytest.mark.integration

METER = "FLAT-1"


def _intake(broker: Broker, tmp_path: Path, name: str, gw_key: SigningKey) -> tuple[Intake, Store, Registry]:
    """One gateway process of the group; all write the same database, as they do in production."""
    store, registry = Store(tmp_path / "gateway.sqlite"), Registry(tmp_path / "registry.sqlite")
    metrics = Metrics()
    acc = Acceptance(store, registry, Limits(), IngressLimit(), metrics)
    return Intake(MqttSection(port=broker.port, client_id=name), acc, gw_key, metrics), store, registry


def received(i: Intake) -> int:
    return int(i.metrics.registry.get_sample_value("gridmeter_gateway_readings_received_total",
                                                   {"source": "mqtt"}) or 0)


@pytest.mark.parametrize("how", ["stopped", "killed"])
def test_stopped_gateway_takes_no_share(broker: Broker, tmp_path: Path, how: str) -> None:
    now = int(time.time() * 1000)
    reg = Registry(tmp_path / "registry.sqlite")
    reg.add(record_for(METER, rated_w=20_000), now)
    reg.close()
    gw_key = SigningKey.generate()
    a, store_a, reg_a = _intake(broker, tmp_path, "gw-a", gw_key)
    b, store_b, reg_b = _intake(broker, tmp_path, "gw-b", gw_key)
    acks: list[int] = []
    lock = threading.Lock()
    agent = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="agent", protocol=MQTTProtocolVersion.MQTTv5)

    def on_ack(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with lock:
            acks.append(decode_ack(msg.payload, VerifyKey(gw_key.public_key)).acked_seq)

    agent.on_message = on_ack
    agent.connect(broker.host, broker.port)
    agent.subscribe(f"gridmeter/v1/{METER}/ack", qos=1)
    agent.loop_start()
    try:
        for i in (a, b):
            i.start()
        for i in (a, b):
            i.wait_ready()
        t0 = now - 3_600_000
        # both members take part: the first readings are split between them
        for s in range(1, 11):
            agent.publish(readings_topic(METER), batch(reading(METER, s, t0 + s * 10_000, 1000 + s)), qos=1)
        wait_for(lambda: received(a) + received(b) == 10, 20, "10 readings received")
        assert received(a) > 0 and received(b) > 0
        wait_for(lambda: max(acks, default=0) == 10, 20, "ack 10")
        if how == "stopped":
            b.stop()  # a clean shutdown (SIGTERM)
        else:  # kill -9: the connection drops without DISCONNECT and nothing of B runs any more
            b._stop.set()
            b.client.loop_stop()
            sock = b.client.socket()
            assert sock is not None
            sock.close()
        time.sleep(0.5)  # let the broker see B leave (a test pause, not a deadline)
        a_before = received(a)
        for s in range(11, 111):
            agent.publish(readings_topic(METER), batch(reading(METER, s, t0 + s * 10_000, 1000 + s)), qos=1)
        wait_for(lambda: max(acks) == 110 or received(a) - a_before >= 100, 30, "gateway A received 100 seqs")
        wait_for(lambda: max(acks) == 110, 10, "ack 110")
        assert received(a) - a_before == 100  # 100 % of the seqs, each once
        got = [s for (s,) in store_a.conn.execute("SELECT seq FROM readings ORDER BY seq")]
        assert got == list(range(1, 111))
        assert store_a.conn.execute("SELECT COUNT(*) FROM gaps").fetchone()[0] == 0
    finally:
        a.stop()
        if how == "stopped":
            pass
        else:
            b.client.loop_stop()
        agent.disconnect()
        agent.loop_stop()
        for c in (store_a, store_b, reg_a, reg_b):
            c.close()


def test_sigkilled_gateway_process_takes_no_share(broker: Broker, tmp_path: Path) -> None:
    """Gateway B is a real `gridmeter gateway run` process sharing A's database, killed with SIGKILL."""
    import contextlib
    import os
    import signal
    import subprocess
    import sys

    from gateway.keys import create_key_file

    now = int(time.time() * 1000)
    state = tmp_path / "state"
    reg = Registry(state / "registry.sqlite")
    reg.add(record_for(METER, rated_w=20_000), now)
    reg.close()
    gw_key = create_key_file(tmp_path / "gateway.key")
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(f'[gateway]\nstate_dir = "{state}"\nack_key_file = "{tmp_path / "gateway.key"}"\n'
                   f'verify_workers = 1\n[chain]\nenabled = false\n[dashboard]\nenabled = false\n'
                   f'[mqtt]\nport = {broker.port}\nclient_id = "gw-b"\n')
    a = Intake(MqttSection(port=broker.port, client_id="gw-a"),
               Acceptance(store := Store(state / "gateway.sqlite"), registry := Registry(state / "registry.sqlite"),
                          Limits(), IngressLimit(), metrics := Metrics()), gw_key, metrics)
    acks: list[int] = []
    agent = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="agent", protocol=MQTTProtocolVersion.MQTTv5)
    agent.on_message = lambda _c, _u, msg: acks.append(decode_ack(msg.payload, VerifyKey(gw_key.public_key)).acked_seq)
    agent.connect(broker.host, broker.port)
    agent.subscribe(f"gridmeter/v1/{METER}/ack", qos=1)
    agent.loop_start()
    with open(tmp_path / "gw-b.log", "wb") as log:
        b = subprocess.Popen([sys.executable, "-m", "gridmeter.cli", "gateway", "run", "--config", str(cfg)],
                             stdout=log, stderr=log, start_new_session=True)  # its own group: verify workers too
    try:
        a.start()
        a.wait_ready()
        t0 = now - 3_600_000
        s = 0
        deadline = time.monotonic() + 60
        while received(a) == s:  # until B is subscribed and takes a share (A then misses one)
            assert b.poll() is None and time.monotonic() < deadline, (tmp_path / "gw-b.log").read_text()[-2000:]
            s += 1
            agent.publish(readings_topic(METER), batch(reading(METER, s, t0 + s * 10_000, 1000 + s)), qos=1)
            wait_for(lambda s=s: max(acks, default=0) == s, 30, f"ack {s}")
        os.killpg(b.pid, signal.SIGKILL)  # the gateway and its verify worker, as systemd kills a unit's cgroup
        b.wait(10)
        time.sleep(0.5)  # let the broker see the connection drop (a test pause, not a deadline)
        a_before, first = received(a), s + 1
        for s in range(first, first + 100):
            agent.publish(readings_topic(METER), batch(reading(METER, s, t0 + s * 10_000, 1000 + s)), qos=1)
        wait_for(lambda: received(a) - a_before >= 100 or max(acks) == first + 99, 30, "A received 100 seqs")
        wait_for(lambda: max(acks) == first + 99, 10, f"ack {first + 99}")
        assert received(a) - a_before == 100
        stored = [q for (q,) in store.conn.execute("SELECT seq FROM readings ORDER BY seq")]
        assert stored == list(range(1, first + 100))
        assert store.conn.execute("SELECT COUNT(*) FROM gaps").fetchone()[0] == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(b.pid, signal.SIGKILL)
        b.wait(10)
        a.stop()
        agent.disconnect()
        agent.loop_stop()
        store.close()
        registry.close()
