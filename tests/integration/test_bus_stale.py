"""A reply that arrives after its request timed out is never taken for the reply to the next request.

RTU has no transaction id: a late reply to block A (FC04 0x0048+2, import energy) looks exactly like the reply to
block B (FC04 0x004A+2, export energy, the same count). Real harness: a socat pty pair as the RS-485 link and a
pymodbus RTU server meter (line timing emulated at 9600 8N1) that answers reads of A `late_s` after the request
(testbed.simserver.Faults.late_s, in order: later requests wait for it, as on a real meter). Whatever the timing,
what the bus returns for B is B's registers or a read error, never A's; every late frame is counted as stale.

Timeouts and lateness come from the line's measured round trip (tests/integration/line_timing.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from agent.bus import Bus, BusError, BusSpec, BusTimeoutError, open_bus
from agent.planner import rtu_read_time_s
from firmware_config.loader import get_profile
from testbed.meter import SimulatedMeter
from testbed.rtu import VirtualRtuBus
from tests.integration import line_timing
from tests.integration.line_timing import LineTiming

pytestmark = pytest.mark.integration
UNIT = 1
A, B = 0x0048, 0x004A  # Eastron import / export energy, float32 kWh: 2 registers each


@pytest.fixture
async def vbus() -> AsyncIterator[VirtualRtuBus]:
    meter = SimulatedMeter(get_profile("eastron-sdm630"), UNIT, import_wh=1_234_567, export_wh=89_001)
    async with VirtualRtuBus([meter], 9600, line_timing=True) as bus:
        yield bus


@pytest.fixture
async def line(vbus: VirtualRtuBus) -> LineTiming:
    return await line_timing.measure(BusSpec("rs485-0", "rtu", port=vbus.client_port), UNIT, 4, A, 2,
                                     wire_s=rtu_read_time_s(2, 9600), attempts=1)


@pytest.fixture
async def bus(vbus: VirtualRtuBus, line: LineTiming) -> AsyncIterator[Bus]:
    b = open_bus(BusSpec("rs485-0", "rtu", port=vbus.client_port, timeout_s=line.timeout_s, retries=0))
    try:
        yield b
    finally:
        await b.close()


def registers(vbus: VirtualRtuBus, address: int) -> list[int]:
    image = vbus.meters[0].image(4)
    return [image[address], image[address + 1]]


async def read_b(bus: Bus, vbus: VirtualRtuBus) -> list[int] | None:
    """B's registers, or None for a read error; A's registers never."""
    try:
        got = await bus.read_registers(UNIT, 4, B, 2)
    except BusError:
        return None
    assert got != registers(vbus, A), "a late reply to block A was returned as block B"
    assert got == registers(vbus, B)
    return got


async def until(condition: object, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline
        await asyncio.sleep(0.005)


async def warm(bus: Bus, vbus: VirtualRtuBus) -> None:
    assert registers(vbus, A) != registers(vbus, B)
    assert await bus.read_registers(UNIT, 4, A, 2) == registers(vbus, A)
    assert await bus.read_registers(UNIT, 4, B, 2) == registers(vbus, B)


async def test_late_reply_while_idle_is_discarded(vbus: VirtualRtuBus, bus: Bus, line: LineTiming) -> None:
    await warm(bus, vbus)
    vbus.set_fault(UNIT, late_s=1.5 * line.timeout_s, late_address=A)
    with pytest.raises(BusTimeoutError):
        await bus.read_registers(UNIT, 4, A, 2)
    # the late frame crosses the pty while no request waits (held by the bus until its next request)
    await until(lambda: len(bus._stale_rx) == 9, 10 * line.timeout_s)
    assert await read_b(bus, vbus) == registers(vbus, B)
    # the late frame was A's (the only read of that shape outstanding): the unit is in sync, B needed no resync
    assert (bus.stats.stale_frames, bus.stats.stale_reasons, bus.stats.resyncs) == (1, {"late_reply": 1}, 0)
    assert bus.stats.stale_bytes == 9  # unit, FC, byte count, 4 data bytes, CRC
    vbus.clear_faults()
    assert await bus.read_registers(UNIT, 4, A, 2) == registers(vbus, A)


async def test_late_reply_while_the_next_request_waits_is_cut_out(vbus: VirtualRtuBus, bus: Bus,
                                                                  line: LineTiming) -> None:
    await warm(bus, vbus)
    # A's reply comes half a timeout after A timed out: while the bus waits for its next exchange with the unit
    vbus.set_fault(UNIT, late_s=1.5 * line.timeout_s, late_address=A)
    with pytest.raises(BusTimeoutError):
        await bus.read_registers(UNIT, 4, A, 2)
    # B has A's shape: the bus first resynchronises with a read of another size (B's first register); A's late
    # reply arrives while that read waits, is cut out by its byte count, then the resync reply proves the unit in sync
    assert await read_b(bus, vbus) == registers(vbus, B)
    assert vbus.core.late_replies == 1
    assert (bus.stats.stale_frames, bus.stats.stale_reasons, bus.stats.resyncs) == (1, {"wrong_byte_count": 1}, 1)
    assert bus.sync.suspects(UNIT) == {}


async def test_reply_later_than_the_resync_is_never_taken(vbus: VirtualRtuBus, bus: Bus, line: LineTiming) -> None:
    await warm(bus, vbus)
    # later than A's timeout and the resynchronising read's timeout after it (+ 1.5 timeouts for a loaded machine)
    late = 3.5 * line.timeout_s
    vbus.set_fault(UNIT, late_s=late, late_address=A)
    t0 = time.monotonic()
    with pytest.raises(BusTimeoutError):
        await bus.read_registers(UNIT, 4, A, 2)
    results = []
    while time.monotonic() - t0 < late + 10 * line.timeout_s:  # B as fast as the bus allows: errors, then B
        results.append(await read_b(bus, vbus))
        if results[-1] is not None and time.monotonic() - t0 > late:
            break
    assert results[0] is None  # the resync read timed out behind A's late reply: a read error, no value
    assert results[-1] == registers(vbus, B)
    # A's late reply and the late reply to the first resync read were both discarded, nothing else
    assert bus.stats.stale_frames == 2, bus.stats
    assert sum(bus.stats.stale_reasons.values()) == 2 and set(bus.stats.stale_reasons) <= {
        "late_reply", "wrong_byte_count"}
    print(f"\nlate by {late:.2f}s: B reads {['error' if r is None else 'B' for r in results]}; stale "
          f"{bus.stats.stale_reasons}, resyncs {bus.stats.resyncs}")


async def test_a_block_always_answered_late_never_reads_an_old_value(vbus: VirtualRtuBus, line: LineTiming) -> None:
    # with a retry: a late reply of the same block is refused too (it would pass an old value off as read now)
    bus = open_bus(BusSpec("rs485-0", "rtu", port=vbus.client_port, timeout_s=line.timeout_s, retries=1))
    try:
        await warm(bus, vbus)
        vbus.set_fault(UNIT, late_s=1.5 * line.timeout_s, late_address=A)
        for _ in range(2):
            with pytest.raises(BusTimeoutError):
                await bus.read_registers(UNIT, 4, A, 2)
        # the meter answers in order, so B waits behind the late A replies still queued: errors, then B
        deadline = time.monotonic() + 20 * line.timeout_s
        while await read_b(bus, vbus) is None:
            assert time.monotonic() < deadline
        assert vbus.core.late_replies >= 2 and bus.stats.stale_frames >= 2, (vbus.core.late_replies, bus.stats)
        vbus.clear_faults()
        assert await bus.read_registers(UNIT, 4, A, 2) == registers(vbus, A)
    finally:
        await bus.close()
