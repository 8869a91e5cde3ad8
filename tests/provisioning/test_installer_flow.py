"""The whole installer flow, non-interactive, against real components:
scan -> commission --yes -> keygen -> register -> gateway meters add -> agent run; the gateway accepts the first
reading. Simulated SDM630 on a virtual RS-485 bus (socat pty), real mosquitto, gateway and agent as subprocesses."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from firmware_config.loader import load_all
from gridmeter.cli import main
from testbed.broker import Broker
from testbed.meter import SimulatedMeter
from testbed.ports import free_port
from testbed.rtu import VirtualRtuBus
from tests.integration.agent_process import AgentProcess

DEADLINE_S = 60.0


def cli(*args: str) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-m", "gridmeter.cli", *args], capture_output=True, text=True,
                          timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


def gateway_config(tmp: Path, broker: Broker) -> Path:
    cfg = tmp / "gateway.toml"
    cfg.write_text("\n".join([
        "[gateway]", f'state_dir = "{tmp / "gw-state"}"', f'ack_key_file = "{tmp / "gateway.key"}"',
        "[chain]", "enabled = false",
        "[mqtt]", f'host = "{broker.host}"', f"port = {broker.port}", 'client_id = "gw-e2e"',
        "[dashboard]", "enabled = false",
    ]) + "\n")
    return cfg


def accepted(db: Path, meter_id: str) -> list[tuple[int, int, str]]:
    if not db.exists():
        return []
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute("SELECT seq, import_wh, status FROM readings WHERE meter_id = ? ORDER BY seq",
                               (meter_id,)).fetchall()
        finally:
            con.close()
    except sqlite3.OperationalError:  # table not created yet
        return []


@pytest.mark.integration
async def test_installer_flow_end_to_end(tmp_path: Path, broker: Broker) -> None:
    sim = SimulatedMeter(load_all()["eastron-sdm630"], 2, import_wh=1_234_567, export_wh=8_700, power_w=4000,
                         serial_number=19283746, live=True)
    bus = VirtualRtuBus([sim], baudrate=9600)
    await bus.start()
    gw_proc = agent = None
    try:
        # 1. scan
        rc, found, _ = await asyncio.to_thread(_scan_json, bus.client_port)
        assert rc == 0
        (m,) = found
        assert (m["profile"], m["unit_id"], m["baud"], m["parity"], m["serial_number"]) == (
            "eastron-sdm630", 2, 9600, "N", 19283746)
        # 2. commission --yes
        com = tmp_path / "commission.json"
        rc = await asyncio.to_thread(main, ["provision", "commission", "--profile", m["profile"], "--port",
                                            bus.client_port, "--unit-id", str(m["unit_id"]), "--baud",
                                            str(m["baud"]), "--parity", m["parity"], "--wait-s", "1", "--yes",
                                            "--out", str(com)])
        assert rc == 0 and json.loads(com.read_text())["result"] == "pass"
        # 3. keygen (device) and the gateway's ack key
        etc = tmp_path / "etc"
        rc, out = await asyncio.to_thread(cli, "provision", "keygen", "--key-file", str(etc / "device.key"))
        assert rc == 0, out
        rc, out = await asyncio.to_thread(cli, "gateway", "keygen", str(tmp_path / "gateway.key"))
        assert rc == 0, out
        gw_pub = out.strip().split()[-1]
        # 4. register
        rc, out = await asyncio.to_thread(
            cli, "provision", "register", "--config", str(etc / "agent.toml"), "--commissioning", str(com),
            "--meter-id", "HOUSE-7", "--role", "grid", "--zone-id", "3", "--installer-id", "inst-1",
            "--key-file", str(etc / "device.key"), "--state-dir", str(tmp_path / "agent-state"),
            "--mqtt-host", broker.host, "--mqtt-port", str(broker.port), "--gateway-public-key", gw_pub,
            "--clock-check", "always-synced", "--poll-interval-s", "0.5",
            "--status-listen", f"127.0.0.1:{free_port()}", "--no-qr")
        assert rc == 0, out
        record = etc / "HOUSE-7.gmreg"
        # 5. gateway meters add (verifies the proof-of-possession signature)
        gw_cfg = gateway_config(tmp_path, broker)
        rc, out = await asyncio.to_thread(cli, "gateway", "meters", "add", "--config", str(gw_cfg), str(record))
        assert rc == 0, out
        assert "HOUSE-7" in out
        gw_log = open(tmp_path / "gateway.log", "wb")  # noqa: SIM115 - closed in finally
        gw_proc = subprocess.Popen([sys.executable, "-m", "gridmeter.cli", "gateway", "run", "--config",
                                    str(gw_cfg)], stdout=gw_log, stderr=gw_log)
        # 6. agent run with the config written by register
        agent = AgentProcess(etc / "agent.toml", tmp_path / "agent.log")
        agent.start()
        db = tmp_path / "gw-state" / "gateway.sqlite"
        deadline = time.monotonic() + DEADLINE_S
        rows: list[tuple[int, int, str]] = []
        while not rows:
            rows = accepted(db, "HOUSE-7")
            assert agent.alive(), agent.tail()
            assert gw_proc.poll() is None, (tmp_path / "gateway.log").read_text()[-3000:]
            assert time.monotonic() < deadline, f"no accepted reading\n{agent.tail()}\n" + \
                (tmp_path / "gateway.log").read_text()[-3000:]
            await asyncio.sleep(0.1)
        seq, import_wh, status = rows[0]
        assert (seq, status) == (1, "accepted")
        assert import_wh in {i for i, _e in sim.served_log}  # exactly what the meter's registers said
    finally:
        if agent is not None:
            agent.close()
        if gw_proc is not None:
            gw_proc.terminate()
            try:
                gw_proc.wait(10)
            except subprocess.TimeoutExpired:
                gw_proc.kill()
                gw_proc.wait(5)
            gw_log.close()
        await bus.stop()


def _scan_json(port: str) -> tuple[int, list[dict], str]:
    proc = subprocess.run([sys.executable, "-m", "gridmeter.cli", "provision", "scan", "--port", port, "--json",
                           "--ids", "1-3", "--bauds", "9600", "--parities", "N", "--timeout-s", "0.2"],
                          capture_output=True, text=True, timeout=120)
    return proc.returncode, json.loads(proc.stdout or "[]"), proc.stderr
