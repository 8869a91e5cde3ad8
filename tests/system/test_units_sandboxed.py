"""The hardened units must not break the services: the real agent and gateway processes run under the seccomp
filters of systemd/gridmeter-agent.service and systemd/gridmeter-gateway.service (SystemCallFilter with the
@privileged/@resources deny, SystemCallErrorNumber, SystemCallArchitectures=native, MemoryDenyWriteExecute), applied
at interpreter start by tests/integration/unit_sandbox.py, and energy still reaches the chain exactly: PyNaCl signing
and verifying, cryptography, solders transactions, SQLite, aiohttp, paho, pymodbus, the adjtimex clock probe.
(Namespaces, ProtectProc/ProcSubset and device ACLs are not emulated: that needs systemd itself.)"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from agent.keys import load_key_file as load_agent_key
from firmware_config.loader import get_profile
from gateway.keys import create_key_file as create_ack_key
from gateway.oracle import OracleClient
from gateway.oracle.authority_key import create_authority_key_file
from localchain.server import LocalChainServer
from protocol import MeterRole
from testbed.broker import Broker
from testbed.meter import SimulatedMeter
from testbed.ports import free_port, wait_port
from testbed.tcp import ModbusTcpMeters
from tests.gateway_support import record_for, set_oracle_fields
from tests.integration.agent_process import AgentProcess, AgentSetup, MeterEntry
from tests.system.test_end_to_end import TOKEN, gateway_config, q, until

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
SITECUSTOMIZE = '''
import json, os, pathlib
_unit = os.environ.get("GM_TEST_SECCOMP_UNIT")
if _unit:
    from tests.integration.unit_sandbox import apply
    _report = apply(pathlib.Path(_unit))
    try:
        os.nice(1)  # in @resources: denied by the unit's filter
        _report["nice"] = "allowed"
    except OSError as _e:
        _report["nice"] = _e.strerror
    with open(os.environ["GM_TEST_SECCOMP_REPORT"], "a") as _f:
        _f.write(json.dumps({"unit": pathlib.Path(_unit).name, "pid": os.getpid(), **_report}) + "\\n")
'''


def sandbox_env(tmp: Path, unit: str) -> dict[str, str]:
    inject = tmp / "inject"
    inject.mkdir(exist_ok=True)
    (inject / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = os.pathsep.join([str(inject), str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {"PYTHONPATH": path, "GM_TEST_SECCOMP_UNIT": str(REPO / "systemd" / unit),
            "GM_TEST_SECCOMP_REPORT": str(tmp / "seccomp.jsonl")}


def test_clock_probe_reads_adjtimex_under_the_agent_filter(tmp_path: Path) -> None:
    env = dict(os.environ, **sandbox_env(tmp_path, "gridmeter-agent.service"))
    out = subprocess.run([sys.executable, "-c", "from agent.clock import probe_auto; print(probe_auto().source)"],
                         capture_output=True, text=True, env=env, timeout=60, check=False)
    assert (out.returncode, out.stdout.strip()) == (0, "adjtimex"), out.stderr
    (report,) = [json.loads(line) for line in (tmp_path / "seccomp.jsonl").read_text().splitlines()]
    assert report["nice"] == "Operation not permitted" and report["memory_deny_write_execute"] == 1


async def test_agent_and_gateway_processes_under_their_unit_filters(broker: Broker, tmp_path: Path) -> None:
    authority = create_authority_key_file(tmp_path / "authority.json")
    gw_key = create_ack_key(tmp_path / "gateway.key")
    sim = SimulatedMeter(get_profile("eastron-sdm630"), 1, import_wh=10_000, export_wh=700, live=True)
    srv = LocalChainServer(chain_bridge=authority.pubkey())
    await srv.start()
    set_oracle_fields(srv, min_reading_interval=2)
    tcp = await ModbusTcpMeters([sim]).start()
    setup = AgentSetup(tmp_path / "agent", broker, gw_key,
                       [{"name": "tcp0", "kind": "tcp", "host": tcp.host, "tcp_port": tcp.port}],
                       [MeterEntry("HOUSE-1", "tcp0", 1, "eastron-sdm630")], poll_interval_s=0.5)
    agent_cfg = setup.write()
    dash_port = free_port()
    while dash_port in (setup.status_port, broker.port, srv.port, tcp.port):
        dash_port = free_port()
    gw_cfg = gateway_config(tmp_path, broker, srv.url, str(srv.chain.program_id), dash_port)
    gw_db = tmp_path / "gw-state" / "gateway.sqlite"
    gw_log, agent_log = tmp_path / "gateway.log", tmp_path / "agent.log"
    cli = [sys.executable, "-m", "gridmeter.cli", "gateway"]
    rec = tmp_path / "HOUSE-1.gmreg"
    rec.write_text(record_for("HOUSE-1", key=load_agent_key(setup.workdir / "device.key"), role=MeterRole.GRID,
                              rated_w=30_000) + "\n")
    out = subprocess.run([*cli, "meters", "add", str(rec), "--config", str(gw_cfg)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    with open(gw_log, "wb") as log:
        gw = subprocess.Popen([*cli, "run", "--config", str(gw_cfg)], stdout=log, stderr=log,
                              env=dict(os.environ, PYTHONUNBUFFERED="1",
                                       **sandbox_env(tmp_path, "gridmeter-gateway.service")))
    agent = AgentProcess(agent_cfg, agent_log, env=sandbox_env(tmp_path, "gridmeter-agent.service"))
    client = OracleClient(srv.url, str(srv.chain.program_id), authority)
    try:
        wait_port(dash_port, 60)
        agent.start()
        procs = (gw, agent.proc)
        logs = (gw_log, agent_log)
        await until(lambda: bool(q(gw_db, "SELECT 1 FROM progress WHERE last_read_at_ms IS NOT NULL")), 90,
                    "a baseline reading", procs, logs)  # type: ignore[arg-type]
        initial = (sim.snapshot()["import_wh"], sim.snapshot()["export_wh"])
        sim.set_power(18_000)
        await asyncio.sleep(5)
        sim.set_power(0)
        final = (sim.snapshot()["import_wh"], sim.snapshot()["export_wh"])
        expected = (final[1] - initial[1], final[0] - initial[0])  # grid meter: produced = export, consumed = import
        assert expected[1] >= 10, expected
        got = None
        deadline = time.monotonic() + 90
        while got != expected:
            assert time.monotonic() < deadline, f"chain {got} != {expected}\n{gw_log.read_text()[-3000:]}"
            assert gw.poll() is None and agent.alive(), gw_log.read_text()[-3000:] + agent.tail()
            st = (await client.fetch_meter_states(["HOUSE-1"]))["HOUSE-1"]
            got = None if st is None else (st.total_energy_produced, st.total_energy_consumed)
            await asyncio.sleep(0.3)
        async with aiohttp.ClientSession() as http, http.get(
                f"http://127.0.0.1:{dash_port}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            assert r.status == 200
        reports = [json.loads(line) for line in (tmp_path / "seccomp.jsonl").read_text().splitlines()]
        units = {r["unit"] for r in reports if r["pid"] in (gw.pid, agent.proc.pid)}  # type: ignore[union-attr]
        assert units == {"gridmeter-agent.service", "gridmeter-gateway.service"}, reports
        assert all(r["nice"] == "Operation not permitted" for r in reports)
        for text in (gw_log.read_text(), agent.tail(100_000)):
            assert "Operation not permitted" not in text and "Traceback" not in text, text[-3000:]
        assert agent.terminate() == 0
        gw.terminate()
        assert gw.wait(60) == 0, gw_log.read_text()[-3000:]
    finally:
        await client.close()
        agent.close()
        if gw.poll() is None:
            gw.kill()
            gw.wait(10)
        await tcp.stop()
        await srv.stop()
