"""`python -m bench drain --json`: backlog drain of buffered readings through a real mosquitto.

100,000 signed readings are committed to the agent's SQLite store first (as after a long outage), then the
agent's publisher drains them to a real mosquitto while testbed.acker verifies every signature and sends
signed acks; the clock runs from the first publish attempt until the store is empty (every reading
acked and deleted). Key figure: readings_per_s (target >= 5,000).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.config import MqttSection
from agent.publisher import Publisher
from agent.store import Store
from protocol.canonical import sign_reading
from protocol.reading import Instantaneous, Reading
from protocol.signing import SigningKey, VerifyKey
from testbed.acker import Acker
from testbed.broker import Broker

DEFAULT_READINGS = 100_000
DEFAULT_METERS = 4
TARGET_READINGS_PER_S = 5_000


def _bounded(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = lo - 1
        if not lo <= n <= hi:
            raise argparse.ArgumentTypeError(f"must be a whole number in {lo}..{hi} (got {text!r})")
        return n
    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--readings", type=_bounded(1, 10_000_000), default=DEFAULT_READINGS)
    p.add_argument("--meters", type=_bounded(1, 1000), default=DEFAULT_METERS)
    p.add_argument("--batch-max", type=_bounded(1, 1000), default=500)  # agent config bounds batch_max the same
    p.add_argument("--inflight", type=_bounded(1, 1000), default=64)


def _fill(store: Store, keys: dict[str, SigningKey], total: int) -> None:
    per_meter = total // len(keys)
    t0 = 1_700_000_000_000
    inst = Instantaneous(power_w=1234, voltage_l1_dv=2301, current_l1_ma=5360, frequency_mhz=50010)
    for i in range(per_meter):
        for meter, key in keys.items():
            seq = store.allocate_seq(meter)
            r = Reading(meter_id=meter, key_id=key.key_id, seq=seq, read_at_ms=t0 + i * 10_000, clock_synced=True,
                        energy_import_wh=10_000_000 + i * 3, energy_export_wh=i, profile_id="eastron-sdm630",
                        instant=inst)
            store.append(sign_reading(r, key))
        if i % 1000 == 999:
            store.flush()
    store.flush()


async def _drain(store: Store, pub: Publisher, total: int) -> float:
    task = asyncio.create_task(pub.run())
    t0 = time.perf_counter()
    deadline = time.monotonic() + 600
    while store.count() > 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"drain incomplete after 600 s: {store.count()} of {total} left")
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - t0
    await pub.stop()
    await task
    return elapsed


def run(args: argparse.Namespace) -> dict[str, Any]:
    total = getattr(args, "readings", DEFAULT_READINGS)
    meters = getattr(args, "meters", DEFAULT_METERS)
    batch_max = getattr(args, "batch_max", 500)
    inflight = getattr(args, "inflight", 64)
    if total < meters:
        raise SystemExit(f"bench drain: --readings ({total}) must be at least --meters ({meters})")
    keys = {f"BENCH-{i}": SigningKey.generate() for i in range(meters)}
    gateway = SigningKey.generate()
    with tempfile.TemporaryDirectory(prefix="gridmeter-bench-drain-") as tmp, Broker(workdir=Path(tmp) / "b") as broker:
        store = Store(Path(tmp) / "agent.sqlite", max_readings=max(total * 2, 1000))
        _fill(store, keys, total)
        buffered = store.count()
        cfg = MqttSection(gateway_public_key=gateway.public_key, host=broker.host, port=broker.port,
                          client_id="bench-agent", batch_max=batch_max, inflight_max=inflight, ack_timeout_s=60)
        pub = Publisher(cfg, list(keys), store, VerifyKey(gateway.public_key))
        verify = {m: VerifyKey(k.public_key) for m, k in keys.items()}
        with Acker(broker.host, broker.port, gateway, verify) as acker:
            elapsed = asyncio.run(_drain(store, pub, buffered))
            stats = acker.stats
            complete = all(acker.contiguous.get(m) == buffered // meters for m in keys)
        store.close()
    rate = buffered / elapsed
    return {
        "bench": "drain",
        "readings": buffered,
        "meters": meters,
        "batch_max": batch_max,
        "inflight_max": inflight,
        "seconds": round(elapsed, 3),
        "readings_per_s": round(rate),
        "target_readings_per_s": TARGET_READINGS_PER_S,
        "meets_target": rate >= TARGET_READINGS_PER_S,
        "verified_readings": stats.readings,
        "duplicates": stats.duplicates,
        "bad_signatures": stats.bad_signatures,
        "acks": stats.acks_sent,
        "all_contiguous": complete,
        "resends": pub.stats.resends,
    }
