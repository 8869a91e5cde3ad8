from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.status import StatusServer
from base.sd_notify import Notifier


def sample_health() -> dict[str, Any]:
    return {
        "status": "degraded",
        "now_ms": 1_700_000_100_000,
        "last_read_ms": 1_700_000_090_000,
        "last_publish_ms": None,
        "last_ack_ms": None,
        "queue": {"depth": 42, "oldest_read_at_ms": 1_700_000_000_000, "oldest_age_s": 100.0},
        "mqtt": {"connected": False, "connects": 3, "published_readings": 10, "published_batches": 2,
                 "puback_failures": 1, "resends": 0, "acks_ok": 5, "acks_rejected": 2, "acked_readings": 9,
                 "store_errors": 1},
        "clock": {"synced": True, "source": "always-synced", "detail": "", "jumps": 1},
        "devices": {"HOUSE-1": {"reads": 7, "read_errors": 2, "glitches": 1, "consecutive_errors": 2,
                                "last_read_ms": 1_700_000_090_000}},
        "store": {"dropped_overflow": 4},
    }


async def test_health_json_and_metrics() -> None:
    server = StatusServer("127.0.0.1", 0, sample_health)
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{server.port}/health") as r:
                assert r.status == 200
                body = await r.json()
            assert body["queue"]["depth"] == 42 and body["status"] == "degraded"
            async with http.get(f"http://127.0.0.1:{server.port}/metrics") as r:
                text = await r.text()
    finally:
        await server.stop()
    lines = set(text.splitlines())
    assert "gridmeter_agent_queue_depth 42.0" in lines
    assert "gridmeter_agent_queue_oldest_age_seconds 100.0" in lines
    assert "gridmeter_agent_mqtt_connected 0.0" in lines
    assert "gridmeter_agent_acks_rejected_total 2.0" in lines
    assert "gridmeter_agent_publish_store_errors_total 1.0" in lines
    assert "gridmeter_agent_store_dropped_overflow_total 4.0" in lines
    assert 'gridmeter_agent_meter_read_errors_total{meter_id="HOUSE-1"} 2.0' in lines
    assert 'gridmeter_agent_meter_last_read_timestamp_seconds{meter_id="HOUSE-1"} 1.70000009e+09' in lines
    assert "python_gc_objects_collected_total" not in text  # own registry, nothing global leaks in


def test_sd_notify_datagrams(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        monkeypatch.setenv("WATCHDOG_USEC", "20000000")
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
        n = Notifier.from_env()
        assert n is not None and n.watchdog_interval_s() == 10.0
        n.send("READY=1")
        n.send("WATCHDOG=1")
        assert sock.recv(64) == b"READY=1" and sock.recv(64) == b"WATCHDOG=1"
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert Notifier.watchdog_interval_s() is None
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert Notifier.from_env() is None
