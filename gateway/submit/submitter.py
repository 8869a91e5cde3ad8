"""Outbox -> oracle: plan intervals from accepted readings, reconcile with the chain, submit, record results.

One cycle (`run_once`):
1. read OracleData (thresholds, active flag, chain_bridge) — the planner's limits come from the chain;
2. plan: accepted readings not yet planned -> interval rows in the outbox (pending, or held with a reason);
3. reconcile: rows whose reading_timestamp <= the meter's on-chain last_reading_timestamp were sent
   before (e.g. a crash after sending, before recording). They are confirmed only if the chain's
   total_readings equals the gateway's confirmed count plus those rows; otherwise they are held with
   reason `reconcile_mismatch` for a person to look at (never resent, never silently counted);
4. mirror the oracle's checks on what is left (`intervals.oracle_verdict`, in order per meter), judging
   FutureReading by the CLUSTER's clock (the Clock sysvar, read once per cycle: a real cluster's clock drifts
   from wall time) less DEFAULT_FUTURE_MARGIN_S; FutureReading waits, any other failure holds the row with the
   oracle's error name;
5. mark `sent` (durable) BEFORE the RPC, submit, record confirmed / rejected / retry. A `sent` row whose
   result never got recorded is due again only after DEFAULT_SENT_RECHECK_S (its blockhash has expired by
   then), and goes through step 3 first.
RPC failures back off exponentially (capped); rows are never lost: they stay pending or sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import Protocol

from gateway.metrics import Metrics
from gateway.oracle import MeterState, OracleConfig, Submission, SubmitResult
from gateway.registry import MeterStatus
from gateway.store.api import GatewayStore
from gateway.store.outbox import OutboxRow, OutboxStatus
from gateway.store.records import MeterPlan
from gateway.store.registry import Registry
from gateway.submit.intervals import OracleLimits, oracle_verdict, plan, plan_http
from gateway.submit.profile import CycleProfile
from oracle_interface.layout import FUTURE_SKEW_S

log = logging.getLogger(__name__)

DEFAULT_FIRST_BACKOFF_S = 1.0
DEFAULT_MAX_ROWS_PER_CYCLE = 5000  # bounds one cycle's RPC work; the rest follows in the next cycle
DEFAULT_SENT_SCAN = 20_000  # `sent` rows read in one query per cycle (more: read per meter)
# The oracle allows reading_timestamp up to its clock + 60 s (oracle_interface.layout.FUTURE_SKEW_S); a row is
# sent only within 60 - 5 s of the cluster clock read at the start of the cycle (the cycle takes time, and the
# bank that executes the transaction may lag the one that answered), else it waits for the cluster clock.
DEFAULT_FUTURE_MARGIN_S = 5
# A row marked `sent` whose result was never recorded (RPC dropped mid-submit, crash) is looked at again only
# after this long: a transaction's blockhash expires after 150 slots (~60-90 s), so by then the lost
# transaction has either landed (reconciled as confirmed) or can never land. Resending earlier races it: the
# resend fails with OutdatedReading, is recorded `rejected` although the energy is on chain, and every later
# reconcile of that meter then sees a count mismatch.
DEFAULT_SENT_RECHECK_S = 120
# A GridTokenX HTTP client that stopped posting leaves its last interval open: once that interval's epoch is
# over and no reading came for this long, it is closed without waiting for a next reading (intervals.close_idle).
# The gateway sets it from http.idle_close_s (default 60 s = four missed readings of a client posting every
# 15 s; a client catching up on old readings posts faster than that, so its back-filled readings are still
# binned per epoch).
DEFAULT_HTTP_IDLE_CLOSE_S = 60
# Readings of one meter planned per cycle (a backlog after a chain outage: ~17 days of 15-s readings); the idle
# close waits until a meter's backlog is all planned.
DEFAULT_HTTP_PLAN_CHUNK = 100_000


class ChainNotReady(RuntimeError):
    """The chain answers but submissions cannot work (reason: not_chain_bridge, oracle_inactive)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class OracleLike(Protocol):
    """What the submitter needs from gateway.oracle.OracleClient (a wrapper in tests)."""

    async def fetch_config(self) -> OracleConfig: ...
    async def fetch_meter_states(self, meter_ids: Sequence[str]) -> dict[str, MeterState | None]: ...
    async def fetch_chain_time(self) -> int: ...
    async def submit(self, subs: Sequence[Submission]) -> list[SubmitResult]: ...


