"""Forged readings on a meter's topic must not starve its honest ones (the per-meter ingress bucket used to be
charged BEFORE the signature was checked: anyone allowed to publish on a meter's topic spent its budget, and the
meter's honest readings were refused as ingress_rate_exceeded). Now the meter's bucket pays only for new readings
whose signature verified; what no honest reading pays for (failed, replayed, over-rate checks) is bounded by the
topic's verify budget, refused beyond it as verify_budget_exceeded, counted and stored."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway.config import MqttSection
from gateway.intake.acceptance import Acceptance, IngressLimit
from gateway.intake.budgets import VerifyBudget
from gateway.intake.checks import Limits
from gateway.intake.mqtt import Intake
from gateway.metrics import Metrics
from gateway.store.registry import Registry
from gateway.store.sqlite import Store
from protocol import Reading, SigningKey, VerifyKey, decode_ack, encode_batch, encode_reading
from protocol.topics import readings_topic
from testbed.broker import Broker
from tests.gateway_support import batch, key_for, reading, record_for
from tests.polling import wait_for

pytestmark = pytest.mark.integration

METER = "HOUSE-1"
ATTACKER = key_for("attacker")
RATE_PER_S, BURST = 5.0, 10  # the meter's ingress bucket: the honest agent sends 4 readings a second
HONEST_READINGS = 24
FORGED_SINGLES = 3000  # one forged reading per message ...
FORGED_BATCHES, FORGED_PER_BATCH = 40, 50  # ... and batches of forged readings


def rejected(metrics: Metrics, reason: str) -> int:
    v = metrics.registry.get_sample_value("gridmeter_gateway_readings_rejected_total",
                                          {"source": "mqtt", "reason": reason})
    return int(v or 0)


def forged(seqs: range, t0_ms: int) -> bytes:
    """One message of plausible readings for METER, with METER's key id, signed by the attacker."""
    kid = key_for(METER).key_id
    items = []
    for seq in seqs:
        payload = encode_reading(Reading(METER, kid, seq, t0_ms + seq * 250, True, 10_000 + seq, 0, "eastron-sdm630"))
        items.append((payload, ATTACKER.sign(payload)))
    return encode_batch(items)


class HonestAgent:
    """METER's readings, one message each, published once (no re-send: each must be accepted the first time);
    times the gateway's signed ack for each."""

    def __init__(self, client: mqtt.Client, ack_key: VerifyKey, t0_ms: int) -> None:
        self.client, self.ack_key, self.t0_ms = client, ack_key, t0_ms
        self.seq = 0
        self.sent_at: dict[int, float] = {}
        self.latency: dict[int, float] = {}
        self._acked = 0
        self._cv = threading.Condition()

    def on_ack(self, payload: bytes) -> None:
        ack = decode_ack(payload, self.ack_key)
        now = time.monotonic()
        with self._cv:
            for s in range(self._acked + 1, ack.acked_seq + 1):
                self.latency[s] = now - self.sent_at[s]
            self._acked = max(self._acked, ack.acked_seq)
            self._cv.notify_all()

    def publish(self) -> int:
        self.seq += 1
        msg = batch(reading(METER, self.seq, self.t0_ms + self.seq * 250, 10_000 + self.seq))
        with self._cv:
            self.sent_at[self.seq] = time.monotonic()
        self.client.publish(readings_topic(METER), msg, qos=1)
        return self.seq

    def wait_acked(self, seq: int, timeout_s: float) -> bool:
        with self._cv:
            return self._cv.wait_for(lambda: self._acked >= seq, timeout_s)


def _client(broker: Broker, name: str, on_message: object = None) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=MQTTProtocolVersion.MQTTv5)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    if on_message is not None:
        c.on_message = on_message
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[Store, Registry]]:
    store, registry = Store(tmp_path / "g.sqlite"), Registry(tmp_path / "r.sqlite")
    registry.add(record_for(METER, rated_w=1_000_000), int(time.time() * 1000))
    try:
        yield store, registry
    finally:
        store.close()
        registry.close()


