"""The submitter starts a cycle when the intake commits readings, not only on its timer (issue 11's latency):
a reading that closes an interval is on chain long before a one-hour cycle interval would have sent it; a
wake-up with nothing to close makes no RPC at all; on PostgreSQL, readings another gateway committed wake it
through LISTEN/NOTIFY (gateway/store/notices.py), a burst of commits sending one notice."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from solders.keypair import Keypair

from gateway.intake.acceptance import Acceptance, IngressLimit
from gateway.intake.checks import Limits
from gateway.metrics import Metrics
from gateway.oracle import MeterState, OracleClient, OracleConfig, Submission, SubmitResult
from gateway.store.notices import ReadingNotices, ReadingNotifier
from gateway.store.registry import Registry
from gateway.store.sqlite import Store
from gateway.submit.submitter import Submitter
from localchain.server import LocalChainServer
from protocol.topics import readings_topic
from tests.gateway_support import batch, reading, record_for

pytestmark = pytest.mark.integration

EPOCH_S = 60
HOUR_S = 3600.0


class CountingClient:
    """The real OracleClient, counting the RPC-backed calls the submitter makes."""

    def __init__(self, inner: OracleClient) -> None:
        self.inner, self.calls = inner, 0
        self.stats = inner.stats

    async def fetch_config(self) -> OracleConfig:
        self.calls += 1
        return await self.inner.fetch_config()

    async def fetch_meter_states(self, meter_ids: Sequence[str]) -> dict[str, MeterState | None]:
        self.calls += 1
        return await self.inner.fetch_meter_states(meter_ids)

    async def fetch_chain_time(self) -> int:
        self.calls += 1
        return await self.inner.fetch_chain_time()

    async def submit(self, subs: Sequence[Submission]) -> list[SubmitResult]:
        self.calls += 1
        return await self.inner.submit(subs)


@pytest.fixture
async def chain() -> AsyncIterator[tuple[LocalChainServer, OracleClient]]:
    authority = Keypair()
    async with LocalChainServer(chain_bridge=authority.pubkey()) as srv:
        from tests.gateway_support import set_oracle_fields

        set_oracle_fields(srv, min_reading_interval=EPOCH_S)
        async with OracleClient(srv.url, str(srv.chain.program_id), authority, poll_s=0.05) as client:
            yield srv, client


def _msg(meter_id: str, seq: int, read_at_ms: int, imp: int) -> tuple[str, bytes]:
    return readings_topic(meter_id), batch(reading(meter_id, seq, read_at_ms, imp))


async def _until(cond: object, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.05)
    return False


async def test_a_closing_reading_wakes_the_submitter(tmp_path: Path,
                                                     chain: tuple[LocalChainServer, OracleClient]) -> None:
    _srv, client = chain
    store, registry = Store(tmp_path / "g.sqlite"), Registry(tmp_path / "r.sqlite")
    pool = ThreadPoolExecutor(1)
    try:
        now_ms = int(time.time() * 1000)
        registry.add(record_for("WAKE-1", rated_w=20_000), now_ms)
        acc = Acceptance(store, registry, Limits(), IngressLimit(), Metrics(), pool)
        first = (now_ms // 1000 // EPOCH_S - 3) * EPOCH_S * 1000 + 1_000  # three epochs ago: the baseline
        acc.process([_msg("WAKE-1", 1, first, 1_000)])
        counting = CountingClient(client)
        sub = Submitter(store, registry, counting, Metrics(), epoch_s=EPOCH_S, authority=str(client.authority.pubkey()))
        stop = asyncio.Event()
        task = asyncio.create_task(sub.run(stop, HOUR_S))  # its timer alone would wait an hour
        try:
            assert await _until(lambda: sub.sleeping and store.meters_to_plan(EPOCH_S) == [], 30)  # baseline
            # a reading in the same epoch as the baseline closes nothing: the woken cycle ends without any RPC
            calls = counting.calls
            acc.process([_msg("WAKE-1", 2, first + 10_000, 1_004)])
            sub.wake()
            assert await _until(lambda: sub.profile.woken == 1 and sub.sleeping, 30)
            assert sub.profile.cycles == 2
            assert counting.calls == calls
            assert store.outbox_rows("WAKE-1") == []
            # the next epoch's reading closes the interval (7 Wh): on chain within seconds, not an hour
            acc.process([_msg("WAKE-1", 3, first + EPOCH_S * 1000, 1_007)])
            sub.wake()
            assert await _until(lambda: [r.status for r in store.outbox_rows("WAKE-1")] == ["confirmed"], 60)
            state = (await client.fetch_meter_states(["WAKE-1"]))["WAKE-1"]
            assert state is not None and state.total_energy_produced + state.total_energy_consumed == 7
            assert state.total_readings == 1
            assert store.outbox_rows("WAKE-1")[0].reading_timestamp == (first + EPOCH_S * 1000) // 1000  # seq 3's
        finally:
            stop.set()
            await task
    finally:
        pool.shutdown()
        store.close()
        registry.close()


def test_a_gateways_notice_wakes_the_others(pg_dsn: str) -> None:
    """Gateway A's notifier (called after each committed batch) is heard by gateway B's listener; notices closer
    together than the notifier's minimum gap are one. Notices arrive in the order they were sent, so once the
    last one is in, an extra one from the burst would have been too."""
    heard: list[float] = []
    got = threading.Event()

    def on_notice() -> None:
        heard.append(time.monotonic())
        got.set()

    listener = ReadingNotices(pg_dsn, on_notice).start()
    notifier = ReadingNotifier(pg_dsn, min_gap_s=5.0)
    try:
        assert listener.wait_listening(30)
        for _ in range(5):  # one burst of committed batches: one notice
            notifier.notify()
        assert got.wait(30)
        got.clear()
        notifier.min_gap_s = 0.0
        notifier.notify()
        assert got.wait(30)
        time.sleep(0.2)
        assert len(heard) == 2 == listener.received == notifier.sent
    finally:
        notifier.close()
        listener.close()
