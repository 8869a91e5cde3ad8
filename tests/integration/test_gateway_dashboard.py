"""Dashboard: 401 without auth; headless Chromium (Debian) shows a meter and a rejection; /metrics."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.config import DashboardSection
from gateway.intake.acceptance import Acceptance, IngressLimit
from gateway.intake.checks import Limits
from gateway.metrics import Metrics
from gateway.store.registry import Registry
from gateway.store.sqlite import Store
from gateway.web import Dashboard
from protocol.topics import readings_topic
from tests.chromium_driver import Chromium
from tests.gateway_support import batch, reading, record_for

pytestmark = pytest.mark.integration

TOKEN = "test-token-0123456789abcdef"


def basic(user: str, pw: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()


@pytest.fixture
def dash_state(dash_parts: tuple[str, Acceptance]) -> Acceptance:
    return dash_parts[1]


@pytest.fixture
def dash(dash_parts: tuple[str, Acceptance]) -> str:
    return dash_parts[0]


@pytest.fixture
async def dash_parts(tmp_path: Path) -> AsyncIterator[tuple[str, Acceptance]]:
    store, registry = Store(tmp_path / "gateway.sqlite"), Registry(tmp_path / "registry.sqlite")
    now = int(time.time() * 1000)
    registry.add(record_for("HOUSE-1", rated_w=20_000), now)
    metrics = Metrics()
    acc = Acceptance(store, registry, Limits(), IngressLimit(), metrics)
    acc.process([(readings_topic("HOUSE-1"), batch(*[reading("HOUSE-1", s, now - 60_000 + s * 10_000, 100 + 2 * s, 7)
                                                     for s in range(1, 5)])),
                 (readings_topic("HOUSE-1"), batch(reading("HOUSE-1", 5, now - 5_000, 90, 7)))])  # counter down
    metrics.add_outbox_collector(lambda: store.outbox_stats(int(time.time() * 1000)))
    d = Dashboard(DashboardSection(token=TOKEN, username="staff", password="pw"), tmp_path / "gateway.sqlite",
                  tmp_path / "registry.sqlite", metrics)
    srv = TestServer(d.app(), host="127.0.0.1")
    await srv.start_server()
    try:
        yield str(srv.make_url("")).rstrip("/"), acc
    finally:
        await srv.close()
        d.close()
        store.close()
        registry.close()


async def test_auth_required(dash: str) -> None:
    async with aiohttp.ClientSession() as s:
        for path in ("/", "/api/meters", "/api/rejections", "/metrics", "/api/events", "/meter/HOUSE-1"):
            async with s.get(dash + path) as r:
                assert r.status == 401, path
        async with s.get(dash + "/api/meters", headers={"Authorization": "Bearer wrong"}) as r:
            assert r.status == 401
        async with s.get(dash + "/api/meters", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            assert r.status == 200
            doc = await r.json()
        assert doc["meters"][0]["meter_id"] == "HOUSE-1" and doc["meters"][0]["accepted"] == 4
        assert doc["rejections_by_reason"] == {"counter_decreased": 1}
        async with s.get(dash + "/metrics", headers={"Authorization": basic("staff", "pw")}) as r:
            text = await r.text()
        assert 'gridmeter_gateway_readings_rejected_total{reason="counter_decreased",source="mqtt"} 1.0' in text
        assert 'gridmeter_gateway_readings_accepted_total{source="mqtt"} 4.0' in text
        assert "gridmeter_gateway_outbox_oldest_age_seconds" in text
        async with s.get(dash + "/metrics", headers={"Authorization": basic("staff", "nope")}) as r:
            assert r.status == 401
        for path, auth in (("/", f"Bearer {TOKEN}"), ("/api/meters", f"Bearer {TOKEN}"), ("/api/meters", "")):
            async with s.get(dash + path, headers={"Authorization": auth}) as r:
                assert r.headers["X-Frame-Options"] == "DENY" and r.headers["Cache-Control"] == "no-store"
                assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]


async def test_chromium_shows_meter_and_rejection_live(dash: str, tmp_path: Path, dash_state: Acceptance) -> None:
    async with Chromium(tmp_path / "chromium") as browser:
        await browser.goto(f"{dash}/login?token={TOKEN}")  # sets the session cookie, redirects to /
        await browser.wait_for("document.body.dataset.loaded === '1'")
        # without the cookie the API refuses (401 is checked in detail in test_auth_required)
        assert await browser.eval("fetch('/api/meters', {credentials: 'omit'}).then(r => r.status)") == 401
        assert await browser.eval("document.querySelector('tr[data-meter=\\'HOUSE-1\\'] a').textContent") == "HOUSE-1"
        detail = await browser.eval("document.querySelector('tr[data-reason=counter_decreased]').innerText")
        assert "energy_import_wh 90 < last 108" in detail
        await browser.wait_for("document.getElementById('live').textContent === 'live'")
        # a new rejection arrives while the page is open: the SSE stream makes it appear
        now = int(time.time() * 1000)
        dash_state.process([(readings_topic("HOUSE-1"), batch(reading("HOUSE-1", 6, now + 3_600_000, 200, 7)))])
        await browser.wait_for("!!document.querySelector('tr[data-reason=read_at_future]')")
        await browser.goto(f"{dash}/meter/HOUSE-1")
        await browser.wait_for("document.body.dataset.loaded === '1'")
        assert await browser.eval("document.getElementById('title').textContent") == "HOUSE-1"
        assert await browser.eval("document.querySelectorAll('#chart polyline').length") == 2


async def test_tls_direct(tmp_path: Path) -> None:
    """dashboard.tls_cert/tls_key: HTTPS served directly; still 401 without credentials."""
    import ssl
    import subprocess

    from gateway.service import _site
    from testbed.ports import free_port

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    store, registry = Store(tmp_path / "gateway.sqlite"), Registry(tmp_path / "registry.sqlite")
    d = Dashboard(DashboardSection(token=TOKEN, tls_cert=str(cert), tls_key=str(key)), tmp_path / "gateway.sqlite",
                  tmp_path / "registry.sqlite", Metrics())
    port = free_port()
    runner = await _site(d.app(), f"127.0.0.1:{port}", d.ssl_context())
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        async with aiohttp.ClientSession() as s:
            async with s.get(f"https://127.0.0.1:{port}/api/meters", ssl=ctx) as r:
                assert r.status == 401
            async with s.get(f"https://127.0.0.1:{port}/api/meters", ssl=ctx,
                             headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                assert r.status == 200 and (await r.json())["meters"] == []
    finally:
        await runner.cleanup()
        d.close()
        store.close()
        registry.close()


async def _raw_get(base: str, path: str, auth: bytes) -> bytes:
    from urllib.parse import urlsplit

    u = urlsplit(base)
    reader, writer = await asyncio.open_connection(u.hostname, u.port)
    try:
        writer.write(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: "
                     + auth + b"\r\n\r\n")
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


@pytest.mark.parametrize("auth", [b"Bearer \xff\xfe" + TOKEN.encode(), b"Basic " + base64.b64encode(b"staff:\xff"),
                                  b"Basic !!!notbase64", b"Bearer"])
async def test_garbage_credentials_get_401_not_500(dash: str, auth: bytes) -> None:
    """Non-UTF-8 bytes in the Authorization header made str.encode() raise inside the auth middleware: 500."""
    for path in ("/api/meters", "/metrics", "/api/events"):
        head = (await _raw_get(dash, path, auth)).split(b"\r\n", 1)[0]
        assert head == b"HTTP/1.1 401 Unauthorized", (path, head)


async def test_event_stream_ends_when_the_session_expires(tmp_path: Path) -> None:
    from gateway import web as web_mod

    now = [1_000_000.0]
    store, registry = Store(tmp_path / "gateway.sqlite"), Registry(tmp_path / "registry.sqlite")
    d = Dashboard(DashboardSection(token=TOKEN), tmp_path / "gateway.sqlite", tmp_path / "registry.sqlite",
                  Metrics(), clock=lambda: now[0])
    srv = TestServer(d.app(), host="127.0.0.1")
    await srv.start_server()
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:  # cookies for 127.0.0.1
            async with s.get(srv.make_url(f"/login?token={TOKEN}"), allow_redirects=False) as r:
                assert r.status == 302
            async with s.get(srv.make_url("/api/events")) as r:
                assert r.status == 200
                assert (await r.content.readuntil(b"\n\n")).startswith(b"retry:")
                assert (await r.content.readuntil(b"\n\n")).startswith(b"event: update")
                now[0] += web_mod.DEFAULT_SESSION_TTL_S + 1
                rest = await asyncio.wait_for(r.content.read(), 10)  # the server closes the stream
                assert b"event: update" not in rest
    finally:
        await srv.close()
        d.close()
        store.close()
        registry.close()


async def test_rejection_payloads_are_cut_in_the_api(dash: str, dash_state: Acceptance) -> None:
    """A rejected message was stored whole (up to a full batch); /api/rejections listed 200 of them in full hex on
    every live update. It now shows the first 512 bytes and the received size (an unauthenticated message is
    stored as its first QUARANTINE_PREFIX_BYTES with its length and hash: issue 8)."""
    from gateway.store.sqlite import RejectionRow

    dash_state.store.add_rejection(RejectionRow(int(time.time() * 1000), "mqtt", "HOUSE-1", None, None, "malformed",
                                                "undecodable", False, b"\xab" * 100_000, b""))
    async with aiohttp.ClientSession() as s, s.get(dash + "/api/rejections",
                                                   headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        doc = await r.json()
    big = doc["rejections"][0]
    assert big["payload_bytes"] == 100_000 and big["payload_hex"] == "ab" * 256
    assert doc["rejections"][1]["payload_bytes"] == len(bytes.fromhex(doc["rejections"][1]["payload_hex"]))


@pytest.mark.parametrize(("behind_proxy", "secure"), [(False, False), (True, True)])
async def test_session_cookie_is_secure_behind_a_tls_proxy(tmp_path: Path, behind_proxy: bool, secure: bool) -> None:
    store, registry = Store(tmp_path / "gateway.sqlite"), Registry(tmp_path / "registry.sqlite")
    d = Dashboard(DashboardSection(token=TOKEN, behind_tls_proxy=behind_proxy), tmp_path / "gateway.sqlite",
                  tmp_path / "registry.sqlite", Metrics())
    srv = TestServer(d.app(), host="127.0.0.1")
    await srv.start_server()
    try:
        async with aiohttp.ClientSession() as s, s.get(srv.make_url(f"/login?token={TOKEN}"),
                                                       allow_redirects=False) as r:
            assert r.status == 302
            cookie = r.headers["Set-Cookie"]
        assert ("Secure" in cookie) is secure and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    finally:
        await srv.close()
        d.close()
        store.close()
        registry.close()
