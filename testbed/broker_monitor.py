"""A fleet monitor on the broker for the test stack: every published reading (decoded; the same seq with other
bytes is a protocol violation) and every gateway ack (signature verified with the gateway key)."""

from __future__ import annotations

import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from protocol import ProtocolError, VerifyKey, decode_ack, decode_batch


def start_monitor(port: int, gw_key: VerifyKey, lock: threading.Lock, acked: dict[str, int],
                  published: dict[str, dict[int, bytes]], conflicts: list[str]) -> mqtt.Client:
    """Subscribe to every meter's readings and acks on 127.0.0.1:port; fills acked (highest acked seq of the
    meters already in it), published (meter -> seq -> payload) and conflicts under lock. Returns the running
    client (loop_stop + disconnect to end it)."""

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        payload = bytes(msg.payload)
        try:
            if msg.topic.endswith("/ack"):
                ack = decode_ack(payload, gw_key)
                with lock:
                    if ack.meter_id in acked:
                        acked[ack.meter_id] = max(acked[ack.meter_id], ack.acked_seq)
                return
            items = decode_batch(payload)
        except ProtocolError:
            return
        with lock:
            for item in items:
                if item.signed is None:
                    continue
                r = item.signed.reading
                seen = published.setdefault(r.meter_id, {})
                old = seen.setdefault(r.seq, item.payload)
                if old != item.payload:
                    conflicts.append(f"{r.meter_id} seq {r.seq}")

    def on_connect(client: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not rc.is_failure:
            client.subscribe([("gridmeter/v1/+/readings", 1), ("gridmeter/v1/+/ack", 1)])

    spy = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="gridmeter-stack-monitor",
                      protocol=MQTTProtocolVersion.MQTTv5)
    spy.on_message = on_message
    spy.on_connect = on_connect
    spy.reconnect_delay_set(0.1, 1)  # type: ignore[arg-type]  # paho takes float seconds; its hint says int
    spy.connect("127.0.0.1", port)
    spy.loop_start()
    return spy
