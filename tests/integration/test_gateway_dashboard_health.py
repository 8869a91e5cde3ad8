"""Headless Chromium on the fleet dashboard (issue 14): a meter that stops turns late within one expected
interval plus a margin; a chain outage shows its banner (and /metrics says so); a held meter shows its reason;
the fleet table fits a 1400 px window. Screenshots for a reviewer go to tests/artifacts/dashboard/ (listed at
the end of the pytest run)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from solders.keypair import Keypair

from gateway.config import DashboardSection
from gateway.health import Thresholds
from gateway.metrics import Metrics
from gateway.oracle import OracleClient
from gateway.submit.submitter import Submitter
from gateway.web import Dashboard
from localchain.server import LocalChainServer
from protocol.topics import readings_topic
from tests.chromium_driver import Chromium
from tests.conftest import ARTIFACTS
from tests.fleet_support import Fleet, every_state, hold_intervals, open_fleet
from tests.gateway_support import batch, reading, record_for

pytestmark = pytest.mark.integration

TOKEN = "test-token-0123456789abcdef"
SHOTS = ARTIFACTS / "dashboard"
WIDTH = 1400


async def _serve(d: Dashboard) -> TestServer:
    srv = TestServer(d.app(), host="127.0.0.1")
    await srv.start_server()
    return srv


def _row_state(meter_id: str) -> str:
    return f"(document.querySelector('tr[data-meter=\"{meter_id}\"]') || {{dataset: {{}}}}).dataset.state"


@pytest.fixture
async def every_state_dashboard(tmp_path: Path) -> AsyncIterator[tuple[str, Fleet]]:
    f = open_fleet(tmp_path)
    every_state(f)
    hold_intervals(f)
    d = Dashboard(DashboardSection(token=TOKEN), tmp_path / "gateway.sqlite", tmp_path / "registry.sqlite",
                  f.metrics, clock=lambda: f.clock[0])
    srv = await _serve(d)
    try:
        yield str(srv.make_url("")).rstrip("/"), f
    finally:
        await srv.close()
        d.close()
        f.close()


async def test_held_meter_shows_its_reason_and_the_table_fits_1400px(
        every_state_dashboard: tuple[str, Fleet], tmp_path: Path) -> None:
    base, _f = every_state_dashboard
    async with Chromium(tmp_path / "chromium") as browser:
        await browser.set_window(WIDTH, 900)
        # a link to a meter page opens that page after login (it used to land on the fleet view)
        await browser.goto(f"{base}/login?token={TOKEN}&next=/meter/HELD-1")
        await browser.wait_for("document.body.dataset.page === 'meter' && document.body.dataset.loaded === '1'")
        health = await browser.eval("document.getElementById('health').innerText")
        assert health.startswith("Held: clock_unsynced") and "readings held, not submitted: clock_unsynced" in health
        assert await browser.eval("document.querySelectorAll('#held tr[data-held-reason=clock_unsynced]').length") == 4
        await browser.screenshot(SHOTS / "meter-held-clock-unsynced.png")
        await browser.goto(f"{base}/")
        await browser.wait_for("document.body.dataset.loaded === '1'")
        cell = await browser.eval("document.querySelector('tr[data-meter=\"HELD-1\"] td.state').innerText")
        assert cell == "Held: clock_unsynced"
        assert await browser.eval(_row_state("LATE-1")) == "late"
        assert await browser.eval("document.querySelector('tr[data-meter=\"LATE-1\"] td.state').innerText") == "Late"
        # the state pill has a colour of its own (not only text): late is not drawn like ok
        colours = await browser.eval("['OK-1','LATE-1','SILENT-1','HELD-1'].map(m => getComputedStyle("
                                     "document.querySelector(`tr[data-meter=\"${m}\"] .pill`)).backgroundColor)")
        assert len(set(colours)) == 4, colours
        counts = await browser.eval("Object.fromEntries([...document.querySelectorAll('#states .card')]"
                                    ".map(c => [c.dataset.state, c.querySelector('b').textContent]))")
        assert counts == {"": "7", "silent": "1", "late": "1", "rejecting": "1", "held": "1", "new": "1",
                          "suspended": "0", "ok": "1", "retired": "1"}
        # last seen: ISO time and relative age
        seen = await browser.eval("document.querySelector('tr[data-meter=\"LATE-1\"] td.when').innerText")
        assert seen.split("\n")[1] == "2 min ago" and seen[10] == "T" and seen.split("\n")[0].endswith("Z")
        held_iv = await browser.eval("[...document.querySelectorAll('#held-intervals tbody tr')]"
                                     ".map(r => r.dataset.heldReason).sort()")
        assert held_iv == ["anomalous_ratio", "reconcile_mismatch"]
        # fits a 1400 px window: nothing to scroll sideways, the last column is on screen
        widths = await browser.eval("[document.documentElement.scrollWidth, "
                                    "document.querySelector('#meters th:last-child').getBoundingClientRect().right]")
        assert widths[0] <= WIDTH and widths[1] <= WIDTH, widths
        await browser.screenshot(SHOTS / "fleet-every-state-1400px.png")
        # sort by clicking a column header (twice: descending)
        await browser.eval("document.querySelector('#meters th[data-sort=meter]').click()")
        await browser.wait_for("document.querySelector('#meters tbody tr').dataset.meter === 'HELD-1'")
        await browser.eval("document.querySelector('#meters th[data-sort=meter]').click()")
        await browser.wait_for("document.querySelector('#meters tbody tr').dataset.meter === 'SILENT-1'")
        # filter by clicking a state count
        await browser.eval("document.querySelector('#states .card[data-state=late]').click()")
        await browser.wait_for("document.querySelectorAll('#meters tbody tr').length === 1")
        assert (await browser.eval("location.search")).startswith("?state=late")


async def test_meter_that_stops_turns_late_within_one_interval_plus_margin(tmp_path: Path) -> None:
    f = open_fleet(tmp_path)
    f.acceptance.clock = time.time  # real time: the agent "runs" now
    f.registry.add(record_for("LIVE-1", rated_w=20_000), int(time.time() * 1000))
    th = Thresholds(late_margin_ms=4_000)  # late after interval + max(4 s, interval / 2)
    d = Dashboard(DashboardSection(token=TOKEN), tmp_path / "gateway.sqlite", tmp_path / "registry.sqlite",
                  f.metrics, thresholds=th)
    d.sse_tick_s = 1.0
    srv = await _serve(d)
    base = str(srv.make_url("")).rstrip("/")
    step_s = 1.5
    last_sent = [0.0]
    seq = [0]

    async def agent() -> None:
        while True:
            seq[0] += 1
            now = time.time()
            f.acceptance.process([(readings_topic("LIVE-1"),
                                   batch(reading("LIVE-1", seq[0], int(now * 1000), 1000 + seq[0], 7)))])
            last_sent[0] = time.monotonic()
            await asyncio.sleep(step_s)

    task = asyncio.create_task(agent())
    try:
        async with Chromium(tmp_path / "chromium") as browser:
            await browser.set_window(WIDTH, 700)
            await browser.goto(f"{base}/login?token={TOKEN}")
            await browser.wait_for(f"{_row_state('LIVE-1')} === 'ok'", timeout_s=60)
            # measure how long the page takes to follow a change (render round trip under today's load)
            r0 = int(await browser.eval("document.body.dataset.renders"))
            t0 = time.monotonic()
            await browser.wait_for(f"Number(document.body.dataset.renders) >= {r0 + 3}", timeout_s=60)
            follow_s = (time.monotonic() - t0) / 3
            while seq[0] < 10:  # enough readings for the cadence to be learnt
                await asyncio.sleep(0.2)
            assert await browser.eval(_row_state("LIVE-1")) == "ok"
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            stopped = last_sent[0]
            async with aiohttp.ClientSession() as s, s.get(f"{base}/api/meters",
                                                           headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                interval_s = (await r.json())["meters"][0]["expected_interval_s"]
            assert abs(interval_s - step_s) < 0.5, interval_s  # learnt from the readings, not the 10 s default
            late_after_s = th.late_after_ms(int(interval_s * 1000)) / 1000
            # one expected interval plus the margin, plus how long the page needs to follow (measured, x3 + 2 s)
            deadline_s = late_after_s + d.sse_tick_s + 3 * follow_s + 2.0
            await browser.wait_for(f"{_row_state('LIVE-1')} === 'late'", timeout_s=deadline_s)
            took = time.monotonic() - stopped
            assert took >= late_after_s - 0.5, took  # not before it really is late
            text = await browser.eval("document.querySelector('tr[data-meter=\"LIVE-1\"] td.state').title")
            assert text.startswith("last heard") and re.search(r"expected every 1\.\d s", text), text
            await browser.screenshot(SHOTS / "fleet-meter-turned-late.png")
            print(f"LIVE-1 sent every {step_s} s, learnt {interval_s} s: late after {late_after_s:.1f} s; the page "
                  f"showed it {took:.1f} s after the last reading (deadline {deadline_s:.1f} s, page follows in "
                  f"{follow_s:.2f} s)")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await srv.close()
        d.close()
        f.close()


async def test_chain_outage_shows_banner_and_metrics(tmp_path: Path) -> None:
    authority = Keypair()
    chain = LocalChainServer(chain_bridge=authority.pubkey())
    await chain.start()
    metrics = Metrics()
    f = open_fleet(tmp_path, metrics)
    f.acceptance.clock = time.time
    f.registry.add(record_for("HOUSE-1", rated_w=20_000), int(time.time() * 1000))
    now_ms = int(time.time() * 1000)
    f.acceptance.process([(readings_topic("HOUSE-1"), batch(*[reading("HOUSE-1", s, now_ms - 3_000_000 + s * 10_000,
                                                                      100 + 5 * s, 7) for s in range(1, 200)]))])
    client = OracleClient(chain.url, str(chain.chain.program_id), authority, poll_s=0.05, rpc_timeout_s=5)
    sub = Submitter(f.store, f.registry, client, metrics, epoch_s=900, authority=str(authority.pubkey()),
                    max_backoff_s=1.0)
    stop = asyncio.Event()
    task = asyncio.create_task(sub.run(stop, 0.3))
    d = Dashboard(DashboardSection(token=TOKEN), tmp_path / "gateway.sqlite", tmp_path / "registry.sqlite", metrics)
    d.sse_tick_s = 1.0
    srv = await _serve(d)
    base = str(srv.make_url("")).rstrip("/")
    auth = {"Authorization": f"Bearer {TOKEN}"}

    async def scrape() -> str:
        async with aiohttp.ClientSession() as s, s.get(f"{base}/metrics", headers=auth) as r:
            return await r.text()

    try:
        async with Chromium(tmp_path / "chromium") as browser:
            await browser.set_window(WIDTH, 800)
            await browser.goto(f"{base}/login?token={TOKEN}")
            await browser.wait_for("document.getElementById('chain-rpc') && "
                                   "document.getElementById('chain-rpc').innerText.startsWith('reachable')", 60)
            assert await browser.eval("document.getElementById('banner').hidden") is True
            text = await scrape()
            assert "gridmeter_gateway_chain_rpc_up 1.0" in text
            assert "gridmeter_gateway_chain_last_success_timestamp_seconds 1." in text  # set: a cycle succeeded
            await chain.stop()  # the RPC endpoint goes away
            await browser.wait_for("document.getElementById('banner').dataset.kind === 'unreachable'", 30)
            banner = await browser.eval("document.getElementById('banner').innerText")
            assert banner.startswith("Chain RPC unreachable") and "wait in the outbox" in banner
            rpc = await browser.eval("document.getElementById('chain-rpc').innerText")
            assert rpc.startswith("unreachable"), rpc
            await browser.screenshot(SHOTS / "fleet-chain-unreachable.png")
            text = await scrape()
            assert "gridmeter_gateway_chain_rpc_up 0.0" in text
            errors = [line for line in text.splitlines()
                      if line.startswith('gridmeter_gateway_chain_errors_total{reason="rpc_unreachable"}')]
            assert errors and float(errors[0].split()[-1]) >= 1
            await chain.start()  # back on the same port: the banner goes away
            await browser.wait_for("document.getElementById('banner').hidden === true", 30)
            assert "gridmeter_gateway_chain_rpc_up 1.0" in await scrape()
    finally:
        stop.set()
        await task
        await srv.close()
        d.close()
        await client.close()
        with contextlib.suppress(Exception):
            await chain.stop()
        f.close()
