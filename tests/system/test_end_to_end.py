"""End to end: simulated meters (Modbus TCP) -> real agent process -> mosquitto -> real gateway process ->
local chain (LiteSVM behind JSON-RPC).

Checks: on-chain MeterState totals per meter == the simulated registers' movement in Wh, exactly;
forged, replayed, backdated, topic-spoofed and decreasing-counter readings are quarantined with their
reasons and never reach the chain; 0 failed transactions.

Timing: the chain's min_reading_interval is set to 2 s in the OracleData account (a genesis-style edit;
the gateway reads thresholds from the chain) and the gateway's epoch to 2 s, so intervals close within
seconds instead of 15 minutes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.keys import load_key_file as load_agent_key
from firmware_config.loader import get_profile
from gateway.keys import create_key_file as create_ack_key
from gateway.oracle import OracleClient
from gateway.oracle.authority_key import create_authority_key_file
from localchain.server import LocalChainServer
from protocol import MeterRole, Reading, SigningKey, encode_reading
from protocol.topics import readings_topic
from testbed.broker import Broker
from testbed.meter import SimulatedMeter
from testbed.ports import free_port, wait_port
from testbed.tcp import ModbusTcpMeters
from tests import polling
from tests.gateway_support import batch, key_for, reading, record_for, set_oracle_fields
from tests.integration.agent_process import AgentProcess, AgentSetup, MeterEntry

pytestmark = pytest.mark.system

TOKEN = "e2e-dashboard-token-0123456789"
# meter id -> (unit id, role, power W while running: + imports, - exports)
METERS = {"HOUSE-1": (1, MeterRole.GRID, 18_000), "PV-1": (2, MeterRole.PRODUCTION, -15_000),
          "SHOP-1": (3, MeterRole.CONSUMPTION, 9_000)}


async def until(cond: Callable[[], bool], timeout_s: float, what: str, procs: tuple[subprocess.Popen[bytes], ...] = (),
                logs: tuple[Path, ...] = ()) -> None:
    """tests.polling.until that stops when one of `procs` exits, with the tails of `logs`."""

    def exited() -> str | None:
        return "process exited" if any(p.poll() is not None for p in procs) else None

    def tails() -> str:
        return "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-3000:]}" for p in logs if p.exists())

    await polling.until(cond, timeout_s, what, abort=exited, detail=tails, poll_s=0.1)


def gateway_config(tmp: Path, broker: Broker, rpc_url: str, program_id: str, dash_port: int) -> Path:
    cfg = tmp / "gateway.toml"
    cfg.write_text(f"""
