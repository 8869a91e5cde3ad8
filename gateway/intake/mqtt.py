"""MQTT intake: shared subscription to the agents' reading topics, durable commit, then signed acks.

paho-mqtt 2.x (VERSION2 callbacks, MQTT v5), QoS 1, MANUAL broker acks: a message is PUBACKed only after its
readings are committed. The session is NOT persistent (clean start, session expiry mqtt.session_expiry_s,
default 0): a gateway that stops or dies leaves the $share group with its connection. With a persistent session
mosquitto (2.0.x) kept handing a stopped gateway its share of the readings, queued for nobody, and the live
ones saw every second seq. Nothing is lost without it: what a gateway had not committed is not acked to the
agent, and the agents re-send everything the gateways have not acked. The receive queue is bounded:
when the worker falls behind, paho's network thread blocks on it and stops reading the socket (TCP back
pressure) instead of growing memory. One worker thread drains the queue in groups, hands them to
`Acceptance.process`, then publishes one signed ack per meter (protocol.canonical.encode_ack) to
gridmeter/v1/<meter_id>/ack and PUBACKs the messages.
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from gateway.config import MqttSection
from gateway.intake.acceptance import Acceptance, Prepared
from gateway.metrics import Metrics
from gateway.store.errors import retryable
from protocol import Ack, SigningKey, encode_ack
from protocol.topics import ack_topic, shared_readings_filter

log = logging.getLogger(__name__)


def _messages(msgs: Iterable[mqtt.MQTTMessage]) -> list[tuple[str, bytes]]:
    """(topic, payload) pairs; paho hands bytes (its hint also allows bytearray, which acceptance reads alike)."""
    return cast(list[tuple[str, bytes]], [(m.topic, m.payload) for m in msgs])

DEFAULT_GROUP_READINGS = 4000  # readings per commit: amortises fsync, acks and queries (~ms) over many readings
DEFAULT_READING_BYTES = 216  # a signed reading in a batch (2 + ~150 + 64): to size groups without decoding
DEFAULT_PIPELINE_DEPTH = 1  # groups being verified while the oldest is committed (2 measured no faster)
DEFAULT_IDLE_POLL_S = 0.2  # worker wakes this often to notice stop()
DEFAULT_RETRY_S = 1.0  # after a failed commit (disk full, locked DB) before trying again
DEFAULT_KEEPALIVE_S = 30
# Allocations between young-generation garbage collections (CPython's default is 700). A group of readings
# is ~10 objects per reading that live until its commit; at 700 they are traversed and promoted again and
# again, which cost ~15 % of intake time. They hold no reference cycles: raising it only batches the work.
DEFAULT_GC_THRESHOLD = 50_000
# ...but at a household's load (a few readings a second) 50,000 net allocations take over an hour, and the cyclic
# garbage made meanwhile (paho's topic matcher builds a self-referencing closure per message; asyncio/HTTP objects)
# is never collected: RSS grew ~0.2 MB/min. So whenever the worker is idle and no young collection ran for this
# long, it runs one (a few ms for < 50,000 objects), and every DEFAULT_IDLE_FULL_GC young ones a full collection
# (cycles that died after reaching the oldest generation; ~20 ms); a busy intake keeps the batched behaviour above.
DEFAULT_IDLE_GC_S = 30.0
DEFAULT_IDLE_FULL_GC = 20


class BrokerUnavailableError(Exception):
    pass


class Intake:
    def __init__(self, cfg: MqttSection, acceptance: Acceptance, ack_key: SigningKey, metrics: Metrics,
                 *, on_batch: Callable[[dict[str, int]], None] | None = None) -> None:
        self.cfg, self.acceptance, self.ack_key, self.metrics = cfg, acceptance, ack_key, metrics
        self.on_batch = on_batch
        self._queue: queue.Queue[mqtt.MQTTMessage] = queue.Queue(maxsize=cfg.max_pending_messages)
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._worker: threading.Thread | None = None
        self.failure: str | None = None  # why the worker thread died (the service supervisor reports it)
        self._gc_threshold = gc.get_threshold()  # restored on stop()
        self.client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.cfg.client_id,
                        protocol=MQTTProtocolVersion.MQTTv5)
        c.manual_ack_set(True)
        c.max_inflight_messages_set(100)
        if self.cfg.username:
            c.username_pw_set(self.cfg.username, self.cfg.password or None)
        if self.cfg.tls_ca:
            c.tls_set(ca_certs=self.cfg.tls_ca, certfile=self.cfg.tls_cert or None, keyfile=self.cfg.tls_key or None)
        c.reconnect_delay_set(1, 30)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        return c

    # ---- paho callbacks (network thread) ---------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, _ud: object, flags: mqtt.ConnectFlags, rc: mqtt.ReasonCode,
                    _props: Properties | None) -> None:
        if rc.is_failure:
            log.error("MQTT connect refused by %s:%s: %s", self.cfg.host, self.cfg.port, rc)
            return
        log.info("MQTT connected to %s:%s (session present: %s)", self.cfg.host, self.cfg.port, flags.session_present)
        self._connected.set()
        client.subscribe(shared_readings_filter(self.cfg.share_group, self.cfg.topic_prefix),
                         options=SubscribeOptions(qos=1))

    def _on_subscribe(self, _c: mqtt.Client, _ud: object, _mid: int, codes: list[mqtt.ReasonCode],
                      _props: Properties | None) -> None:
        if any(c.is_failure for c in codes):
            log.error("MQTT subscribe refused: %s", codes)
        else:
            self._subscribed.set()

    def _on_disconnect(self, _c: mqtt.Client, _ud: object, _flags: mqtt.DisconnectFlags, rc: mqtt.ReasonCode,
                       _props: Properties | None) -> None:
        self._connected.clear()
        self._subscribed.clear()
        if not self._stop.is_set():
            log.warning("MQTT disconnected (%s); paho reconnects", rc)

    def _on_message(self, _c: mqtt.Client, _ud: object, msg: mqtt.MQTTMessage) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(msg, timeout=DEFAULT_IDLE_POLL_S)  # bounded: blocks paho = TCP back pressure
                return
            except queue.Full:
                continue

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self._gc_threshold = gc.get_threshold()
        gc.set_threshold(max(self._gc_threshold[0], DEFAULT_GC_THRESHOLD), *self._gc_threshold[1:])
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.cfg.session_expiry_s
        if self.cfg.session_expiry_s:
            log.warning("mqtt.session_expiry_s = %d: for that long after this gateway stops, the broker keeps "
                        "sending it its share of the readings (the other gateways of share group %r see gaps until "
                        "the agents re-send); 0 is right unless this is the only gateway",
                        self.cfg.session_expiry_s, self.cfg.share_group)
        self.client.connect_async(self.cfg.host, self.cfg.port, DEFAULT_KEEPALIVE_S, clean_start=True,
                                  properties=props)
        self.client.loop_start()
        self._worker = threading.Thread(target=self._run, name="gateway-intake", daemon=True)
        self._worker.start()

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        if not self._subscribed.wait(timeout_s):
            raise BrokerUnavailableError(f"not subscribed to {self.cfg.host}:{self.cfg.port} after {timeout_s}s")

    def alive(self) -> bool:
        return self.dead_reason() is None

    def dead_reason(self) -> str | None:
        """None while the worker and paho's network thread run; else why not (for the supervisor)."""
        if self._worker is None or not self._worker.is_alive():
            return f"worker thread ended ({self.failure or 'no exception recorded'})"
        net = getattr(self.client, "_thread", None)  # paho's loop_start thread
        if not self._stop.is_set() and (net is None or not net.is_alive()):
            return "MQTT network thread (paho) ended"
        return None

    def stop(self) -> None:
        self._stop.set()
        if self._worker is not None:
            self._worker.join(10)
        self.client.disconnect()
        self.client.loop_stop()
        gc.set_threshold(*self._gc_threshold)

    # ---- worker --------------------------------------------------------------------------------
    def _next_group(self, timeout_s: float | None) -> list[mqtt.MQTTMessage]:
        try:
            first = self._queue.get(timeout=timeout_s) if timeout_s else self._queue.get_nowait()
        except queue.Empty:
            return []
        group, size = [first], len(first.payload) // DEFAULT_READING_BYTES
        while size < DEFAULT_GROUP_READINGS:
            try:
                m = self._queue.get_nowait()
            except queue.Empty:
                break
            group.append(m)
            size += len(m.payload) // DEFAULT_READING_BYTES
        return group

    def _run(self) -> None:
        try:
            self._pipeline()
        except BaseException as exc:  # the thread ends here; the service's supervisor reports it and exits 1
            self.failure = f"{type(exc).__name__}: {exc}"
            log.critical("intake worker died: %s", self.failure, exc_info=True)

    def _pipeline(self) -> None:
        """Pipelined: the next groups are decoded and their signatures start verifying in the worker processes
        while the oldest group is committed and acked, so the stages overlap on separate cores."""
        pending: deque[tuple[list[mqtt.MQTTMessage], Prepared | None]] = deque()
        last_gc, idle_gcs = time.monotonic(), 0
        while not self._stop.is_set():
            group = self._next_group(None if pending else DEFAULT_IDLE_POLL_S)
            if not group and not pending and time.monotonic() - last_gc >= DEFAULT_IDLE_GC_S:
                idle_gcs += 1
                gc.collect(2 if idle_gcs % DEFAULT_IDLE_FULL_GC == 0 else 1)
                last_gc = time.monotonic()
            if group:
                prepared: Prepared | None = None
                try:
                    prepared = self.acceptance.prepare(_messages(group))
                except Exception:
                    log.exception("preparing %d messages failed; they are retried one by one", len(group))
                pending.append((group, prepared))
            if pending and (not group or len(pending) > DEFAULT_PIPELINE_DEPTH):
                self._handle(*pending.popleft())
        while pending:
            self._handle(*pending.popleft())

    def _handle(self, group: list[mqtt.MQTTMessage], prepared: Prepared | None = None) -> None:
        if prepared is None:  # preparing failed (logged): process again, finding the message that fails
            self._isolate(group, None)
            return
        try:
            acks = self.acceptance.finish(prepared)
        except Exception as exc:
            log.warning("processing %d messages failed (%s: %s); isolating the cause", len(group),
                        type(exc).__name__, exc)
            self._isolate(group, exc)
            return
        self._done(group, acks)

    def _isolate(self, group: list[mqtt.MQTTMessage], exc: BaseException | None) -> None:
        """The group failed as a whole. A transient storage error (locked database, disk full or failing, a
        lost database server: gateway.store.errors.retryable) is waited out and the same messages tried again,
        nothing acked meanwhile (stopped, the agents re-send what was not acked). Any other error is a property
        of one message: the group is halved until that message stands alone, it is quarantined with the error
        as its reason, and every other message of the group is committed and acked without any waiting."""
        todo: list[tuple[list[mqtt.MQTTMessage], BaseException | None]] = [(group, exc)]
        while todo and not self._stop.is_set():
            part, failed = todo.pop()
            if failed is None:
                try:
                    acks = self.acceptance.process(_messages(part))
                except Exception as e:
                    failed = e
                else:
                    self._done(part, acks)
                    continue
            if retryable(failed):
                log.error("storage unavailable (%s: %s); retrying %d messages in %.0f s", type(failed).__name__,
                          failed, len(part), DEFAULT_RETRY_S)
                self._stop.wait(DEFAULT_RETRY_S)
                todo.append((part, None))
            elif len(part) == 1:
                if not self._quarantine_failed(part[0], failed):
                    self._stop.wait(DEFAULT_RETRY_S)
                    todo.append((part, failed))
            else:
                half = len(part) // 2
                todo += [(part[half:], None), (part[:half], None)]  # popped first half first: in arrival order

    def _done(self, group: list[mqtt.MQTTMessage], acks: dict[str, int]) -> None:
        self._publish_acks(acks)
        for m in group:
            self.client.ack(m.mid, m.qos)
        if self.on_batch is not None:
            self.on_batch(acks)

    def _quarantine_failed(self, m: mqtt.MQTTMessage, exc: BaseException) -> bool:
        """A message that makes processing raise is stored with reason internal_error, the error as its detail
        and the meter_id / seq it names where they can be read (never dropped); then PUBACKed."""
        log.error("message on %s could not be processed (%s: %s); quarantined as internal_error",
                  m.topic[:200], type(exc).__name__, exc, exc_info=exc)
        try:
            self.acceptance.quarantine_failed(m.topic, bytes(m.payload), f"{type(exc).__name__}: {exc}")
        except Exception:
            log.exception("cannot even quarantine (database unavailable?); retrying")
            return False
        self.metrics.rejected.labels("mqtt", "internal_error").inc()
        self._done([m], {})
        return True

    def _publish_acks(self, acks: dict[str, int]) -> None:
        now_ms = int(time.time() * 1000)
        for meter_id, seq in acks.items():
            body = encode_ack(Ack(meter_id, seq, now_ms), self.ack_key)
            self.client.publish(ack_topic(meter_id, self.cfg.topic_prefix), body, qos=1)
            self.metrics.acks.inc()
