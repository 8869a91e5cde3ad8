"""Several real gateway processes on one share group and one PostgreSQL store, and lightweight meter publishers
(one MQTT client signing real readings for many meters, re-sending what is not acked, as the agent does).
Used by the multi-gateway tests and `python -m bench latency`."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway.store.postgres_registry import PostgresRegistry
from gateway.store.registry import Registry
from protocol import (
    Instantaneous,
    MeterRole,
    Quality,
    Reading,
    Registration,
    SigningKey,
    VerifyKey,
    decode_ack,
    encode_batch,
    sign_reading,
    sign_registration,
)
from protocol.topics import readings_topic

PROFILE = "eastron-sdm630"


def meter_key(meter_id: str) -> SigningKey:
    return SigningKey(hashlib.sha256(f"gridmeter-fleet:{meter_id}".encode()).digest())


def register(registry: Path | str, meter_ids: list[str], rated_w: int = 30_000) -> None:
    """Every meter in a registry: a gateway's SQLite file (a Path), or a fleet's PostgreSQL database (its DSN)."""
    now = int(time.time() * 1000)
    reg = PostgresRegistry(registry) if isinstance(registry, str) else Registry(registry)
    try:
        for m in meter_ids:
            k = meter_key(m)
            r = Registration(m, k.public_key, PROFILE, "SN-" + m, MeterRole.CONSUMPTION, 1, rated_w, "bench",
                             now - 86_400_000, None)
            reg.add(sign_registration(r, k, None).to_text(), now)
    finally:
        reg.close()


def gateway_config(workdir: Path, name: str, *, broker_port: int, dsn: str, rpc_url: str, program_id: str,
                   authority_file: Path, ack_key_file: Path, epoch_s: int = 2, submit_interval_s: float = 0.2,
                   sent_recheck_s: float = 5.0, http_listen: str = "", http_api_key: str = "") -> Path:
    """dsn "": the SQLite store in the gateway's state directory (one box). http_listen: the GridTokenX HTTP
    ingest on that host:port with http_api_key (else off)."""
    state = workdir / name
    state.mkdir(parents=True, exist_ok=True)
    cfg = state / "gateway.toml"
    dsn_line = f'postgres_dsn = "{dsn}"\n' if dsn else ""
    http = (f'enabled = true\nlisten = "{http_listen}"\napi_keys = ["{http_api_key}"]' if http_listen
            else "enabled = false")
    cfg.write_text(f"""
[gateway]
state_dir = "{state}"
ack_key_file = "{ack_key_file}"
verify_workers = 1
{dsn_line}[chain]
rpc_url = "{rpc_url}"
program_id = "{program_id}"
authority_key_file = "{authority_file}"
submit_interval_s = {submit_interval_s}
sent_recheck_s = {sent_recheck_s}
[mqtt]
port = {broker_port}
client_id = "{name}"
[dashboard]
enabled = false
[http]
{http}
[limits]
min_read_spacing_ms = 100
[intervals]
epoch_s = {epoch_s}
""")
    return cfg


def start_gateway(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as f:  # its own process group: the verify worker is killed with it
        return subprocess.Popen([sys.executable, "-m", "gridmeter.cli", "gateway", "run", "--config", str(cfg)],
                                stdout=f, stderr=f, start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def kill_gateway(p: subprocess.Popen[bytes]) -> None:
    """kill -9 of the gateway and its verify worker, as systemd kills a unit's cgroup."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGKILL)
    p.wait(10)


def stop_gateway(p: subprocess.Popen[bytes]) -> int | None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            return p.wait(30)
        except subprocess.TimeoutExpired:
            kill_gateway(p)
            return None
    return p.returncode


@dataclass
class _Meter:
    key: SigningKey
    seq: int = 0
    import_wh: int = 1_000
    first_import_wh: int | None = None
    last_read_at_ms: int = 0
    sent: dict[int, bytes] = field(default_factory=dict)  # seq -> message, until acked
    acked: int = 0


MAX_RESEND_AFTER_S = 60.0


