"""Drains the store to MQTT and applies the gateway's acks. The ONLY paho-mqtt user of the agent.

paho 2.x, callback API v2, MQTT v5. paho's network thread (loop_start) connects, reconnects with capped
backoff and runs the callbacks; every callback is handed to the asyncio loop (call_soon_threadsafe), so
the store is only ever touched from the asyncio thread.

Flow per meter: committed readings are published in seq order as batches (protocol.canonical.encode_batch,
<= batch_max each, QoS 1). A PUBACK only frees the in-flight window: v5 reason >= 0x80 (135 = not
authorised) is a failure, 16 = "no matching subscribers" is a success. Readings are deleted only by a
gateway ack verified with the gateway key (Store.apply_ack). If no ack covers a sent batch within
ack_timeout_s, the meter's stream is rewound to its acked seq and re-sent (the gateway dedupes by
(meter_id, seq)). paho's in-memory session is never the store: after a restart the store re-sends
everything unacked.

One connection per agent, and MQTT allows one will per connection: the LWT (retained {"state": "offline"})
goes to the agent's own status topic (gridmeter/v1/agent/<client_id>/status) and names every meter of this
agent. Each meter's status topic gets a retained online on connect and offline on a clean stop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.config import ConfigError, MqttSection
from agent.store import AckRejectedError, Store, StoreError
from protocol.canonical import encode_batch
from protocol.signing import VerifyKey
from protocol.topics import ack_topic, agent_status_topic, parse_meter_topic, readings_topic, status_topic

log = logging.getLogger(__name__)

# Sent-but-unacked readings per meter are capped at this many batches: keeps a resend after a lost ack
# small while still letting a drain run ahead of the gateway's acks.
DEFAULT_UNACKED_BATCHES = 40
# Timeouts and the resend check run at least this often even when nothing wakes the loop.
DEFAULT_TICK_S = 0.5
# Resends of an unacked window back off (doubling from ack_timeout_s) up to this interval.
MAX_RESEND_INTERVAL_S = 600.0
# On a clean stop, wait this long for the retained offline status to be PUBACKed.
DEFAULT_STOP_TIMEOUT_S = 3.0


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class PublisherError(RuntimeError):
    """The publisher cannot go on (its network thread is gone)."""


@dataclass
class PublisherStats:
    connected: bool = False
    connects: int = 0
    disconnects: int = 0
    last_connect_error: str = ""
    published_batches: int = 0
    published_readings: int = 0
    puback_failures: int = 0
    resends: int = 0
    acks_ok: int = 0
    acks_rejected: int = 0
    acked_readings: int = 0
    last_publish_ms: int | None = None
    last_ack_ms: int | None = None
    store_errors: int = 0  # drain attempts that failed to read the store (the loop keeps going)
    last_store_error: str = ""


@dataclass
class _MeterStream:
    sent_upto: int  # highest seq handed to paho
    acked: int  # highest seq a verified ack covered
    timeout_s: float  # current ack timeout: doubles after each rewind, back to ack_timeout_s on progress
    outstanding: collections.deque[tuple[int, float]] = field(default_factory=collections.deque)  # (hi seq, t)


class Publisher:
    def __init__(
        self,
        cfg: MqttSection,
        meter_ids: Sequence[str],
        store: Store,
        gateway_key: VerifyKey,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not meter_ids:
            raise ValueError("publisher needs at least one meter")
        self.cfg, self.meter_ids, self.store, self.gateway_key = cfg, tuple(meter_ids), store, gateway_key
        self.stats = PublisherStats()
        self._mono = monotonic
        self._streams = {
            m: _MeterStream(store.acked_seq(m), store.acked_seq(m), cfg.ack_timeout_s) for m in self.meter_ids
        }
        self._inflight: dict[int, tuple[str, int, int]] = {}  # mid -> (meter, lo, hi)
        self._unacked_cap = DEFAULT_UNACKED_BATCHES * cfg.batch_max
        self._rr = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._client = self._make_client()

    # -- paho setup -----------------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.cfg.client_id, protocol=MQTTProtocolVersion.MQTTv5)
        if self.cfg.username:
            c.username_pw_set(self.cfg.username, self.cfg.password or None)
        if self.cfg.tls_ca is not None:
            try:
                c.tls_set(
                    ca_certs=str(self.cfg.tls_ca),
                    certfile=str(self.cfg.tls_cert) if self.cfg.tls_cert else None,
                    keyfile=str(self.cfg.tls_key) if self.cfg.tls_key else None,
                    cert_reqs=ssl.CERT_REQUIRED,
                    tls_version=ssl.PROTOCOL_TLS_CLIENT,
                )
            except (ssl.SSLError, OSError, ValueError) as exc:
                raise ConfigError(
                    f"mqtt.tls_ca/tls_cert/tls_key: cannot load TLS material ({exc}) "
                    f"(got {self.cfg.tls_ca}, {self.cfg.tls_cert}, {self.cfg.tls_key})"
                ) from exc
        c.will_set(self._agent_topic, self._status_payload("offline"), qos=1, retain=True)
        c.reconnect_delay_set(self.cfg.reconnect_min_s, self.cfg.reconnect_max_s)  # type: ignore[arg-type]
        c.max_inflight_messages_set(self.cfg.inflight_max)
        c.max_queued_messages_set(0)  # our window bounds paho's queue; the store is the real queue
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        return c

    @property
    def _agent_topic(self) -> str:
        return agent_status_topic(self.cfg.client_id, self.cfg.topic_prefix)

    def _status_topics(self) -> list[str]:
        return [self._agent_topic, *(self._status_topic(m) for m in self.meter_ids)]

    def _status_topic(self, meter_id: str) -> str:
        return status_topic(meter_id, self.cfg.topic_prefix)

    def _status_payload(self, state: str) -> bytes:
        body = {"state": state, "client_id": self.cfg.client_id, "meters": list(self.meter_ids), "at_ms": wall_ms()}
        return json.dumps(body, sort_keys=True).encode()

    # -- paho callbacks (network thread) -> asyncio ------------------------------------------------

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop closed between the check and the call (shutdown)
                loop.call_soon_threadsafe(fn, *args)

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            self._post(self._connect_failed, str(rc))
            return
        # Always (re)subscribe: harmless when the broker kept the session, essential when it did not.
        client.subscribe([(ack_topic(m, self.cfg.topic_prefix), 1) for m in self.meter_ids])
        for topic in self._status_topics():
            client.publish(topic, self._status_payload("online"), qos=1, retain=True)
        self._post(self._connected, bool(flags.session_present))

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self._post(self._disconnected, str(rc))

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        self._post(self._puback, mid, bool(rc.is_failure), str(rc))

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._post(self._ack_message, msg.topic, bytes(msg.payload))

    # -- asyncio-thread handlers ------------------------------------------------------------------

    def _connected(self, session_present: bool) -> None:
        self.stats.connected = True
        self.stats.connects += 1
        self.stats.last_connect_error = ""
        log.info("connected to %s:%d (session present: %s)", self.cfg.host, self.cfg.port, session_present)
        self._wake.set()

    def _connect_failed(self, reason: str) -> None:
        if reason != self.stats.last_connect_error:
            log.error("broker %s:%d refused the connection: %s", self.cfg.host, self.cfg.port, reason)
        self.stats.last_connect_error = reason

    def _disconnected(self, reason: str) -> None:
        if self.stats.connected and not self._stopping:
            log.warning("disconnected from broker: %s; reconnecting with backoff", reason)
            self.stats.disconnects += 1
        self.stats.connected = False
        # paho re-sends its unacked PUBLISHes after reconnect; forget our window bookkeeping so a lost
        # PUBACK can never wedge the window. The ack timeout still covers anything that got lost.
        self._inflight.clear()
        self._wake.set()

    def _puback(self, mid: int, failed: bool, reason: str) -> None:
        entry = self._inflight.pop(mid, None)
        if entry is not None and failed:
            meter, lo, hi = entry
            self.stats.puback_failures += 1
            log.error("broker rejected %s readings seq %d..%d: %s (re-sent after ack timeout)", meter, lo, hi, reason)
        self._wake.set()

    def _ack_message(self, topic: str, payload: bytes) -> None:
        try:
            meter = parse_meter_topic(topic, "ack", self.cfg.topic_prefix)
            if meter not in self._streams:
                raise AckRejectedError("ack_unknown_meter", f"ack for unconfigured meter on {topic}")
            self.store.apply_ack(meter, payload, self.gateway_key)
        except AckRejectedError:
            self.stats.acks_rejected += 1
            return
        except Exception as exc:  # an ack must never kill the loop (e.g. StoreError): log it, count it
            self.stats.acks_rejected += 1
            log.error("cannot apply ack on %s: %s", topic, exc)
            return
        st = self._streams[meter]
        acked = self.store.acked_seq(meter)
        self.stats.acks_ok += 1
        self.stats.acked_readings += max(0, acked - st.acked)
        self.stats.last_ack_ms = wall_ms()
        if acked > st.acked:
            st.timeout_s = self.cfg.ack_timeout_s
        st.acked = max(st.acked, acked)
        st.sent_upto = max(st.sent_upto, st.acked)
        while st.outstanding and st.outstanding[0][0] <= st.acked:
            st.outstanding.popleft()
        self._wake.set()

    # -- drain ------------------------------------------------------------------------------------

    def wake(self) -> None:
        """New readings were committed."""
        self._wake.set()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.cfg.session_expiry_s
        self._client.connect_async(
            self.cfg.host, self.cfg.port, self.cfg.keepalive_s, clean_start=False, properties=props
        )
        self._client.loop_start()

    async def run(self) -> None:
        """Drain until stop(). Never raises for broker trouble: paho reconnects, we wait."""
        if self._loop is None:
            self.start()
        while not self._stopping:
            self._wake.clear()
            self._check_network_thread()
            if self.stats.connected:
                self._rewind_timed_out(self._mono())
                try:
                    self._fill_window()
                except StoreError as exc:  # e.g. locked or I/O error: the readings stay stored, retry next tick
                    self._store_failed(str(exc))
                else:
                    self._store_recovered()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), DEFAULT_TICK_S)

    def _check_network_thread(self) -> None:
        """paho's network thread reconnects; if it died (an exception inside paho, e.g. its reconnect wait),
        nothing would ever be published again while the pollers keep committing: end the publisher task so
        the service's supervision withholds the watchdog and exits for a restart."""
        thread = self._client._thread  # paho 2.x: set by loop_start, None once the thread ended; pinned <3
        if self._loop is not None and (thread is None or not thread.is_alive()) and not self._stopping:
            raise PublisherError("the MQTT network thread died; nothing can be published until a restart")

    def _store_failed(self, error: str) -> None:
        self.stats.store_errors += 1
        if error != self.stats.last_store_error:
            log.error("cannot read the store to publish: %s (retrying every %.1f s)", error, DEFAULT_TICK_S)
        self.stats.last_store_error = error

    def _store_recovered(self) -> None:
        if self.stats.last_store_error:
            log.info("store readable again; publishing resumed")
            self.stats.last_store_error = ""

    def _rewind_timed_out(self, now: float) -> None:
        for meter, st in self._streams.items():
            if st.outstanding and now - st.outstanding[0][1] > st.timeout_s:
                log.warning("%s: no ack for seq %d..%d within %.0f s; re-sending from %d",
                            meter, st.acked + 1, st.sent_upto, st.timeout_s, st.acked + 1)
                self.stats.resends += 1
                st.sent_upto = st.acked
                st.outstanding.clear()
                # a gateway that is down would otherwise get the whole window again every ack_timeout_s
                st.timeout_s = min(st.timeout_s * 2, max(MAX_RESEND_INTERVAL_S, self.cfg.ack_timeout_s))

    def _fill_window(self) -> None:
        progress = True
        while progress and self.stats.connected and len(self._inflight) < self.cfg.inflight_max:
            progress = False
            for i in range(len(self.meter_ids)):
                meter = self.meter_ids[(self._rr + i) % len(self.meter_ids)]
                if len(self._inflight) >= self.cfg.inflight_max:
                    break
                if self._publish_next(meter):
                    progress = True
            self._rr = (self._rr + 1) % len(self.meter_ids)

    def _publish_next(self, meter: str) -> bool:
        st = self._streams[meter]
        room = min(self.cfg.batch_max, self._unacked_cap - (st.sent_upto - st.acked))
        if room <= 0:
            return False
        rows = self.store.fetch(meter, st.sent_upto, room)
        if not rows:
            return False
        message = encode_batch([(r.payload, r.signature) for r in rows])
        info = self._client.publish(readings_topic(meter, self.cfg.topic_prefix), message, qos=1)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            log.error("publish of %s seq %d..%d failed locally: %s", meter, rows[0].seq, rows[-1].seq,
                      mqtt.error_string(info.rc))
            return False
        self._inflight[info.mid] = (meter, rows[0].seq, rows[-1].seq)
        st.sent_upto = rows[-1].seq
        st.outstanding.append((rows[-1].seq, self._mono()))
        self.stats.published_batches += 1
        self.stats.published_readings += len(rows)
        self.stats.last_publish_ms = wall_ms()
        return True

    def unacked(self) -> dict[str, int]:
        return {m: st.sent_upto - st.acked for m, st in self._streams.items()}

    async def stop(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Clean stop: retained offline status for every meter, then disconnect (no LWT)."""
        self._stopping = True
        self._wake.set()
        if self.stats.connected:
            infos = [
                self._client.publish(topic, self._status_payload("offline"), qos=1, retain=True)
                for topic in self._status_topics()
            ]
            deadline = self._mono() + timeout_s
            while not all(i.is_published() for i in infos) and self._mono() < deadline and self.stats.connected:
                await asyncio.sleep(0.02)
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)
        self._loop = None
