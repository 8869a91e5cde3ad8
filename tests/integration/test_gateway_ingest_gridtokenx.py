"""Issue 12: GridTokenX's own meter clients (tests/gridtokenx_client.py, written from the contract) against the
HTTP ingest (real aiohttp server on 127.0.0.1), the submitter and the local chain (LiteSVM behind JSON-RPC,
in-process). Each numbered observation of the issue is a test here:
1 fractional Wh accepted; 2 float-formatted kWh accepted; 3 per-reading posts reach the chain, binned, with
nothing held for RateLimitExceeded, and a role's other direction recorded; 4 energy_generated/consumed checked;
5 empty/oversized bodies (413) and the quarantine views; 6 a stalled body times out. Plus: 202 means "reaches
the chain or is reported" (status endpoints)."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from solders.keypair import Keypair

from gateway.config import DashboardSection
from gateway.intake.checks import Limits
from gateway.intake.http import HttpIngest
from gateway.metrics import Metrics
from gateway.oracle import OracleClient
from gateway.registry import MeterStatus
from gateway.store.registry import Registry
from gateway.store.sqlite import Store
from gateway.submit.submitter import Submitter
from gateway.web import Dashboard
from localchain.server import LocalChainServer
from protocol import MeterRole
from tests.gateway_support import record_for
from tests.gridtokenx_client import INGEST_PATH, MeterClient

pytestmark = pytest.mark.integration

API_KEY = "issue-12-api-key"
EPOCH_S = 900


@dataclass
class Env:
    url: str
    store: Store
    registry: Registry
    srv: LocalChainServer
    client: OracleClient
    submitter: Submitter
    session: aiohttp.ClientSession

    def add(self, meter_id: str, role: MeterRole = MeterRole.GRID) -> MeterClient:
        c = MeterClient(meter_id)
        self.registry.add(record_for(meter_id, key=c.key, role=role, rated_w=30_000), int(time.time() * 1000))
        return c

    async def post(self, body: bytes, key: str = API_KEY) -> tuple[int, dict[str, Any]]:
        async with self.session.post(self.url + INGEST_PATH, data=body, headers={"X-API-KEY": key}) as r:
            return r.status, json.loads(await r.text())

    async def send(self, c: MeterClient, body: bytes) -> dict[str, Any]:
        status, doc = await self.post(body)
        assert status == 202, doc
        c.count_sent(body)
        return doc

    async def get(self, path: str) -> tuple[int, dict[str, Any]]:
        async with self.session.get(self.url + path, headers={"X-API-KEY": API_KEY}) as r:
            return r.status, json.loads(await r.text())

    async def drain(self) -> None:
        """Submitter cycles until nothing is pending or sent (bounded)."""
        for _ in range(20):
            await self.submitter.run_once()
            if not self.store.outbox_rows(status="pending") and not self.store.outbox_rows(status="sent"):
                return
        raise AssertionError([(r.key, r.status, r.reason) for r in self.store.outbox_rows()])

    async def chain_totals(self, meter_id: str) -> tuple[int, int]:
        st = (await self.client.fetch_meter_states([meter_id]))[meter_id]
        return (0, 0) if st is None else (st.total_energy_consumed, st.total_energy_produced)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    authority = Keypair()
    srv = LocalChainServer(chain_bridge=authority.pubkey())  # default OracleData: min_reading_interval 60 s
    await srv.start()
    store, registry, metrics = Store(tmp_path / "gateway.sqlite"), Registry(tmp_path / "registry.sqlite"), Metrics()
    ingest = HttpIngest(store, registry, Limits(), [API_KEY], metrics)
    ingest.body_read_timeout_s = 1.0
    web_srv = TestServer(ingest.app(), host="127.0.0.1")
    await web_srv.start_server()
    client = OracleClient(srv.url, str(srv.chain.program_id), authority, poll_s=0.05)
    sub_store = Store(tmp_path / "gateway.sqlite")  # the submitter has its own connection, as in service.py
    submitter = Submitter(sub_store, registry, client, metrics, epoch_s=EPOCH_S,
                          authority=str(authority.pubkey()))
    submitter.http_idle_close_s = 0  # the test's clients have all stopped when the submitter runs
    session = aiohttp.ClientSession()
    try:
        yield Env(str(web_srv.make_url("")), store, registry, srv, client, submitter, session)
    finally:
        await session.close()
        await web_srv.close()
        await client.close()
        await srv.stop()
        sub_store.close()
        store.close()
        registry.close()


def epoch_start(epochs_ago: int) -> int:
    return (int(time.time()) // EPOCH_S - epochs_ago) * EPOCH_S


# ---- 1, 2, 4: what the contract's clients send is accepted, exactly; contradictions are refused ------------
async def test_1_fractional_wh_accepted_exactly(env: Env) -> None:
    c = env.add("METER-001")
    doc = await env.send(c, c.body(epoch_start(1) + 15, 1.937, 0.25))
    assert (doc["import_wh"], doc["export_wh"]) == ("1.937", "0.250")
    assert env.store.conn.execute("SELECT import_mwh, export_mwh FROM http_ingest").fetchall() == [(1937, 250)]


async def test_2_float_formatted_kwh_accepted(env: Env) -> None:
    c = env.add("METER-001")
    body = c.body(epoch_start(1) + 15, 10.0, 30.0)
    assert b'"kwh": 0.019999999999999997' in body  # 0.03 - 0.01 in floating point, as the simulator sends it
    await env.send(c, body)
    status, doc = await env.post(c.body(epoch_start(1) + 30, 10.0, 30.0, kwh=0.021))  # signed, but not the split
    assert (status, doc["reason"]) == (400, "kwh_mismatch")


async def test_4_energy_generated_must_agree_with_obis(env: Env) -> None:
    c = env.add("METER-001")
    status, doc = await env.post(c.body(epoch_start(1) + 15, 0.0, 5.0, energy_generated=0.5))  # OBIS: 5 Wh
    assert (status, doc.get("reason")) == (400, "energy_mismatch") and "energy_generated" in doc["error"]
    assert env.store.conn.execute("SELECT COUNT(*) FROM http_ingest").fetchone() == (0,)
    assert env.store.conn.execute("SELECT reason, authenticated FROM rejections").fetchall() == [("energy_mismatch", 1)]


# ---- 3: per-reading posts -> binned intervals -> chain; nothing held for rate limits ---------------------
async def test_3_readings_every_15s_reach_chain_binned(env: Env) -> None:
    """Three meters post every 15 s for two epochs (whole Wh, so that this runs on the old code too): all
    energy reaches the chain in at most a few submissions per meter, none held (the old code sent each reading
    alone: three of four were held as RateLimitExceeded)."""
    meters = {"METER-001": env.add("METER-001"), "METER-002": env.add("METER-002"),
              "METER-003": env.add("METER-003")}
    t0 = epoch_start(3) + 15
    for i in range(2 * EPOCH_S // 15):
        for n, c in enumerate(meters.values()):
            await env.send(c, c.body(t0 + 15 * i, float(2 + n), float(i % 7)))
    await env.drain()
    rows = env.store.outbox_rows()
    assert {r.status for r in rows} == {"confirmed"}, [(r.key, r.status, r.reason) for r in rows]
    assert not [r for r in rows if r.reason == "RateLimitExceeded"]
    for mid, c in meters.items():
        assert await env.chain_totals(mid) == (c.sent_import_mwh // 1000, c.sent_export_mwh // 1000)
        assert len([r for r in rows if r.meter_id == mid]) == 2  # one per epoch


async def test_3_role_other_direction_recorded_not_dropped(env: Env) -> None:
    pv, shop = env.add("PV-1", MeterRole.PRODUCTION), env.add("SHOP-1", MeterRole.CONSUMPTION)
    doc = await env.send(pv, pv.body(epoch_start(2) + 15, 0.012, 40.5))  # inverter standby draw at dawn
    assert doc["recorded_only"]["import_wh"] == "0.012"
    doc = await env.send(shop, shop.body(epoch_start(2) + 15, 80.0, 1.5))
    assert doc["recorded_only"]["export_wh"] == "1.500"
    await env.drain()
    assert await env.chain_totals("PV-1") == (0, 40)
    assert await env.chain_totals("SHOP-1") == (80, 0)
    status, books = await env.get("/v1/private-network/meters/PV-1")
    assert status == 200
    assert books["energy"]["import"] == {"received_wh": "0.012", "submitted_as": None}
    assert books["energy"]["export"] == {"received_wh": "40.500", "submitted_as": "produced", "planned_wh": 40,
                                         "waiting_wh": "0.500"}


async def test_fractional_remainder_carried_to_next_interval(env: Env) -> None:
    c = env.add("METER-001")
    t0 = epoch_start(3) + 15
    for i in range(3 * EPOCH_S // 15 - 1):  # 0.61 Wh per 15 s: intervals end on sub-Wh remainders
        await env.send(c, c.body(t0 + 15 * i, 0.61, 0.0))
    await env.drain()
    consumed, _ = await env.chain_totals("METER-001")
    assert c.sent_import_mwh == 179 * 610  # exact in mWh: 109.19 Wh
    assert consumed == 109 == c.sent_import_mwh // 1000
    rows = env.store.outbox_rows("METER-001")
    assert len(rows) == 3 and {r.status for r in rows} == {"confirmed"}
    # an interval closes at the first reading of the next epoch (60 readings = 36.6 Wh): its whole Wh are
    # submitted and the remainder goes into the next: 36 (carry 0.6), 36.6 + 0.6 -> 37 (carry 0.2), then the
    # last 59 readings (35.99 + 0.2) -> 36, carry 0.19
    assert [r.consumed_wh for r in rows] == [36, 37, 36]
    _, books = await env.get("/v1/private-network/meters/METER-001")
    assert books["energy"]["import"]["waiting_wh"] == "0.190"  # the carry, exactly
    assert books["energy"]["import"]["planned_wh"] * 1000 + 190 == c.sent_import_mwh


# ---- 202 means "reaches the chain or is reported" --------------------------------------------------------
async def test_status_shows_anomalous_interval_and_retired_meter(env: Env, tmp_path: Path) -> None:
    odd, gone = env.add("ODD-1"), env.add("GONE-1")
    t0 = epoch_start(3) + 15
    ids = []
    for i in range(4):  # exports 20x what it imports: the oracle's 10x ratio check would fail
        ids.append((await env.send(odd, odd.body(t0 + 15 * i, 1.0, 20.0)))["reading_id"])
    gone_id = (await env.send(gone, gone.body(t0, 5.0, 0.0)))["reading_id"]
    status, doc = await env.get(f"/v1/private-network/readings/{gone_id}")
    assert (status, doc["status"]) == (200, "open")
    env.registry.set_status("GONE-1", MeterStatus.RETIRED, int(time.time() * 1000))
    await env.drain()
    for rid in ids:
        status, doc = await env.get(f"/v1/private-network/readings/{rid}")
        assert (status, doc["status"], doc["reasons"]) == (200, "not_submitted", ["anomalous_ratio"])
    status, doc = await env.get(f"/v1/private-network/readings/{gone_id}")
    assert (doc["status"], doc["reasons"]) == ("not_submitted", ["meter_retired"])
    _, books = await env.get("/v1/private-network/meters/ODD-1")
    assert [(r["consumed_wh"], r["produced_wh"], r["reason"]) for r in books["not_submitted"]] == \
        [(4, 80, "anomalous_ratio")]
    assert await env.chain_totals("ODD-1") == (0, 0) == await env.chain_totals("GONE-1")
    # staff see the same (the dashboard's held list and `gridmeter gateway held` / `ingest-status` read these)
    assert sorted((h["meter_id"], h["reason"]) for h in env.store.held_intervals()) == \
        [("GONE-1", "meter_retired"), ("ODD-1", "anomalous_ratio")]
    assert env.store.http_meter_status(env.registry.get("GONE-1"))["not_submitted"][0]["reason"] == \
        "meter_retired"  # type: ignore[arg-type]
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(f'[gateway]\nstate_dir = "{tmp_path}"\n')
    for args, expect in ((["ODD-1"], "NOT SUBMITTED http:ODD-1:"), (["--reading", ids[0]], "not_submitted")):
        out = subprocess.run([sys.executable, "-m", "gridmeter.cli", "gateway", "ingest-status", *args, "--config",
                              str(cfg)], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and expect in out.stdout and "anomalous_ratio" in out.stdout, out.stderr
    status, _ = await env.get("/v1/private-network/readings/00000000-0000-4000-8000-000000000000")
    assert status == 404


# ---- 5: empty / oversized bodies; the quarantine stays readable everywhere --------------------------------
async def test_5_empty_and_oversized_posts_then_quarantine_views(env: Env, tmp_path: Path) -> None:
    empty = await env.post(b"")
    oversized = await env.post(b"x" * 20_000)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while reading
        for _ in range(20):
            yield b"y" * 1000

    async with env.session.post(env.url + INGEST_PATH, data=chunks(), headers={"X-API-KEY": API_KEY}) as r:
        chunked = r.status, json.loads(await r.text())
    # the quarantine views first: on the old code they raised TypeError (bytes(None)) for such rows
    rows = env.store.rejections()
    assert [(r["reason"], r["payload_hex"], r["payload_bytes"]) for r in rows] == \
        [("oversized", "", 0), ("oversized", "", 0), ("malformed", "", 0)]
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(f'[gateway]\nstate_dir = "{tmp_path}"\n[dashboard]\nenabled = false\n')
    out = subprocess.run([sys.executable, "-m", "gridmeter.cli", "gateway", "rejections", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert [line.split()[5] for line in out.stdout.splitlines()] == ["oversized", "oversized", "malformed"]
    dash = Dashboard(DashboardSection(token="t" * 32), tmp_path / "gateway.sqlite", tmp_path / "registry.sqlite",
                     Metrics())
    srv = TestServer(dash.app(), host="127.0.0.1")
    await srv.start_server()
    try:
        async with env.session.get(str(srv.make_url("/api/rejections")),
                                   headers={"Authorization": "Bearer " + "t" * 32}) as r:
            assert r.status == 200
            assert [x["reason"] for x in (await r.json())["rejections"]] == ["oversized", "oversized", "malformed"]
    finally:
        await srv.close()
        dash.close()
    assert (empty[0], empty[1]["reason"]) == (400, "malformed")
    assert (oversized[0], oversized[1]["reason"]) == (chunked[0], chunked[1]["reason"]) == (413, "oversized")


# ---- 6: a stalled body holds nothing for long -----------------------------------------------------------
async def test_6_stalled_body_gets_408_and_connection_closed(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    u = urlsplit(env.url)
    reader, writer = await asyncio.open_connection(u.hostname, u.port)
    started = time.monotonic()
    try:
        writer.write(f"POST {INGEST_PATH} HTTP/1.1\r\nHost: x\r\nX-API-KEY: {API_KEY}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"protocol\":".encode())
        await writer.drain()
        with caplog.at_level(logging.ERROR):
            reply = await asyncio.wait_for(reader.read(), 30)  # until the server closes the connection
    finally:
        writer.close()
    assert reply.split(b"\r\n", 1)[0] == b"HTTP/1.1 408 Request Timeout"
    assert b'"reason": "body_timeout"' in reply
    assert time.monotonic() - started < 25  # the body timeout is 1 s here; a stalled read had none
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert [r["reason"] for r in env.store.rejections()] == ["body_timeout"]
