"""`python -m bench ingest --json`: the GridTokenX HTTP ingest's accepted posts per second, SQLite vs PostgreSQL.

Real components: `gridmeter gateway run` process(es) with only the HTTP ingest on (no MQTT, no chain), a
throwaway PostgreSQL cluster (testbed/postgres.py), and one aiohttp client posting signed GridTokenX bodies
(fractional Wh, the signed net kWh as Rust's f64 Display) for --meters meters, --readings each, a minute apart,
--concurrency posts in flight. Three runs, same machine, same load, a fresh database each:
  sqlite_1 (one gateway, its SQLite file), postgres_1 (one gateway), postgres_2 (two gateways on one database,
  the client spreading meters over both as a load balancer would).
Each reports posts_per_s (accepted posts / wall time of the posting), p50_ms / p99_ms per post, refused (any
answer but 202: must be 0), and stored_exact (rows and mWh sums in the database equal what was posted).
Ratios, same run: postgres_vs_sqlite = posts_per_s(postgres_1) / posts_per_s(sqlite_1), scaling_1_to_2 =
posts_per_s(postgres_2) / posts_per_s(postgres_1). On a shared 2-core machine the client and every gateway share
the cores: read the ratios, not the absolute figures, and measure on the target hardware.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import base58

from gateway.intake.http import INGEST_PATH, rust_f64_display, signed_message
from gateway.keys import create_key_file
from testbed.gateway_fleet import meter_key, register, stop_gateway
from testbed.ports import free_port, wait_port
from testbed.postgres import PgCluster

log = logging.getLogger("bench.ingest")
API_KEY = "bench-ingest-api-key-000001"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--meters", type=int, default=200, help="meters (default 200)")
    p.add_argument("--readings", type=int, default=10, help="readings per meter, a minute apart (default 10)")
    p.add_argument("--concurrency", type=int, default=16, help="posts in flight (default 16)")


def _config(work: Path, name: str, dsn: str, port: int) -> Path:
    state = work / name
    state.mkdir(parents=True, exist_ok=True)
    cfg = state / "gateway.toml"
    dsn_line = f'postgres_dsn = "{dsn}"\n' if dsn else ""
    cfg.write_text(f"""[gateway]
state_dir = "{state}"
ack_key_file = "{work / 'gateway.key'}"
{dsn_line}[mqtt]
enabled = false
[chain]
enabled = false
[dashboard]
enabled = false
[http]
enabled = true
listen = "127.0.0.1:{port}"
api_keys = ["{API_KEY}"]
""")
    return cfg


def _body(meter_id: str, ts_s: int, import_mwh: int) -> bytes:
    kwh = -import_mwh / 1_000_000
    sig = base58.b58encode(meter_key(meter_id).sign(signed_message(meter_id, rust_f64_display(kwh), ts_s))).decode()
    wh = f"{import_mwh // 1000}.{import_mwh % 1000:03d}"
    ts = datetime.fromtimestamp(ts_s, UTC).isoformat()
    return (f'{{"protocol":"dlms","device_id":"{meter_id}","payload":{{"1.1.1.8.0.255":{wh},"1.1.2.8.0.255":0.000,'
            f'"kwh":{rust_f64_display(kwh)},"timestamp":"{ts}","signature":"{sig}"}}}}').encode()


async def _post_all(urls: list[str], meters: list[str], args: argparse.Namespace) -> dict[str, Any]:
    t0_s = int(time.time()) - args.readings * 60 - 60
    bodies = [[(m, _body(m, t0_s + 60 * k, 1000 * (k + 1) + 7 * i + 1)) for i, m in enumerate(meters)]
              for k in range(args.readings)]  # signed before the clock starts: the client's cost is the posting
    target = {m: urls[i % len(urls)] + INGEST_PATH for i, m in enumerate(meters)}
    latencies: list[float] = []
    refused: dict[int, int] = {}
    sem = asyncio.Semaphore(args.concurrency)
    conn = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=conn) as s:
        async def post(meter_id: str, body: bytes) -> None:
            async with sem:
                t = time.perf_counter()
                async with s.post(target[meter_id], data=body, headers={"X-API-KEY": API_KEY}) as r:
                    await r.read()
                    latencies.append(time.perf_counter() - t)
                    if r.status != 202:
                        refused[r.status] = refused.get(r.status, 0) + 1

        start = time.perf_counter()
        for round_ in bodies:  # a meter's readings in order: round k+1 after round k
            await asyncio.gather(*(post(m, b) for m, b in round_))
        wall = time.perf_counter() - start
    lat = sorted(latencies)
    posted = sum(len(r) for r in bodies)
    return {"posts": posted, "wall_s": round(wall, 3), "posts_per_s": round((posted - sum(refused.values())) / wall),
            "p50_ms": round(lat[len(lat) // 2] * 1000, 1), "p99_ms": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))]
                                                                               * 1000, 1),
            "refused": refused}


def _stored(db: str) -> tuple[int, int]:
    sql = "SELECT COUNT(*), COALESCE(SUM(import_mwh), 0) FROM http_ingest"
    if db.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(db) as c:
            row = c.execute(sql).fetchone()
    else:
        c2 = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            row = c2.execute(sql).fetchone()
        finally:
            c2.close()
    assert row is not None
    return int(row[0]), int(row[1])


async def _one(work: Path, name: str, gateways: int, dsn: str, args: argparse.Namespace) -> dict[str, Any]:
    meters = [f"ING-{i:05d}" for i in range(args.meters)]
    register(dsn or work / f"{name}-1" / "registry.sqlite", meters)
    procs: list[subprocess.Popen[bytes]] = []
    ports = []
    try:
        for g in range(1, gateways + 1):
            port = free_port()
            cfg = _config(work, f"{name}-{g}", dsn, port)
            with open(work / f"{name}-{g}.log", "ab") as f:
                procs.append(subprocess.Popen([sys.executable, "-m", "gridmeter.cli", "gateway", "run", "--config",
                                               str(cfg)], stdout=f, stderr=f, start_new_session=True))
            ports.append(port)
        for port in ports:
            wait_port(port, 60)
        result = await _post_all([f"http://127.0.0.1:{p}" for p in ports], meters, args)
    finally:
        for p in procs:
            stop_gateway(p)
    expected = (len(meters) * args.readings,
                sum(1000 * (k + 1) + 7 * i + 1 for k in range(args.readings) for i in range(len(meters))))
    result["stored_exact"] = _stored(dsn or str(work / f"{name}-1" / "gateway.sqlite")) == expected
    log.warning("ingest %s: %s", name, result)
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        work = Path(tmp)
        create_key_file(work / "gateway.key")
        out: dict[str, Any] = {"meters": args.meters, "readings_per_meter": args.readings,
                               "concurrency": args.concurrency}
        out["sqlite_1"] = asyncio.run(_one(work, "sqlite", 1, "", args))
        with PgCluster() as pg:
            out["postgres_1"] = asyncio.run(_one(work, "pg1", 1, pg.create_database("ingest_1"), args))
            out["postgres_2"] = asyncio.run(_one(work, "pg2", 2, pg.create_database("ingest_2"), args))
    out["postgres_vs_sqlite"] = round(out["postgres_1"]["posts_per_s"] / out["sqlite_1"]["posts_per_s"], 2)
    out["scaling_1_to_2"] = round(out["postgres_2"]["posts_per_s"] / out["postgres_1"]["posts_per_s"], 2)
    return out
