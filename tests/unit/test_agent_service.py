"""AgentService.on_sample: sample -> quality flags -> signed reading -> store (real SQLite, no broker)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.config import parse_config
from agent.service import AgentService
from protocol.canonical import decode_reading
from protocol.reading import Quality
from protocol.signing import SigningKey, VerifyKey

KEY = SigningKey(bytes(range(32)))
GW = SigningKey(bytes(range(1, 33)))
T0 = 1_700_000_000_000


@dataclass(frozen=True)
class Sample:  # same fields as agent.poller.MeterSample
    meter_id: str
    profile_id: str
    unit_id: int
    read_at_ms: int
    monotonic_ms: int
    values: dict[str, int]
    errors: tuple[str, ...] = field(default=())
    not_measured: tuple[str, ...] = field(default=())


def sample(t_s: float, imp: int, exp: int = 0, meter: str = "M1", **values: int) -> Sample:
    ms = int(t_s * 1000)
    return Sample(meter, "eastron-sdm630", 1, T0 + ms, 10_000 + ms,
                  {"energy_import_wh": imp, "energy_export_wh": exp, **values})


def make_service(tmp_path: Path, **store: Any) -> AgentService:
    doc = {
        "agent": {"state_dir": str(tmp_path / "state"), "key_file": "k"},
        "clock": {"check": "always-synced"},
        "mqtt": {"gateway_public_key": GW.public_key.hex()},
        "store": {"flush_interval_ms": 0, **store},
        "buses": [{"name": "b", "kind": "tcp", "host": "127.0.0.1"}],
        "meters": [{"meter_id": "M1", "bus": "b", "unit_id": 1, "profile": "eastron-sdm630"}],
    }
    cfg = parse_config(doc, path=tmp_path / "agent.toml", env={})
    spec = SimpleNamespace(meter_id="M1", bus="b", unit_id=1, rated_max_power_w=None,
                           profile=SimpleNamespace(id="eastron-sdm630", rated=SimpleNamespace(max_power_w=23_000)))
    return AgentService(cfg, {"M1": KEY}, [spec], {})  # type: ignore[list-item]


def stored(svc: AgentService) -> list[Any]:
    rows = svc.store.fetch("M1", 0, 1000)
    for r in rows:
        VerifyKey(KEY.public_key).verify(r.payload, r.signature)
    return [decode_reading(r.payload) for r in rows]


async def test_good_sample_is_signed_and_committed_with_read_at_untouched(tmp_path: Path) -> None:
    svc = make_service(tmp_path)
    await svc.on_sample(sample(0, 1_000_000, 5, power_w=1200, voltage_l1_dv=2301, frequency_mhz=50_010))
    [r] = stored(svc)
    assert (r.seq, r.read_at_ms, r.energy_import_wh, r.energy_export_wh) == (1, T0, 1_000_000, 5)
    assert r.quality == Quality.NONE and r.clock_synced and r.good
    assert r.key_id == KEY.key_id and r.profile_id == "eastron-sdm630"
    assert (r.instant.power_w, r.instant.voltage_l1_dv, r.instant.frequency_mhz) == (1200, 2301, 50_010)
    assert svc.devices["M1"].stored == 1
    svc.store.close()


async def test_glitches_flagged_and_baseline_stays_on_last_good(tmp_path: Path) -> None:
    svc = make_service(tmp_path)
    await svc.on_sample(sample(0, 1_000_000))
    await svc.on_sample(sample(10, 0))  # reads 0
    await svc.on_sample(sample(20, 9_999_999))  # jump
    await svc.on_sample(sample(30, 1_000_150))  # vs last good (t=0, 30 s): allowed
    await svc.on_sample(sample(40, 1_000_149))  # decrease vs 1_000_150
    qualities = [(r.seq, r.quality) for r in stored(svc)]
    assert qualities == [
        (1, Quality.NONE), (2, Quality.GLITCH_SUSPECTED), (3, Quality.GLITCH_SUSPECTED), (4, Quality.NONE),
        (5, Quality.GLITCH_SUSPECTED),
    ]
    assert svc.devices["M1"].glitches == 3 and svc.devices["M1"].last_glitch == "import_decreased"
    svc.store.close()
    # the last good counters survive a restart: a 0 right after restart is still a glitch
    svc2 = make_service(tmp_path)
    await svc2.on_sample(sample(50, 0))
    assert stored(svc2)[-1].quality == Quality.GLITCH_SUSPECTED and stored(svc2)[-1].seq == 6
    svc2.store.close()


async def test_clock_flags(tmp_path: Path) -> None:
    svc = make_service(tmp_path)
    await svc.on_sample(sample(0, 1000))
    jumped = sample(10, 1001)
    jumped = Sample(**{**jumped.__dict__, "read_at_ms": jumped.read_at_ms + 60_000})  # wall +60 s extra
    await svc.on_sample(jumped)
    svc.clock = type(svc.clock)(f"file:{tmp_path / 'no-such-flag'}")
    after = sample(20, 1002)
    await svc.on_sample(Sample(**{**after.__dict__, "read_at_ms": after.read_at_ms + 60_000}))  # clock stays moved
    rs = stored(svc)
    assert rs[1].quality == Quality.CLOCK_JUMPED and rs[1].read_at_ms == T0 + 70_000
    assert rs[2].quality == Quality.CLOCK_UNSYNCED and not rs[2].clock_synced
    assert svc.clock_jumps == 1
    svc.store.close()


async def test_partial_and_out_of_range_instant_values(tmp_path: Path) -> None:
    svc = make_service(tmp_path)
    s = sample(0, 1000, power_w=2**31)
    s = Sample(**{**s.__dict__, "errors": ("block 2: timeout",)})
    await svc.on_sample(s)
    [r] = stored(svc)
    assert r.quality == Quality.PARTIAL and r.instant.power_w is None
    svc.store.close()


async def test_bad_energy_value_is_counted_not_fatal(tmp_path: Path) -> None:
    svc = make_service(tmp_path)
    await svc.on_sample(sample(0, -5))
    await svc.on_sample(sample(10, 2**64))
    assert stored(svc) == [] and svc.devices["M1"].read_errors == 2
    await svc.on_sample(sample(20, 1000))
    assert [r.seq for r in stored(svc)] == [1]  # refused samples consumed no seq
    svc.store.close()


async def test_stop_reading_when_full_is_recorded_once(tmp_path: Path) -> None:
    svc = make_service(tmp_path, max_readings=100, overflow="stop_reading")
    for i in range(105):
        await svc.on_sample(sample(i, 1000 + i))
    assert svc.store.count() == 100 and svc.skipped_full == 5
    assert [e[1] for e in svc.store.events()].count("overflow_stop_reading") == 1
    assert svc.health()["queue"]["full"] is True
    svc.store.close()


@pytest.mark.parametrize("overflow", ["drop_oldest"])
async def test_health_snapshot_shape(tmp_path: Path, overflow: str) -> None:
    svc = make_service(tmp_path, overflow=overflow)
    await svc.on_sample(sample(0, 1000))
    h = svc.health()
    assert h["queue"]["depth"] == 1 and h["queue"]["per_meter"] == {"M1": 1}
    assert h["last_read_ms"] == T0 and h["clock"]["synced"] is True
    assert h["devices"]["M1"]["stored"] == 1 and h["mqtt"]["connected"] is False
    assert h["status"] == "degraded"  # not connected to a broker
    svc.store.close()


async def test_counter_reset_after_meter_replacement(tmp_path: Path) -> None:
    svc = make_service(tmp_path)
    await svc.on_sample(sample(0, 1_000_000))
    svc.store.close()
    svc = make_service(tmp_path)
    svc.store.request_counter_reset("M1", "meter replaced by installer")
    svc.store.close()
    svc = make_service(tmp_path)  # takes effect at start
    await svc.on_sample(sample(10, 12))  # the new meter: far below the old counters
    await svc.on_sample(sample(20, 13))
    rs = stored(svc)
    assert [(r.seq, r.quality) for r in rs] == [(1, Quality.NONE), (2, Quality.COUNTER_RESET), (3, Quality.NONE)]
    assert svc.store.pending_counter_resets() == set()
    assert "counter_reset_requested" in [e[1] for e in svc.store.events()]
    svc.store.close()
    svc = make_service(tmp_path)
    await svc.on_sample(sample(30, 14))
    assert stored(svc)[-1].quality == Quality.NONE  # baseline is the new meter's
    svc.store.close()


async def test_watchdog_withheld_once_the_publisher_task_died(tmp_path: Path) -> None:
    """A publisher task that ended (any exception) left the agent reading and storing with nothing published,
    while the watchdog kept being pinged: systemd never restarted it."""
    import asyncio

    svc = make_service(tmp_path)
    sent: list[str] = []

    class Notifier:
        def send(self, state: str) -> None:
            sent.append(state)
            svc.request_stop()

    async def dies() -> None:
        raise RuntimeError("publisher crashed")

    svc._publisher_task = asyncio.create_task(dies())
    await asyncio.gather(svc._publisher_task, return_exceptions=True)
    stopper = asyncio.get_running_loop().call_later(0.3, svc.request_stop)
    await svc._watchdog_loop(Notifier(), 0.05)  # type: ignore[arg-type]
    stopper.cancel()
    assert sent == []
    svc._publisher_task = None
    svc._stop.clear()
    await svc._watchdog_loop(Notifier(), 0.05)  # type: ignore[arg-type]
    assert sent == ["WATCHDOG=1"]
    svc.store.close()


async def test_failing_commits_make_health_degraded_then_recover(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A store that cannot commit (disk full) was logged on every flush but /health still said ok."""
    from agent.store import StoreError

    svc = make_service(tmp_path)
    svc.publisher.stats.connected = True  # health's other conditions hold; only the store matters here
    real_flush = svc.store.flush
    monkeypatch.setattr(svc.store, "flush", lambda: (_ for _ in ()).throw(StoreError("disk I/O error")))
    await svc.on_sample(sample(0, 1000))  # type: ignore[arg-type]
    h = svc.health()
    assert h["status"] == "degraded" and h["queue"]["commit_error"] == "disk I/O error"
    assert h["queue"]["pending_commit"] == 1
    monkeypatch.setattr(svc.store, "flush", real_flush)
    await svc.on_sample(sample(10, 1010))  # type: ignore[arg-type]
    h = svc.health()
    assert h["status"] == "ok" and h["queue"]["commit_error"] == "" and h["queue"]["depth"] == 2
    svc.store.close()