[gateway]
state_dir = "{tmp / 'gw-state'}"
ack_key_file = "{tmp / 'gateway.key'}"
[chain]
rpc_url = "{rpc_url}"
program_id = "{program_id}"
authority_key_file = "{tmp / 'authority.json'}"
submit_interval_s = 0.3
[mqtt]
port = {broker.port}
client_id = "gw-e2e"
[dashboard]
listen = "127.0.0.1:{dash_port}"
token = "{TOKEN}"
[limits]
min_read_spacing_ms = 100
[intervals]
epoch_s = 2
""")
    return cfg


def q(db: Path, sql: str, *args: object) -> list[tuple]:  # type: ignore[type-arg]
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError:
        return []  # tables not created yet
    finally:
        conn.close()


async def test_meters_to_chain_exactly(broker: Broker, tmp_path: Path) -> None:
    authority = create_authority_key_file(tmp_path / "authority.json")
    gw_key = create_ack_key(tmp_path / "gateway.key")
    profile = get_profile("eastron-sdm630")
    sims = {m: SimulatedMeter(profile, unit, import_wh=1_000 + unit, export_wh=500 * unit, live=True)
            for m, (unit, _, _) in METERS.items()}
    srv = LocalChainServer(chain_bridge=authority.pubkey())
    await srv.start()
    set_oracle_fields(srv, min_reading_interval=2)
    tcp = await ModbusTcpMeters(list(sims.values())).start()
    setup = AgentSetup(tmp_path / "agent", broker, gw_key,
                       [{"name": "tcp0", "kind": "tcp", "host": tcp.host, "tcp_port": tcp.port}],
                       [MeterEntry(m, "tcp0", unit, "eastron-sdm630") for m, (unit, _, _) in METERS.items()],
                       poll_interval_s=0.5, ack_timeout_s=3.0)
    agent_cfg = setup.write()
    dash_port = free_port()
    while dash_port in (setup.status_port, broker.port, srv.port, tcp.port):  # free_port can hand out a port twice
        dash_port = free_port()
    gw_cfg = gateway_config(tmp_path, broker, srv.url, str(srv.chain.program_id), dash_port)
    gw_db = tmp_path / "gw-state" / "gateway.sqlite"
    gw_log, agent_log = tmp_path / "gateway.log", tmp_path / "agent.log"
    cli = [sys.executable, "-m", "gridmeter.cli", "gateway"]
    for mid, (_, role, _) in METERS.items():
        key = load_agent_key(setup.workdir / "device.key")
        rec = tmp_path / f"{mid}.gmreg"
        rec.write_text(record_for(mid, key=key, role=role, rated_w=30_000) + "\n")
        out = subprocess.run([*cli, "meters", "add", str(rec), "--config", str(gw_cfg)], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0 and "added" in out.stdout, out.stderr
    lab_key = key_for("LAB-1")
    lab_rec = tmp_path / "lab.gmreg"
    lab_rec.write_text(record_for("LAB-1", key=lab_key, role=MeterRole.CONSUMPTION, rated_w=30_000))
    assert subprocess.run([*cli, "meters", "add", str(lab_rec), "--config", str(gw_cfg)], timeout=60).returncode == 0

    with open(gw_log, "wb") as log:
        gw = subprocess.Popen([*cli, "run", "--config", str(gw_cfg)], stdout=log, stderr=log,
                              env=dict(os.environ, PYTHONUNBUFFERED="1"))
    agent = AgentProcess(agent_cfg, agent_log)
    captured: list[tuple[str, bytes]] = []
    spy = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="spy", protocol=MQTTProtocolVersion.MQTTv5)
    spy.on_message = lambda _c, _u, m: captured.append((m.topic, bytes(m.payload)))
    try:
        wait_port(dash_port, 30)
        spy.connect(broker.host, broker.port)
        spy.subscribe("gridmeter/v1/HOUSE-1/readings", qos=1)
        spy.loop_start()
        agent.start()
        procs = (gw, agent.proc)  # type: ignore[assignment]
        logs = (gw_log, agent_log)
        # baseline first (power 0): the first accepted reading of each meter = its initial registers
        await until(lambda: len(q(gw_db, "SELECT meter_id FROM progress WHERE last_read_at_ms IS NOT NULL")) >= 3,
                    60, "a baseline reading of every meter", procs, logs)  # type: ignore[arg-type]
        initial = {m: (s.snapshot()["import_wh"], s.snapshot()["export_wh"]) for m, s in sims.items()}
        for m, (_, _, power) in METERS.items():
            sims[m].set_power(power)
        await attacks(spy, lab_key, load_agent_key(setup.workdir / "device.key").key_id, captured)
        await asyncio.sleep(6)  # let energy flow (the meters are live); polling below has deadlines
        for s in sims.values():
            s.set_power(0)
        final = {m: (s.snapshot()["import_wh"], s.snapshot()["export_wh"]) for m, s in sims.items()}
        expected = {}
        for m, (_, role, _) in METERS.items():
            d_imp, d_exp = final[m][0] - initial[m][0], final[m][1] - initial[m][1]
            expected[m] = {MeterRole.GRID: (d_exp, d_imp), MeterRole.PRODUCTION: (d_exp, 0),
                           MeterRole.CONSUMPTION: (0, d_imp)}[role]
        assert all(sum(v) >= 10 for v in expected.values()), expected  # 9-18 kW for ~6 s
        client = OracleClient(srv.url, str(srv.chain.program_id), authority)
        chain_totals: dict[str, tuple[int, int]] = {}

        async def refresh() -> None:
            states = await client.fetch_meter_states([*METERS, "LAB-1"])
            chain_totals.update({m: (st.total_energy_produced, st.total_energy_consumed)
                                 for m, st in states.items() if st is not None})

        deadline = time.monotonic() + 90
        while {m: chain_totals.get(m) for m in METERS} != expected or chain_totals.get("LAB-1") != (0, 20):
            assert time.monotonic() < deadline, f"chain {chain_totals} != expected {expected}\n" \
                                                f"{gw_log.read_text(errors='replace')[-3000:]}"
            assert gw.poll() is None, gw_log.read_text(errors="replace")[-3000:]
            await refresh()
            await asyncio.sleep(0.3)
        await client.close()
        # nothing else pending, held or refused; every transaction on the chain succeeded
        assert q(gw_db, "SELECT status, COUNT(*) FROM outbox GROUP BY status") == [("confirmed", q(
            gw_db, "SELECT COUNT(*) FROM outbox")[0][0])]
        failed = [r.signature for r in srv.chain.history.values() if r.err is not None]
        assert failed == []
        reasons = {r for (r,) in q(gw_db, "SELECT reason FROM rejections")}
        assert {"bad_signature", "topic_mismatch", "read_at_not_increasing", "counter_decreased",
                "seq_not_increasing"} <= reasons, reasons
        assert q(gw_db, "SELECT duplicates > 0 FROM progress WHERE meter_id = 'HOUSE-1'") == [(1,)]  # replay dropped
        assert q(gw_db, "SELECT COUNT(*) FROM rejections WHERE meter_id IS NOT NULL AND payload = x''") == [(0,)]
        out = subprocess.run([*cli, "rejections", "--json", "--config", str(gw_cfg)], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0 and '"reason": "topic_mismatch"' in out.stdout, out.stderr
        async with aiohttp.ClientSession() as http, http.get(
                f"http://127.0.0.1:{dash_port}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            metrics = await r.text()
        assert 'gridmeter_gateway_readings_rejected_total{reason="bad_signature",source="mqtt"} 1.0' in metrics
        assert "gridmeter_gateway_transactions_failed_total{" not in metrics
        assert 'gridmeter_gateway_outbox{status="pending"} 0.0' in metrics
    finally:
        spy.loop_stop()
        spy.disconnect()
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


async def attacks(spy: mqtt.Client, lab_key: SigningKey, house_key_id: bytes, captured: list[tuple[str, bytes]]
                  ) -> None:
    """LAB-1 is a meter whose key the test holds: its honest readings land; its bad ones must not."""
    def pub(topic: str, payload: bytes) -> None:
        spy.publish(topic, payload, qos=1).wait_for_publish(5)

    now = int(time.time() * 1000)
    lab = readings_topic("LAB-1")
    pub(lab, batch(reading("LAB-1", 1, now - 20_000, 100, 0, key=lab_key),
                   reading("LAB-1", 2, now - 10_000, 110, 0, key=lab_key)))
    pub(lab, batch(reading("LAB-1", 3, now - 15_000, 111, 0, key=lab_key)))  # backdated
    pub(lab, batch(reading("LAB-1", 4, now - 5_000, 50, 0, key=lab_key)))  # counter decreased
    pub(lab, batch(reading("LAB-1", 2, now - 4_000, 5000, 0, key=lab_key)))  # old seq, new bytes (replay attempt)
    pub(lab, batch(reading("LAB-1", 5, now - 1_000, 120, 0, key=lab_key)))  # honest again
    # forged: claims HOUSE-1's key id, signed by another key, absurd counters
    forged = Reading("HOUSE-1", house_key_id, 10**9, now, True, 10**12, 0, "x")
    payload = encode_reading(forged)
    pub(readings_topic("HOUSE-1"), batch((payload, key_for("attacker").sign(payload))))
    # topic-spoofed: LAB-1's genuine reading published on HOUSE-1's topic
    pub(readings_topic("HOUSE-1"), batch(reading("LAB-1", 6, now, 10**6, 0, key=lab_key)))
    # replayed: a captured agent message re-published (acked as duplicate, counted once)
    await until(lambda: bool(captured), 30, "an agent message to replay")
    pub(*captured[0])
