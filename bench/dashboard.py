"""`python -m bench dashboard --json`: the fleet view at fleet scale (issue 14: 10,000 meters within a second).

A gateway state directory with --meters registered meters (default 10,000), --reporting of them with
--readings readings each (half current, half stopped 2.5 min ago: late) is built through the real registry and
intake. Then, five times each, in this process:

- fleet_ms: the store's fleet_health (gateway/store/fleet.py) over all meters (every meter's state from SQLite:
  newest reading, one some seqs earlier, recent rejections), CPU and wall;
- api_ms: GET /api/meters (health recomputed: the dashboard's clock is moved past its cache period), with
  filtering, sorting and one page of 100, over HTTP from aiohttp's client, wall; and its Server-Timing CPU;
- reference_ms: reading the whole registry (Registry.snapshot) in the same run: the least any fleet view must do.

Figures are medians: ratio = fleet_ms / reference_ms (how many registry reads the health of the fleet costs);
target: api_cpu_ms < 1000 (the issue's "within a second", in CPU time, which load on the machine does not
inflate), ratio reported.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway.config import DashboardSection
from gateway.health import Thresholds
from gateway.intake.acceptance import Acceptance, IngressLimit
from gateway.intake.checks import Limits
from gateway.metrics import Metrics
from gateway.store.registry import Registry
from gateway.store.sqlite import Store
from gateway.web import DEFAULT_FLEET_CACHE_S, Dashboard
from protocol import (
    Instantaneous,
    MeterRole,
    Quality,
    Reading,
    Registration,
    SigningKey,
    encode_batch,
    sign_reading,
    sign_registration,
)
from protocol.topics import readings_topic

DEFAULT_METERS = 10_000
DEFAULT_REPORTING = 2_000
DEFAULT_READINGS = 3
ROUNDS = 5
TOKEN = "bench-dashboard-token-0123456789"
TARGET_API_CPU_MS = 1000.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--meters", type=int, default=DEFAULT_METERS)
    p.add_argument("--reporting", type=int, default=DEFAULT_REPORTING)
    p.add_argument("--readings", type=int, default=DEFAULT_READINGS)


def _key(i: int) -> SigningKey:
    return SigningKey((i + 1).to_bytes(32, "big"))


def _build(state: Path, n: int, reporting: int, per_meter: int, now_s: float) -> None:
    registry, store = Registry(state / "registry.sqlite"), Store(state / "gateway.sqlite")
    registry.conn.execute("PRAGMA synchronous=OFF")  # setup speed only
    now_ms = int(now_s * 1000)
    for i in range(n):
        k = _key(i)
        reg = Registration(f"M{i:05d}", k.public_key, "eastron-sdm630", f"SN-{i}", MeterRole.GRID, 1 + i % 50,
                           20_000, "bench", now_ms - 86_400_000, None)
        registry.add(sign_registration(reg, k, None).to_text(), now_ms)
    clock = [now_s]
    acc = Acceptance(store, registry, Limits(), IngressLimit(), Metrics(), clock=lambda: clock[0])
    for half, ago_s in ((range(0, reporting // 2), 0.0), (range(reporting // 2, reporting), 150.0)):
        clock[0] = now_s - ago_s
        end_ms = int(clock[0] * 1000) - 500
        msgs = []
        for i in half:
            k, mid = _key(i), f"M{i:05d}"
            readings = [sign_reading(Reading(mid, k.key_id, s, end_ms - (per_meter - s) * 10_000, True, 100 + s, 7,
                                             "eastron-sdm630", Quality.NONE, Instantaneous(power_w=500)), k)
                        for s in range(1, per_meter + 1)]
            msgs.append((readings_topic(mid), encode_batch(readings)))
        acc.process(msgs)
    store.close()
    registry.close()


def _timing(header: str) -> dict[str, float]:
    out = {}
    for part in header.split(","):
        name, _, rest = part.strip().partition(";dur=")
        if rest:
            out[name] = float(rest.split(";")[0])
    return out


async def _measure(state: Path, now_s: float) -> dict[str, Any]:
    import aiohttp
    from aiohttp.test_utils import TestServer

    t0 = time.monotonic()
    clock = [now_s]
    d = Dashboard(DashboardSection(token=TOKEN), state / "gateway.sqlite", state / "registry.sqlite", Metrics(),
                  clock=lambda: clock[0] + time.monotonic() - t0)
    srv = TestServer(d.app(), host="127.0.0.1")
    await srv.start_server()
    fleet_cpu, fleet_wall, ref_wall, api_wall, api_cpu = [], [], [], [], []
    try:
        meters = d.registry.snapshot()
        for _ in range(ROUNDS):
            w0 = time.perf_counter()
            d.registry.snapshot()
            ref_wall.append((time.perf_counter() - w0) * 1000)
            w0, c0 = time.perf_counter(), time.thread_time()
            rows = d.store.fleet_health(meters, int(clock[0] * 1000), Thresholds())
            fleet_wall.append((time.perf_counter() - w0) * 1000)
            fleet_cpu.append((time.thread_time() - c0) * 1000)
            assert len(rows) == len(meters)
        async with aiohttp.ClientSession() as s:
            for _ in range(ROUNDS):
                clock[0] += DEFAULT_FLEET_CACHE_S + 0.01  # past the cache period: the request recomputes
                w0 = time.perf_counter()
                async with s.get(srv.make_url("/api/meters"), params={"sort": "lag", "order": "desc"},
                                 headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                    doc = await r.json()
                    timing = _timing(r.headers["Server-Timing"])
                api_wall.append((time.perf_counter() - w0) * 1000)
                api_cpu.append(timing["requestcpu"])
        counts = doc["counts"]
    finally:
        await srv.close()
        d.close()
    med = statistics.median
    fleet_ms, ref_ms = med(fleet_wall), med(ref_wall)
    return {"meters": len(meters), "states": counts,
            "fleet_ms": round(fleet_ms, 1), "fleet_cpu_ms": round(med(fleet_cpu), 1),
            "reference_ms": round(ref_ms, 1), "ratio": round(fleet_ms / ref_ms, 2),
            "api_ms": round(med(api_wall), 1), "api_cpu_ms": round(med(api_cpu), 1),
            "target_api_cpu_ms": TARGET_API_CPU_MS, "within_target": med(api_cpu) < TARGET_API_CPU_MS}


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="gridmeter-bench-dashboard-") as tmp:
        state = Path(tmp)
        now_s = time.time()
        t0 = time.monotonic()
        _build(state, args.meters, min(args.reporting, args.meters), args.readings, now_s)
        build_s = time.monotonic() - t0
        result = asyncio.run(_measure(state, now_s + build_s))
        result["build_s"] = round(build_s, 1)
        return result
