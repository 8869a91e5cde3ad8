"""Home Assistant MQTT discovery on a LOCAL broker (optional, [homeassistant] enabled = true).

Per meter three sensors appear in Home Assistant without any YAML, grouped as one device:
  import energy  device_class energy, state_class total_increasing, kWh  (Energy dashboard: grid consumption)
  export energy  device_class energy, state_class total_increasing, kWh  (Energy dashboard: return to grid)
  power          device_class power,  state_class measurement,      W
Discovery config: retained on `<discovery_prefix>/sensor/<node_id>/<object_id>/config` (node_id, object_id of
[A-Za-z0-9_-], as Home Assistant's discovery requires), sent again whenever Home Assistant announces itself
online on `<discovery_prefix>/status` (its birth message). States: one retained JSON per meter on
`gridmeter-ha/<node_id>/state`, at most every state_interval_s, only when a value changed. Availability (mode
"all"): the agent's own topic (LWT "offline", so a dead agent shows as unavailable) and the meter's topic
("offline" while the meter does not answer).

This is a second, separate MQTT connection: the uplink to the gateway (agent.publisher) never carries it, and a
Home Assistant broker that is down costs nothing but a log line. kWh values are written from integer Wh as exact
decimal text ("1234.567"), never through a float.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.config import HomeAssistantSection
from base.units import milli_text

log = logging.getLogger(__name__)

STATE_ROOT = "gridmeter-ha"
ONLINE, OFFLINE = "online", "offline"
# A meter whose last good reading is older than this many poll intervals is shown unavailable.
STALE_POLLS = 3
MIN_STALE_MS = 60_000
_SLUG_RE = re.compile(r"[^A-Za-z0-9_-]")

# (object key, name, device_class, state_class, unit, JSON field)
SENSORS = (
    ("energy_import", "Import energy", "energy", "total_increasing", "kWh", "import_kwh"),
    ("energy_export", "Export energy", "energy", "total_increasing", "kWh", "export_kwh"),
    ("power", "Power", "power", "measurement", "W", "power_w"),
)


def slug(meter_id: str) -> str:
    """A meter id as a discovery node_id / object_id ([A-Za-z0-9_-]; meter ids may also hold '.')."""
    return _SLUG_RE.sub("_", meter_id)


def kwh_text(wh: int) -> str:
    """Exact decimal kWh from integer Wh: 1234567 -> "1234.567"."""
    return milli_text(wh)


def agent_availability_topic(client_id: str) -> str:
    return f"{STATE_ROOT}/agent/{slug(client_id)}/availability"


def discovery_messages(cfg: HomeAssistantSection, client_id: str, meters: Mapping[str, str],
                       version: str) -> list[tuple[str, bytes]]:
    """(topic, retained payload) of every sensor's discovery config. meters: meter_id -> profile id."""
    out = []
    for meter_id, profile in meters.items():
        node = f"gridmeter_{slug(meter_id)}"
        device = {"identifiers": [node], "name": f"Meter {meter_id}", "manufacturer": "gridmeter",
                  "model": profile, "sw_version": version}
        for key, name, device_class, state_class, unit, field in SENSORS:
            body = {
                "name": name,
                "unique_id": f"{node}_{key}",
                "state_topic": f"{STATE_ROOT}/{node}/state",
                "value_template": f"{{{{ value_json.{field} }}}}",
                "device_class": device_class,
                "state_class": state_class,
                "unit_of_measurement": unit,
                "availability": [
                    {"topic": agent_availability_topic(client_id), "payload_available": ONLINE,
                     "payload_not_available": OFFLINE},
                    {"topic": f"{STATE_ROOT}/{node}/availability", "payload_available": ONLINE,
                     "payload_not_available": OFFLINE},
                ],
                "availability_mode": "all",
                "device": device,
                "origin": {"name": "gridmeter", "sw_version": version},
            }
            topic = f"{cfg.discovery_prefix}/sensor/{node}/{key}/config"
            out.append((topic, json.dumps(body, sort_keys=True).encode()))
    return out


