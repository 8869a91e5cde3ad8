"""`gridmeter agent run` (a real subprocess) reading simulated meters over a virtual RS-485 bus (socat pty +
pymodbus RTU server with line timing) and Modbus TCP, publishing to a real mosquitto, with testbed.acker
verifying every signature and acking."""

from __future__ import annotations

import contextlib
import itertools
import json
import random
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from firmware_config.loader import get_profile
from protocol.reading import Quality, Reading
from protocol.signing import SigningKey, VerifyKey
from testbed.acker import Acker
from testbed.broker import Broker
from testbed.meter import SimulatedMeter
from testbed.rtu import VirtualRtuBus
from testbed.stack_meters import MeterServers
from testbed.tcp import ModbusTcpMeters
from tests.integration.agent_process import AgentProcess, AgentSetup, MeterEntry, wait_for

pytestmark = pytest.mark.integration

GATEWAY = SigningKey(bytes(range(7, 39)))
# (meter_id, bus, unit, profile, start import Wh, start export Wh, power W): positive imports, negative exports
METERS = [
    ("HOUSE-1", "rs485-0", 1, "eastron-sdm630", 1_234_567, 0, 9_000),
    ("HOUSE-2", "rs485-0", 2, "eastron-sdm120", 45_678, 12, 3_600),
    ("PV-1", "rs485-0", 3, "eastron-sdm630", 10_000, 876_543, -7_200),
    ("SHOP-1", "tcp-0", 1, "eastron-sdm630", 5_000_000, 3, 18_000),
]


@dataclass
class Rig:
    setup: AgentSetup
    agent: AgentProcess
    acker: Acker
    meters: dict[str, SimulatedMeter]
    started_ms: int

    def allocated(self) -> dict[str, int]:
        """Last seq the agent's store allocated (committed) per meter, read from its SQLite file."""
        if not self.setup.db_path.exists():
            return {}
        with sqlite3.connect(f"file:{self.setup.db_path}?mode=ro", uri=True, timeout=5) as db:
            try:
                rows = db.execute("SELECT meter_id, next_seq - 1 FROM seqs").fetchall()
            except sqlite3.OperationalError:
                return {}
        return dict(rows)

    def stored(self) -> int:
        with sqlite3.connect(f"file:{self.setup.db_path}?mode=ro", uri=True, timeout=5) as db:
            return int(db.execute("SELECT COUNT(*) FROM readings").fetchone()[0])

    def stop_counting(self) -> int:
        for m in self.meters.values():
            m.set_power(0)
        return time.time_ns() // 1_000_000

    def drained_after(self, t_ms: int) -> bool:
        """Every meter has a reading read after t_ms, and everything allocated reached the acker."""
        snap = self.acker.snapshot()
        alloc = self.allocated()
        for meter in self.meters:
            latest = max((r for (m, _), r in snap.items() if m == meter), key=lambda r: r.seq, default=None)
            if latest is None or latest.read_at_ms <= t_ms:
                return False
            if self.acker.contiguous.get(meter, 0) != alloc.get(meter, -1):
                return False
        return True


