"""Issue 12 "Done means": GridTokenX's own meter clients through the HTTP ingest of a real gateway process to the
local chain (LiteSVM behind JSON-RPC, default OracleData: min_reading_interval 60 s), read back as MeterState.

Three meters (grid, production, consumption) post exactly like the contract's clients (tests/gridtokenx_client.py:
fractional Wh with 3 decimals, float-formatted kWh such as 0.019999999999999997, energy_generated/consumed) one
reading every 15 s of simulated time for 3.5 market epochs of 15 minutes (the readings are timestamped in the
recent past and posted as fast as the gateway answers: the gateway bins by the readings' timestamps). The last,
half epoch is closed by the gateway once the clients have been quiet for http.idle_close_s (IDLE_CLOSE_S here).
Checks: on-chain totals equal the energy sent to within 1 Wh per meter (exactly floor(sent mWh / 1000)); every
outbox row confirmed, 0 held (none for RateLimitExceeded); at most one submission per meter and epoch; the
production meter's import recorded, not submitted; status endpoint and staff CLI agree; 0 failed transactions.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import aiohttp
import pytest

from gateway.oracle import OracleClient
from gateway.oracle.authority_key import create_authority_key_file
from localchain.server import LocalChainServer
from protocol import MeterRole
from testbed.ports import free_port, wait_port
from tests.gateway_support import record_for
from tests.gridtokenx_client import INGEST_PATH, MeterClient
from tests.system.test_end_to_end import q

pytestmark = pytest.mark.system

API_KEY = "gridtokenx-head-end-key-0123456789"
EPOCH_S = 900
IDLE_CLOSE_S = 10  # the clients post back-dated readings back to back, then all stop: 10 s quiet = stopped
METERS = {"METER-001": MeterRole.GRID, "PV-001": MeterRole.PRODUCTION, "SHOP-001": MeterRole.CONSUMPTION}


def energies(role: MeterRole, rnd: random.Random) -> tuple[float, float]:
    """(import Wh, export Wh) of one 15-s reading, as a float simulator makes them (rounded by the client)."""
    if role is MeterRole.PRODUCTION:  # up to ~9.6 kW of PV; the inverter's standby draw shows as a little import
        return rnd.choice([0.0, 0.0, rnd.uniform(0, 0.02)]), rnd.uniform(0, 40)
    if role is MeterRole.CONSUMPTION:
        return rnd.uniform(0, 20), 0.0
    imp = rnd.uniform(0.5, 8)
    return imp, rnd.uniform(0, 3 * imp)  # a prosumer: exports at most 3x its import (the oracle allows 10x)


async def test_gridtokenx_clients_to_chain_within_1_wh(tmp_path: Path) -> None:
    authority = create_authority_key_file(tmp_path / "authority.json")
    srv = LocalChainServer(chain_bridge=authority.pubkey())
    await srv.start()
    http_port = free_port()
    while http_port == srv.port:
        http_port = free_port()
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(f"""
[gateway]
state_dir = "{tmp_path / 'gw-state'}"
[chain]
rpc_url = "{srv.url}"
program_id = "{srv.chain.program_id}"
authority_key_file = "{tmp_path / 'authority.json'}"
submit_interval_s = 0.5
[mqtt]
enabled = false
[http]
enabled = true
idle_close_s = {IDLE_CLOSE_S}
listen = "127.0.0.1:{http_port}"
api_keys = ["{API_KEY}"]
[dashboard]
enabled = false
""")
    db = tmp_path / "gw-state" / "gateway.sqlite"
    cli = [sys.executable, "-m", "gridmeter.cli", "gateway"]
    clients = {m: MeterClient(m) for m in METERS}
    for mid, role in METERS.items():
        rec = tmp_path / f"{mid}.gmreg"
        rec.write_text(record_for(mid, key=clients[mid].key, role=role, rated_w=30_000) + "\n")
        out = subprocess.run([*cli, "meters", "add", str(rec), "--config", str(cfg)], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
    gw_log = tmp_path / "gateway.log"
    with open(gw_log, "wb") as log:
        gw = subprocess.Popen([*cli, "run", "--config", str(cfg)], stdout=log, stderr=log,
                              env=dict(os.environ, PYTHONUNBUFFERED="1"))
    chain = OracleClient(srv.url, str(srv.chain.program_id), authority)
    rnd = random.Random(12)
    t0 = (int(time.time()) // EPOCH_S - 4) * EPOCH_S + 15
    n_readings = 7 * EPOCH_S // 30  # 3.5 epochs of 15-s readings
    reading_ids: dict[str, list[str]] = {m: [] for m in METERS}
    recorded_only: list[str] = []
    try:
        wait_port(http_port, 60)
        async with aiohttp.ClientSession(headers={"X-API-KEY": API_KEY}) as http:
            url = f"http://127.0.0.1:{http_port}"

            async def post(mid: str, ts: int) -> None:
                c = clients[mid]
                body = c.body(ts, *energies(METERS[mid], rnd))
                async with http.post(url + INGEST_PATH, data=body) as r:
                    doc = await r.json()
                    assert r.status == 202, (doc, body)
                c.count_sent(body)
                reading_ids[mid].append(doc["reading_id"])
                if "recorded_only" in doc:
                    recorded_only.append(doc["recorded_only"].get("import_wh") or doc["recorded_only"]["export_wh"])

            for i in range(n_readings):
                await asyncio.gather(*(post(mid, t0 + 15 * i) for mid in METERS))
            float_kwh = [c for c in clients.values() if c.sent_export_mwh and c.sent_import_mwh]
            assert float_kwh and recorded_only  # the grid meter's net kWh and the PV standby draw were exercised

            expected = {}
            for mid, role in METERS.items():
                c = clients[mid]
                expected[mid] = (0 if role is MeterRole.PRODUCTION else c.sent_import_mwh // 1000,
                                 0 if role is MeterRole.CONSUMPTION else c.sent_export_mwh // 1000)
            got: dict[str, tuple[int, int]] = {}
            deadline = time.monotonic() + IDLE_CLOSE_S + 120
            # on chain first, then the gateway's books: a row is 'sent' until the submitter sees it confirmed
            while got != expected or q(db, "SELECT COUNT(*) FROM outbox WHERE status != 'confirmed'") != [(0,)]:
                assert gw.poll() is None, gw_log.read_text(errors="replace")[-3000:]
                assert time.monotonic() < deadline, f"chain {got} != sent {expected}\n" + \
                    gw_log.read_text(errors="replace")[-3000:]
                await asyncio.sleep(1.0)
                states = await chain.fetch_meter_states(list(METERS))
                got = {m: (st.total_energy_consumed, st.total_energy_produced) for m, st in states.items()
                       if st is not None}

            for mid, c in clients.items():  # on chain = sent, to within 1 Wh per meter (exactly the whole Wh)
                consumed, produced = got[mid]
                role = METERS[mid]
                if role is not MeterRole.PRODUCTION:
                    assert 0 <= c.sent_import_mwh - consumed * 1000 < 1000
                if role is not MeterRole.CONSUMPTION:
                    assert 0 <= c.sent_export_mwh - produced * 1000 < 1000
            assert q(db, "SELECT status, COUNT(*) FROM outbox GROUP BY status") == \
                [("confirmed", q(db, "SELECT COUNT(*) FROM outbox")[0][0])]
            assert q(db, "SELECT COUNT(*) FROM outbox WHERE reason = 'RateLimitExceeded'") == [(0,)]
            per_meter = dict(q(db, "SELECT meter_id, COUNT(*) FROM outbox GROUP BY meter_id"))
            assert all(n <= 4 for n in per_meter.values()), per_meter  # binned: 4 epochs touched, 1 each
            assert [r.signature for r in srv.chain.history.values() if r.err is not None] == []
            assert q(db, "SELECT COUNT(*) FROM rejections") == [(0,)]
            print("\nsent (mWh import/export) -> on chain (Wh consumed/produced), submissions: "
                  + "; ".join(f"{m} {c.sent_import_mwh}/{c.sent_export_mwh} -> {got[m]}, {per_meter[m]}"
                              for m, c in clients.items()))

            # the client's view: the books balance exactly in mWh, a reading's interval is on chain
            async with http.get(f"{url}/v1/private-network/meters/METER-001") as r:
                books = await r.json()
            c = clients["METER-001"]
            imp = books["energy"]["import"]
            assert imp["planned_wh"] == got["METER-001"][0]
            assert imp["planned_wh"] * 1000 + int(Decimal(imp["waiting_wh"]) * 1000) == c.sent_import_mwh
            async with http.get(f"{url}/v1/private-network/readings/{reading_ids['PV-001'][5]}") as r:
                doc = await r.json()
            assert doc["status"] == "on_chain" and doc["intervals"][0]["signature"]
        # the staff's view (CLI) of the same books
        out = subprocess.run([*cli, "ingest-status", "PV-001", "--json", "--config", str(cfg)], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        pv = json.loads(out.stdout)
        assert pv["energy"]["import"]["submitted_as"] is None  # recorded only
        assert pv["outbox"]["confirmed"]["produced_wh"] == got["PV-001"][1] and pv["not_submitted"] == []
    finally:
        await chain.close()
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
        await srv.stop()
    assert rc == 0, gw_log.read_text(errors="replace")[-3000:]
