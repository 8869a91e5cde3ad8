"""Supervised gateway background tasks and the HTTP ingest's TLS option (issue 8), on the real service wiring
with a real mosquitto.

A background task that dies (here the intake's worker thread, by a simulated bug) makes the gateway log which
and why, stop petting the systemd watchdog at once, record the failure and exit 1; /health names the task and
the reason (503 while failing; after the restart, as previous_failure)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.config import ConfigError, GatewayConfig, parse_config
from gateway.intake.mqtt import Intake
from gateway.keys import create_key_file
from gateway.service import Gateway, run
from testbed.broker import Broker
from testbed.ports import free_port
from tests.polling import until

pytestmark = pytest.mark.integration

TOKEN = "Zq3-vN8x_Lk2Rt7Wm5Yp"
API_KEY = "Hx7-pQ2w_Nc5Lv9Tz4Bm"


def config(tmp_path: Path, broker: Broker | None, **http: Any) -> GatewayConfig:
    key = tmp_path / "gateway.key"
    if not key.exists():
        create_key_file(key)
    return parse_config({
        "gateway": {"state_dir": str(tmp_path / "state"), "ack_key_file": str(key), "verify_workers": 1},
        "chain": {"enabled": False},
        "mqtt": {"enabled": broker is not None, "port": broker.port if broker else 1883, "client_id": "gw-sup"},
        "dashboard": {"listen": f"127.0.0.1:{free_port()}", "token": TOKEN},
        "http": {"enabled": bool(http), "listen": f"127.0.0.1:{free_port()}", "api_keys": [API_KEY], **http},
    })


@pytest.fixture
def notify(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[tuple[float, str]]]:
    """A NOTIFY_SOCKET like systemd's, WatchdogSec=0.2 s: every message with its arrival time."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.1)
    got: list[tuple[float, str]] = []
    stop = threading.Event()

    def receive() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                got.append((time.monotonic(), sock.recv(256).decode()))

    t = threading.Thread(target=receive, daemon=True)
    t.start()
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    try:
        yield got
    finally:
        stop.set()
        t.join(5)
        sock.close()


async def get_health(cfg: GatewayConfig) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.get(f"http://{cfg.dashboard.listen}/health",
                                                   headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        return r.status, await r.json()


async def test_a_dead_intake_thread_stops_the_watchdog_and_exits_1(
        broker: Broker, tmp_path: Path, notify: list[tuple[float, str]], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    cfg = config(tmp_path, broker)
    trigger = threading.Event()
    real_next_group = Intake._next_group

    def buggy(self: Intake, timeout_s: float | None) -> list[Any]:
        if trigger.is_set():
            raise RuntimeError("simulated bug in the intake worker")
        return real_next_group(self, timeout_s)

    monkeypatch.setattr(Intake, "_next_group", buggy)
    caplog.set_level(logging.INFO)
    running = asyncio.create_task(run(cfg))
    await until(lambda: sum(m == "WATCHDOG=1" for _, m in notify) >= 2, 60, "watchdog pings while healthy")
    assert any(m == "READY=1" for _, m in notify)
    trigger.set()
    await until(lambda: "worker thread ended" in caplog.text or running.done(), 60, "the intake worker to die")
    died_at = time.monotonic()
    assert await asyncio.wait_for(running, 60) == 1  # gateway.service.EXIT_TASK_DIED: systemd restarts it
    assert not [m for t, m in notify if m == "WATCHDOG=1" and t > died_at]
    assert "background task intake died: worker thread ended (RuntimeError: simulated bug in the intake worker)" \
        in caplog.text
    assert "intake worker died: RuntimeError: simulated bug" in caplog.text

    # the next run (systemd restarted it) is healthy and tells what ended the previous one
    monkeypatch.setattr(Intake, "_next_group", real_next_group)
    gw = Gateway(cfg)
    await gw.start()
    try:
        status, doc = await get_health(cfg)
        assert status == 200 and doc["status"] == "ok" and doc["failure"] is None
        assert doc["tasks"]["intake"] == "running" and doc["tasks"]["supervisor"] == "running"
        prev = doc["previous_failure"]
        assert prev["task"] == "intake" and "RuntimeError: simulated bug in the intake worker" in prev["reason"]
    finally:
        await gw.stop()


async def test_a_failing_task_is_reported_by_health_and_ends_the_run(tmp_path: Path) -> None:
    cfg = config(tmp_path, None)
    gw = Gateway(cfg)
    await gw.start()
    try:
        async def submitter_like() -> None:
            await asyncio.sleep(0)
            raise ConnectionResetError("RPC went away mid-read")

        gw.spawn("submitter", submitter_like())
        await until(lambda: gw.failure is not None, 30, "the failure to be recorded")
        assert gw.stop_event.is_set()
        status, doc = await get_health(cfg)
        assert status == 503 and doc["status"] == "failing"
        assert doc["failure"]["task"] == "submitter"
        assert doc["failure"]["reason"] == "ConnectionResetError: RPC went away mid-read"
        assert doc["tasks"]["submitter"] == "ended"
    finally:
        await gw.stop()


def _cert(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


async def test_http_ingest_serves_https_when_configured(tmp_path: Path) -> None:
    cert, key = _cert(tmp_path)
    cfg = config(tmp_path, None, tls_cert=str(cert), tls_key=str(key))
    gw = Gateway(cfg)
    await gw.start()
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        async with aiohttp.ClientSession() as s:
            async with s.get(f"https://{cfg.http.listen}/health", ssl=ctx) as r:
                assert r.status == 200 and (await r.json())["service"] == "gridmeter-gateway"
            async with s.post(f"https://{cfg.http.listen}/v1/private-network/ingest", ssl=ctx, data=b"{}") as r:
                assert r.status == 401  # over TLS, and still refused without X-API-KEY
            with pytest.raises(aiohttp.ClientError):  # plain HTTP is not spoken on that port
                async with s.get(f"http://{cfg.http.listen}/health") as r:
                    await r.read()
    finally:
        await gw.stop()


async def test_http_tls_misconfiguration_is_a_clear_start_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"http\.tls_key: tls_cert and tls_key go together"):
        config(tmp_path, None, tls_cert="cert.pem")
    cfg = config(tmp_path, None, tls_cert=str(tmp_path / "missing.pem"), tls_key=str(tmp_path / "missing.key"))
    gw = Gateway(cfg)
    try:
        with pytest.raises(ConfigError, match=r"http\.tls_cert: cannot load the certificate"):
            await gw.start()
    finally:
        await gw.stop()
