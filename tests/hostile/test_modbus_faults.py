"""Modbus faults against a real agent process: silence, CRC errors, exception responses, garbage and slow replies
injected by the simulated meters (testbed.simserver.Faults) on a virtual RS-485 line and on Modbus TCP, one
after another. Each fault shows up in the agent's /health as a read error with its specific reason; the healthy
meters on the same line keep being read, signed and acked; the faulty ones come back when the fault clears;
nothing the meters did not serve is ever published; no traceback."""

from __future__ import annotations

import itertools
import json
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from firmware_config.loader import get_profile
from protocol.reading import Quality
from protocol.signing import SigningKey, VerifyKey
from testbed.acker import Acker
from testbed.broker import Broker
from testbed.meter import SimulatedMeter
from testbed.rtu import VirtualRtuBus
from testbed.stack_meters import MeterServers
from testbed.tcp import ModbusTcpMeters
from tests.integration.agent_process import AgentProcess, AgentSetup, MeterEntry, wait_for

pytestmark = pytest.mark.integration

GATEWAY = SigningKey(bytes(range(11, 43)))
RTU_TIMEOUT_S = 0.5
TCP_TIMEOUT_S = RTU_TIMEOUT_S  # a loopback TCP reply is faster than one through socat; was 1.0 (3 s per failed read)
# (meter_id, link, unit): RTU-2 and TCP-1 get the faults, RTU-1 and RTU-3 share RTU-2's line and stay healthy
METERS = [("RTU-1", "rtu", 1), ("RTU-2", "rtu", 2), ("RTU-3", "rtu", 3), ("TCP-1", "tcp", 1)]
# fault -> reasons the agent may give for it (a garbled frame is a CRC error; noise that never completes a frame
# ends in a timeout)
RTU_FAULTS: list[tuple[dict[str, Any], set[str]]] = [
    ({"no_reply": True}, {"timeout"}),
    ({"corrupt_crc": True}, {"crc"}),
    ({"exception_code": 2}, {"exception_code_2"}),
    ({"exception_code": 4}, {"exception_code_4"}),
    ({"exception_code": 6}, {"exception_code_6"}),
    ({"garbage": True}, {"crc", "timeout"}),
    # a reply later than the timeout: a timeout, and its late bytes may then meet the next request (the agent
    # must refuse them, e.g. "bus_error: ... 2 registers in reply"; the served-values check below catches any
    # late reply taken for another block's)
    ({"delay_s": RTU_TIMEOUT_S + 0.5}, {"timeout", "crc", "bus_error"}),
]
TCP_FAULTS: list[tuple[dict[str, Any], set[str]]] = [
    ({"no_reply": True}, {"timeout"}),
    ({"exception_code": 4}, {"exception_code_4"}),
    ({"garbage": True}, {"crc", "timeout", "bus_error"}),
    ({"delay_s": 1.5}, {"timeout", "bus_error"}),
]


@dataclass
class Rig:
    setup: AgentSetup
    agent: AgentProcess
    acker: Acker
    sims: dict[str, SimulatedMeter]
    rtu: VirtualRtuBus
    tcp: ModbusTcpMeters

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.setup.status_port}/health", timeout=10) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]

    def device(self, meter: str) -> dict[str, Any]:
        return self.health()["devices"][meter]  # type: ignore[no-any-return]


@pytest.fixture
def rig(tmp_path: Path, broker: Broker) -> Iterator[Rig]:
    profile = get_profile("eastron-sdm630")
    sims = {m: SimulatedMeter(profile, unit, import_wh=10_000 * unit, export_wh=7, power_w=6_000, live=True)
            for m, _link, unit in METERS}
    (tmp_path / "rtu").mkdir()
    rtu = VirtualRtuBus([sims[m] for m, link, _ in METERS if link == "rtu"], baudrate=19200, workdir=tmp_path / "rtu")
    tcp = ModbusTcpMeters([sims[m] for m, link, _ in METERS if link == "tcp"])
    servers = MeterServers([rtu, tcp])
    servers.start()
    setup = AgentSetup(
        tmp_path / "agent", broker, GATEWAY,
        [{"name": "rs485-0", "kind": "rtu", "port": rtu.client_port, "baudrate": 19200, "timeout_s": RTU_TIMEOUT_S},
         {"name": "tcp-0", "kind": "tcp", "host": "127.0.0.1", "tcp_port": tcp.port, "timeout_s": TCP_TIMEOUT_S}],
        [MeterEntry(m, "rs485-0" if link == "rtu" else "tcp-0", unit, "eastron-sdm630") for m, link, unit in METERS],
        poll_interval_s=0.3)
    agent = AgentProcess(setup.write(), tmp_path / "agent.log")
    acker = Acker(broker.host, broker.port, GATEWAY, {m: VerifyKey(k.public_key) for m, k in setup.keys.items()})
    acker.start()
    try:
        yield Rig(setup, agent, acker, sims, rtu, tcp)
    finally:
        agent.close()
        acker.stop()
        servers.stop()