@pytest.fixture
def rig(tmp_path: Path, broker: Broker) -> Iterator[Rig]:
    meters = {
        mid: SimulatedMeter(get_profile(prof), unit, import_wh=imp, export_wh=exp, power_w=p, live=True)
        for mid, _bus, unit, prof, imp, exp, p in METERS
    }
    (tmp_path / "rtu").mkdir()
    rtu = VirtualRtuBus([meters[m[0]] for m in METERS if m[1] == "rs485-0"], baudrate=9600,
                        workdir=tmp_path / "rtu")
    tcp = ModbusTcpMeters([meters["SHOP-1"]])
    servers = MeterServers([rtu, tcp])
    servers.start()
    setup = AgentSetup(
        workdir=tmp_path / "agent", broker=broker, gateway=GATEWAY,
        buses=[
            {"name": "rs485-0", "kind": "rtu", "port": rtu.client_port, "baudrate": 9600, "timeout_s": 0.5},
            {"name": "tcp-0", "kind": "tcp", "host": "127.0.0.1", "tcp_port": tcp.port},
        ],
        meters=[MeterEntry(mid, bus, unit, prof, key_file="pv.key" if mid == "PV-1" else "")
                for mid, bus, unit, prof, *_ in METERS],
    )
    config = setup.write()
    agent = AgentProcess(config, tmp_path / "agent.log")
    acker = Acker(broker.host, broker.port, GATEWAY, {m: VerifyKey(k.public_key) for m, k in setup.keys.items()})
    acker.start()
    try:
        yield Rig(setup, agent, acker, meters, time.time_ns() // 1_000_000)
    finally:
        agent.close()
        acker.stop()
        servers.stop()


def check_readings(rig: Rig) -> dict[str, list[Reading]]:
    """Per meter: seq 1..N without gaps, exact bytes never changed, every value one the registers served,
    counters never decrease, read_at strictly increasing and inside the test window, all good."""
    assert rig.acker.stats.bad_signatures == 0 and rig.acker.stats.malformed == 0, rig.acker.stats
    assert rig.acker.stats.errors == [], rig.acker.stats.errors  # includes "same seq, different bytes"
    snap = rig.acker.snapshot()
    out: dict[str, list[Reading]] = {}
    now_ms = time.time_ns() // 1_000_000
    for meter, sim in rig.meters.items():
        rs = sorted((r for (m, _), r in snap.items() if m == meter), key=lambda r: r.seq)
        assert [r.seq for r in rs] == list(range(1, len(rs) + 1)), f"{meter}: seq gaps"
        served = set(sim.served_log)
        for prev, r in itertools.pairwise(rs):
            assert r.energy_import_wh >= prev.energy_import_wh and r.energy_export_wh >= prev.energy_export_wh
            assert r.read_at_ms > prev.read_at_ms
        for r in rs:
            assert (r.energy_import_wh, r.energy_export_wh) in served, f"{meter} seq {r.seq}: never served"
            assert rig.started_ms <= r.read_at_ms <= now_ms
            assert r.key_id == rig.setup.keys[meter].key_id
            assert r.quality == Quality.NONE and r.clock_synced, f"{meter} seq {r.seq}: {r.quality!r}"
        out[meter] = rs
    return out


def test_four_meters_rtu_and_tcp_end_to_end(rig: Rig) -> None:
    rig.agent.start()
    wait_for(lambda: all(rig.acker.contiguous.get(m, 0) >= 5 for m in rig.meters), 60, "5 readings per meter",
             rig.agent)
    status = subprocess.run(
        [sys.executable, "-m", "gridmeter.cli", "agent", "status", "--json", "--url",
         f"http://127.0.0.1:{rig.setup.status_port}/health"], capture_output=True, text=True, timeout=30,
    )
    health = json.loads(status.stdout)
    plain = subprocess.run(
        [sys.executable, "-m", "gridmeter.cli", "agent", "status", "--url",
         f"http://127.0.0.1:{rig.setup.status_port}/health"], capture_output=True, text=True, timeout=30,
    )
    assert plain.stdout.startswith("gridmeter agent: OK\n") and "broker: connected" in plain.stdout, plain.stdout
    assert status.returncode == 0, status.stderr + status.stdout
    assert health["mqtt"]["connected"] is True and set(health["devices"]) == set(rig.meters)
    assert all(d["reads"] >= 5 for d in health["devices"].values())
    t_stop = rig.stop_counting()
    wait_for(lambda: rig.drained_after(t_stop + 500), 60, "readings after counting stopped, all acked", rig.agent)
    assert rig.agent.terminate() == 0
    readings = check_readings(rig)
    for meter, sim in rig.meters.items():
        last = readings[meter][-1]
        # energy published == energy served by the simulated registers, exact Wh
        assert (last.energy_import_wh, last.energy_export_wh) == (sim.served_import_wh, sim.served_export_wh)
        first = readings[meter][0]
        assert last.energy_import_wh - first.energy_import_wh + last.energy_export_wh - first.energy_export_wh > 0
    assert rig.stored() == 0
    assert rig.acker.stats.duplicates == 0


def assert_all_arrived(rig: Rig) -> dict[str, list[Reading]]:
    """Every seq the store ever allocated (and committed) reached the acker, none twice with other bytes, and
    the last reading of each meter carries exactly what its simulated registers serve."""
    readings = check_readings(rig)
    alloc = rig.allocated()
    for meter, sim in rig.meters.items():
        assert len(readings[meter]) == alloc[meter]
        last = readings[meter][-1]
        assert (last.energy_import_wh, last.energy_export_wh) == (sim.served_import_wh, sim.served_export_wh)
    return readings


def test_sigkill_twenty_times_loses_and_duplicates_nothing(rig: Rig) -> None:
    rng = random.Random(20261122)
    progress: list[int] = []
    for i in range(20):
        before = sum(rig.allocated().values())
        rig.agent.start()
        if i % 2:  # odd runs: let it get to work first, then kill mid-flight (reading, committing, publishing)
            wait_for(lambda b=before: sum(rig.allocated().values()) > b, 60, "a commit", rig.agent)  # type: ignore[misc]
            time.sleep(rng.uniform(0.0, 1.0))  # the kill point: deliberately random, not a wait for a condition
        else:  # even runs: anywhere from start-up (opening the store, connecting) to work
            time.sleep(rng.uniform(0.1, 1.5))
        rig.agent.kill()
        progress.append(sum(rig.allocated().values()) - before)
    assert all(p > 0 for p in progress[1::2]), progress
    rig.agent.start()
    wait_for(lambda: rig.allocated() and all(rig.acker.contiguous.get(m, 0) >= 3 for m in rig.meters), 60,
             "agent back to work", rig.agent)
    t_stop = rig.stop_counting()
    wait_for(lambda: rig.drained_after(t_stop + 500) and rig.stored() == 0, 90, "full drain", rig.agent)
    assert rig.agent.terminate() == 0
    readings = assert_all_arrived(rig)
    assert rig.agent.starts == 21
    print(f"kill test: per-run committed readings {progress}, duplicates deduped by the acker "
          f"{rig.acker.stats.duplicates}, total {sum(len(r) for r in readings.values())}")


def test_broker_offline_period_then_full_drain(rig: Rig, broker: Broker) -> None:
    rig.agent.start()
    wait_for(lambda: all(rig.acker.contiguous.get(m, 0) >= 2 for m in rig.meters), 60, "first readings", rig.agent)
    broker.stop()
    at_stop = sum(rig.allocated().values())
    # the agent keeps reading and committing while the broker is away
    wait_for(lambda: sum(rig.allocated().values()) >= at_stop + 12, 60, "readings buffered offline", rig.agent)
    assert rig.stored() >= 12
    broker.start()
    t_stop = rig.stop_counting()
    wait_for(lambda: rig.drained_after(t_stop + 500) and rig.stored() == 0, 60, "drain after broker restart",
             rig.agent)
    assert rig.agent.terminate() == 0
    assert_all_arrived(rig)


def test_sd_notify_ready_watchdog_stopping(rig: Rig, tmp_path: Path) -> None:
    sock_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        sock.settimeout(30)
        rig.agent.extra_env = {"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "1000000"}
        rig.agent.start()
        got = [sock.recv(64) for _ in range(3)]
        assert got[0] == b"READY=1" and got[1:] == [b"WATCHDOG=1"] * 2, got
        assert rig.agent.terminate() == 0
        rest = []
        with contextlib.suppress(TimeoutError):
            sock.settimeout(0.5)
            while True:
                rest.append(sock.recv(64))
    assert rest[-1] == b"STOPPING=1", rest


def test_lwt_marks_offline_after_sigkill(rig: Rig, broker: Broker) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    seen: dict[str, list[dict[str, object]]] = {}
    lock = threading.Lock()

    def on_message(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with lock:
            seen.setdefault(msg.topic, []).append(json.loads(msg.payload))

    watcher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="status-watcher", protocol=MQTTProtocolVersion.MQTTv5)
    watcher.on_message = on_message
    watcher.connect(broker.host, broker.port)
    watcher.subscribe([("gridmeter/v1/+/status", 1), ("gridmeter/v1/agent/+/status", 1)])
    watcher.loop_start()
    try:
        rig.agent.start()
        agent_topic = "gridmeter/v1/agent/agent-it/status"
        wait_for(lambda: len(seen) == 5 and all(v[-1]["state"] == "online" for v in seen.values()), 30,
                 "online status of the agent and all its meters", rig.agent)
        rig.agent.kill()
        wait_for(lambda: seen[agent_topic][-1]["state"] == "offline", 30, "LWT offline")
        assert seen[agent_topic][-1]["meters"] == [m[0] for m in METERS]  # the LWT names every meter
    finally:
        watcher.disconnect()
        watcher.loop_stop()
