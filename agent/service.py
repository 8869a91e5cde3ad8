"""Wiring of the edge agent: pollers -> glitch filter + clock gating -> sign -> store -> publisher.

One Poller per bus (agent.poller, one owner per port) calls on_sample/on_error. Every sample becomes a
signed reading (seq from the store, key_id of the meter's key, read_at = the moment the registers were
read, never rewritten) that is committed in batches before the publisher may see it. A failing device,
a bad value or a full store is counted and logged, never fatal to the loop. SIGTERM/SIGINT stop cleanly
(flush, offline status); sd_notify READY/WATCHDOG when NOTIFY_SOCKET is set.

Supervision: every background task (publisher, pollers, flush, watchdog) is watched; one that dies stops the
service and run() raises TaskFailedError (agent.supervision: the Supervision mixin of AgentService). A store
whose file turns out corrupt while running is such a failure too (the flush task ends); at the next start the
file is moved aside (agent.store_recovery.open_or_replace).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from agent.clock import ClockProbe, clock_jumped, reading_clock_quality
from agent.config import AgentConfig, build_specs
from agent.household import DayCounters, chain_view_for, explain, homeassistant_for
from agent.keys import load_key_file
from agent.plausibility import Baseline, check_counters
from agent.publisher import Publisher, wall_ms
from agent.status import Health, StatusServer
from agent.store import LastGood, StoreError, StoreFullError
from agent.store_recovery import open_or_replace
from agent.store_schema import StoreCorruptError
from agent.supervision import Supervision, TaskFailedError, task_state
from base.sd_notify import Notifier
from protocol.canonical import sign_reading
from protocol.errors import InvalidFieldError
from protocol.reading import Instantaneous, Quality, Reading
from protocol.signing import SigningKey, VerifyKey
from protocol.wire import I32_MAX, I32_MIN

if TYPE_CHECKING:
    from agent.bus import Bus
    from agent.poller import MeterReadError, MeterSample, MeterSpec, Poller

log = logging.getLogger(__name__)

# On SIGTERM, wait at most this long for the last readings to be acked (systemd TimeoutStopSec is 20 s).
DEFAULT_STOP_DRAIN_S = 5.0
_INSTANT_NAMES = Instantaneous.names()


@dataclass
class DeviceCounters:
    stored: int = 0  # readings signed and queued for the store
    read_errors: int = 0
    glitches: int = 0
    last_read_ms: int | None = None
    last_error: str = ""
    last_glitch: str = ""


class AgentService(Supervision):
    def __init__(self, cfg: AgentConfig, keys: dict[str, SigningKey], meters: list[MeterSpec],
                 buses: dict[str, Any]) -> None:
        self.cfg, self.keys, self.meters, self.bus_specs = cfg, keys, meters, buses
        self.store, self.store_replaced = open_or_replace(cfg.db_path, max_readings=cfg.store.max_readings,
                                                          overflow=cfg.store.overflow)
        self.day = DayCounters()  # the household page's live power and today's kWh (memory only)
        self.chain_view = chain_view_for(cfg, meters)
        self.homeassistant = homeassistant_for(cfg, meters, self._ha_snapshot)
        self.clock = ClockProbe(cfg.clock.check, require_sync=cfg.clock.require_sync)
        self.publisher = Publisher(cfg.mqtt, [m.meter_id for m in meters], self.store,
                                   VerifyKey(cfg.mqtt.gateway_public_key))
        self.devices = {m.meter_id: DeviceCounters() for m in meters}
        self._baseline: dict[str, Baseline] = {
            m: Baseline(g.import_wh, g.export_wh, g.read_at_ms) for m, g in self.store.last_good().items()
        }
        self._resets = self.store.pending_counter_resets()  # meters whose next reading starts a new baseline
        self._last_obs: dict[str, tuple[int, int]] = {}  # meter -> (wall ms, monotonic ms) of its last sample
        self.clock_jumps = 0
        self.last_read_ms: int | None = None
        self.skipped_full = 0
        self.commit_error = ""  # last failed store commit, "" once commits work (shown in /health)
        self._full_since: float | None = None
        self._stop = asyncio.Event()
        self._pollers: list[Poller] = []
        self._bus_objs: list[Bus] = []
        self._publisher_task: asyncio.Task[None] | None = None
        self._tasks: dict[str, asyncio.Task[Any]] = {}  # supervised background tasks by name
        self.failed_task: dict[str, Any] | None = None  # {"task", "reason", "at_ms"} of the first that died
        self.last_task_failure = self._last_task_failure()  # newest recorded in the store (an earlier run's)
        self.status: StatusServer | None = None

    # -- per sample -----------------------------------------------------------------------------

    async def on_sample(self, sample: MeterSample) -> None:
        dev = self.devices[sample.meter_id]
        try:
            self._handle_sample(sample, dev)
        except StoreFullError:
            self._note_full()
        except (InvalidFieldError, KeyError, StoreError) as exc:
            dev.read_errors += 1
            dev.last_error = f"rejected sample: {exc}"
            log.error("%s: sample not stored: %s", sample.meter_id, exc)
        if self.cfg.store.flush_interval_ms == 0:
            self._flush()

    def _handle_sample(self, sample: MeterSample, dev: DeviceCounters) -> None:
        meter = sample.meter_id
        spec = self._spec(meter)
        quality = Quality.PARTIAL if sample.errors else Quality.NONE
        synced, clock_q = reading_clock_quality(self.clock.state().synced, self._jumped(sample))
        quality |= clock_q
        rated = spec.rated_max_power_w or spec.profile.rated.max_power_w
        reset = meter in self._resets
        if reset:
            quality |= Quality.COUNTER_RESET
        baseline = None if reset else self._baseline.get(meter)
        imp, exp, absent_q = _counters(sample, baseline)
        quality |= absent_q
        verdict = check_counters(baseline, imp, exp, monotonic_ms=sample.monotonic_ms,
                                 read_at_ms=sample.read_at_ms, rated_max_power_w=rated)
        if not verdict.good:
            quality |= Quality.GLITCH_SUSPECTED
            dev.glitches += 1
            reasons = ",".join(verdict.reasons)
            log.log(logging.DEBUG if reasons == dev.last_glitch else logging.WARNING,
                    "%s: counters import=%d export=%d flagged GLITCH_SUSPECTED (%s)", meter, imp, exp, reasons)
            dev.last_glitch = reasons
        instant, dropped = _instant(sample.values)
        if dropped:
            quality |= Quality.PARTIAL
        key = self.keys[meter]
        draft = Reading(  # validated before a seq is allocated: a refused sample must not leave a seq gap
            meter_id=meter, key_id=key.key_id, seq=1, read_at_ms=sample.read_at_ms,
            clock_synced=synced, energy_import_wh=imp, energy_export_wh=exp, profile_id=sample.profile_id,
            quality=quality, instant=instant,
        )
        reading = replace(draft, seq=self.store.allocate_seq(meter))
        good = None
        if verdict.good:
            self._baseline[meter] = Baseline(imp, exp, sample.read_at_ms, sample.monotonic_ms)
            good = LastGood(imp, exp, sample.read_at_ms)
        self.store.append(sign_reading(reading, key), good=good, clears_reset=reset)
        if good is not None:
            self.day.observe(meter, sample.read_at_ms, imp, exp, instant.power_w)
        self._resets.discard(meter)
        dev.stored += 1
        dev.last_read_ms = self.last_read_ms = sample.read_at_ms
        if self._full_since is not None:
            log.info("store has room again after %.0f s; reading resumed", time.monotonic() - self._full_since)
            self._full_since = None

    def _spec(self, meter_id: str) -> MeterSpec:
        for m in self.meters:
            if m.meter_id == meter_id:
                return m
        raise KeyError(meter_id)

    def _jumped(self, sample: MeterSample) -> bool:
        prev = self._last_obs.get(sample.meter_id)
        self._last_obs[sample.meter_id] = (sample.read_at_ms, sample.monotonic_ms)
        if prev is None or not clock_jumped(prev[0], prev[1], sample.read_at_ms, sample.monotonic_ms,
                                            self.cfg.clock.jump_tolerance_ms):
            return False
        self.clock_jumps += 1
        self.clock.invalidate()
        log.warning("%s: wall clock jumped by %d ms against the monotonic clock", sample.meter_id,
                    (sample.read_at_ms - prev[0]) - (sample.monotonic_ms - prev[1]))
        return True

    def _note_full(self) -> None:
        self.skipped_full += 1
        if self._full_since is None:
            self._full_since = time.monotonic()
            detail = f"store full ({self.store.max_readings} readings): stop_reading until acks free space"
            log.error(detail)
            self.store.record_event("overflow_stop_reading", None, detail, counter="stop_reading_episodes")

    async def on_error(self, meter: MeterSpec, err: MeterReadError) -> None:
        dev = self.devices[meter.meter_id]
        dev.read_errors += 1
        if err.reason == "decode":  # an energy register read as a sentinel / NaN / beyond 2^63-1: never published
            dev.glitches += 1
            dev.last_glitch = f"invalid energy register ({err.detail})"
        if dev.last_error != str(err):
            log.warning("%s: read failed: %s", meter.meter_id, err)
        dev.last_error = str(err)

    # -- loops ----------------------------------------------------------------------------------

    def _flush(self) -> None:
        """Commit what is pending. A disk-full / I/O failure is kept (retried next tick, shown in /health); a
        corrupt store file raises StoreCorruptError: retrying cannot help, the flush task ends (supervision)."""
        try:
            committed = self.store.flush()
        except StoreError as exc:  # disk full, I/O error: keep the readings pending, retry next tick
            log.log(logging.DEBUG if str(exc) == self.commit_error else logging.ERROR, "%s", exc)
            self.commit_error = str(exc)
            if isinstance(exc, StoreCorruptError):
                raise
            return
        if self.commit_error:
            log.info("store commits work again")
            self.commit_error = ""
        if committed:
            self.publisher.wake()

    async def _flush_loop(self) -> None:
        interval = max(self.cfg.store.flush_interval_ms, 50) / 1000
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), interval)
            self._flush()

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        from agent.bus import open_bus
        from agent.poller import Poller

        loop = asyncio.get_running_loop()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop)
        else:  # signals reach only the main thread: whoever runs us there stops us with request_stop()
            log.info("agent service not in the main thread: SIGTERM/SIGINT are left to the caller")
        tasks: list[asyncio.Task[Any]] = []
        notifier = Notifier.from_env()
        try:
            self.publisher.start()
            self._publisher_task = self._supervised("publisher", self.publisher.run())
            tasks.append(self._publisher_task)
            hp = self.cfg.status.host_port
            if hp is not None:
                self.status = StatusServer(hp[0], hp[1], self.health)
                await self.status.start()
            for name, spec in self.bus_specs.items():
                bus = await _maybe_await(open_bus(spec))
                self._bus_objs.append(bus)
                poller = Poller(bus, [m for m in self.meters if m.bus == name])
                self._pollers.append(poller)
                tasks.append(self._supervised(f"poller-{name}", self._supervise(poller, name)))
            tasks.append(self._supervised("flush", self._flush_loop()))
            tasks += self._start_household_extras()
            if notifier is not None:
                notifier.send("READY=1")
                wd = notifier.watchdog_interval_s()
                if wd is not None:
                    tasks.append(self._supervised("watchdog", self._watchdog_loop(notifier, wd)))
            log.info("agent running: %d meters on %d buses", len(self.meters), len(self.bus_specs))
            await self._stop.wait()
        finally:
            await self._shutdown(tasks, notifier)
        if self.failed_task is not None:
            raise TaskFailedError(self.failed_task["task"], self.failed_task["reason"])

    async def _shutdown(self, tasks: list[asyncio.Task[Any]], notifier: Notifier | None) -> None:
        if notifier is not None:
            notifier.send("STOPPING=1")
        self._stop.set()
        for t in tasks:
            if t.get_name() != "publisher":
                t.cancel()
        await asyncio.gather(*[t for t in tasks if t.get_name() != "publisher"], return_exceptions=True)
        self._record_failure()
        try:
            self._flush()
        except StoreCorruptError:
            pass  # logged by _flush; moved aside at the next start
        except Exception:  # the flush may be what failed: the rest of the stop must still happen
            log.exception("the last flush failed; uncommitted readings were never published (re-read at start)")
        self.publisher.wake()
        await self._drain_before_stop()
        await self.publisher.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        for bus in self._bus_objs:
            try:
                await bus.close()
            except Exception:  # shutting down anyway: say so, and close the rest
                log.warning("closing bus %s failed", bus.name, exc_info=True)
        if self.homeassistant is not None:
            await self.homeassistant.stop()
        if self.status is not None:
            await self.status.stop()
        try:
            self.store.close()
        except Exception as exc:  # its flush failed (logged above); the file is closed all the same
            log.error("closing the store: %s: %s", type(exc).__name__, exc)
        log.info("agent stopped")

    async def _drain_before_stop(self) -> None:
        """While connected, give the publisher a few seconds to get the last readings acked: a clean stop
        (update, reboot) then leaves nothing to resend. Anything left is simply re-sent after restart."""
        deadline = time.monotonic() + DEFAULT_STOP_DRAIN_S
        while self.store.count() and self.publisher.stats.connected and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    # -- household: page data, chain view, Home Assistant ----------------------------------------------

    def _start_household_extras(self) -> list[asyncio.Task[Any]]:
        tasks = []
        if self.chain_view is not None:
            tasks.append(self._supervised("chain-view", self.chain_view.run(self._stop)))
        if self.homeassistant is not None:
            self.homeassistant.start()
            tasks.append(self._supervised("homeassistant", self.homeassistant.run(self._stop)))
        return tasks

    def _ha_snapshot(self) -> tuple[dict[str, Any], dict[str, Any], int]:
        devices: dict[str, dict[str, Any]] = {m: dict(vars(c)) for m, c in self.devices.items()}
        for poller in self._pollers:
            for meter, st in poller.device_status().items():
                devices.setdefault(meter, {}).update(st)
        return self.day.snapshot(), devices, wall_ms()

    # -- status ---------------------------------------------------------------------------------

    def health(self) -> Health:
        now = wall_ms()
        oldest = self.store.oldest_read_at_ms()
        clock = self.clock.state()
        devices: dict[str, dict[str, Any]] = {m: dict(vars(c)) for m, c in self.devices.items()}
        for poller in self._pollers:
            for meter, st in poller.device_status().items():
                devices.setdefault(meter, {}).update(st)
        stats = self.publisher.stats
        failing = [m for m, d in devices.items() if d.get("consecutive_errors", 0)]
        ok = stats.connected and clock.synced and not failing and self._full_since is None and not self.commit_error
        h: Health = {
            "status": "failed" if self.failed_task else "ok" if ok else "degraded",
            "tasks": {name: task_state(t) for name, t in self._tasks.items()},
            "failed_task": self.failed_task,
            "last_task_failure": self.last_task_failure,  # the newest an earlier run recorded, with its time
            "store_replaced": None if self.store_replaced is None else str(self.store_replaced),
            "now_ms": now,
            "last_read_ms": self.last_read_ms,
            "last_publish_ms": stats.last_publish_ms,
            "last_ack_ms": stats.last_ack_ms,
            "queue": {
                "depth": self.store.count(),
                "pending_commit": self.store.pending,
                "commit_error": self.commit_error,
                "oldest_read_at_ms": oldest,
                "oldest_age_s": None if oldest is None else max(0, now - oldest) / 1000,
                "per_meter": self.store.per_meter(),
                "unacked_in_flight": self.publisher.unacked(),
                "full": self._full_since is not None,
                "skipped_full": self.skipped_full,
            },
            "mqtt": dict(vars(stats)),
            "clock": {"synced": clock.synced, "source": clock.source, "detail": clock.detail,
                      "jumps": self.clock_jumps},
            "devices": devices,
            "store": self.store.counters(),
            "acks_rejected_by_reason": dict(self.store.rejected),
            "household": self.day.snapshot(),
            "chain": None if self.chain_view is None else self.chain_view.snapshot(),
        }
        h["problems"] = explain(h)
        return h


def _counters(sample: MeterSample, baseline: Baseline | None) -> tuple[int, int, Quality]:
    """(import, export, flags): a counter the meter does not have repeats its last good value (0 if none) and is
    flagged *_NOT_MEASURED, so it books no energy now and loses none when it is measured again."""
    flags = Quality.NONE
    out = []
    for name, flag, last in (("energy_import_wh", Quality.IMPORT_NOT_MEASURED, baseline and baseline.import_wh),
                             ("energy_export_wh", Quality.EXPORT_NOT_MEASURED, baseline and baseline.export_wh)):
        if name in sample.not_measured:
            flags |= flag
            out.append(last or 0)
        else:
            out.append(sample.values[name])
    return out[0], out[1], flags


def _instant(values: dict[str, int]) -> tuple[Instantaneous, bool]:
    """Instantaneous values that fit the wire format; True if any had to be left out."""
    kept = {k: v for k, v in values.items() if k in _INSTANT_NAMES and I32_MIN <= v <= I32_MAX}
    dropped = any(k in _INSTANT_NAMES and k not in kept for k in values)
    return Instantaneous(**kept), dropped


async def _maybe_await(value: Any) -> Any:
    if asyncio.iscoroutine(value):
        return await value
    return value


def build_service(cfg: AgentConfig) -> AgentService:
    """Load keys and profiles (KeyFileError / ConfigError propagate: exit code 2 in the CLI)."""
    bus_specs, meter_specs = build_specs(cfg)
    keys: dict[str, SigningKey] = {}
    cache: dict[str, SigningKey] = {}
    for m in cfg.meters:
        path = cfg.key_file_for(m)
        if str(path) not in cache:
            cache[str(path)] = load_key_file(path)
        keys[m.meter_id] = cache[str(path)]
    return AgentService(cfg, keys, meter_specs, bus_specs)
