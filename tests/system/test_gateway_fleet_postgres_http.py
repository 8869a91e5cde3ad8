"""Two gateway processes on one PostgreSQL store (a throwaway cluster made with initdb) with the GridTokenX HTTP
ingest and the fleet's one registry (issue 11), submitting to the local chain (LiteSVM behind JSON-RPC).

- HTTP: GridTokenX meter clients (tests/gridtokenx_client.py) post every reading to BOTH gateways at once:
  each reading is accepted by exactly one (202) and refused by the other exactly once (409 duplicate naming the
  accepted reading_id), the stored books are exact in mWh, and the energy on chain equals the energy posted
  within the documented sub-Wh remainder (what is still waiting is < 1 Wh per direction), no interval twice.
- Registry: meters registered through one gateway's CLI are accepted by the other; a meter retired through one
  gateway's CLI is refused by the other gateway's HTTP ingest at once and by its MQTT intake within the
  registry's reload period; registry_log holds every CLI action.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest

from base.units import milli_text as wh
from gateway.keys import create_key_file
from gateway.oracle import OracleClient
from gateway.oracle.authority_key import create_authority_key_file
from gateway.store.postgres_registry import DEFAULT_REGISTRY_RELOAD_S
from localchain.server import LocalChainServer
from protocol import MeterRole, Registration, sign_registration
from testbed.broker import Broker
from testbed.gateway_fleet import PROFILE, Publishers, gateway_config, meter_key, start_gateway, stop_gateway
from testbed.ports import free_port
from testbed.postgres import PgCluster
from tests.gateway_support import record_for, set_oracle_fields
from tests.gridtokenx_client import INGEST_PATH, MeterClient

pytestmark = pytest.mark.system

API_KEY = "fleet-http-api-key-0001"
EPOCH_S = 2


def _logs(paths: list[Path]) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}" for p in paths if p.exists())


class Fleet:
    """A PostgreSQL cluster, the local chain and N gateway processes with MQTT and the HTTP ingest."""

    def __init__(self, tmp_path: Path, broker: Broker, gateways: int = 2) -> None:
        self.tmp, self.broker = tmp_path, broker
        self.authority = create_authority_key_file(tmp_path / "authority.json")
        self.gw_key = create_key_file(tmp_path / "gateway.key")
        self.names = [f"gw-{i}" for i in range(1, gateways + 1)]
        self.logs = [tmp_path / f"{n}.log" for n in self.names]
        self.urls: dict[str, str] = {}
        self.configs: dict[str, Path] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    async def start(self) -> None:
        self.pg = PgCluster().start()
        self.srv = LocalChainServer(chain_bridge=self.authority.pubkey())
        await self.srv.start()
        set_oracle_fields(self.srv, min_reading_interval=EPOCH_S)
        for n, log in zip(self.names, self.logs, strict=True):
            listen = f"127.0.0.1:{free_port()}"
            self.urls[n] = f"http://{listen}"
            self.configs[n] = gateway_config(
                self.tmp, n, broker_port=self.broker.port, dsn=self.pg.dsn, rpc_url=self.srv.url,
                program_id=str(self.srv.chain.program_id), authority_file=self.tmp / "authority.json",
                ack_key_file=self.tmp / "gateway.key", epoch_s=EPOCH_S, http_listen=listen, http_api_key=API_KEY)
            self.procs[n] = start_gateway(self.configs[n], log)
        self.client = OracleClient(self.srv.url, str(self.srv.chain.program_id), self.authority)
        await self.wait(lambda: all(p.exists() and "gateway running" in p.read_text(errors="replace")
                                    for p in self.logs), 90, "every gateway running")

    async def wait(self, cond: Any, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not cond():
            assert time.monotonic() < deadline, f"timed out: {what}\n{_logs(self.logs)}"
            assert all(p.poll() is None for p in self.procs.values()), f"a gateway exited\n{_logs(self.logs)}"
            await asyncio.sleep(0.2)

    def cli(self, gateway: str, *args: str, stdin: bytes | None = None) -> str:
        """`gridmeter gateway ...` with that gateway's config, as an operator on its host runs it."""
        out = subprocess.run([sys.executable, "-m", "gridmeter.cli", "gateway", *args, "--config",
                              str(self.configs[gateway])], input=stdin, capture_output=True, timeout=120)
        assert out.returncode == 0, out.stderr.decode(errors="replace")
        return out.stdout.decode()

    async def post(self, s: aiohttp.ClientSession, gateway: str, body: bytes) -> tuple[int, dict[str, Any]]:
        async with s.post(self.urls[gateway] + INGEST_PATH, data=body, headers={"X-API-KEY": API_KEY}) as r:
            return r.status, json.loads(await r.text())

    async def stop(self) -> None:
        with contextlib.suppress(AttributeError):
            await self.client.close()
        codes = {n: stop_gateway(p) for n, p in self.procs.items()}
        with contextlib.suppress(AttributeError):
            await self.srv.stop()
        with contextlib.suppress(AttributeError):
            self.pg.stop()
        assert all(c == 0 for c in codes.values()), f"{codes}\n{_logs(self.logs)}"