def test_forged_flood_on_a_meter_topic_does_not_starve_its_honest_readings(broker: Broker,
                                                                          parts: tuple[Store, Registry]) -> None:
    store, registry = parts
    gw_key, metrics = SigningKey.generate(), Metrics()
    acceptance = Acceptance(store, registry, Limits(min_read_spacing_ms=0), IngressLimit(RATE_PER_S, BURST), metrics)
    intake = Intake(MqttSection(port=broker.port, client_id="gw"), acceptance, gw_key, metrics)
    t0 = int(time.time() * 1000) - 60_000
    agent_client = _client(broker, "agent")
    honest = HonestAgent(agent_client, VerifyKey(gw_key.public_key), t0)
    agent_client.on_message = lambda _c, _u, m: honest.on_ack(bytes(m.payload))
    agent_client.subscribe(f"gridmeter/v1/{METER}/ack", qos=1)
    attacker = _client(broker, "attacker")
    # the forgeries claim the seqs the honest agent is about to use (and far beyond)
    flood = [forged(range(1 + i % HONEST_READINGS, 2 + i % HONEST_READINGS), t0) for i in range(FORGED_SINGLES)]
    flood += [forged(range(100 + i * FORGED_PER_BATCH, 100 + (i + 1) * FORGED_PER_BATCH), t0)
              for i in range(FORGED_BATCHES)]
    n_forged = FORGED_SINGLES + FORGED_BATCHES * FORGED_PER_BATCH
    intake.start()
    try:
        intake.wait_ready()
        for _ in range(4):  # honest-only latency, same run and machine
            assert honest.wait_acked(honest.publish(), 60)
            time.sleep(0.25)
        baseline = [honest.latency[s] for s in range(1, 5)]
        # the flood, spread over the honest agent's readings: a slice of it before each of them
        started = time.monotonic()
        n_slices = HONEST_READINGS - honest.seq
        for i in range(n_slices):
            for msg in flood[i * len(flood) // n_slices:(i + 1) * len(flood) // n_slices]:
                attacker.publish(readings_topic(METER), msg, qos=1)
            honest.publish()
            time.sleep(0.25)  # 4 readings a second: within the meter's 5 per second
        flood_s = time.monotonic() - started
        wait_for(lambda: honest.wait_acked(HONEST_READINGS, 0.1), 120, "every honest reading acked")
        wait_for(lambda: rejected(metrics, "bad_signature") >= n_forged, 120, "every forged reading decided",
                 detail=lambda: f"{rejected(metrics, 'bad_signature')} of {n_forged}")

        rows = store.conn.execute("SELECT seq, status FROM readings WHERE meter_id = ? ORDER BY seq",
                                  (METER,)).fetchall()
        assert rows == [(s, "accepted") for s in range(1, HONEST_READINGS + 1)]
        assert set(honest.latency) == set(range(1, HONEST_READINGS + 1))
        # every forgery refused for its signature, none for the meter's rate or the verify budget
        assert rejected(metrics, "bad_signature") == n_forged
        assert rejected(metrics, "ingress_rate_exceeded") == 0 and rejected(metrics, "verify_budget_exceeded") == 0
        stored = dict(store.conn.execute("SELECT reason, COUNT(*) FROM rejections GROUP BY reason").fetchall())
        not_stored = int(metrics.registry.get_sample_value("gridmeter_gateway_rejections_not_stored_total") or 0)
        assert stored.get("bad_signature", 0) + not_stored == n_forged and set(stored) <= {"bad_signature"}
        assert store.conn.execute("SELECT COUNT(*) FROM rejections WHERE authenticated = 1").fetchone()[0] == 0
        rate = n_forged / flood_s
        assert rate > 20 * RATE_PER_S, f"the flood ({rate:.0f}/s) was not far above the meter's bucket"
        under = sorted(honest.latency[s] for s in range(5, HONEST_READINGS + 1))
        print(f"\nforged flood: {n_forged} forged readings in {len(flood)} messages over {flood_s:.2f} s "
              f"({rate:.0f}/s vs the meter's {RATE_PER_S:g}/s, burst {BURST}); honest ack latency "
              f"baseline median {statistics.median(baseline) * 1000:.0f} ms, under the flood median "
              f"{statistics.median(under) * 1000:.0f} ms, max {under[-1] * 1000:.0f} ms; stored "
              f"{stored.get('bad_signature', 0)}, counted only {not_stored}")
    finally:
        intake.stop()
        for c in (agent_client, attacker):
            c.disconnect()
            c.loop_stop()


def test_verify_budget_bounds_checks_and_refills(parts: tuple[Store, Registry]) -> None:
    """Past the topic's verify budget its readings are refused unverified (verify_budget_exceeded, counted and
    stored, not acked: the honest agent re-sends); once the budget refills the honest reading is accepted. Replays
    of handled readings are paid from the verify budget, never from the meter's bucket."""
    store, registry = parts
    now = [1e9]
    metrics = Metrics()
    budget = VerifyBudget(now[0], rate_per_s=1.0, burst=20)
    ingress = IngressLimit(rate_per_s=1.0, burst=3)
    acc = Acceptance(store, registry, Limits(min_read_spacing_ms=0), ingress, metrics, clock=lambda: now[0],
                     verify_budget=budget)
    t0 = int(now[0] * 1000) - 60_000
    topic = readings_topic(METER)
    first = batch(reading(METER, 1, t0, 10_000))
    assert acc.process([(topic, first)]) == {METER: 1}
    # 10 replays of the accepted reading: duplicates (acked), paid from the verify budget, not the meter's bucket
    assert acc.process([(topic, first)] * 10) == {METER: 1}
    assert ingress.available(METER, now[0]) == 2 and budget.topic_available(METER, now[0]) == 10
    # 30 forgeries, then the honest seq 2: the gate admits what the meter's bucket (2) and the topic's budget (10)
    # may pay for; those 12 fail their signature, the rest (the honest one too) is refused unverified
    flood = [(topic, forged(range(2, 3), t0)) for _ in range(30)]
    assert acc.process([*flood, (topic, batch(reading(METER, 2, t0 + 1000, 10_001)))]) == {}
    assert rejected(metrics, "bad_signature") == 12 and rejected(metrics, "verify_budget_exceeded") == 19
    assert ingress.available(METER, now[0]) == 2 and budget.topic_available(METER, now[0]) == 0
    # 30 s later the budget has refilled (1/s; the 2 overdrawn paid back first): the re-sent honest reading is
    # accepted and acked
    now[0] += 30
    assert acc.process([(topic, batch(reading(METER, 2, t0 + 1000, 10_001)))]) == {METER: 2}
    counts = dict(store.conn.execute("SELECT reason, COUNT(*) FROM rejections GROUP BY reason").fetchall())
    assert counts == {"bad_signature": 12, "verify_budget_exceeded": 19}
    assert metrics.registry.get_sample_value("gridmeter_gateway_readings_duplicate_total") == 10
