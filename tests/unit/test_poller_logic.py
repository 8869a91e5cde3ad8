"""agent.poller logic with a scripted stand-in bus (unit test of pure scheduling/decoding decisions; the real bus
is covered in tests/integration/test_bus_rtu.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from agent.bus import BusExceptionResponse, BusSpec, BusTimeoutError, DeviceTiming
from agent.poller import DEFAULT_BACKOFF_AFTER, MeterReadError, MeterSample, MeterSpec, Poller
from firmware_config.loader import load_all
from firmware_config.schema import Profile
from testbed.meter import SimulatedMeter

SDM630 = load_all()["eastron-sdm630"]


class ScriptedBus:
    """Answers from SimulatedMeters; `fail` maps unit id -> exception to raise for every read."""

    def __init__(self, meters: list[SimulatedMeter]) -> None:
        self.spec = BusSpec("b", "rtu", port="/dev/null")
        self.name = "b"
        self.meters = {m.unit_id: m for m in meters}
        self.fail: dict[int, Exception] = {}
        self.calls: list[tuple[int, int, int, int, int | None]] = []
        self.timing: dict[int, DeviceTiming] = {}

    def set_device_timing(self, unit_id: int, timing: DeviceTiming) -> None:
        self.timing[unit_id] = timing

    async def read_registers(self, unit_id: int, fc: int, address: int, count: int, *,
                             timeout_s: float | None = None, retries: int | None = None) -> list[int]:
        self.calls.append((unit_id, fc, address, count, retries))
        if unit_id in self.fail:
            raise self.fail[unit_id]
        image = self.meters[unit_id].image(fc)
        if any(a not in image for a in range(address, address + count)):
            raise BusExceptionResponse("b", 2, "illegal data address")
        return [image[a] for a in range(address, address + count)]


class Clock:
    def __init__(self) -> None:
        self.ns = 1_000_000_000_000

    def __call__(self) -> int:
        return self.ns


def make(meters: list[SimulatedMeter], profile: Profile = SDM630) -> tuple[Poller, ScriptedBus, Clock]:
    bus = ScriptedBus(meters)
    clock = Clock()
    specs = [MeterSpec(f"M{m.unit_id}", "b", m.unit_id, profile) for m in meters]
    return Poller(bus, specs, wall_clock_ns=clock, monotonic_ns=clock), bus, clock  # type: ignore[arg-type]


async def test_device_timing_comes_from_the_profile() -> None:
    _p, bus, _c = make([SimulatedMeter(SDM630, 1)])
    assert bus.timing[1] == DeviceTiming(100, 200, 0)


async def test_energy_sentinel_is_a_decode_error_not_a_number() -> None:
    p, _bus, _c = make([SimulatedMeter(SDM630, 1, invalid={"energy_export_wh"})])
    with pytest.raises(MeterReadError) as e:
        await p.read_meter(p.meters[0])
    assert (e.value.reason, e.value.detail) == ("decode", "energy_export_wh: nan")


async def test_invalid_optional_value_makes_a_partial_sample() -> None:
    p, _bus, clock = make([SimulatedMeter(SDM630, 1, import_wh=5, invalid={"frequency_mhz"})])
    s = await p.read_meter(p.meters[0])
    assert s.errors == ("frequency_mhz: nan",)
    assert "frequency_mhz" not in s.values and s.values["energy_import_wh"] == 5
    assert s.read_at_ms == clock.ns // 1_000_000 == s.monotonic_ms


async def test_failed_optional_block_is_partial_failed_energy_block_is_error() -> None:
    split = replace(SDM630, read=replace(SDM630.read, max_registers=40))  # energy in a block of its own
    p, bus, _c = make([SimulatedMeter(split, 1, import_wh=77)], profile=split)
    assert len(p.plan(p.meters[0])) == 2
    real = bus.read_registers

    async def flaky(unit_id: int, fc: int, address: int, count: int, **kw: object) -> list[int]:
        if address == 0:
            raise BusTimeoutError("b", "no reply")
        return await real(unit_id, fc, address, count, **kw)  # type: ignore[arg-type]

    bus.read_registers = flaky  # type: ignore[method-assign]
    s = await p.read_meter(p.meters[0])
    assert s.values["energy_import_wh"] == 77
    assert s.errors == ("block FC04@0x0000+12: timeout",)
    bus.fail[1] = BusTimeoutError("b", "no reply")
    with pytest.raises(MeterReadError, match="timeout"):
        await p.read_meter(p.meters[0])


async def test_gap_rejection_replans_once() -> None:
    strict = replace(SDM630, read=replace(SDM630.read, gaps="exception", readable=()))
    p, bus, _c = make([SimulatedMeter(strict, 1, import_wh=9)], profile=SDM630)
    s = await p.read_meter(p.meters[0])
    assert s.values["energy_import_wh"] == 9
    assert [c[2:4] for c in bus.calls] == [(0, 76), (0, 12), (0x34, 2), (0x3E, 2), (0x46, 6)]
    assert p.device_status()["M1"]["gap_reads"] is False


async def test_backoff_is_capped_exponential_and_probes_without_retries() -> None:
    p, bus, clock = make([SimulatedMeter(SDM630, 1), SimulatedMeter(SDM630, 2)])
    bus.fail[2] = BusTimeoutError("b", "no reply")
    samples: list[MeterSample] = []
    errors: list[MeterReadError] = []

    async def on_sample(s: MeterSample) -> None:
        samples.append(s)

    async def on_error(_m: MeterSpec, e: MeterReadError) -> None:
        errors.append(e)

    backoffs = []
    for _ in range(40):  # 40 cycles of 10 s
        await p.poll_once(10.0, on_sample, on_error)
        backoffs.append(p.device_status()["M2"]["backoff_s"])
        clock.ns += 10 * 1_000_000_000
    assert len(samples) == 40  # the healthy meter is read every cycle
    distinct = [b for i, b in enumerate(backoffs) if i == 0 or b != backoffs[i - 1]]
    assert distinct == [0.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0]  # capped at DEFAULT_BACKOFF_MAX_S
    assert len(errors) == 7  # probes in cycles 1, 2, 3, 5, 9, 17, 33 of 40: the next is due 300 s after 33

    retries = [c[4] for c in bus.calls if c[0] == 2]
    assert retries[:DEFAULT_BACKOFF_AFTER] == [None] * DEFAULT_BACKOFF_AFTER and set(retries[2:]) == {0}
    bus.fail.clear()
    clock.ns += 301 * 1_000_000_000
    await p.poll_once(10.0, on_sample, on_error)
    st = p.device_status()["M2"]
    assert (st["consecutive_errors"], st["backoff_s"], st["last_ok_ms"]) == (0, 0.0, clock.ns // 1_000_000)


async def test_callback_failure_is_counted_not_fatal() -> None:
    p, _bus, _c = make([SimulatedMeter(SDM630, 1)])

    async def broken(_s: MeterSample) -> None:
        raise RuntimeError("store full")

    async def on_error(_m: MeterSpec, _e: MeterReadError) -> None:
        return None

    await p.poll_once(1.0, broken, on_error)
    assert p.stats.callback_errors == 1


def test_meter_on_another_bus_is_rejected() -> None:
    with pytest.raises(ValueError, match="is on bus 'x'"):
        Poller(ScriptedBus([]), [MeterSpec("A", "x", 1, SDM630)])  # type: ignore[arg-type]