class Submitter:
    def __init__(self, store: GatewayStore, registry: Registry, client: OracleLike, metrics: Metrics, *, epoch_s: int,
                 authority: str | None = None, max_backoff_s: float = 60.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.registry, self.client, self.metrics = store, registry, client, metrics
        self.epoch_s, self.authority, self.max_backoff_s = epoch_s, authority, max_backoff_s
        self.clock = clock
        self.on_cycle: Callable[[], None] | None = None  # e.g. persist the client's lookup tables
        self.backoff_s = 0.0
        self.limits: OracleLimits | None = None
        self.last_error: str | None = None
        self.http_idle_close_s = DEFAULT_HTTP_IDLE_CLOSE_S
        self.sent_recheck_s: float = DEFAULT_SENT_RECHECK_S
        # Several gateways on one PostgreSQL store: a cycle runs only while this says True
        # (gateway.store.postgres.SubmitterLease); None: the only submitter (SQLite, one box).
        self.lease: Callable[[], bool] | None = None
        self.profile = CycleProfile()
        self._cycle_states: dict[str, MeterState | None] = {}
        # Set (from any thread, through wake()) when the intake committed a reading: the next cycle starts at
        # once instead of after the cycle interval, so an interval-closing reading is planned and sent within
        # one cycle of its commit. The interval stays the upper bound (HTTP idle close, retries, other hosts).
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._woken = False  # the cycle about to run was started by wake()
        self.sleeping = False  # between cycles
        metrics.chain.start(epoch_s)

    def wake(self) -> None:
        """Start the next cycle now (thread-safe; a no-op before run() started)."""
        loop, ev = self._loop, self._wake
        if loop is None or ev is None or loop.is_closed():
            return
        try:
            if asyncio.get_running_loop() is loop:
                ev.set()
                return
        except RuntimeError:
            pass
        loop.call_soon_threadsafe(ev.set)

    async def _sleep(self, stop: asyncio.Event, delay_s: float, *, wakeable: bool) -> None:
        """Until stop, the delay, or (wakeable) a wake-up. A wake-up during a cycle starts the next one at once."""
        assert self._wake is not None
        with self.profile.phase("wait"):
            waits = [asyncio.ensure_future(stop.wait())]
            if wakeable:
                waits.append(asyncio.ensure_future(self._wake.wait()))
            self.sleeping = True
            _done, pending = await asyncio.wait(waits, timeout=delay_s, return_when=asyncio.FIRST_COMPLETED)
            self.sleeping = False
            for f in pending:
                f.cancel()
            self._woken = wakeable and self._wake.is_set()
            self.profile.woken += self._woken
            self._wake.clear()

    async def run(self, stop: asyncio.Event, interval_s: float) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        while not stop.is_set():
            if self.lease is not None:
                with self.profile.phase("lease"):
                    held = await asyncio.to_thread(self.lease)
                if not held:  # standby: another gateway submits
                    await self._sleep(stop, interval_s, wakeable=False)
                    continue
            try:
                self.profile.cycles += 1
                stats = await self.run_once(woken=self._woken)
                if self.on_cycle is not None:
                    self.on_cycle()
                if stats.get("retry"):
                    self.metrics.chain.cycle_failed(self.last_error or "submissions not landed", "not_landed")
                else:
                    self.metrics.chain.cycle_ok()
            except Exception as exc:  # RPC down, chain not initialised: back off, keep the outbox
                self.metrics.chain.cycle_failed(exc)
                self._failed(f"{type(exc).__name__}: {exc}")
            self.profile.maybe_log(getattr(self.client, "stats", None))
            # backing off (RPC down): only the timer; else a committed reading starts the next cycle at once
            await self._sleep(stop, max(interval_s, self.backoff_s), wakeable=self.backoff_s == 0)
        if self.profile.cycles:
            self.profile.maybe_log(getattr(self.client, "stats", None), force=True)  # the whole run's totals

    def _failed(self, error: str) -> None:
        if error != self.last_error:
            log.error("submitter: %s", error)
        self.last_error = error
        self.backoff_s = min(self.max_backoff_s, max(DEFAULT_FIRST_BACKOFF_S, self.backoff_s * 2))

    async def run_once(self, *, woken: bool = False) -> dict[str, int]:
        """One cycle. woken (an intake commit started it): if no meter can close an interval and no row is due,
        it ends at once, without any RPC (the timer's cycles still check the chain, HTTP meters, retries)."""
        self._cycle_states = {}
        plan_ids = self.store.meters_to_plan(self.epoch_s)
        if woken and not plan_ids and self.limits is not None and self.last_error is None \
                and not self.store.outbox_due(int(self.clock() * 1000), 1):
            return {}
        with self.profile.phase("config"):
            cfg = await self.client.fetch_config()
        self.limits = OracleLimits.from_config(cfg)
        if self.authority is not None and str(cfg.chain_bridge) != self.authority:
            raise ChainNotReady("not_chain_bridge", f"this gateway's authority {self.authority} is not the oracle's "
                                f"chain_bridge {cfg.chain_bridge}: every submission would fail (UnauthorizedGateway)")
        if not self.limits.active:
            raise ChainNotReady("oracle_inactive", "the oracle is inactive (update_oracle_status): submissions wait")
        with self.profile.phase("plan"):
            await self._plan(self.limits, plan_ids)
            await self._plan_http(self.limits)
        stats = await self._submit_due(self.limits)
        if self.last_error is not None and not stats.get("retry"):
            log.info("submitter recovered")
            self.last_error = None
        if not stats.get("retry"):
            self.backoff_s = 0.0
        return stats

    async def _plan(self, limits: OracleLimits, meter_ids: list[str] | None = None) -> None:
        if meter_ids is None:
            meter_ids = self.store.meters_to_plan(self.epoch_s)
        if not meter_ids:
            return
        with self.profile.phase("plan_rpc"):
            states = await self._states(meter_ids)
        now_ms = int(self.clock() * 1000)
        plans: list[MeterPlan] = []
        inputs = self.store.plan_inputs_many(meter_ids)
        for mid in meter_ids:
            meter = self.registry.get(mid)
            if meter is None:
                continue
            state, points = inputs[mid]
            chain = states.get(mid)
            new_state, planned = plan(mid, meter.role, state, points, limits, self.epoch_s,
                                      chain.last_reading_timestamp if chain is not None else None)
            plans.append(MeterPlan(mid, new_state, planned, meter.zone_id))
        with self.profile.phase("plan_save"):
            self.store.save_plans(plans, now_ms)  # one commit for the cycle (one per meter held the intake back)

    async def _states(self, meter_ids: Sequence[str]) -> dict[str, MeterState | None]:
        """Chain states of these meters, read at most once per cycle (the planner and the due rows want the same
        meters; only this submitter writes them while it holds the lease, and it has sent nothing in between)."""
        missing = [m for m in meter_ids if m not in self._cycle_states]
        if missing:
            self._cycle_states.update(await self.client.fetch_meter_states(missing))
        return {m: self._cycle_states.get(m) for m in meter_ids}

    async def _plan_http(self, limits: OracleLimits) -> None:
        """GridTokenX ingest readings (interval energies in mWh) through the same planner (intervals.plan_http)."""
        now_ms = int(self.clock() * 1000)
        meter_ids = self.store.http_meters_to_plan(now_ms, self.http_idle_close_s * 1000, self.epoch_s)
        if not meter_ids:
            return
        states = await self.client.fetch_meter_states(meter_ids)
        for mid in meter_ids:
            meter = self.registry.get(mid)
            if meter is None:
                continue
            state, points, received_ms = self.store.http_plan_inputs(mid, DEFAULT_HTTP_PLAN_CHUNK)
            chain = states.get(mid)
            retired = meter.status is MeterStatus.RETIRED
            quiet = now_ms - received_ms >= self.http_idle_close_s * 1000 and len(points) < DEFAULT_HTTP_PLAN_CHUNK
            new_state, planned = plan_http(
                mid, meter.role, state, points, limits, self.epoch_s, now_ms // 1000, quiet=quiet, retired=retired,
                chain_last_ts=chain.last_reading_timestamp if chain is not None else None)
            if new_state != state or planned:
                self.store.save_http_plan(mid, new_state, planned, meter.zone_id, now_ms)

    async def _submit_due(self, limits: OracleLimits) -> dict[str, int]:
        with self.profile.phase("due"):
            to_send = await self._due(limits)
        if not to_send:
            return {}
        now_ms = int(self.clock() * 1000)
        self.store.set_outbox([r.key for r in to_send], OutboxStatus.SENT, now_ms, attempt=True,
                              next_attempt_ms=now_ms + int(self.sent_recheck_s * 1000))
        self.profile.rows += len(to_send)
        with self.profile.phase("submit"):
            results = await self.client.submit([Submission(
                key=r.key, meter_id=r.meter_id, produced_wh=r.produced_wh, consumed_wh=r.consumed_wh,
                reading_timestamp=r.reading_timestamp, zone_id=r.zone_id) for r in to_send])
        with self.profile.phase("record"):  # the outbox's updated_at_ms: when the results were known
            return self._record(results, int(self.clock() * 1000))

    async def _due(self, limits: OracleLimits) -> list[OutboxRow]:
        """Rows to send now, in order per meter: due, not behind an unresolved `sent` row, reconciled with the
        chain, and passing the oracle's checks (the others are held or wait, recorded here)."""
        now = self.clock()
        rows = self.store.outbox_due(int(now * 1000), DEFAULT_MAX_ROWS_PER_CYCLE)
        if not rows:
            return []
        by_meter: dict[str, list[OutboxRow]] = defaultdict(list)
        for r in rows:
            by_meter[r.meter_id].append(r)
        # A `sent` row not due yet (its transaction may still land) holds back the later rows of its meter: sent
        # first, they would land and put its timestamp below the chain's, so if it never landed (killed before
        # the RPC) it could never be sent and reconcile would hold it as a mismatch, its energy off chain.
        due = {r.key for r in rows}
        sent = self.store.outbox_rows(status=OutboxStatus.SENT, limit=DEFAULT_SENT_SCAN)  # one query, not per meter
        if len(sent) >= DEFAULT_SENT_SCAN:  # more in flight than one query returns: ask per meter
            sent = [r for mid in by_meter for r in self.store.outbox_rows(mid, OutboxStatus.SENT)]
        unresolved: dict[str, list[int]] = defaultdict(list)
        for r in sent:
            if r.key not in due and r.meter_id in by_meter:
                unresolved[r.meter_id].append(r.reading_timestamp)
        for mid, stamps in unresolved.items():
            by_meter[mid] = [r for r in by_meter[mid] if r.reading_timestamp < min(stamps)]
        states = await self._states([m for m, mrows in by_meter.items() if mrows])
        chain_now_s = await self.client.fetch_chain_time()
        to_send: list[OutboxRow] = []
        for mid, mrows in by_meter.items():
            if not mrows:
                continue
            meter = self.registry.get(mid)
            if meter is not None and meter.status is MeterStatus.RETIRED:
                mrows = self._hold_retired(mrows, int(now * 1000))
            to_send += self._prepare(mid, mrows, states.get(mid), limits, int(now), chain_now_s)
        return to_send

    def _prepare(self, mid: str, rows: list[OutboxRow], chain: MeterState | None, limits: OracleLimits,
                 now_s: int, chain_now_s: int) -> list[OutboxRow]:
        now_ms = now_s * 1000
        last_ts = chain.last_reading_timestamp if chain is not None else None
        landed = [r for r in rows if last_ts is not None and r.reading_timestamp <= last_ts]
        if landed and chain is not None:
            self._reconcile(mid, landed, chain, now_ms)
        out: list[OutboxRow] = []
        for r in rows:
            if r in landed:
                continue
            err = oracle_verdict(r.produced_wh, r.consumed_wh, r.reading_timestamp, last_ts, limits,
                                 chain_now_s=chain_now_s - DEFAULT_FUTURE_MARGIN_S)
            if err == "FutureReading":  # due when the cluster clock has caught up (it runs at about wall speed)
                ahead_s = r.reading_timestamp - (chain_now_s - DEFAULT_FUTURE_MARGIN_S + FUTURE_SKEW_S)
                self.store.set_outbox([r.key], OutboxStatus.PENDING, now_ms, next_attempt_ms=now_ms + ahead_s * 1000)
                break  # later rows of this meter must wait too (order)
            if err is not None:
                self.store.set_outbox([r.key], OutboxStatus.HELD, now_ms, reason=err)
                continue
            out.append(r)
            last_ts = r.reading_timestamp
        return out

    def _hold_retired(self, rows: list[OutboxRow], now_ms: int) -> list[OutboxRow]:
        """GridTokenX ingest rows of a retired meter not sent yet are held (`meter_retired`; the client sees it
        in the ingest's status endpoints). Rows already `sent` still go through reconciliation."""
        held = [r.key for r in rows if r.source == "http" and r.status is OutboxStatus.PENDING]
        if held:
            self.store.set_outbox(held, OutboxStatus.HELD, now_ms, reason="meter_retired")
        return [r for r in rows if r.key not in held]

    def _reconcile(self, mid: str, landed: list[OutboxRow], chain: MeterState, now_ms: int) -> None:
        confirmed = self.store.confirmed_count(mid)
        keys = [r.key for r in landed]
        if confirmed + len(landed) == chain.total_readings:
            self.store.set_outbox(keys, OutboxStatus.CONFIRMED, now_ms, reason="reconciled")
            self.metrics.submitted.inc(len(keys))
            self.metrics.chain.submitted(len(keys))
        else:
            reason = (f"reconcile_mismatch: chain has {chain.total_readings} readings up to "
                      f"{chain.last_reading_timestamp}, gateway expected {confirmed + len(landed)}")
            log.error("%s: %s", mid, reason)
            self.store.set_outbox(keys, OutboxStatus.HELD, now_ms, reason=reason)

    def _record(self, results: list[SubmitResult], now_ms: int) -> dict[str, int]:
        stats: Counter[str] = Counter()
        per_tx: Counter[str] = Counter()
        retry: list[str] = []
        confirmed: dict[str | None, list[str]] = defaultdict(list)  # by transaction: one commit each, not per row
        for res in results:
            stats[res.status] += 1
            if res.status == "confirmed":
                confirmed[res.signature].append(res.key)
                if res.signature:
                    per_tx[res.signature] += 1
            elif res.status == "rejected":
                log.error("oracle refused %s: %s", res.key, res.error)
                self.store.set_outbox([res.key], OutboxStatus.REJECTED, now_ms, reason=res.error)
                self.metrics.tx_failed.labels(res.error or "unknown").inc()
            else:
                retry.append(res.key)
        for sig, keys in confirmed.items():
            self.store.set_outbox(keys, OutboxStatus.CONFIRMED, now_ms, signature=sig)
        self.metrics.submitted.inc(stats["confirmed"])
        self.metrics.chain.submitted(stats["confirmed"])
        for n in per_tx.values():
            self.metrics.tx_sent.inc()
            self.metrics.readings_per_tx.observe(n)
        if retry:
            first = next(r for r in results if r.key == retry[0])
            self._failed(f"{len(retry)} submissions not landed: {first.error or 'no error given'}")
            self.store.set_outbox(retry, OutboxStatus.PENDING, now_ms,
                                  next_attempt_ms=now_ms + int(self.backoff_s * 1000))
        return dict(stats)
