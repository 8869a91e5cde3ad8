"""The gateway's broker account and ACL exactly as gateway/README.md documents them (taken from the README's
```acl block): a real mosquitto with passwords and that ACL plus an agent's provisioned lines; the real intake
logs in, receives a meter's readings through its shared subscription and acks them. Without its ACL lines the
same account receives nothing (so the lines are what makes it work)."""

from __future__ import annotations

import contextlib
import re
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway.config import MqttSection
from gateway.intake.acceptance import Acceptance, IngressLimit
from gateway.intake.checks import Limits
from gateway.intake.mqtt import BrokerUnavailableError, Intake
from gateway.metrics import Metrics
from gateway.store.registry import Registry
from gateway.store.sqlite import Store
from protocol import SigningKey, VerifyKey, decode_ack
from protocol.topics import ack_topic, readings_topic
from provisioning.credentials import acl_lines
from testbed.broker import Broker
from tests.conftest import REPO
from tests.gateway_support import batch, reading, record_for
from tests.polling import wait_for

pytestmark = pytest.mark.integration

GW_USER, GW_PW = "gridmeter-gateway-1", "gateway-password-0123456789"
AGENT_USER, AGENT_PW = "agent-house-1", "agent-password-0123456789"


def readme_acl() -> list[str]:
    text = (REPO / "gateway" / "README.md").read_text()
    block = re.search(r"```acl\n(.*?)```", text, re.S)
    assert block, "gateway/README.md lost its ```acl block"
    return block.group(1).strip().splitlines()


def _run(tmp_path: Path, gateway_acl: list[str], wait_s: float) -> tuple[int, list[int]]:
    """(readings stored, acked seqs) after the agent publishes 3 readings of HOUSE-1."""
    acl = gateway_acl + acl_lines(AGENT_USER, ["HOUSE-1"])
    broker = Broker(workdir=tmp_path / "broker", passwords={GW_USER: GW_PW, AGENT_USER: AGENT_PW}, acl_lines=acl)
    broker.start()
    store, registry = Store(tmp_path / "g.sqlite"), Registry(tmp_path / "r.sqlite")
    registry.add(record_for("HOUSE-1", rated_w=20_000), int(time.time() * 1000))
    gw_key = SigningKey.generate()
    metrics = Metrics()
    intake = Intake(MqttSection(port=broker.port, client_id=GW_USER, username=GW_USER, password=GW_PW),
                    Acceptance(store, registry, Limits(), IngressLimit(), metrics), gw_key, metrics)
    acks: list[int] = []
    lock = threading.Lock()

    def on_ack(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with lock:
            acks.append(decode_ack(msg.payload, VerifyKey(gw_key.public_key)).acked_seq)

    agent = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=AGENT_USER, protocol=MQTTProtocolVersion.MQTTv5)
    agent.username_pw_set(AGENT_USER, AGENT_PW)
    agent.on_message = on_ack
    agent.connect(broker.host, broker.port)
    agent.subscribe(ack_topic("HOUSE-1"), qos=1)
    agent.loop_start()
    intake.start()
    try:
        with contextlib.suppress(BrokerUnavailableError):  # subscription refused: the negative case
            intake.wait_ready(wait_s)
        now = int(time.time() * 1000)
        agent.publish(readings_topic("HOUSE-1"), batch(*[reading("HOUSE-1", s, now - 30_000 + s * 10_000, 100 + s)
                                                         for s in (1, 2, 3)]), qos=1).wait_for_publish(5)
        with contextlib.suppress(AssertionError):  # timed out: the negative case
            wait_for(lambda: 3 in acks, timeout_s=wait_s)
        n = store.conn.execute("SELECT COUNT(*) FROM readings WHERE meter_id = 'HOUSE-1'").fetchone()[0]
        return n, list(acks)
    finally:
        intake.stop()
        agent.disconnect()
        agent.loop_stop()
        store.close()
        registry.close()
        broker.close()


def test_documented_acl_lets_the_gateway_read_readings_and_write_acks(tmp_path: Path) -> None:
    lines = readme_acl()
    assert f"user {GW_USER}" in lines
    stored, acks = _run(tmp_path / "with", lines, 30)
    assert stored == 3 and 3 in acks


def test_without_those_lines_the_gateway_gets_nothing(tmp_path: Path) -> None:
    stored, acks = _run(tmp_path / "without", [f"user {GW_USER}"], 3)
    assert stored == 0 and acks == []
