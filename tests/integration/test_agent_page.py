"""The household page (headless Chromium) and Home Assistant discovery (real mosquitto), on a real agent.

Rig: two simulated meters on Modbus TCP, the agent service (real store, publisher, status listener) acked by
testbed.acker over a real mosquitto (the uplink), the local chain (LiteSVM + oracle program over JSON-RPC) holding
one confirmed submission for HOUSE-1, and a SECOND mosquitto as the household's Home Assistant broker.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import paho.mqtt.client as mqtt
import pytest
import tomli_w
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from solders.keypair import Keypair

from agent.chain_view import decode_meter_state as agent_decode
from agent.config import load_config
from agent.homeassistant import kwh_text
from agent.keys import create_key_file, load_key_file
from agent.service import AgentService, build_service
from firmware_config.loader import load_all
from gateway.oracle import OracleClient
from gateway.oracle.submission import Submission
from localchain.server import LocalChainServer
from oracle_interface import layout as ol
from protocol.signing import SigningKey, VerifyKey
from testbed.acker import Acker
from testbed.broker import Broker
from testbed.meter import SimulatedMeter
from testbed.ports import free_port
from testbed.tcp import ModbusTcpMeters
from tests.chromium_driver import Chromium
from tests.polling import until

pytestmark = pytest.mark.integration

# What Home Assistant's MQTT sensor documents for a discovery config (https://www.home-assistant.io/integrations/
# sensor.mqtt/ and /integrations/mqtt/#mqtt-discovery), limited to the keys this agent may send.
HA_SENSOR_KEYS = {"availability", "availability_mode", "device", "device_class", "name", "origin", "state_class",
                  "state_topic", "unique_id", "unit_of_measurement", "value_template"}
HA_DEVICE_KEYS = {"identifiers", "name", "manufacturer", "model", "sw_version"}
HA_AVAILABILITY_KEYS = {"topic", "payload_available", "payload_not_available"}


@dataclass
class Rig:
    service: AgentService
    status_url: str
    meters: dict[str, SimulatedMeter]
    tcp: ModbusTcpMeters
    ha: HaListener
    chain_url: str


class HaListener:
    """Subscribes like Home Assistant does: the discovery prefix and the gridmeter state topics (retained)."""

    def __init__(self, broker: Broker) -> None:
        self.messages: dict[str, list[bytes]] = {}
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fake-home-assistant",
                                  protocol=MQTTProtocolVersion.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.subscribe([("homeassistant/#", 1), ("gridmeter-ha/#", 1)])
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.setdefault(msg.topic, []).append(bytes(msg.payload))

    def last(self, topic: str) -> bytes | None:
        with self._lock:
            got = self.messages.get(topic)
            return got[-1] if got else None

    def count(self, topic: str) -> int:
        with self._lock:
            return len(self.messages.get(topic, []))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def health(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(url + "/health") as r:
        body: dict[str, Any] = await r.json()
        return body


@pytest.fixture
async def rig(tmp_path: Path, broker: Broker) -> AsyncIterator[Rig]:
    authority = Keypair()
    ha_broker = Broker(workdir=tmp_path / "ha-broker")
    ha_broker.start()
    profiles = load_all()
    meters = {
        "HOUSE-1": SimulatedMeter(profiles["eastron-sdm630"], 1, import_wh=1_234_567, export_wh=89_012, power_w=2_000,
                                  live=True),
        "PV.2": SimulatedMeter(profiles["eastron-sdm630"], 2, import_wh=10, export_wh=3_210_987, power_w=-4_000,
                               live=True),
    }
    tcp = await ModbusTcpMeters(list(meters.values()), framing="socket").start()
    gateway = SigningKey.generate()
    create_key_file(tmp_path / "device.key")
    device = load_key_file(tmp_path / "device.key")
    acker = Acker(broker.host, broker.port, gateway, {m: VerifyKey(device.public_key) for m in meters}).start()
    status_port = free_port()
    try:
        async with LocalChainServer(chain_bridge=authority.pubkey()) as chain:
            program = str(chain.chain.program_id)
            async with OracleClient(chain.url, program, authority, poll_s=0.05) as client:
                ts = int(time.time()) - 120
                res = await client.submit([Submission(f"HOUSE-1:{ts}", "HOUSE-1", 5_000, 12_345, ts, 1)])
                assert res[0].status == "confirmed", res
            cfg_doc = {
                "agent": {"state_dir": str(tmp_path / "state"), "key_file": str(tmp_path / "device.key"),
                          "poll_interval_s": 0.5},
                "clock": {"check": "always-synced"},
                "mqtt": {"host": broker.host, "port": broker.port, "client_id": "page-agent",
                         "gateway_public_key": gateway.public_key.hex(), "ack_timeout_s": 5},
                "store": {"flush_interval_ms": 200},
                "status": {"listen": f"127.0.0.1:{status_port}", "chain_rpc_url": chain.url,
                           "chain_program_id": program, "chain_refresh_s": 5},
                "homeassistant": {"enabled": True, "host": ha_broker.host, "port": ha_broker.port,
                                  "client_id": "ha-agent", "state_interval_s": 1},
                "buses": [{"name": "tcp-0", "kind": "tcp", "host": "127.0.0.1", "tcp_port": tcp.port,
                           "timeout_s": 0.3, "retries": 0}],
                "meters": [{"meter_id": m, "bus": "tcp-0", "unit_id": sim.unit_id, "profile": "eastron-sdm630"}
                           for m, sim in meters.items()],
            }
            (tmp_path / "agent.toml").write_text(tomli_w.dumps(cfg_doc))
            service = build_service(load_config(tmp_path / "agent.toml"))
            ha = HaListener(ha_broker)
            task = asyncio.create_task(service.run())
            try:
                yield Rig(service, f"http://127.0.0.1:{status_port}", meters, tcp, ha, chain.url)
            finally:
                service.request_stop()
                await asyncio.wait_for(task, 60)
                await asyncio.sleep(0.5)  # let the offline availability reach the listener
                ha.close()
    finally:
        acker.stop()
        await tcp.stop()
        ha_broker.close()


def _card_text(meter: str) -> str:
    return f"(() => {{ const c = document.querySelector('[data-meter=\"{meter}\"]'); return c ? c.innerText : ''; }})()"


async def test_household_page_in_chromium_shows_power_today_buffer_chain_and_plain_problems(
        rig: Rig, tmp_path: Path) -> None:
    # the agent reads, the uplink acks, the chain view has fetched once
    async def ready() -> dict[str, Any] | None:
        try:
            body = await health(rig.status_url)
        except aiohttp.ClientError:  # the listener is not up yet
            return None
        hh, chain = body["household"], body["chain"]
        ok = (len(hh) == 2 and all(v["today_import_wh"] >= 0 for v in hh.values()) and body["last_ack_ms"]
              and chain["fetched_at_ms"] and chain["meters"].get("HOUSE-1"))
        return body if ok else None

    deadline = time.monotonic() + 60
    body = None
    while body is None:
        assert time.monotonic() < deadline, "agent never had readings, acks and chain data"
        body = await ready()
        await asyncio.sleep(0.2)
    assert body["chain"]["meters"]["HOUSE-1"] == {"total_produced_wh": 5_000, "total_consumed_wh": 12_345,
                                                  "submissions": 1, "last_reading_s": body["chain"]["meters"]
                                                  ["HOUSE-1"]["last_reading_s"]}
    assert body["chain"]["meters"]["PV.2"] is None  # nothing confirmed for it yet
    assert body["problems"] == []

    async with Chromium(tmp_path / "chromium") as browser:
        await browser.goto(rig.status_url + "/")
        await browser.wait_for("document.body.dataset.loaded === '1'")
        house = await browser.wait_for(f"{_card_text('HOUSE-1')}.includes('12.345 kWh') && {_card_text('HOUSE-1')}")
        assert "2000 W" in house and "from the grid" in house
        assert "5.000 kWh" in house  # on chain: produced (export) beside the register
        assert "1 submissions confirmed on chain" in house
        assert "readings waiting for the gateway's confirmation" in house
        # the register row shows the meter's own counter, as kWh with 3 decimals from integer Wh
        reg = await browser.eval("document.querySelector('[data-meter=\"HOUSE-1\"] .reg-import').textContent")
        reg_wh = int(Decimal(reg.split()[0]) * 1000)
        assert 1_234_567 <= reg_wh <= rig.meters["HOUSE-1"].served_import_wh
        pv = await browser.eval(_card_text("PV.2"))
        assert "4000 W" in pv and "to the grid" in pv and "Nothing confirmed on chain yet" in pv
        assert await browser.eval("document.getElementById('problems').hidden") is True
        assert "synchronised" in await browser.eval("document.getElementById('clock').textContent")
        assert "readings" in await browser.eval("document.getElementById('buffer').textContent")
        # offline-safe: every resource the page loaded came from the agent itself
        origins = await browser.eval("performance.getEntriesByType('resource').map(e => new URL(e.name).origin)")
        assert origins and set(origins) == {rig.status_url}

        # a meter stops answering: the page says so in plain words
        rig.tcp.set_fault(2, no_reply=True)
        text = await browser.wait_for(
            "(() => { const t = document.getElementById('problem-list').innerText; "
            "return t.includes('Meter PV.2 does not answer') ? t : ''; })()", timeout_s=60)
        assert "RS-485 cable" in text
        assert await browser.eval("document.getElementById('overall').textContent") == "Needs attention: see below."
        rig.tcp.clear_faults()

    async with aiohttp.ClientSession() as s:
        async with s.get(rig.status_url + "/") as r:
            assert r.status == 200 and "default-src 'self'" in r.headers["Content-Security-Policy"]
        async with s.get(rig.status_url + "/page/../store.py") as r:
            assert r.status == 404


def test_chain_decoders_agree() -> None:
    """The agent decodes MeterState itself (it may not import the gateway): same bytes, same totals."""
    data = (ol.ACCOUNT_METER_STATE + b"HOUSE-1".ljust(32, b"\0") + bytes([7, 254])
            + (1).to_bytes(4, "little", signed=True)
            + b"".join(v.to_bytes(8, "little") for v in (11, 22, 5_000, 12_345)) + (1_800_000_000).to_bytes(8, "little")
            + (3).to_bytes(8, "little") + (1_700_000_000).to_bytes(8, "little"))
    gw, ag = ol.decode_meter_state(data), agent_decode(data)
    assert (ag.total_produced_wh, ag.total_consumed_wh, ag.submissions, ag.last_reading_s) == (
        gw.total_energy_produced, gw.total_energy_consumed, gw.total_readings, gw.last_reading_timestamp)


async def test_home_assistant_discovery_and_states_on_a_local_broker(rig: Rig) -> None:
    ha = rig.ha
    topics = {f"homeassistant/sensor/gridmeter_{node}/{key}/config"
              for node in ("HOUSE-1", "PV_2") for key in ("energy_import", "energy_export", "power")}
    await until(lambda: all(ha.last(t) for t in topics), 30, "every discovery config")
    for t in topics:
        cfg = json.loads(ha.last(t) or b"")
        assert set(cfg) <= HA_SENSOR_KEYS and set(cfg["device"]) <= HA_DEVICE_KEYS, t
        assert all(set(a) <= HA_AVAILABILITY_KEYS for a in cfg["availability"])
        assert cfg["availability_mode"] == "all" and isinstance(cfg["device"]["identifiers"], list)
        assert cfg["unique_id"] == t.split("/")[2] + "_" + t.split("/")[3]
        if "energy" in t:
            assert (cfg["device_class"], cfg["state_class"], cfg["unit_of_measurement"]) == (
                "energy", "total_increasing", "kWh")
        else:
            assert (cfg["device_class"], cfg["state_class"], cfg["unit_of_measurement"]) == (
                "power", "measurement", "W")
    imp = json.loads(ha.last("homeassistant/sensor/gridmeter_HOUSE-1/energy_import/config") or b"")
    assert imp["state_topic"] == "gridmeter-ha/gridmeter_HOUSE-1/state"
    assert imp["value_template"] == "{{ value_json.import_kwh }}"
    assert imp["device"]["model"] == "eastron-sdm630"

    # states: exact kWh text of the stored integer Wh; availability online for the agent and both meters
    state = await until(lambda: ha.last("gridmeter-ha/gridmeter_HOUSE-1/state"), 30, "HOUSE-1 state")
    st = json.loads(state)
    assert set(st) == {"import_kwh", "export_kwh", "power_w"} and st["power_w"] == 2000
    wh = int(Decimal(st["import_kwh"]) * 1000)
    assert kwh_text(wh) == st["import_kwh"] and 1_234_567 <= wh <= rig.meters["HOUSE-1"].served_import_wh
    # each meter's state is its own message: PV_2's may come after HOUSE-1's (seen on a busy CI machine)
    pv = await until(lambda: ha.last("gridmeter-ha/gridmeter_PV_2/state"), 30, "PV_2 state")
    assert json.loads(pv)["export_kwh"].startswith("3210.9")
    avail = [a["topic"] for a in imp["availability"]]
    await until(lambda: all(ha.last(t) == b"online" for t in avail), 30, "availability online")

    # Home Assistant restarts (birth message): the configs are sent again
    before = ha.count("homeassistant/sensor/gridmeter_HOUSE-1/power/config")
    ha.client.publish("homeassistant/status", b"online", qos=1)
    await until(lambda: ha.count("homeassistant/sensor/gridmeter_HOUSE-1/power/config") > before, 30, "re-discovery")

    # a meter that stops answering becomes unavailable; the other stays available
    rig.tcp.set_fault(1, no_reply=True)
    await until(lambda: ha.last(avail[1]) == b"offline", 90, "HOUSE-1 unavailable")
    assert ha.last("gridmeter-ha/gridmeter_PV_2/availability") == b"online"
    rig.tcp.clear_faults()
    await until(lambda: ha.last(avail[1]) == b"online", 90, "HOUSE-1 available again")

    # the agent stops: its availability goes offline (retained), so every entity shows unavailable
    rig.service.request_stop()
    await until(lambda: ha.last(avail[0]) == b"offline", 30, "agent offline")
