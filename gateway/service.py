"""Wiring of one gateway process: MQTT intake (thread), HTTP ingest, dashboard, submitter; signals, sd_notify.

Each component has its own SQLite connection (the intake thread, the event loop's submitter, the
dashboard): sqlite3 connections are not shared between threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from aiohttp import web

from base.sd_notify import sd_notify
from gateway.config import ConfigError, GatewayConfig
from gateway.health import Thresholds
from gateway.intake.acceptance import Acceptance, IngressLimit
from gateway.intake.budgets import VerifyBudget
from gateway.intake.checks import Limits
from gateway.intake.http import HttpIngest
from gateway.intake.mqtt import Intake
from gateway.intake.signatures import verify_pool
from gateway.keys import load_key_file
from gateway.metrics import Metrics
from gateway.registry import open_registry, registry_path
from gateway.store.api import open_store
from gateway.store.registry import Registry
from gateway.store.retention import DEFAULT_PRUNE_INTERVAL_S
from gateway.store.sqlite import Store
from gateway.submit.submitter import Submitter
from gateway.web import Dashboard

log = logging.getLogger(__name__)

DEFAULT_WATCHDOG_FRACTION = 0.5  # ping systemd at half of WatchdogSec
DEFAULT_SUPERVISE_S = 1.0  # how often the background threads' liveness is checked
LAST_FAILURE_SETTING = "last_task_failure"  # settings row: the task failure that ended the previous run
EXIT_TASK_DIED = 1
# Client libraries that log one INFO line per request (httpx2, which solana-py uses: every JSON-RPC call, several
# per submitter cycle of 5 s): WARNING and up only, unless -vv asked for debug logging.
QUIET_LOGGERS = ("httpx", "httpx2", "httpcore", "httpcore2", "solana", "urllib3")


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line (journald / Loki): time (ISO 8601 UTC), level, logger, message[, exception]."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
               "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def configure_logging(log_format: str = "text") -> None:
    """Gateway logging: one line per event that matters; `json` for journald/Loki. Call after basicConfig."""
    root = logging.getLogger()
    if log_format == "json":
        for handler in root.handlers:
            handler.setFormatter(JsonLogFormatter())
    debug = root.getEffectiveLevel() <= logging.DEBUG
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.WARNING)


_Closable = TypeVar("_Closable", Store, Registry)


def limits_from(cfg: GatewayConfig) -> Limits:
    lim = cfg.limits
    return Limits(future_skew_ms=lim.future_skew_s * 1000, acceptance_window_ms=lim.acceptance_window_s * 1000,
                  min_read_spacing_ms=lim.min_read_spacing_ms, plausibility_margin_pct=lim.plausibility_margin_pct,
                  plausibility_slack_wh=lim.plausibility_slack_wh, gap_grace_ms=lim.gap_grace_s * 1000)


def server_tls(section: str, cert: str, key: str) -> ssl.SSLContext | None:
    """HTTPS server context from PEM files (None when not configured); an unusable pair is a ConfigError naming
    the section, raised at start."""
    if not cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{section}.tls_cert", f"cannot load the certificate {cert} with key {key} ({exc})") from exc
    return ctx


async def _site(app: web.Application, listen: str, ssl_context: object = None) -> web.AppRunner:
    host, _, port = listen.rpartition(":")
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, int(port), ssl_context=ssl_context).start()  # type: ignore[arg-type]
    return runner


def _warn_registry_file_left(path: Path, cfg: GatewayConfig) -> None:
    """A host moved to the fleet's registry (PostgreSQL) still has meters in its own file that the fleet's
    registry lacks: their readings are refused as unknown_meter until imported. Said once, at start."""
    local, fleet = Registry(path), open_registry(cfg)
    try:
        missing = sorted(set(local.snapshot()) - set(fleet.snapshot()))
    finally:
        local.close()
        fleet.close()
    if missing:
        log.warning("%d meter(s) of %s are not in the fleet's registry in PostgreSQL (%s%s) and are refused as "
                    "unknown_meter: gridmeter gateway meters import %s", len(missing), path, ", ".join(missing[:5]),
                    ", ..." if len(missing) > 5 else "", path)


@dataclass(frozen=True)
class TaskFailure:
    task: str
    reason: str
    at_ms: int

    def as_dict(self) -> dict[str, object]:
        return {"task": self.task, "reason": self.reason, "at_ms": self.at_ms}


@dataclass
class Gateway:
    """Supervised: every background task (intake threads, submitter, watchdog) is watched; when one dies the
    gateway logs which and why, stops petting the systemd watchdog, records it (settings row last_task_failure,
    shown by /health after the restart too) and stops with exit code 1 so systemd restarts it."""

    cfg: GatewayConfig
    metrics: Metrics = field(default_factory=Metrics)
    intake: Intake | None = None
    submitter: Submitter | None = None
    dashboard: Dashboard | None = None
    runners: list[web.AppRunner] = field(default_factory=list)
    _closers: list[Callable[[], object]] = field(default_factory=list)
    _async_closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    failure: TaskFailure | None = None
    previous_failure: dict[str, object] | None = None
    _state: Store | None = None

    async def start(self) -> None:
        cfg = self.cfg
        reg_path = registry_path(cfg.gateway.state_dir)
        stats_store = self._state = self._own(open_store(cfg))
        if cfg.gateway.postgres_dsn and reg_path.exists():
            _warn_registry_file_left(reg_path, cfg)
        self.previous_failure = json.loads(stats_store.get_setting(LAST_FAILURE_SETTING) or "null")
        self.metrics.add_outbox_collector(lambda: stats_store.outbox_stats(int(time.time() * 1000)))
        if cfg.mqtt.enabled:
            self._start_intake()
        if cfg.http.enabled:
            store, registry = self._own(open_store(cfg)), self._own(open_registry(cfg))
            ingest = HttpIngest(store, registry, limits_from(cfg), cfg.http.api_keys, self.metrics,
                                max_body_bytes=cfg.http.max_body_bytes)
            tls = server_tls("http", cfg.http.tls_cert, cfg.http.tls_key)
            self.runners.append(await _site(ingest.app(), cfg.http.listen, tls))
        if cfg.dashboard.enabled:
            h = cfg.health
            th = Thresholds(int(h.expected_interval_s * 1000), int(h.late_margin_s * 1000),
                            int(h.silent_after_s * 1000))
            self.dashboard = Dashboard(cfg.dashboard, self._own(open_store(cfg)), self._own(open_registry(cfg)),
                                       self.metrics, epoch_s=cfg.intervals.epoch_s, thresholds=th)
            app = self.dashboard.app()
            app.router.add_get("/health", self.health)  # behind the dashboard's authentication
            self.runners.append(await _site(app, cfg.dashboard.listen, self.dashboard.ssl_context()))
        if cfg.chain.enabled:
            self._start_submitter()
        self.spawn("retention", self._prune(stats_store, cfg.gateway.retention_days))
        sd_notify("READY=1")
        self.spawn("supervisor", self._supervise())
        if int(os.environ.get("WATCHDOG_USEC", "0") or 0) > 0:
            self.spawn("watchdog", self._watchdog())
        log.info("gateway running (mqtt %s, http %s, dashboard %s, chain %s)", cfg.mqtt.enabled, cfg.http.enabled,
                 cfg.dashboard.enabled, cfg.chain.rpc_url if cfg.chain.enabled else "off")

    def _own(self, obj: _Closable) -> _Closable:
        self._closers.append(obj.close)
        return obj

    def _start_intake(self) -> None:
        cfg = self.cfg
        ack_key = load_key_file(cfg.gateway.ack_key_file)  # a bad key file fails before anything is opened
        store, registry = self._own(open_store(cfg)), self._own(open_registry(cfg))
        pool = verify_pool(cfg.gateway.verify_workers or len(os.sched_getaffinity(0)))
        acc = Acceptance(store, registry, limits_from(cfg),
                         IngressLimit(cfg.limits.ingress_rate_per_s, cfg.limits.ingress_burst), self.metrics, pool,
                         topic_prefix=cfg.mqtt.topic_prefix, quarantine_bytes_per_s=cfg.limits.quarantine_bytes_per_s,
                         quarantine_burst_bytes=cfg.limits.quarantine_burst_bytes,
                         verify_budget=VerifyBudget(time.time(), cfg.limits.verify_budget_per_s,
                                                    cfg.limits.verify_budget_burst))
        self._closers.append(lambda: pool.shutdown(wait=True))
        self.intake = Intake(cfg.mqtt, acc, ack_key, self.metrics)
        self.intake.start()

    def _start_submitter(self) -> None:
        from gateway.oracle import OracleClient

        cfg = self.cfg
        store, registry = self._own(open_store(cfg)), self._own(open_registry(cfg))
        tables = json.loads(store.get_setting("lookup_tables") or "[]")
        client = OracleClient.from_key_file(cfg.chain.rpc_url, cfg.chain.program_id, cfg.chain.authority_key_file,
                                            commitment=cfg.chain.commitment, lookup_tables=tables)
        self.submitter = Submitter(store, registry, client, self.metrics, epoch_s=cfg.intervals.epoch_s,
                                   authority=str(client.authority.pubkey()), max_backoff_s=cfg.chain.max_backoff_s)

        def persist_tables() -> None:
            if client.lookup_tables != tables:
                tables[:] = client.lookup_tables
                store.set_setting("lookup_tables", json.dumps(tables))

        self.submitter.on_cycle = persist_tables
        self.submitter.sent_recheck_s = cfg.chain.sent_recheck_s
        self.submitter.http_idle_close_s = cfg.http.idle_close_s
        notifier = None
        if cfg.gateway.postgres_dsn:
            from gateway.store.notices import ReadingNotices, ReadingNotifier
            from gateway.store.postgres import SubmitterLease

            lease = SubmitterLease(cfg.gateway.postgres_dsn)
            self.submitter.lease = lease.held
            self._closers.append(lease.close)
            # readings another gateway of the fleet committed wake this one's submitter too
            notices = ReadingNotices(cfg.gateway.postgres_dsn, self.submitter.wake).start()
            self._closers.append(notices.close)
            notifier = ReadingNotifier(cfg.gateway.postgres_dsn)
            self._closers.append(notifier.close)
        self._async_closers.append(client.close)
        if self.intake is not None:  # a committed batch starts the next cycle now (chain.submit_interval_s: at most)
            submitter = self.submitter

            def committed(acks: dict[str, int]) -> None:
                if acks:
                    submitter.wake()
                    if notifier is not None:
                        notifier.notify()

            self.intake.on_batch = committed
        self.spawn("submitter", self.submitter.run(self.stop_event, cfg.chain.submit_interval_s))

    async def _prune(self, store: Store, retention_days: int) -> None:
        """Retention (gateway/store/retention.py): at start, then every DEFAULT_PRUNE_INTERVAL_S."""
        while not self.stop_event.is_set():
            pruned = store.prune(int(time.time() * 1000), retention_days)
            if pruned.total:
                log.info("retention: pruned %s", pruned)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), DEFAULT_PRUNE_INTERVAL_S)

    # ---- supervision ------------------------------------------------------------------------------
    def spawn(self, name: str, coro: Coroutine[object, object, None]) -> asyncio.Task[None]:
        """A supervised background task: it may end only when the gateway stops."""
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(lambda t: self._task_done(name, t))
        self._tasks.append(task)
        return task

    def _task_done(self, name: str, t: asyncio.Task[None]) -> None:
        if t.cancelled():
            if not self.stop_event.is_set():
                self.fail(name, "cancelled")
            return
        exc = t.exception()
        if exc is not None:
            self.fail(name, f"{type(exc).__name__}: {exc}", exc)
        elif not self.stop_event.is_set():
            self.fail(name, "returned while the gateway was running")

    def fail(self, task: str, reason: str, exc: BaseException | None = None) -> None:
        """Record the first failure, log it, persist it, stop (run() then returns EXIT_TASK_DIED)."""
        if self.failure is None:
            self.failure = TaskFailure(task, reason, int(time.time() * 1000))
            log.critical("background task %s died: %s; stopping (exit %d) so that systemd restarts the gateway",
                         task, reason, EXIT_TASK_DIED, exc_info=exc)
            try:
                if self._state is not None:
                    self._state.set_setting(LAST_FAILURE_SETTING, json.dumps(self.failure.as_dict()))
            except Exception:
                log.exception("could not record the failure of %s in the database", task)
        self.stop_event.set()

    def task_states(self) -> dict[str, str]:
        states = {t.get_name(): "running" if not t.done() else "ended" for t in self._tasks}
        if self.intake is not None:
            states["intake"] = self.intake.dead_reason() or "running"
        return states

    async def _supervise(self) -> None:
        """Threads cannot report their own death to the event loop: their liveness is polled."""
        while not self.stop_event.is_set():
            if self.intake is not None and (why := self.intake.dead_reason()) is not None:
                self.fail("intake", why)
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), DEFAULT_SUPERVISE_S)

    async def health(self, _req: web.Request) -> web.Response:
        ok = self.failure is None and all(s == "running" for s in self.task_states().values())
        return web.json_response({"status": "ok" if ok else "failing", "tasks": self.task_states(),
                                  "failure": self.failure.as_dict() if self.failure else None,
                                  "previous_failure": self.previous_failure}, status=200 if ok else 503)

    async def _watchdog(self) -> None:
        usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        while not self.stop_event.is_set():
            if self.failure is None and (self.intake is None or self.intake.alive()):
                sd_notify("WATCHDOG=1")  # never once a task died: systemd restarts us if we do not exit
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), usec / 1e6 * DEFAULT_WATCHDOG_FRACTION)

    async def stop(self) -> None:
        sd_notify("STOPPING=1")
        self.stop_event.set()
        if self.intake is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.intake.stop)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)  # a task's own failure was reported by fail()
        for r in self.runners:
            await r.cleanup()
        for c in self._async_closers:
            await c()
        for close in reversed(self._closers):
            close()


async def run(cfg: GatewayConfig) -> int:
    gw = Gateway(cfg)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, gw.stop_event.set)
    try:
        await gw.start()
        await gw.stop_event.wait()
    finally:
        await gw.stop()
    return EXIT_TASK_DIED if gw.failure is not None else 0