async def test_two_gateways_http_ingest_same_meters(broker: Broker, tmp_path: Path) -> None:
    fleet = Fleet(tmp_path, broker)
    meters = [MeterClient(f"GTX-{i:02d}") for i in range(6)]
    try:
        await fleet.start()
        for c in meters:  # GRID: both directions are submitted (consumed and produced)
            fleet.cli("gw-1", "meters", "add", "-", stdin=record_for(c.meter_id, key=c.key, role=MeterRole.GRID,
                                                                   rated_w=30_000).encode())
        last_ts = dict.fromkeys((c.meter_id for c in meters), 0)
        answers: list[tuple[int, int, str, str]] = []  # (status a, status b, reason of the 409, reading_id match)
        first_ids: dict[str, str] = {}
        async with aiohttp.ClientSession() as s:
            for k in range(14):
                for i, c in enumerate(meters):
                    ts = max(int(time.time()) - 1, last_ts[c.meter_id] + 1)
                    last_ts[c.meter_id] = ts
                    imp, exp = 1 + (7 * k + i) % 40 + (137 * k + 11 * i) % 1000 / 1000, (k % 3) * 0.333
                    body = c.body(ts, imp, exp)
                    (sa, da), (sb, db) = await asyncio.gather(fleet.post(s, "gw-1", body), fleet.post(s, "gw-2", body))
                    accepted, refused = (da, db) if sa == 202 else (db, da)
                    answers.append((min(sa, sb), max(sa, sb), refused.get("reason", ""),
                                    "same" if refused.get("reading_id") == accepted.get("reading_id") else "other"))
                    if 202 in (sa, sb):
                        c.count_sent(body)
                        first_ids.setdefault(c.meter_id, accepted["reading_id"])
                await asyncio.sleep(0.35)
            # a zero-energy reading one epoch later closes each meter's last interval (its remainder stays open)
            for c in meters:
                ts = max(int(time.time()), last_ts[c.meter_id] + EPOCH_S + 1)
                status, doc = await fleet.post(s, "gw-2", c.body(ts, 0.0, 0.0))
                assert status == 202, doc
        assert answers == [(202, 409, "duplicate", "same")] * len(answers)
        expected = {c.meter_id: (c.sent_import_mwh // 1000, c.sent_export_mwh // 1000) for c in meters}
        totals: dict[str, tuple[int, int]] = {}

        async def on_chain() -> dict[str, tuple[int, int]]:
            states = await fleet.client.fetch_meter_states([c.meter_id for c in meters])
            return {m: (st.total_energy_consumed, st.total_energy_produced) for m, st in states.items() if st}

        deadline = time.monotonic() + 120
        while totals != expected:
            assert time.monotonic() < deadline, f"chain {totals} != {expected}\n{_logs(fleet.logs)}"
            await asyncio.sleep(0.5)
            totals = await on_chain()
        states = await fleet.client.fetch_meter_states([c.meter_id for c in meters])
        async with aiohttp.ClientSession(headers={"X-API-KEY": API_KEY}) as s:  # the books, from either gateway
            for i, c in enumerate(meters):
                url = fleet.urls[f"gw-{1 + i % 2}"]
                async with s.get(f"{url}/v1/private-network/meters/{c.meter_id}") as r:
                    books = await r.json()
                imp, exp = books["energy"]["import"], books["energy"]["export"]
                assert (imp["received_wh"], exp["received_wh"]) == (wh(c.sent_import_mwh), wh(c.sent_export_mwh))
                assert (imp["planned_wh"], exp["planned_wh"]) == expected[c.meter_id]
                assert (imp["waiting_wh"], exp["waiting_wh"]) == (wh(c.sent_import_mwh % 1000),
                                                                  wh(c.sent_export_mwh % 1000))
                async with s.get(f"{url}/v1/private-network/readings/{first_ids[c.meter_id]}") as r:
                    assert (await r.json())["status"] == "on_chain"
        with psycopg.connect(fleet.pg.dsn) as db:
            for c in meters:
                rows = db.execute("SELECT seq, cum_import_mwh, cum_export_mwh FROM http_ingest WHERE meter_id = %s "
                                  "ORDER BY seq", (c.meter_id,)).fetchall()
                assert [r[0] for r in rows] == list(range(1, 16)), c.meter_id  # 14 + the closing one, each once
                assert rows[-1][1:] == (c.sent_import_mwh, c.sent_export_mwh)  # exact mWh
                sub_imp, sub_exp = expected[c.meter_id]
                assert 0 <= c.sent_import_mwh - sub_imp * 1000 < 1000 and 0 <= c.sent_export_mwh - sub_exp * 1000 < 1000
            dups = db.execute("SELECT COUNT(*) FROM rejections WHERE reason = 'duplicate'").fetchone()[0]
            others = db.execute("SELECT reason, COUNT(*) FROM rejections WHERE reason <> 'duplicate' "
                                "GROUP BY 1").fetchall()
            confirmed = dict(db.execute("SELECT meter_id, COUNT(*) FROM outbox WHERE status = 'confirmed' AND "
                                        "source = 'http' GROUP BY 1").fetchall())
            undecided = db.execute("SELECT status, reason, COUNT(*) FROM outbox WHERE status NOT IN "
                                   "('confirmed', 'pending') GROUP BY 1, 2").fetchall()
        assert (dups, others, undecided) == (len(answers), [], [])
        for c in meters:  # the chain counted each confirmed interval once: none submitted twice
            assert states[c.meter_id] is not None and states[c.meter_id].total_readings == confirmed[c.meter_id]
        assert [r.signature for r in fleet.srv.chain.history.values() if r.err is not None] == []
    finally:
        await fleet.stop()


async def test_meter_retired_through_one_gateway_cli_is_refused_by_the_other(broker: Broker, tmp_path: Path) -> None:
    fleet = Fleet(tmp_path, broker)
    http_meter = MeterClient("GTX-RET-1")
    mqtt_meters = ["MQ-RET-1", "MQ-KEEP-1"]
    pub = None
    try:
        await fleet.start()
        now_ms = int(time.time() * 1000)
        fleet.cli("gw-1", "meters", "add", "-", stdin=record_for(http_meter.meter_id, key=http_meter.key,
                                                               rated_w=30_000).encode())
        for m in mqtt_meters:
            k = meter_key(m)
            reg = Registration(m, k.public_key, PROFILE, "SN-" + m, MeterRole.CONSUMPTION, 1, 30_000, "fleet",
                               now_ms - 86_400_000, None)
            fleet.cli("gw-2", "meters", "add", "-", stdin=sign_registration(reg, k, None).to_text().encode())
        t0 = int(time.time()) - 30
        async with aiohttp.ClientSession() as s:
            status, doc = await fleet.post(s, "gw-2", http_meter.body(t0, 5.0, 0))  # registered via gw-1's CLI
            assert status == 202, doc
            pub = Publishers(broker.host, broker.port, mqtt_meters, fleet.gw_key.public_key)
            for _ in range(6):  # both meters accepted and acked by the share group (both gateways)
                pub.publish_round(2)
                await asyncio.sleep(0.2)
            await fleet.wait(pub.all_acked, 30, "MQTT readings acked")
            acked = {m: pub.meters[m].acked for m in mqtt_meters}

            assert fleet.cli("gw-1", "meters", "retire", http_meter.meter_id).strip() == "GTX-RET-1: retired"
            assert fleet.cli("gw-1", "meters", "retire", "MQ-RET-1").strip() == "MQ-RET-1: retired"
            status, doc = await fleet.post(s, "gw-2", http_meter.body(t0 + 10, 5.0, 0))  # at once over HTTP
            assert (status, doc["reason"]) == (403, "meter_retired"), doc
            await asyncio.sleep(DEFAULT_REGISTRY_RELOAD_S + 0.5)  # the MQTT intake's reload period
            for _ in range(6):  # round-robin over the share group: both gateways get some of them
                pub.publish_round(2)
                await asyncio.sleep(0.2)
            await fleet.wait(lambda: pub is not None and pub.meters["MQ-KEEP-1"].acked == pub.meters["MQ-KEEP-1"].seq,
                             30, "the active meter's readings acked")
        with psycopg.connect(fleet.pg.dsn) as db:
            refused = db.execute("SELECT seq FROM rejections WHERE meter_id = 'MQ-RET-1' AND reason = "
                                 "'meter_retired' ORDER BY seq").fetchall()
            accepted = db.execute("SELECT MAX(seq) FROM readings WHERE meter_id = 'MQ-RET-1'").fetchone()[0]
            log = db.execute("SELECT meter_id, action FROM registry_log ORDER BY id").fetchall()
        assert accepted == acked["MQ-RET-1"] == 6  # nothing of it accepted after the retire
        assert sorted({r[0] for r in refused}) == list(range(7, 13))  # every later reading refused, by either
        assert pub.meters["MQ-RET-1"].acked == 6
        assert log == [("GTX-RET-1", "added"), ("MQ-RET-1", "added"), ("MQ-KEEP-1", "added"),
                       ("GTX-RET-1", "retired"), ("MQ-RET-1", "retired")]
        retired_reasons = [line for line in fleet.cli("gw-2", "meters", "list", "--json").splitlines()
                           if '"status": "retired"' in line]
        assert len(retired_reasons) == 2  # the other gateway's CLI lists both as retired
    finally:
        if pub is not None:
            pub.close()
        await fleet.stop()
