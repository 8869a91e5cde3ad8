"""`python -m bench gateway --json`: gateway intake throughput through a real mosquitto + transaction packing.

1. verify_per_s_per_core: single-thread PyNaCl Ed25519 verify rate (protocol.signing), measured in this run.
2. readings_per_s: a separate publisher process sends pre-signed batches (500 readings per message, many
   meters) to a real mosquitto as fast as it can; the gateway intake (paho, shared subscription, verify
   worker processes, checks, one SQLite WAL commit per group, signed acks) processes them. The clock runs from
   the first publish until every reading is committed as accepted. ratio = readings_per_s /
   (verify_per_s_per_core x cores); target >= 0.6.
3. readings_per_tx: the submitter sends one interval submission for each of many meters to the local chain
   (LiteSVM behind JSON-RPC); mean submit instructions per landed transaction. max_readings_per_tx is
   computed from the wire format with lookup tables (gateway.oracle.packing.max_submits_per_tx) for the same meter
   ids; tx_fill = readings_per_tx / max_readings_per_tx, target >= 0.9.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway.config import MqttSection
from gateway.intake.acceptance import Acceptance, IngressLimit
from gateway.intake.checks import Limits
from gateway.intake.mqtt import Intake
from gateway.intake.signatures import verify_pool
from gateway.metrics import Metrics
from gateway.store.registry import Registry
from gateway.store.sqlite import Store
from gateway.submit.intervals import Planned, PlanState
from protocol import (
    Instantaneous,
    MeterRole,
    Reading,
    Registration,
    SigningKey,
    VerifyKey,
    encode_batch,
    sign_reading,
    sign_registration,
)
from protocol.topics import readings_topic
from testbed.broker import Broker

DEFAULT_METERS = 50
DEFAULT_READINGS = 60_000
DEFAULT_BATCH = 500
DEFAULT_TX_METERS = 300
DEFAULT_VERIFY_SECONDS = 2.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--meters", type=int, default=DEFAULT_METERS)
    p.add_argument("--readings", type=int, default=DEFAULT_READINGS)
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH)
    p.add_argument("--tx-meters", type=int, default=DEFAULT_TX_METERS)
    p.add_argument("--skip-chain", action="store_true")


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def verify_rate(seconds: float = DEFAULT_VERIFY_SECONDS) -> float:
    key = SigningKey.generate()
    vk = VerifyKey(key.public_key)
    msgs = [os.urandom(150) for _ in range(256)]
    sigs = [key.sign(m) for m in msgs]
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for m, s in zip(msgs, sigs, strict=True):
            vk.verify(m, s)
        n += len(msgs)
    return n / (time.perf_counter() - t0)


def _keys(n: int) -> dict[str, SigningKey]:
    return {f"BENCH-{i:04d}": SigningKey(i.to_bytes(4, "big") * 8) for i in range(n)}


def _messages(keys: dict[str, SigningKey], total: int, batch: int) -> list[tuple[str, bytes]]:
    per_meter = total // len(keys)
    t0 = int(time.time() * 1000) - per_meter * 1000 - 60_000
    inst = Instantaneous(power_w=1234, voltage_l1_dv=2301, current_l1_ma=5360, frequency_mhz=50010)
    out = []
    for mid, key in keys.items():
        signed = [sign_reading(Reading(mid, key.key_id, s + 1, t0 + s * 1000, True, 10_000 + s, s // 4,
                                       "eastron-sdm630", instant=inst), key) for s in range(per_meter)]
        out += [(readings_topic(mid), encode_batch(signed[i : i + batch])) for i in range(0, per_meter, batch)]
    out.sort(key=lambda m: m[1][20:60])  # interleave meters a little (stable per meter order by seq)
    return out


def _publish(port: int, messages: list[tuple[str, bytes]]) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-pub", protocol=MQTTProtocolVersion.MQTTv5)
    c.max_inflight_messages_set(64)
    c.connect("127.0.0.1", port)
    c.loop_start()
    infos = [c.publish(t, p, qos=1) for t, p in messages]
    for i in infos:
        i.wait_for_publish(120)
    c.disconnect()
    c.loop_stop()


def intake_throughput(work: Path, n_meters: int, n_readings: int, batch: int, n_cores: int) -> dict[str, Any]:
    keys = _keys(n_meters)
    messages = _messages(keys, n_readings, batch)
    total = sum(len(p) for _, p in messages) and (n_readings // n_meters) * n_meters
    registry = Registry(work / "registry.sqlite")
    for mid, key in keys.items():
        reg = Registration(mid, key.public_key, "eastron-sdm630", "SN", MeterRole.GRID, 1, 30_000, "bench", 1)
        registry.add(sign_registration(reg, key).to_text(), 0)
    store, metrics = Store(work / "gateway.sqlite"), Metrics()
    pool = verify_pool(n_cores)
    acc = Acceptance(store, registry, Limits(), IngressLimit(1e6, 10**7), metrics, pool)
    with Broker(workdir=work / "broker") as broker:
        intake = Intake(MqttSection(port=broker.port, client_id="bench-gw", max_pending_messages=64), acc,
                        SigningKey.generate(), metrics)
        intake.start()
        intake.wait_ready()
        ctx = multiprocessing.get_context("fork")
        pub = ctx.Process(target=_publish, args=(broker.port, messages))
        t0 = time.perf_counter()
        pub.start()
        deadline = time.monotonic() + 600
        while (metrics.registry.get_sample_value("gridmeter_gateway_readings_accepted_total", {"source": "mqtt"})
               or 0) < total:
            if time.monotonic() > deadline:
                raise TimeoutError("gateway did not accept every reading within 600 s")
            time.sleep(0.01)
        elapsed = time.perf_counter() - t0
        pub.join(60)
        intake.stop()
    rejected = sum(s.value for m in metrics.registry.collect() if m.name == "gridmeter_gateway_readings_rejected"
                   for s in m.samples if s.name.endswith("_total"))
    pool.shutdown()
    store.close()
    registry.close()
    return {"readings": total, "messages": len(messages), "seconds": round(elapsed, 3),
            "readings_per_s": round(total / elapsed, 1), "rejected": rejected}


async def _packing(work: Path, n_meters: int) -> dict[str, Any]:
    from solders.keypair import Keypair

    from gateway.oracle import OracleClient
    from gateway.oracle.packing import max_submits_per_tx
    from gateway.submit.submitter import Submitter
    from localchain.server import LocalChainServer

    authority = Keypair()
    keys = {f"TX-{i:05d}": SigningKey((i + 7).to_bytes(4, "big") * 8) for i in range(n_meters)}
    registry, store = Registry(work / "tx-registry.sqlite"), Store(work / "tx-gateway.sqlite")
    for mid, key in keys.items():
        reg = Registration(mid, key.public_key, "p", "SN", MeterRole.GRID, 1, 30_000, "bench", 1)
        registry.add(sign_registration(reg, key).to_text(), 0)
    ts = int(time.time()) - 3600
    for mid in keys:
        store.save_plan(mid, PlanState(), [Planned(mid, 7, 30, ts, 2)], 1, 0)
    async with LocalChainServer(chain_bridge=authority.pubkey()) as srv:
        client = OracleClient(srv.url, str(srv.chain.program_id), authority, poll_s=0.05)
        try:
            sub = Submitter(store, registry, client, Metrics(), epoch_s=900)
            t0 = time.perf_counter()
            await sub.run_once()
            elapsed = time.perf_counter() - t0
        finally:
            await client.close()
    rows = store.outbox_rows(limit=n_meters + 10)
    per_tx: dict[str, int] = {}
    for r in rows:
        if r.status == "confirmed" and r.signature:
            per_tx[r.signature] = per_tx.get(r.signature, 0) + 1
    confirmed = sum(per_tx.values())
    store.close()
    registry.close()
    mean = confirmed / len(per_tx) if per_tx else 0.0
    best = max_submits_per_tx(list(keys))
    return {"submissions": n_meters, "confirmed": confirmed, "transactions": len(per_tx),
            "failed_transactions": client.stats.get("failed_transactions", 0), "submit_seconds": round(elapsed, 3),
            "readings_per_tx": round(mean, 2), "max_readings_per_tx": best,
            "tx_fill": round(mean / best, 3) if best else 0.0}


def run(args: argparse.Namespace) -> dict[str, Any]:
    n_cores = cores()
    per_core = verify_rate()
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        work = Path(tmp)
        intake = intake_throughput(work, args.meters, args.readings, args.batch, n_cores)
        chain = {} if args.skip_chain else asyncio.run(_packing(work, args.tx_meters))
    out: dict[str, Any] = {
        "verify_per_s_per_core": round(per_core, 1), "cores": n_cores,
        **intake, "ratio": round(intake["readings_per_s"] / (per_core * n_cores), 3),
        "target_ratio": 0.6, "target_tx_fill": 0.9,
    }
    out.update(chain)
    return out
