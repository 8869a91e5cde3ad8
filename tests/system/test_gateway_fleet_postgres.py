"""Several gateway processes on one share group (real mosquitto) and one PostgreSQL store (a fresh database in the
session's throwaway cluster made with initdb: tests/conftest.py pg_dsn), submitting to the local chain (LiteSVM
behind JSON-RPC); meters are lightweight publishers that sign real readings and re-send what is not acked, as the
agent does (testbed/gateway_fleet.py).

Checked whichever gateway receives a batch, with one gateway killed -9 mid-stream or the submitter's gateway
killed -9: every honest reading accepted exactly once (seqs 1..N per meter, no gap left, no rejection), acks
exact (each meter's final ack is its last seq; no ack ever above a published seq; every ack verifies), on-chain
energy equal to the register movement per meter, 0 duplicate submissions (no failed transaction on chain; the
chain's reading count equals the confirmed intervals), and exactly one submitter at a time."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import psycopg
import pytest

from gateway.keys import create_key_file
from gateway.oracle import OracleClient
from gateway.oracle.authority_key import create_authority_key_file
from localchain.server import LocalChainServer
from testbed.broker import Broker
from testbed.gateway_fleet import Publishers, gateway_config, kill_gateway, register, start_gateway, stop_gateway
from tests.gateway_support import set_oracle_fields

pytestmark = pytest.mark.system

METERS = [f"FLEET-{i:02d}" for i in range(12)]
LEASE_LINE = "submitter lease taken"


def _logs(paths: list[Path]) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}" for p in paths if p.exists())


async def _wait(cond: object, timeout_s: float, what: str, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out: {what}\n{_logs(logs)}"
        await asyncio.sleep(0.2)


@pytest.mark.parametrize(("gateways", "kill"), [(2, None), (3, "other"), (2, "submitter")])
async def test_fleet_on_postgres(broker: Broker, pg_dsn: str, tmp_path: Path, gateways: int, kill: str | None
                                 ) -> None:
    authority = create_authority_key_file(tmp_path / "authority.json")
    gw_key = create_key_file(tmp_path / "gateway.key")
    srv = LocalChainServer(chain_bridge=authority.pubkey())
    await srv.start()
    set_oracle_fields(srv, min_reading_interval=2)
    names = [f"gw-{i}" for i in range(1, gateways + 1)]
    logs = [tmp_path / f"{n}.log" for n in names]
    procs = {}
    register(pg_dsn, METERS)  # the fleet's one registry, in PostgreSQL
    for n, log in zip(names, logs, strict=True):
        cfg = gateway_config(tmp_path, n, broker_port=broker.port, dsn=pg_dsn, rpc_url=srv.url,
                             program_id=str(srv.chain.program_id), authority_file=tmp_path / "authority.json",
                             ack_key_file=tmp_path / "gateway.key")
        procs[n] = start_gateway(cfg, log)
    pub = Publishers(broker.host, broker.port, METERS, gw_key.public_key)
    client = OracleClient(srv.url, str(srv.chain.program_id), authority)
    try:
        await _wait(lambda: all("gateway running" in p.read_text(errors="replace") for p in logs if p.exists())
                    and all(p.exists() for p in logs), 60, "every gateway running", logs)
        await _wait(lambda: sum(LEASE_LINE in p.read_text(errors="replace") for p in logs) == 1, 30,
                    "one submitter", logs)
        submitter = next(n for n, p in zip(names, logs, strict=True) if LEASE_LINE in p.read_text(errors="replace"))
        victim = {"submitter": submitter, "other": next(n for n in names if n != submitter), None: None}[kill]
        t_kill = None
        for k in range(40):  # 10 s of energy at 4 rounds a second, 1-3 Wh per reading
            pub.publish_round(1 + k % 3)
            if victim is not None and k == 16:
                kill_gateway(procs[victim])
                t_kill = time.monotonic()
            pub.resend_unacked()
            await asyncio.sleep(0.25)
        for n, p in procs.items():
            assert n == victim or p.poll() is None, _logs(logs)
        if kill == "submitter":  # a standby took the lease within seconds
            await _wait(lambda: sum(LEASE_LINE in p.read_text(errors="replace") for p in logs) == 2, 15,
                        "another gateway took the submitter lease", logs)
            assert t_kill is not None and time.monotonic() - t_kill < 15
        expected = pub.movement()
        assert all(v >= 40 for v in expected.values()), expected
        totals: dict[str, int] = {}
        deadline = time.monotonic() + 120
        while not (pub.all_acked() and totals == expected):  # zero-energy readings close the last intervals
            assert time.monotonic() < deadline, f"chain {totals} != {expected}, acked {pub.all_acked()}\n{_logs(logs)}"
            pub.publish_round(0)
            pub.resend_unacked()
            await asyncio.sleep(0.5)
            states = await client.fetch_meter_states(METERS)
            totals = {m: s.total_energy_consumed for m, s in states.items() if s is not None}
        states = await client.fetch_meter_states(METERS)
        with psycopg.connect(pg_dsn) as db:
            accepted = dict(db.execute("SELECT meter_id, array_agg(seq ORDER BY seq) FROM readings "
                                       "WHERE status = 'accepted' GROUP BY meter_id").fetchall())
            for m in METERS:
                assert accepted[m] == list(range(1, pub.meters[m].seq + 1)), m  # every seq once, none missing
            assert db.execute("SELECT COUNT(*) FROM gaps").fetchone()[0] == 0
            assert db.execute("SELECT COUNT(*) FROM rejections").fetchone()[0] == 0
            confirmed = dict(db.execute("SELECT meter_id, COUNT(*) FROM outbox WHERE status = 'confirmed' "
                                        "GROUP BY meter_id").fetchall())
            other = db.execute("SELECT status, reason, COUNT(*) FROM outbox WHERE status NOT IN "
                               "('confirmed', 'pending') GROUP BY 1, 2").fetchall()
        assert other == []
        for m in METERS:  # the chain counted each confirmed interval once: no interval submitted twice
            assert states[m] is not None and states[m].total_readings == confirmed[m], m
        failed = [r.signature for r in srv.chain.history.values() if r.err is not None]
        assert failed == []
        assert pub.bad_acks == 0 and pub.over_acks == 0
        assert all(m.acked == m.seq for m in pub.meters.values())
    finally:
        pub.close()
        await client.close()
        for n, p in procs.items():
            if n != victim:
                rc = stop_gateway(p)
                assert rc == 0 or p.returncode == 0, _logs(logs)
            else:
                with contextlib.suppress(Exception):
                    kill_gateway(p)
        await srv.stop()