def test_modbus_faults_are_reasons_not_crashes_and_healthy_meters_keep_flowing(rig: Rig) -> None:
    rig.agent.start()
    wait_for(lambda: all(rig.acker.contiguous.get(m, 0) >= 3 for m, _, _ in METERS), 90, "first readings", rig.agent)
    seen: dict[str, list[tuple[str, str]]] = {}
    healthy_before = {m: rig.acker.contiguous.get(m, 0) for m in ("RTU-1", "RTU-3")}
    phases = [("RTU-2", 2, f, r) for f, r in RTU_FAULTS] + [("TCP-1", 1, f, r) for f, r in TCP_FAULTS]
    # The RS-485 line and the TCP link are independent: each TCP fault runs alongside one of the RTU faults (same
    # checks per fault, both buses failing at once), so the suite takes as many rounds as the longer list.
    rounds = [[p for p in pair if p is not None] for pair in itertools.zip_longest(
        [p for p in phases if p[0] == "RTU-2"], [p for p in phases if p[0] == "TCP-1"])]
    t0 = time.monotonic()
    for phases_now in rounds:
        errors_before = {meter: rig.device(meter)["errors"] for meter, *_ in phases_now}
        for meter, unit, fault, _reasons in phases_now:
            (rig.rtu if meter.startswith("RTU") else rig.tcp).set_fault(unit, **fault)
        for meter, _unit, fault, reasons in phases_now:
            wait_for(lambda m=meter, n=errors_before[meter]: rig.device(m)["errors"] > n, 60,  # type: ignore[misc]
                     f"{meter} to fail under {fault}", rig.agent)
            last_error = rig.device(meter)["last_error"]
            seen.setdefault(meter, []).append((json.dumps(fault), last_error))
            assert last_error.split(":")[0] in reasons, (fault, last_error)
        for meter, *_ in phases_now:
            (rig.rtu if meter.startswith("RTU") else rig.tcp).clear_faults()
        acked = {meter: rig.acker.contiguous.get(meter, 0) for meter, *_ in phases_now}
        for meter, _unit, fault, _reasons in phases_now:
            wait_for(lambda m=meter, a=acked[meter]: rig.acker.contiguous.get(m, 0) > a, 120,  # type: ignore[misc]
                     f"{meter} back after {fault}", rig.agent)
    # slow but within the timeout: still read
    rig.rtu.set_fault(2, delay_s=RTU_TIMEOUT_S / 4)
    acked = rig.acker.contiguous.get("RTU-2", 0)
    wait_for(lambda: rig.acker.contiguous.get("RTU-2", 0) >= acked + 3, 60, "slow RTU-2 still read", rig.agent)
    rig.rtu.clear_faults()
    fault_s = time.monotonic() - t0
    healthy_gain = {m: rig.acker.contiguous.get(m, 0) - n for m, n in healthy_before.items()}
    health = rig.health()
    print(f"\nmodbus faults: {len(phases) + 1} phases in {len(rounds) + 1} rounds, {fault_s:.0f} s; reasons seen "
          f"{seen}; healthy meters on the same line acked +{healthy_gain}; read errors "
          f"{ {m: d['errors'] for m, d in health['devices'].items()} }")
    assert all(g >= len(phases) for g in healthy_gain.values()), healthy_gain
    # nothing but served values published, all good quality, contiguous seqs, no bad signatures
    assert rig.acker.stats.bad_signatures == 0 and rig.acker.stats.malformed == 0, rig.acker.stats
    assert rig.acker.stats.errors == [], rig.acker.stats.errors
    snap = rig.acker.snapshot()
    for meter, sim in rig.sims.items():
        rs = sorted((r for (m, _), r in snap.items() if m == meter), key=lambda r: r.seq)
        assert [r.seq for r in rs] == list(range(1, len(rs) + 1)), meter
        served = set(sim.served_log)
        for prev, r in itertools.pairwise(rs):
            assert r.energy_import_wh >= prev.energy_import_wh and r.read_at_ms > prev.read_at_ms
        for r in rs:
            assert (r.energy_import_wh, r.energy_export_wh) in served, (meter, r.seq)
            assert r.quality & ~Quality.PARTIAL == Quality.NONE, (meter, r.seq, r.quality)
    assert rig.agent.terminate() == 0
    log = rig.agent.log.read_text(errors="replace")
    assert "Traceback" not in log, log[log.find("Traceback") - 300:][:3000]
