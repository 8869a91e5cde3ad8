"""Provisioning's access to meters, always through agent.bus (the one owner of a port) and agent.poller.

BusTarget says where and how to talk (serial framing or host:port); `opened()` checks the device is not held by the
agent, claims it through agent.bus.open_bus and always closes it; `identify()` runs a profile's identification
rules with a per-unit read cache so several profiles probing the same register cost one request.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.bus import Bus, BusError, BusExceptionResponse, BusSpec, BusTimeoutError, open_bus
from agent.decode import decode_identity, decode_image, identify_matches, image_from_block
from agent.poller import MeterReadError, MeterSpec, Poller
from agent.sunspec import (
    COMMON_MD_OFFSET,
    COMMON_MN_OFFSET,
    COMMON_STRING_WORDS,
    Location,
    SunSpecError,
    discover,
    model_1_string,
    resolve,
)
from firmware_config.schema import IdentifyRule, Profile, SerialNumberRule
from provisioning.errors import ProvisionError
from provisioning.port_lock import check_free

PROBE_BUS_NAME = "provision"
# Commissioning reads like the agent does (bus default timeout/retries); identification reads during a scan
# are cheap and repeated, so they do not retry (a silent unit costs one timeout, not three).
DEFAULT_COMMISSION_TIMEOUT_S = 1.0
DEFAULT_COMMISSION_RETRIES = 2


class ProbeError(ProvisionError):
    """The bus could not be opened or the meter did not answer; the message says what to check."""


@dataclass(frozen=True)
class BusTarget:
    kind: str  # "rtu" | "tcp"
    port: str | None = None
    host: str | None = None
    tcp_port: int = 502
    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1
    bytesize: int = 8

    @classmethod
    def for_profile(cls, profile: Profile, *, port: str | None, host: str | None, tcp_port: int | None = None,
                    baudrate: int | None = None, parity: str | None = None, stopbits: int | None = None) -> BusTarget:
        if bool(port) == bool(host):
            raise ProbeError("--port or --host: give exactly one")
        if host:
            return cls("tcp", host=host, tcp_port=tcp_port or profile.tcp_port)
        s = profile.serial
        if s is None:
            raise ProbeError(f"--port: profile {profile.id} is not a serial (RS-485) meter; use --host")
        return cls("rtu", port=port, baudrate=baudrate or s.baudrate, parity=parity or s.parity,
                   stopbits=stopbits or s.stopbits, bytesize=s.bytesize)

    def spec(self, *, timeout_s: float, retries: int, name: str = PROBE_BUS_NAME) -> BusSpec:
        if self.kind == "rtu":
            return BusSpec(name=name, kind="rtu", port=self.port, baudrate=self.baudrate,
                           parity=self.parity,  # type: ignore[arg-type]
                           stopbits=self.stopbits, bytesize=self.bytesize, timeout_s=timeout_s, retries=retries)
        return BusSpec(name=name, kind="tcp", host=self.host, tcp_port=self.tcp_port, timeout_s=timeout_s,
                       retries=retries)

    @property
    def framing(self) -> str:
        return f"{self.baudrate} {self.bytesize}{self.parity}{self.stopbits}"

    def describe(self) -> str:
        return f"{self.port} at {self.framing}" if self.kind == "rtu" else f"{self.host}:{self.tcp_port}"

    def to_json(self) -> dict[str, Any]:
        if self.kind == "rtu":
            return {"port": self.port, "baudrate": self.baudrate, "parity": self.parity, "stopbits": self.stopbits}
        return {"host": self.host, "tcp_port": self.tcp_port}


@contextlib.asynccontextmanager
async def opened(target: BusTarget, *, timeout_s: float, retries: int) -> AsyncIterator[Bus]:
    """Claim the bus (refusing while the agent holds the device), close it afterwards."""
    if target.kind == "rtu":
        check_free(str(target.port))  # PortBusyError / PortMissingError
    try:
        bus = open_bus(target.spec(timeout_s=timeout_s, retries=retries))
    except BusError as exc:
        raise ProbeError(str(exc)) from exc
    try:
        yield bus
    finally:
        await bus.close()


# ---- identification -----------------------------------------------------------------------------------------------


@dataclass
class UnitCache:
    """Replies of one unit at one framing: (fc, address, count) -> words, or the exception/timeout reason."""

    replies: dict[tuple[int, int, int], list[int] | str] = field(default_factory=dict)
    answered: bool = False  # any reply at all (data or Modbus exception) = a device is there
    link_error: BusError | None = None  # the port could not be opened / the TCP connection failed

    async def read(self, bus: Bus, unit_id: int, fc: int, address: int, count: int) -> list[int] | str:
        key = (fc, address, count)
        if key not in self.replies:
            try:
                self.replies[key] = await bus.read_registers(unit_id, fc, address, count, retries=0)
                self.answered = True
            except BusExceptionResponse as exc:
                self.replies[key] = exc.reason
                self.answered = True
            except BusTimeoutError as exc:
                self.replies[key] = exc.reason
            except BusError as exc:  # not a reply at all: the port/connection itself failed
                self.replies[key] = exc.reason
                self.link_error = exc
        return self.replies[key]


async def read_rule(bus: Bus, unit_id: int, rule: IdentifyRule | SerialNumberRule,
                    cache: UnitCache) -> int | str | None:
    """The rule's value from the first function code that answers with data, or None."""
    for fc in rule.function_codes:
        words = await cache.read(bus, unit_id, fc, rule.address, rule.words)
        if isinstance(words, list):
            return decode_identity(rule, words)
    return None