class Publishers:
    """One MQTT client publishing signed readings for many meters (QoS 1), checking the gateway's signed acks,
    re-sending every reading above a meter's ack after `resend_after_s`, doubling that wait after each resend
    without ack progress up to MAX_RESEND_AFTER_S (the agent's behaviour: agent/publisher.py; without the
    back-off, a gateway that falls behind by more than resend_after_s gets every unacked reading again and
    again, and the re-sends alone outrun it)."""

    def __init__(self, host: str, port: int, meter_ids: list[str], gateway_key: bytes, *, client_id: str = "meters",
                 resend_after_s: float = 3.0) -> None:
        self.meters = {m: _Meter(meter_key(m)) for m in meter_ids}
        self.verify = VerifyKey(gateway_key)
        self.resend_after_s = resend_after_s
        self.published_at: dict[tuple[str, int], int] = {}  # (meter, seq) -> first publish, wall ms
        self.acks_received = 0
        self.bad_acks = 0
        self.over_acks = 0  # an ack above what was published: never
        self.resent = 0
        self.lock = threading.Lock()
        self._last_ack_ms: dict[str, float] = {}
        self._wait_s: dict[str, float] = {}  # current resend wait per meter (backs off, reset on progress)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=MQTTProtocolVersion.MQTTv5)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.on_message = self._on_ack
        self.client.connect(host, port)
        self.client.subscribe("gridmeter/v1/+/ack", qos=1)
        self.client.loop_start()

    def _on_ack(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            ack = decode_ack(bytes(msg.payload), self.verify)
        except Exception:  # counted: a test asserts there are none
            self.bad_acks += 1
            return
        with self.lock:
            m = self.meters.get(ack.meter_id)
            if m is None:
                self.bad_acks += 1
                return
            self.acks_received += 1
            if ack.acked_seq > m.seq:
                self.over_acks += 1
            if ack.acked_seq > m.acked:
                m.acked = ack.acked_seq
                for s in [s for s in m.sent if s <= ack.acked_seq]:
                    del m.sent[s]
                self._last_ack_ms[ack.meter_id] = time.monotonic()
                self._wait_s.pop(ack.meter_id, None)

    def publish_round(self, energy_wh: int, now_ms: int | None = None) -> int:
        """One new reading per meter (import register + energy_wh). Returns messages published."""
        now_ms = now_ms or int(time.time() * 1000)
        n = 0
        for mid, m in self.meters.items():
            with self.lock:
                read_at = max(now_ms, m.last_read_at_ms + 100)
                m.seq += 1
                if m.first_import_wh is None:
                    m.first_import_wh = m.import_wh
                else:
                    m.import_wh += energy_wh
                r = Reading(mid, m.key.key_id, m.seq, read_at, True, m.import_wh, 0, PROFILE, Quality.NONE,
                            Instantaneous(power_w=energy_wh * 3600))
                msg = encode_batch([sign_reading(r, m.key)])
                if not m.sent:  # the resend clock runs from the oldest unacked reading
                    self._last_ack_ms[mid] = time.monotonic()
                m.sent[m.seq] = msg
                m.last_read_at_ms = read_at
                self.published_at[(mid, m.seq)] = int(time.time() * 1000)
            self.client.publish(readings_topic(mid), msg, qos=1)
            n += 1
        return n

    def resend_unacked(self) -> int:
        """Re-send every unacked reading of meters whose ack has not moved for resend_after_s."""
        now = time.monotonic()
        todo: list[tuple[str, bytes]] = []
        with self.lock:
            for mid, m in self.meters.items():
                wait = self._wait_s.get(mid, self.resend_after_s)
                if m.sent and now - self._last_ack_ms.get(mid, 0.0) >= wait:
                    todo += [(mid, msg) for _, msg in sorted(m.sent.items())]
                    self._last_ack_ms[mid] = now
                    self._wait_s[mid] = min(MAX_RESEND_AFTER_S, wait * 2)
        for mid, msg in todo:
            self.client.publish(readings_topic(mid), msg, qos=1)
        self.resent += len(todo)
        return len(todo)

    def all_acked(self) -> bool:
        with self.lock:
            return all(m.acked == m.seq for m in self.meters.values())

    def movement(self) -> dict[str, int]:
        """Register movement per meter since its first (baseline) reading, in Wh."""
        with self.lock:
            return {mid: m.import_wh - (m.first_import_wh or m.import_wh) for mid, m in self.meters.items()}

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
