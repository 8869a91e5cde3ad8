"""A stand-in gateway subscriber for tests and benches (real paho client against a real broker).

It verifies every reading's signature against the known public key of its meter, records readings
(deduplicated by (meter_id, seq), as the gateway does), and publishes signed acks carrying the highest
contiguous seq per meter. Counters let tests assert on duplicates, bad signatures and order.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from protocol.canonical import Ack, decode_batch, encode_ack
from protocol.errors import ProtocolError
from protocol.reading import Reading
from protocol.signing import SigningKey, VerifyKey
from protocol.topics import PREFIX, ack_topic, parse_meter_topic


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class AckerStats:
    messages: int = 0
    readings: int = 0
    duplicates: int = 0
    bad_signatures: int = 0
    malformed: int = 0
    unknown_meter: int = 0
    acks_sent: int = 0
    errors: list[str] = field(default_factory=list)


class Acker:
    def __init__(
        self,
        host: str,
        port: int,
        gateway_key: SigningKey,
        meter_keys: Mapping[str, VerifyKey],
        *,
        prefix: str = PREFIX,
        client_id: str = "gridmeter-test-acker",
        ack: bool = True,
        verify: bool = True,
        session_expiry_s: int = 3600,
    ) -> None:
        self.host, self.port, self.prefix = host, port, prefix
        self.gateway_key, self.meter_keys = gateway_key, dict(meter_keys)
        self.ack_enabled, self.verify = ack, verify
        self.stats = AckerStats()
        self.readings: dict[tuple[str, int], Reading] = {}
        self.payloads: dict[tuple[str, int], bytes] = {}
        self.arrival: list[tuple[str, int]] = []  # every (meter, seq) received, duplicates included
        self.contiguous: dict[str, int] = {}
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._session_expiry_s = session_expiry_s
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                   protocol=MQTTProtocolVersion.MQTTv5)
        self._client.reconnect_delay_set(0.1, 1)  # type: ignore[arg-type]
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = lambda *_: self._connected.clear()
        self._client.on_message = self._on_message

    def start(self, timeout_s: float = 10.0) -> Acker:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self._session_expiry_s
        self._client.connect_async(self.host, self.port, 30, clean_start=False, properties=props)
        self._client.loop_start()
        if not self._connected.wait(timeout_s):
            self.stop()
            raise TimeoutError(f"acker: no CONNACK from {self.host}:{self.port} within {timeout_s}s")
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> Acker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not rc.is_failure:
            client.subscribe(f"{self.prefix}/+/readings", qos=1)
            self._connected.set()

    def _on_message(self, client: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            meter = parse_meter_topic(msg.topic, "readings", self.prefix)
            items = decode_batch(bytes(msg.payload))
        except ProtocolError as exc:
            with self._lock:
                self.stats.malformed += 1
                self.stats.errors.append(f"{msg.topic}: {exc}")
            return
        with self._lock:
            self.stats.messages += 1
            touched = self._record(meter, items)
            acks = [(m, self.contiguous.get(m, 0)) for m in touched] if self.ack_enabled else []
        for m, seq in acks:
            if seq > 0:
                body = encode_ack(Ack(meter_id=m, acked_seq=seq, issued_at_ms=wall_ms()), self.gateway_key)
                client.publish(ack_topic(m, self.prefix), body, qos=1)
                with self._lock:
                    self.stats.acks_sent += 1

    def _record(self, topic_meter: str, items: list[Any]) -> set[str]:
        touched: set[str] = set()
        for item in items:
            if item.signed is None:
                self.stats.malformed += 1
                self.stats.errors.append(f"{topic_meter}: {item.error}")
                continue
            r = item.signed.reading
            key = self.meter_keys.get(r.meter_id)
            if r.meter_id != topic_meter or key is None:
                self.stats.unknown_meter += 1
                self.stats.errors.append(f"{topic_meter}: reading for {r.meter_id!r}")
                continue
            if self.verify:
                try:
                    key.verify(item.payload, item.signature)
                except ProtocolError:
                    self.stats.bad_signatures += 1
                    self.stats.errors.append(f"{r.meter_id} seq {r.seq}: bad signature")
                    continue
            self.stats.readings += 1
            self.arrival.append((r.meter_id, r.seq))
            k = (r.meter_id, r.seq)
            if k in self.readings:
                self.stats.duplicates += 1
                if self.payloads[k] != item.payload:
                    self.stats.errors.append(f"{r.meter_id} seq {r.seq}: same seq, different bytes")
            else:
                self.readings[k] = r
                self.payloads[k] = item.payload
            touched.add(r.meter_id)
            c = self.contiguous.get(r.meter_id, 0)
            while (r.meter_id, c + 1) in self.readings:
                c += 1
            self.contiguous[r.meter_id] = c
        return touched

    # -- helpers for tests ----------------------------------------------------------------------

    def snapshot(self) -> dict[tuple[str, int], Reading]:
        with self._lock:
            return dict(self.readings)

    def _reached(self, predicate: Callable[[Acker], bool], deadline: float, timeout_s: float, what: str) -> bool:
        with self._lock:
            if predicate(self):
                return True
        if time.monotonic() > deadline:
            raise TimeoutError(f"acker: {what} not reached within {timeout_s}s (stats {self.stats})")
        return False

    def wait_until(self, predicate: Callable[[Acker], bool], timeout_s: float, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout_s
        while not self._reached(predicate, deadline, timeout_s, what):
            time.sleep(0.02)

    async def wait(self, predicate: Callable[[Acker], bool], timeout_s: float, what: str = "condition") -> None:
        """Like wait_until, without blocking the event loop (for tests that run the agent in-process)."""
        deadline = time.monotonic() + timeout_s
        while not self._reached(predicate, deadline, timeout_s, what):
            await asyncio.sleep(0.02)