@dataclass(frozen=True)
class Identification:
    profile: Profile
    matched: bool
    values: tuple[int | str | None, ...]
    located: Profile | None = None  # SunSpec: the profile at the device's addresses
    device: str = ""  # SunSpec: manufacturer and model from the common model 1 (Mn, Md)
    weak: bool = False  # matched only through a `weak` value (check the label)

    @property
    def specific(self) -> bool:
        """Matched on more than a generic rule (a SunSpec profile that requires the device in front of it)."""
        return self.profile.sunspec is not None and bool(self.profile.sunspec.behind)

    @property
    def confirmed(self) -> bool:
        return not self.weak and all(r.confirmed for r in self.profile.identify)


class _NoData(Exception):
    """A cached read that got no data (exception reply or silence)."""


async def identify_sunspec(bus: Bus, unit_id: int, profile: Profile, cache: UnitCache) -> Identification:
    """SunSpec identification = discovery: SunS at 40000/0/50000, then the model chain to the profile's model."""
    ss = profile.sunspec
    assert ss is not None

    async def read(fc: int, address: int, count: int) -> list[int]:
        words = await cache.read(bus, unit_id, fc, address, count)
        if isinstance(words, str):
            raise _NoData(words)
        return words

    loc: Location | None = None
    try:
        loc = await discover(read, ss.models, ss.occurrence, absent=_NoData, behind=ss.behind)
    except (_NoData, SunSpecError):
        loc = None
    if loc is None:
        return Identification(profile, False, ())
    try:
        located = resolve(profile, loc)
    except SunSpecError:
        return Identification(profile, False, (loc.model_id,))
    device = ""
    if loc.common_address is not None:  # model 1 identification: what the device says it is
        names = []
        for offset in (COMMON_MN_OFFSET, COMMON_MD_OFFSET):
            words = await cache.read(bus, unit_id, 3, loc.common_address + offset, COMMON_STRING_WORDS)
            names.append(model_1_string(words) if isinstance(words, list) else "")
        device = " ".join(n for n in names if n)
    return Identification(profile, True, (loc.model_id, loc.model_address), located, device=device)


async def identify(bus: Bus, unit_id: int, profile: Profile, cache: UnitCache) -> Identification:
    if profile.sunspec is not None:
        return await identify_sunspec(bus, unit_id, profile, cache)
    values: list[int | str | None] = []
    for rule in profile.identify:
        v = await read_rule(bus, unit_id, rule, cache)
        values.append(v)
        if v is None or not identify_matches(rule, v):
            return Identification(profile, False, tuple(values))
    weak = any(v in r.weak for r, v in zip(profile.identify, values, strict=True))
    return Identification(profile, True, tuple(values), weak=weak)


