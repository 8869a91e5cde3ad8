"""The real `gridmeter agent run` process against simulated Modbus TCP meters, a real mosquitto and testbed.acker:
a glitched uint64 register, a background task that dies, a corrupt store at start.

Reproductions (main at 72ff4a4):
- a meter whose energy register reads beyond 2^63-1 at the first read: the meter_state insert raised OverflowError,
  the flush task died silently, nothing of any meter was committed again, /health said commit_error "";
- a flush task that dies (any exception): the agent kept running and kept pinging the watchdog;
- a corrupt store file at start: the agent exited 1 at every start (a restart loop under systemd).
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import sqlite3
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from firmware_config.loader import get_profile
from protocol.signing import SigningKey, VerifyKey
from testbed.acker import Acker
from testbed.broker import Broker
from testbed.meter import SimulatedMeter
from testbed.stack_meters import MeterServers
from testbed.tcp import ModbusTcpMeters
from tests.integration.agent_process import AgentProcess, AgentSetup, MeterEntry, wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
GATEWAY = SigningKey(bytes(range(9, 41)))
SQLITE_INT_MAX = 2**63 - 1
# A glitched ABB B2x energy register (uint64 x 0.01 kWh = 10 Wh per count): 2^60 counts = 1.15e19 Wh.
GLITCH_WH = 2**60 * 10

# Injected into the agent process (sitecustomize runs at interpreter start): the flush raises after N calls,
# as the store's OverflowError did on main. The agent code itself is unchanged.
SITECUSTOMIZE = '''
import os
_after = int(os.environ.get("GM_TEST_FLUSH_FAILS_AFTER", "0"))
if _after:
    import agent.store as _store
    _real = _store.Store.flush
    _calls = [0]
    def _flush(self):
        _calls[0] += 1
        if _calls[0] > _after:
            raise RuntimeError("injected flush bug")
        return _real(self)
    _store.Store.flush = _flush
'''


@dataclass
class Rig:
    setup: AgentSetup
    agent: AgentProcess
    acker: Acker
    meters: dict[str, SimulatedMeter]

    def health(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.setup.status_port}/health"
        with urllib.request.urlopen(url, timeout=10) as r:  # our own 127.0.0.1 endpoint
            return json.loads(r.read())  # type: ignore[no-any-return]

    def health_or_none(self) -> dict[str, Any] | None:
        try:
            return self.health()
        except OSError:
            return None

    def events(self) -> list[tuple[str, str | None, str]]:
        with sqlite3.connect(f"file:{self.setup.db_path}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("SELECT kind, meter_id, detail FROM events ORDER BY id").fetchall()

    def set_import(self, meter: str, wh: int) -> None:
        sim = self.meters[meter]
        with sim._lock:
            sim.import_wh = wh


def make_rig(tmp_path: Path, broker: Broker, meters: list[tuple[str, int, str, int, int]]) -> Iterator[Rig]:
    """meters: (meter_id, unit, profile, import Wh, power W), all on one Modbus TCP server."""
    sims = {mid: SimulatedMeter(get_profile(prof), unit, import_wh=imp, power_w=p, live=True)
            for mid, unit, prof, imp, p in meters}
    tcp = ModbusTcpMeters(list(sims.values()))
    servers = MeterServers([tcp])
    servers.start()
    setup = AgentSetup(workdir=tmp_path / "agent", broker=broker, gateway=GATEWAY,
                       buses=[{"name": "tcp-0", "kind": "tcp", "host": "127.0.0.1", "tcp_port": tcp.port}],
                       meters=[MeterEntry(mid, "tcp-0", unit, prof) for mid, unit, prof, *_ in meters])
    config = setup.write()
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(SITECUSTOMIZE)
    # the repository under test first: sitecustomize imports agent.store before `-m` puts the cwd on sys.path
    path = os.pathsep.join([str(inject), str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    agent = AgentProcess(config, tmp_path / "agent.log", env={"PYTHONPATH": path})
    acker = Acker(broker.host, broker.port, GATEWAY, {m: VerifyKey(k.public_key) for m, k in setup.keys.items()})
    acker.start()
    try:
        yield Rig(setup, agent, acker, sims)
    finally:
        agent.close()
        acker.stop()
        servers.stop()


@pytest.fixture
def glitch_rig(tmp_path: Path, broker: Broker) -> Iterator[Rig]:
    yield from make_rig(tmp_path, broker, [("HOUSE-1", 1, "eastron-sdm630", 1_000_000, 3_600),
                                           ("GLITCH-1", 2, "abb-b2x", GLITCH_WH, 0)])


@pytest.fixture
def rig(tmp_path: Path, broker: Broker) -> Iterator[Rig]:
    yield from make_rig(tmp_path, broker, [("HOUSE-1", 1, "eastron-sdm630", 1_000_000, 3_600),
                                           ("PV-1", 2, "eastron-sdm630", 20_000, -7_200)])


def test_glitched_uint64_register_is_a_counted_read_error_and_never_stops_commits(glitch_rig: Rig) -> None:
    rig = glitch_rig
    rig.agent.start()
    wait_for(lambda: rig.acker.contiguous.get("HOUSE-1", 0) >= 8, 60, "HOUSE-1 acked while GLITCH-1 is glitched",
             rig.agent)
    h = rig.health()
    g = h["devices"]["GLITCH-1"]
    assert g["read_errors"] >= 3 and "out_of_range" in g["last_error"], g
    assert g["last_glitch"] == "invalid energy register (energy_import_wh: out_of_range)", g
    assert h["queue"]["commit_error"] == "" and h["failed_task"] is None
    assert h["devices"]["HOUSE-1"]["stored"] >= 8
    assert "GLITCH-1" not in rig.acker.contiguous
    # the register reads sanely again: its readings flow
    rig.set_import("GLITCH-1", 5_000_000)
    wait_for(lambda: rig.acker.contiguous.get("GLITCH-1", 0) >= 3, 60, "GLITCH-1 readings after the glitch",
             rig.agent)
    # and glitches again mid-run: a read error again, never a reading
    errors_before = rig.health()["devices"]["GLITCH-1"]["read_errors"]
    rig.set_import("GLITCH-1", GLITCH_WH)
    wait_for(lambda: rig.health()["devices"]["GLITCH-1"]["read_errors"] >= errors_before + 3, 60,
             "read errors for the second glitch", rig.agent)
    house_before = rig.acker.contiguous["HOUSE-1"]
    wait_for(lambda: rig.acker.contiguous["HOUSE-1"] >= house_before + 5, 60, "HOUSE-1 still committed", rig.agent)
    assert rig.agent.terminate() == 0
    snap = rig.acker.snapshot()
    assert all(r.energy_import_wh <= SQLITE_INT_MAX and r.energy_export_wh <= SQLITE_INT_MAX for r in snap.values())
    assert {r.energy_import_wh for (m, _), r in snap.items() if m == "GLITCH-1"} == {5_000_000}
    assert rig.acker.stats.errors == [] and rig.acker.stats.bad_signatures == 0


def test_dead_flush_task_stops_watchdog_exits_1_and_is_shown_after_restart(rig: Rig, tmp_path: Path) -> None:
    sock_path = tmp_path / "notify.sock"
    got: list[tuple[float, bytes]] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        sock.settimeout(0.2)
        done = threading.Event()

        def receive() -> None:
            while not done.is_set():
                try:
                    got.append((time.monotonic(), sock.recv(64)))
                except TimeoutError:
                    continue

        receiver = threading.Thread(target=receive, daemon=True)
        receiver.start()
        rig.agent.extra_env.update({"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000",
                                    "GM_TEST_FLUSH_FAILS_AFTER": "30"})  # 100 ms flush ticks: fails after ~3 s
        failed_seen: float | None = None
        try:
            rig.agent.start()
            assert rig.agent.proc is not None
            deadline = time.monotonic() + 90
            while rig.agent.proc.poll() is None and time.monotonic() < deadline:
                if failed_seen is None and "background task flush died" in rig.agent.tail(100_000):
                    failed_seen = time.monotonic()
                time.sleep(0.02)
            code = rig.agent.proc.poll()
        finally:
            done.set()
            receiver.join(5)
    log = rig.agent.tail(100_000)
    assert code is not None, f"the agent still runs 90 s after its flush task was made to fail:\n{log}"
    assert code == 1, log
    assert "background task flush died (RuntimeError: injected flush bug)" in log
    assert "agent stopped: background task 'flush' failed: RuntimeError: injected flush bug" in log, log
    assert failed_seen is not None
    states = [m for _, m in got]
    assert states[0] == b"READY=1" and states.count(b"WATCHDOG=1") >= 2 and states[-1] == b"STOPPING=1", states
    assert [m for t, m in got if t > failed_seen and m == b"WATCHDOG=1"] == []  # no ping once it was dead
    # systemd restarts it (Restart=on-failure): the new run works and /health says why the last one stopped
    acked = rig.acker.contiguous.get("HOUSE-1", 0)
    rig.agent.extra_env = {}
    rig.agent.start()
    wait_for(lambda: rig.acker.contiguous.get("HOUSE-1", 0) >= acked + 5, 60, "readings after the restart",
             rig.agent)
    h = rig.health()
    assert h["last_task_failure"]["task"] == "flush"
    assert h["last_task_failure"]["reason"] == "RuntimeError: injected flush bug"
    assert h["store"]["task_failures"] == 1 and h["failed_task"] is None
    assert rig.agent.terminate() == 0


def corrupt_store(path: Path) -> bytes:
    """Garbage over every page after the first (the table roots live there): what a failing SD card leaves."""
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    assert len(data) >= 3 * page, len(data)
    data[page:] = bytes([0xA5, 0x5A]) * ((len(data) - page) // 2)
    path.write_bytes(bytes(data))
    return bytes(data)


def test_corrupt_store_at_start_is_moved_aside_and_seqs_resync_from_the_gateway(rig: Rig) -> None:
    rig.agent.start()
    wait_for(lambda: all(rig.acker.contiguous.get(m, 0) >= 10 for m in rig.meters), 60, "first readings acked",
             rig.agent)
    assert rig.agent.terminate() == 0
    old = dict(rig.acker.contiguous)
    for f in rig.setup.db_path.parent.glob("agent.sqlite-*"):  # a clean stop checkpointed the WAL
        assert f.stat().st_size == 0 or f.name.endswith("-shm"), f
    damaged = corrupt_store(rig.setup.db_path)
    rig.agent.start()
    wait_for(lambda: all(rig.acker.contiguous.get(m, 0) >= old[m] + 5 for m in rig.meters), 90,
             "readings past the old seqs after the corrupt store was replaced", rig.agent)
    log = rig.agent.tail(100_000)
    asides = sorted(rig.setup.db_path.parent.glob("agent.sqlite.corrupt-*"))
    assert [a.name for a in asides if not a.name.endswith(("-wal", "-shm"))] == [asides[0].name]
    assert asides[0].read_bytes() == damaged  # kept, byte for byte, for inspection
    assert f"moved it to {asides[0]} (kept for inspection)" in log
    h = rig.health()
    assert h["store_replaced"] == str(asides[0]) and h["store"]["corrupt_store_replaced"] == 1
    events = rig.events()
    assert events[0][0] == "store_corrupt_replaced" and str(asides[0]) in events[0][2]
    resynced = {m for kind, m, _ in events if kind == "seq_resync"}
    assert resynced == set(rig.meters)
    # energy: counting stops, everything drains, the last acked reading carries exactly what the registers served
    for sim in rig.meters.values():
        sim.set_power(0)
    t_stop = time.time_ns() // 1_000_000

    def drained() -> bool:
        snap = rig.acker.snapshot()
        for m, sim in rig.meters.items():
            last = snap.get((m, rig.acker.contiguous.get(m, 0)))
            if last is None or last.read_at_ms <= t_stop + 500:
                return False
            if (last.energy_import_wh, last.energy_export_wh) != (sim.served_import_wh, sim.served_export_wh):
                return False
        return rig.health()["queue"]["depth"] == 0

    wait_for(drained, 60, "drained with the served counters", rig.agent)
    assert rig.agent.starts == 2 and rig.agent.alive()  # one start after the corruption, no restart loop
    assert rig.agent.terminate() == 0
    snap = rig.acker.snapshot()
    for m in rig.meters:
        seqs = sorted(s for (mm, s) in snap if mm == m)
        assert seqs == list(range(1, seqs[-1] + 1)), f"{m}: gap"  # seqs continue right after the old ack
        rs = [snap[(m, s)] for s in seqs]
        assert all(b.energy_import_wh >= a.energy_import_wh and b.energy_export_wh >= a.energy_export_wh
                   for a, b in itertools.pairwise(rs))
    # the fresh store's first seqs (<= the old ack) were re-sent with other bytes before the resync: the gateway
    # drops them as duplicates, exactly as the acker did; nothing else went wrong
    for err in rig.acker.stats.errors:
        meter, _, rest = err.partition(" seq ")
        assert rest.endswith(": same seq, different bytes") and int(rest.split(":")[0]) <= old[meter], err
