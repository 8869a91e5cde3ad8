"""Issue 9 "Done means": an import-only ABB B23 "Steel" (export register all 0xFF) and an EM24 whose export register
answers exception 2 produce accepted readings that reach the chain as consumption, exactly.

Simulated meters (Modbus TCP, registers from the peer maps) -> real agent process -> mosquitto -> real gateway
process -> local chain (LiteSVM behind JSON-RPC). Both meters are GRID meters: if export energy were invented it
would show up as production on chain. Timing as in test_end_to_end.py (2 s epochs and min_reading_interval).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.keys import load_key_file as load_agent_key
from firmware_config.loader import get_profile
from gateway.keys import create_key_file as create_ack_key
from gateway.oracle import OracleClient
from gateway.oracle.authority_key import create_authority_key_file
from localchain.server import LocalChainServer
from protocol import MeterRole, Quality
from testbed.broker import Broker
from testbed.meter import SimulatedMeter
from testbed.ports import free_port, wait_port
from testbed.tcp import ModbusTcpMeters
from tests.gateway_support import record_for, set_oracle_fields
from tests.integration.agent_process import AgentProcess, AgentSetup, MeterEntry
from tests.system.test_end_to_end import gateway_config, q, until

pytestmark = pytest.mark.system

POWER_W = 45_000  # both meters are rated 53,820 W; ~8 s at 45 kW moves the 0.1 kWh EM24 counter by 100 Wh steps


async def test_import_only_meters_reach_chain_as_consumption(broker: Broker, tmp_path: Path) -> None:
    authority = create_authority_key_file(tmp_path / "authority.json")
    gw_key = create_ack_key(tmp_path / "gateway.key")
    sims = {
        "STEEL-1": SimulatedMeter(get_profile("abb-b2x"), 1, import_wh=2_000_000, invalid={"energy_export_wh"},
                                  live=True),
        "EM24-1": SimulatedMeter(get_profile("carlogavazzi-em24"), 2, import_wh=7_654_300,
                                 absent={"energy_export_wh"}, live=True),
    }
    profiles = {"STEEL-1": "abb-b2x", "EM24-1": "carlogavazzi-em24"}
    srv = LocalChainServer(chain_bridge=authority.pubkey())
    await srv.start()
    set_oracle_fields(srv, min_reading_interval=2)
    tcp = await ModbusTcpMeters(list(sims.values())).start()
    setup = AgentSetup(tmp_path / "agent", broker, gw_key,
                       [{"name": "tcp0", "kind": "tcp", "host": tcp.host, "tcp_port": tcp.port}],
                       [MeterEntry(m, "tcp0", s.unit_id, profiles[m]) for m, s in sims.items()],
                       poll_interval_s=1.2, ack_timeout_s=3.0)
    agent_cfg = setup.write()
    dash_port = free_port()
    while dash_port in (setup.status_port, broker.port, srv.port, tcp.port):
        dash_port = free_port()
    gw_cfg = gateway_config(tmp_path, broker, srv.url, str(srv.chain.program_id), dash_port)
    gw_db = tmp_path / "gw-state" / "gateway.sqlite"
    gw_log, agent_log = tmp_path / "gateway.log", tmp_path / "agent.log"
    cli = [sys.executable, "-m", "gridmeter.cli", "gateway"]
    key = load_agent_key(setup.workdir / "device.key")
    for mid in sims:
        rec = tmp_path / f"{mid}.gmreg"
        rec.write_text(record_for(mid, key=key, role=MeterRole.GRID, rated_w=60_000, profile=profiles[mid]) + "\n")
        out = subprocess.run([*cli, "meters", "add", str(rec), "--config", str(gw_cfg)], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0 and "added" in out.stdout, out.stderr
    with open(gw_log, "wb") as log:
        gw = subprocess.Popen([*cli, "run", "--config", str(gw_cfg)], stdout=log, stderr=log,
                              env=dict(os.environ, PYTHONUNBUFFERED="1"))
    agent = AgentProcess(agent_cfg, agent_log)
    try:
        wait_port(dash_port, 30)
        agent.start()
        procs, logs = (gw, agent.proc), (gw_log, agent_log)
        await until(lambda: len(q(gw_db, "SELECT meter_id FROM progress WHERE last_read_at_ms IS NOT NULL")) >= 2,
                    60, "a baseline reading of both meters", procs, logs)  # type: ignore[arg-type]
        initial = {m: s.snapshot()["served_import_wh"] for m, s in sims.items()}
        for s in sims.values():
            s.set_power(POWER_W)
        await asyncio.sleep(8)
        for s in sims.values():
            s.set_power(0)
        reads = {m: s.snapshot()["reads"] for m, s in sims.items()}
        await until(lambda: all(s.snapshot()["reads"] >= reads[m] + 2 for m, s in sims.items()), 30,
                    "two more reads of the stopped meters", procs, logs)  # type: ignore[arg-type]
        expected = {m: (0, s.snapshot()["served_import_wh"] - initial[m]) for m, s in sims.items()}
        assert all(c >= 100 for _p, c in expected.values()), expected
        client = OracleClient(srv.url, str(srv.chain.program_id), authority)
        chain: dict[str, tuple[int, int]] = {}
        deadline = time.monotonic() + 90
        while chain != expected:
            assert time.monotonic() < deadline, f"chain {chain} != expected {expected}\n" \
                                                f"{gw_log.read_text(errors='replace')[-3000:]}\n" \
                                                f"{agent_log.read_text(errors='replace')[-3000:]}"
            assert gw.poll() is None, gw_log.read_text(errors="replace")[-3000:]
            states = await client.fetch_meter_states(list(sims))
            chain = {m: (st.total_energy_produced, st.total_energy_consumed) for m, st in states.items()
                     if st is not None}
            await asyncio.sleep(0.3)
        await client.close()
        # every reading of both meters: accepted (good), export flagged not measured, export field 0 throughout
        rows = q(gw_db, "SELECT meter_id, status, quality, export_wh FROM readings")
        assert {m for m, *_ in rows} == set(sims)
        accepted = [r for r in rows if r[1] == "accepted"]
        assert len(accepted) >= 6, rows
        assert all(qual == int(Quality.EXPORT_NOT_MEASURED) and exp == 0 for _m, _s, qual, exp in accepted), rows
        assert not [r for r in rows if r[1] == "held"], rows
        refused = q(gw_db, "SELECT reason FROM rejections")
        assert {r for (r,) in refused} <= {"too_frequent"}, refused  # poll jitter only, never the counters
        failed = [r.signature for r in srv.chain.history.values() if r.err is not None]
        assert failed == []
        assert "decode" not in agent_log.read_text(errors="replace")
    finally:
        agent.close()
        if gw.poll() is None:
            gw.send_signal(signal.SIGTERM)
            try:
                rc = gw.wait(30)
            except subprocess.TimeoutExpired:
                gw.kill()
                gw.wait(5)
                rc = None
        else:
            rc = gw.returncode
        await tcp.stop()
        await srv.stop()
    assert rc == 0, gw_log.read_text(errors="replace")[-3000:]
