"""AgentService supervision in-process: a background task that dies stops the service with its name and reason.

(The same with the real `gridmeter agent run` process, its exit code and the systemd watchdog:
tests/integration/test_agent_supervision.py.)"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.config import parse_config
from agent.service import AgentService
from agent.supervision import TASK_FAILED_EVENT, TaskFailedError
from protocol.signing import SigningKey
from testbed.ports import free_port

KEY = SigningKey(bytes(range(32)))
GW = SigningKey(bytes(range(1, 33)))


def make_service(tmp_path: Path) -> AgentService:
    doc = {
        "agent": {"state_dir": str(tmp_path / "state"), "key_file": "k"},
        "clock": {"check": "always-synced"},
        "mqtt": {"gateway_public_key": GW.public_key.hex(), "port": free_port()},  # nothing listens there
        "store": {"flush_interval_ms": 50},
        "status": {"listen": ""},
        "buses": [{"name": "b", "kind": "tcp", "host": "127.0.0.1"}],
        "meters": [{"meter_id": "M1", "bus": "b", "unit_id": 1, "profile": "eastron-sdm630"}],
    }
    cfg = parse_config(doc, path=tmp_path / "agent.toml", env={})
    spec = SimpleNamespace(meter_id="M1", bus="b", unit_id=1, rated_max_power_w=None,
                           profile=SimpleNamespace(id="eastron-sdm630", rated=SimpleNamespace(max_power_w=23_000)))
    return AgentService(cfg, {"M1": KEY}, [spec], {})  # type: ignore[list-item]  # no bus: no poller task


async def test_flush_task_dying_stops_the_service_with_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    """On main the flush task died silently: run() went on, nothing was committed again, commit_error stayed ''."""
    svc = make_service(tmp_path)
    calls = 0
    real_flush = svc.store.flush

    def flush() -> int:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        return real_flush()

    monkeypatch.setattr(svc.store, "flush", flush)
    seen: dict[str, Any] = {}

    async def look() -> None:
        while svc.failed_task is None:
            await asyncio.sleep(0.01)
        seen.update(svc.health())

    watcher = asyncio.create_task(look())
    with pytest.raises(TaskFailedError) as e:
        await asyncio.wait_for(svc.run(), 30)
    await watcher
    assert (e.value.task, e.value.reason) == ("flush", "OverflowError: Python int too large to convert to SQLite "
                                                       "INTEGER")
    assert seen["status"] == "failed"
    assert seen["failed_task"]["task"] == "flush" and "OverflowError" in seen["failed_task"]["reason"]
    assert seen["tasks"]["flush"].startswith("failed: OverflowError")
    assert not seen["tasks"]["publisher"].startswith("failed")  # running, or ended by the stop that followed
    monkeypatch.setattr(svc.store, "flush", real_flush)
    # recorded durably: the next start shows why the previous run stopped
    svc2 = make_service(tmp_path)
    h = svc2.health()
    assert h["last_task_failure"]["task"] == "flush" and "OverflowError" in h["last_task_failure"]["reason"]
    assert h["failed_task"] is None and h["store"]["task_failures"] == 1
    assert [e[1] for e in svc2.store.events()].count(TASK_FAILED_EVENT) == 1
    svc2.store.close()


async def test_task_returning_early_is_a_failure_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    svc = make_service(tmp_path)

    async def returns() -> None:
        await asyncio.sleep(0.05)

    monkeypatch.setattr(svc, "_flush_loop", returns)
    with pytest.raises(TaskFailedError, match="'flush' failed: returned while the agent was running"):
        await asyncio.wait_for(svc.run(), 30)


async def test_clean_stop_is_not_a_failure(tmp_path: Path) -> None:
    svc = make_service(tmp_path)
    asyncio.get_running_loop().call_later(0.3, svc.request_stop)
    await asyncio.wait_for(svc.run(), 30)
    assert svc.failed_task is None
    assert set(svc._tasks) == {"publisher", "flush"} and all(t.done() for t in svc._tasks.values())