def meter_states(household: Mapping[str, Mapping[str, Any]], devices: Mapping[str, Mapping[str, Any]],
                 now_ms: int, poll_interval_s: float) -> dict[str, tuple[bytes | None, str]]:
    """meter_id -> (state JSON or None before the first good reading, availability)."""
    stale_ms = max(MIN_STALE_MS, int(STALE_POLLS * poll_interval_s * 1000))
    out: dict[str, tuple[bytes | None, str]] = {}
    for meter, dev in devices.items():
        h = household.get(meter)
        state = None
        if h is not None:
            body: dict[str, Any] = {"import_kwh": kwh_text(h["import_wh"]), "export_kwh": kwh_text(h["export_wh"])}
            if h.get("power_w") is not None:
                body["power_w"] = h["power_w"]
            state = json.dumps(body, sort_keys=True).encode()
        fresh = h is not None and now_ms - h["read_at_ms"] <= stale_ms and not dev.get("consecutive_errors")
        out[meter] = (state, ONLINE if fresh else OFFLINE)
    return out


class HomeAssistant:
    def __init__(self, cfg: HomeAssistantSection, meters: Mapping[str, str], poll_interval_s: float,
                 snapshot: Callable[[], tuple[Mapping[str, Any], Mapping[str, Any], int]], version: str) -> None:
        self.cfg, self.meters, self.poll_interval_s, self._snapshot = cfg, dict(meters), poll_interval_s, snapshot
        self.client_id = cfg.client_id or f"gridmeter-ha-{os.uname().nodename}"
        self.version = version
        self._sent: dict[str, bytes] = {}  # topic -> last payload published (states only change when values do)
        self.connected = False
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=MQTTProtocolVersion.MQTTv5)
        if cfg.username:
            c.username_pw_set(cfg.username, cfg.password or None)
        c.will_set(agent_availability_topic(self.client_id), OFFLINE, qos=1, retain=True)
        c.reconnect_delay_set(1, 60)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        self._client = c

    @property
    def node_topics(self) -> Sequence[str]:
        return [f"{STATE_ROOT}/gridmeter_{slug(m)}" for m in self.meters]

    # paho network thread
    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            log.warning("Home Assistant broker %s:%d refused the connection: %s", self.cfg.host, self.cfg.port, rc)
            return
        client.subscribe(f"{self.cfg.discovery_prefix}/status", qos=1)
        self._announce(client)
        self._post(self._connected)

    def _on_disconnect(self, *_a: Any) -> None:
        self._post(self._disconnected)

    def _on_message(self, client: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if bytes(msg.payload) == ONLINE.encode():  # Home Assistant (re)started: it wants the configs again
            self._announce(client)
            self._post(self._resend_states)

    def _announce(self, client: mqtt.Client) -> None:
        client.publish(agent_availability_topic(self.client_id), ONLINE, qos=1, retain=True)
        for topic, payload in discovery_messages(self.cfg, self.client_id, self.meters, self.version):
            client.publish(topic, payload, qos=1, retain=True)

    def _post(self, fn: Callable[[], None]) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(fn)

    # asyncio thread
    def _connected(self) -> None:
        if not self.connected:
            log.info("Home Assistant discovery: connected to %s:%d", self.cfg.host, self.cfg.port)
        self.connected = True
        self._resend_states()

    def _disconnected(self) -> None:
        self.connected = False

    def _resend_states(self) -> None:
        self._sent.clear()
        self._wake.set()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._client.connect_async(self.cfg.host, self.cfg.port, keepalive=60)
        self._client.loop_start()

    def publish_states(self) -> int:
        """Publish what changed; returns messages published."""
        household, devices, now_ms = self._snapshot()
        n = 0
        for meter, (state, avail) in meter_states(household, devices, now_ms, self.poll_interval_s).items():
            node = f"{STATE_ROOT}/gridmeter_{slug(meter)}"
            for topic, payload in ((f"{node}/availability", avail.encode()), (f"{node}/state", state)):
                if payload is None or self._sent.get(topic) == payload:
                    continue
                self._client.publish(topic, payload, qos=0, retain=True)
                self._sent[topic] = payload
                n += 1
        return n

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._wake.clear()
            if self.connected:
                self.publish_states()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.cfg.state_interval_s)

    async def stop(self, timeout_s: float = 3.0) -> None:
        """Clean stop: the agent's availability goes offline (retained), then disconnect."""
        if self.connected:
            info = self._client.publish(agent_availability_topic(self.client_id), OFFLINE, qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                await asyncio.to_thread(info.wait_for_publish, timeout_s)
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)
        self._loop = None
