"""Poller: reads every meter on one bus through its profile's read plan (coordinator pattern).

A failing meter is reported through `on_error`, never fatal to the loop. Dead meters are backed off (capped
exponential) and probed without retries, so one dead meter costs at most one timeout per probe and cannot starve
the others. Energy blocks must succeed (else MeterReadError); a failed block of instantaneous values only marks the
sample partial (`errors`).

Values a meter does not have are "not measured", never errors: a register the profile marks `optional` that
answers exception 2 (read on its own once a block containing it was refused), one of its declared sentinels or
NaN; any instantaneous value showing its declared "not implemented" sentinel; an energy counter the profile leaves
out. An energy counter not measured is listed in `MeterSample.not_measured`; at least one must be measured.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from agent.bus import Bus, BusError, BusExceptionResponse, DeviceTiming
from agent.decode import decode_image, image_from_block
from agent.planner import ReadBlock, char_time_s, plan_registers
from agent.sunspec import SunSpecError, discover, resolve
from firmware_config.schema import ENERGY_MEASUREMENTS, Profile, Register

log = logging.getLogger(__name__)

# Consecutive failures before backing off; the first failure is retried at the next cycle (one glitch on a
# shared RS-485 line is common: mbmd #333).
DEFAULT_BACKOFF_AFTER = 2
# Cap of the exponential backoff: a meter that died is still probed every 5 minutes, so it comes back on its own.
DEFAULT_BACKOFF_MAX_S = 300.0
ILLEGAL_DATA_ADDRESS = 2  # Modbus exception 2: the device rejects the address range (e.g. a gap-spanning block)
# Decode results that mean "the meter does not have this value" for an `optional` register (sentinel, NaN, Inf,
# exception 2 on its own read); a declared sentinel means the same for any instantaneous value.
ABSENT_REASONS = frozenset({"not_implemented", "nan", "infinite", "absent"})


@dataclass(frozen=True)
class MeterSpec:
    meter_id: str
    bus: str
    unit_id: int
    profile: Profile
    rated_max_power_w: int | None = None  # None -> profile's rated limit

    @property
    def max_power_w(self) -> int:
        return self.rated_max_power_w if self.rated_max_power_w is not None else self.profile.rated.max_power_w


@dataclass(frozen=True, slots=True)
class MeterSample:
    meter_id: str
    profile_id: str
    unit_id: int
    read_at_ms: int  # wall-clock unix ms when the energy registers were read
    monotonic_ms: int  # monotonic ms at the same moment
    values: dict[str, int]  # vocabulary; every energy counter not listed in not_measured is present
    errors: tuple[str, ...] = ()  # failed blocks / invalid instantaneous values (PARTIAL)
    not_measured: tuple[str, ...] = ()  # energy counters this meter does not have (IMPORT/EXPORT_NOT_MEASURED)


class MeterReadError(Exception):
    def __init__(self, meter_id: str, reason: str, detail: str = "") -> None:
        self.meter_id, self.reason, self.detail = meter_id, reason, detail
        super().__init__(f"meter {meter_id}: {reason}" + (f" ({detail})" if detail else ""))


@dataclass
class _State:
    blocks: tuple[ReadBlock, ...]
    bridge_holes: bool = True
    isolate_optional: bool = False  # optional registers read on their own (the device refused a block with one)
    resolved: Profile | None = None  # the profile at the device's addresses (SunSpec: after discovery)
    last_ok_ms: int | None = None
    consecutive_errors: int = 0
    last_error: str | None = None
    backoff_s: float = 0.0
    next_due: float = 0.0  # monotonic seconds
    reads: int = 0
    errors: int = 0
    partial: int = 0


@dataclass
class PollerStats:
    cycles: int = 0
    overruns: int = 0  # cycles that took longer than the interval
    callback_errors: int = 0
    last_cycle_s: float = field(default=0.0)


class Poller:
    def __init__(
        self, bus: Bus, meters: Sequence[MeterSpec], *, wall_clock_ns: Callable[[], int] = time.time_ns,
        monotonic_ns: Callable[[], int] = time.monotonic_ns, backoff_max_s: float = DEFAULT_BACKOFF_MAX_S,
    ) -> None:
        self.bus, self.meters = bus, list(meters)
        self._wall, self._mono, self.backoff_max_s = wall_clock_ns, monotonic_ns, backoff_max_s
        self.stats = PollerStats()
        ids = [m.meter_id for m in self.meters]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate meter ids on bus {bus.name}")
        self._state: dict[str, _State] = {}
        for m in self.meters:
            if m.bus != bus.name:
                raise ValueError(f"meter {m.meter_id} is on bus {m.bus!r}, not {bus.name!r}")
            r = m.profile.read
            bus.set_device_timing(m.unit_id, DeviceTiming(r.inter_request_delay_ms, r.unit_switch_delay_ms,
                                                          r.turnaround_ms))
            st = self._state[m.meter_id] = _State(blocks=())
            st.resolved = None if m.profile.sunspec is not None else m.profile
            st.blocks = self._plan(m, st, bridge_holes=True)

    def _plan(self, meter: MeterSpec, st: _State, *, bridge_holes: bool, isolate_optional: bool = False
              ) -> tuple[ReadBlock, ...]:
        s = self.bus.spec
        kw = dict(transport="rtu" if s.kind == "rtu" else "tcp", bridge_holes=bridge_holes,
                  char_time=char_time_s(s.baudrate, s.parity, s.stopbits, s.bytesize))
        profile = st.resolved or meter.profile
        regs, policy = profile.registers, profile.read
        if not isolate_optional:
            return plan_registers(regs, policy, **kw)  # type: ignore[arg-type]
        groups: list[tuple[Register, ...]] = [tuple(r for r in regs if not r.optional)]
        groups += [(r,) for r in regs if r.optional]
        return tuple(b for g in groups if g for b in plan_registers(g, policy, **kw))  # type: ignore[arg-type]

    def plan(self, meter: MeterSpec) -> tuple[ReadBlock, ...]:
        return self._state[meter.meter_id].blocks

    def located(self, meter: MeterSpec) -> Profile:
        """The meter's profile at the device's addresses (a SunSpec profile after discovery; else the profile)."""
        return self._state[meter.meter_id].resolved or meter.profile

    # ---- one meter ------------------------------------------------------------------------------------------------

    async def read_meter(self, meter: MeterSpec) -> MeterSample:
        """Read every block of the meter's plan once. Raises MeterReadError."""
        st = self._state[meter.meter_id]
        try:
            sample = await self._read(meter, st)
        except MeterReadError as e:
            st.errors += 1
            st.consecutive_errors += 1
            if meter.profile.sunspec is not None and st.consecutive_errors >= DEFAULT_BACKOFF_AFTER:
                st.resolved = None  # find the model again: the device may have been reconfigured
            st.last_error = f"{e.reason}: {e.detail}" if e.detail else e.reason
            raise
        if st.consecutive_errors:
            log.info("meter %s: reading again after %d failures", meter.meter_id, st.consecutive_errors)
        st.reads += 1
        st.partial += bool(sample.errors)
        st.last_ok_ms, st.consecutive_errors = sample.read_at_ms, 0
        return sample

    async def _locate(self, meter: MeterSpec, st: _State) -> Profile:
        """The profile at the device's addresses; for SunSpec, discovery on the first read (and after failures)."""
        if st.resolved is not None:
            return st.resolved
        ss = meter.profile.sunspec
        assert ss is not None

        async def read(fc: int, address: int, count: int) -> list[int]:
            return await self._read_block(meter, st, ReadBlock(fc, address, count, ()))

        try:
            loc = await discover(read, ss.models, ss.occurrence, absent=BusExceptionResponse, behind=ss.behind)
        except BusError as e:
            raise MeterReadError(meter.meter_id, e.reason, f"SunSpec discovery: {e}") from None
        except SunSpecError as e:
            raise MeterReadError(meter.meter_id, "sunspec", str(e)) from None
        if loc is None:
            raise MeterReadError(meter.meter_id, "sunspec", f"no SunSpec model {'/'.join(map(str, ss.models))} "
                                 "found (SunS marker at 40000, 0 or 50000 and the model chain)")
        try:
            st.resolved = resolve(meter.profile, loc)
        except SunSpecError as e:
            raise MeterReadError(meter.meter_id, "sunspec", str(e)) from None
        if loc.model_address != ss.model_address:
            log.info("meter %s: SunSpec model %d at %d (profile expects %d): addresses shifted", meter.meter_id,
                     loc.model_id, loc.model_address, ss.model_address)
        st.blocks = self._plan(meter, st, bridge_holes=st.bridge_holes, isolate_optional=st.isolate_optional)
        return st.resolved

    async def _read(self, meter: MeterSpec, st: _State) -> MeterSample:
        profile = await self._locate(meter, st)
        image: dict[tuple[int, int], int] = {}
        errors: list[str] = []
        absent: set[str] = set()  # optional registers whose own read answered exception 2
        stamp: tuple[int, int] | None = None
        for block in st.blocks:
            energy = any(r.measurement in ENERGY_MEASUREMENTS and not r.optional for r in block.registers)
            try:
                words = await self._read_block(meter, st, block)
            except BusExceptionResponse as e:
                if e.code == ILLEGAL_DATA_ADDRESS and st.bridge_holes and self._has_hole(block):
                    log.warning("meter %s rejected a gap-spanning read (%s); reading without holes from now on",
                                meter.meter_id, e)
                    st.bridge_holes = False
                    st.blocks = self._plan(meter, st, bridge_holes=False, isolate_optional=st.isolate_optional)
                    return await self._read(meter, st)
                optional = [r for r in block.registers if r.optional]
                if e.code == ILLEGAL_DATA_ADDRESS and optional and len(optional) < len(block.registers):
                    log.warning("meter %s rejected a read containing optional registers (%s); reading those on "
                                "their own from now on", meter.meter_id, e)
                    st.isolate_optional = True
                    st.blocks = self._plan(meter, st, bridge_holes=st.bridge_holes, isolate_optional=True)
                    return await self._read(meter, st)
                if e.code == ILLEGAL_DATA_ADDRESS and optional:  # the meter does not have these values
                    absent.update(r.name for r in optional)
                    continue
                if energy:
                    raise MeterReadError(meter.meter_id, e.reason, str(e)) from None
                errors.append(f"block FC{block.function_code:02d}@{block.address:#06x}+{block.count}: {e.reason}")
                continue
            except BusError as e:
                if energy:
                    raise MeterReadError(meter.meter_id, e.reason, str(e)) from None
                errors.append(f"block FC{block.function_code:02d}@{block.address:#06x}+{block.count}: {e.reason}")
                continue
            if energy and stamp is None:
                stamp = (self._wall() // 1_000_000, self._mono() // 1_000_000)
            image.update(image_from_block(block.function_code, block.address, words))
        decoded = decode_image(profile, image)
        not_measured = list(profile.absent_measurements)
        for reg in profile.registers:
            m = reg.measurement
            if m is None or m not in decoded.invalid:
                continue
            reason = "absent" if reg.name in absent else decoded.invalid[m]
            missing = reg.optional and reason in ABSENT_REASONS
            if m in ENERGY_MEASUREMENTS:
                if not missing:
                    raise MeterReadError(meter.meter_id, "decode", f"{m}: {reason}")
                not_measured.append(m)
            elif not (missing or reason == "not_implemented") and reason != "missing":
                errors.append(f"{m}: {reason}")  # "missing" = its block failed, already listed
        if len(not_measured) == len(ENERGY_MEASUREMENTS):
            raise MeterReadError(meter.meter_id, "decode", "no energy counter measured: "
                                 + ", ".join(f"{m}: {decoded.invalid.get(m, 'absent')}" for m in not_measured))
        assert stamp is not None  # energy blocks either succeeded or raised
        return MeterSample(meter_id=meter.meter_id, profile_id=meter.profile.id, unit_id=meter.unit_id,
                           read_at_ms=stamp[0], monotonic_ms=stamp[1], values=decoded.values,
                           errors=tuple(errors), not_measured=tuple(sorted(not_measured)))

    async def _read_block(self, meter: MeterSpec, st: _State, block: ReadBlock) -> list[int]:
        # A meter that keeps failing is probed once per attempt (no retries): it must not eat the others' time.
        probing = st.consecutive_errors >= DEFAULT_BACKOFF_AFTER
        return await self.bus.read_registers(meter.unit_id, block.function_code, block.address, block.count,
                                             retries=0 if probing else None)

    @staticmethod
    def _has_hole(block: ReadBlock) -> bool:
        return sum(r.words for r in block.registers) < block.count

    # ---- loop -----------------------------------------------------------------------------------------------------

    def _failed(self, meter: MeterSpec, st: _State, interval_s: float, now: float) -> None:
        n = st.consecutive_errors
        st.backoff_s = 0.0 if n < DEFAULT_BACKOFF_AFTER else min(
            interval_s * 2 ** (n - DEFAULT_BACKOFF_AFTER), self.backoff_max_s)
        st.next_due = now + st.backoff_s
        if n == 1:
            log.warning("meter %s: %s", meter.meter_id, st.last_error)
        else:
            log.debug("meter %s: %s (%d in a row, next try in %.1fs)", meter.meter_id, st.last_error, n,
                      st.backoff_s)

    async def poll_once(
        self, interval_s: float, on_sample: Callable[[MeterSample], Awaitable[None]],
        on_error: Callable[[MeterSpec, MeterReadError], Awaitable[None]],
    ) -> None:
        """One cycle over the meters that are due."""
        for meter in self.meters:
            st = self._state[meter.meter_id]
            now = self._mono() / 1e9
            if st.next_due > now:
                continue
            try:
                sample = await self.read_meter(meter)
            except MeterReadError as e:
                self._failed(meter, st, interval_s, now)
                await self._callback(on_error(meter, e))
                continue
            st.backoff_s, st.next_due = 0.0, 0.0
            await self._callback(on_sample(sample))

    async def _callback(self, aw: Awaitable[None]) -> None:
        try:
            await aw
        except asyncio.CancelledError:
            raise
        except Exception:
            self.stats.callback_errors += 1
            log.exception("poller callback failed (counted in callback_errors; polling continues)")

    async def run(
        self, interval_s: float, on_sample: Callable[[MeterSample], Awaitable[None]],
        on_error: Callable[[MeterSpec, MeterReadError], Awaitable[None]],
    ) -> None:
        """Poll forever on a monotonic schedule; missed cycles are skipped, never bunched."""
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        next_cycle = self._mono() / 1e9
        while True:
            started = self._mono() / 1e9
            await self.poll_once(interval_s, on_sample, on_error)
            self.stats.cycles += 1
            now = self._mono() / 1e9
            self.stats.last_cycle_s = now - started
            next_cycle += interval_s
            if next_cycle < now:
                self.stats.overruns += 1
                next_cycle = now + interval_s - ((now - next_cycle) % interval_s)
            await asyncio.sleep(next_cycle - now)

    def device_status(self) -> dict[str, dict]:
        now = self._mono() / 1e9
        return {
            m.meter_id: {
                "unit_id": m.unit_id, "profile": m.profile.id, "last_ok_ms": st.last_ok_ms,
                "consecutive_errors": st.consecutive_errors, "last_error": st.last_error,
                "backoff_s": st.backoff_s, "next_attempt_in_s": max(0.0, st.next_due - now),
                "reads": st.reads, "errors": st.errors, "partial": st.partial,
                "requests_per_read": len(st.blocks), "gap_reads": st.bridge_holes,
                "optional_read_alone": st.isolate_optional,
            }
            for m in self.meters for st in (self._state[m.meter_id],)
        }