async def identify_all(bus: Bus, unit_id: int, profiles: Sequence[Profile], cache: UnitCache) -> list[Identification]:
    return [await identify(bus, unit_id, p, cache) for p in profiles]


# ---- commissioning reads ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommissionReads:
    first: dict[str, int]
    second: dict[str, int]
    invalid: dict[str, str]
    elapsed_ms: int
    serial_number: int | str | None
    not_measured: tuple[str, ...] = ()  # energy counters this meter does not have
    image: dict[tuple[int, int], int] = field(default_factory=dict)  # raw registers, for word-order hints
    located: Profile | None = None  # the profile at the device's addresses (SunSpec discovery)
    loaded: dict[str, int] | None = None  # a third read with the installer's known load switched on


def _invalid(errors: Sequence[str]) -> dict[str, str]:
    out = {}
    for e in errors:
        name, _, reason = e.partition(": ")
        out[name] = reason
    return out


async def _read_decoded(bus: Bus, poller: Poller, meter: MeterSpec, where: str) -> tuple[dict[str, int],
                                                                                    dict[str, str], int]:
    """One read through the agent's Poller (same plan, gap fallback, decoding). When the energy counters do not
    decode (the agent would drop the reading), read the same plan once more and report what did decode, so
    commissioning can say which value is wrong instead of only "decode error"."""
    try:
        s = await poller.read_meter(meter)
        return dict(s.values), {**_invalid(s.errors), **dict.fromkeys(s.not_measured, "not_measured")}, s.monotonic_ms
    except MeterReadError as exc:
        if exc.reason != "decode":
            raise ProbeError(f"{where}: no valid reply ({exc.reason}); check wiring, unit id and framing "
                             "(`gridmeter provision scan`)") from exc
    image: dict[tuple[int, int], int] = {}
    try:
        for b in poller.plan(meter):
            words = await bus.read_registers(meter.unit_id, b.function_code, b.address, b.count)
            image.update(image_from_block(b.function_code, b.address, words))
    except BusError as exc:
        raise ProbeError(f"{where}: {exc}") from exc
    decoded = decode_image(poller.located(meter), image)
    return dict(decoded.values), dict(decoded.invalid), time.monotonic_ns() // 1_000_000


LoadStep = Callable[[], Awaitable[bool]]


async def commission_reads(target: BusTarget, profile: Profile, unit_id: int, wait_s: float,
                           load_step: LoadStep | None = None) -> CommissionReads:
    """Two reads through the agent's Poller `wait_s` apart, the raw registers of the second, the serial number;
    then, if `load_step` returns True (the installer switched a known load on), a third read."""
    async with opened(target, timeout_s=DEFAULT_COMMISSION_TIMEOUT_S, retries=DEFAULT_COMMISSION_RETRIES) as bus:
        meter = MeterSpec(meter_id="COMMISSIONING", bus=bus.name, unit_id=unit_id, profile=profile)
        poller = Poller(bus, [meter])
        where = f"{profile.id} at unit {unit_id} on {target.describe()}"
        first, _inv1, t1 = await _read_decoded(bus, poller, meter, where)
        await asyncio.sleep(wait_s)
        second, invalid, t2 = await _read_decoded(bus, poller, meter, where)
        image: dict[tuple[int, int], int] = {}
        for b in poller.plan(meter):
            with contextlib.suppress(BusError):  # a refused optional block: nothing to show for it
                image.update(image_from_block(b.function_code, b.address,
                                              await bus.read_registers(unit_id, b.function_code, b.address, b.count)))
        sn = None
        located = poller.located(meter)
        if located.serial_number is not None:
            sn = await read_rule(bus, unit_id, located.serial_number, UnitCache())
        loaded = None
        if load_step is not None and await load_step():
            loaded, _inv3, _t3 = await _read_decoded(bus, poller, meter, where)
    not_measured = tuple(k for k, v in invalid.items() if v == "not_measured")
    invalid = {k: v for k, v in invalid.items() if v != "not_measured"}
    return CommissionReads(first, second, invalid, t2 - t1, sn, not_measured, image, located, loaded)
