"""pymodbus 3.16 simulator plumbing shared by testbed/rtu.py and testbed/tcp.py.

Each SimulatedMeter becomes one `SimDevice` with separate holding/input blocks (Eastron input and holding maps
both start at 0). The device `action` hook (awaited on every access, pymodbus 3.16 server request handler) refreshes the
registers from the meter's counters, emulates line timing and slow replies, and answers injected exception codes;
the server's `trace_packet` hook (what actually goes on the wire) drops replies for silence and corrupts the CRC.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pymodbus.constants import ExcCodes
from pymodbus.pdu import ExceptionResponse
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice

from agent.planner import char_time_s, t35_s
from testbed.meter import Framing, SimulatedMeter

log = logging.getLogger(__name__)

# A SimDevice needs all four blocks non-empty (IndexError otherwise, B.1): a meter without holding (or input)
# registers gets one register at the top of the address space, far from any profile's map.
PLACEHOLDER_ADDRESS = 0xFFFE


class _OneRequestAtATimeHandler(ServerRequestHandler):
    """pymodbus 3.16.1 `handle_request` reads `self.last_pdu` again after awaiting the datastore, so a request that
    arrives while a slow device is still "answering" gets the slow device's registers stamped with its own unit id
    (and a garbage frame in between crashes the task). Take the request once, at the start."""

    async def handle_request(self) -> None:
        pdu, addr = self.last_pdu, self.last_addr
        if not pdu:
            return
        try:
            response = await pdu.datastore_update(self.server.context, pdu.dev_id)
        except Exception:  # unknown unit id (KeyError in SimCore) etc.: the reply is dropped in trace_packet
            response = ExceptionResponse(pdu.function_code, ExcCodes.DEVICE_FAILURE)
        response.transaction_id = pdu.transaction_id
        response.dev_id = pdu.dev_id
        self.server_send(response, addr)


class SimSerialServer(ModbusSerialServer):
    def callback_new_connection(self) -> ServerRequestHandler:
        return _OneRequestAtATimeHandler(self, self.trace_packet, self.trace_pdu, self.trace_connect)


class SimTcpServer(ModbusTcpServer):
    def callback_new_connection(self) -> ServerRequestHandler:
        return _OneRequestAtATimeHandler(self, self.trace_packet, self.trace_pdu, self.trace_connect)


@dataclass
class Faults:
    """Per-unit fault injection, switchable at run time."""

    no_reply: bool = False  # request swallowed: the client times out
    corrupt_crc: bool = False  # reply sent with a broken CRC (RTU framing): the client discards it
    exception_code: int | None = None  # answer every read with this Modbus exception
    delay_s: float = 0.0  # extra reply delay ("slow meter")
    garbage: bool = False  # reply replaced by noise of the same length (a babbling device, EMI on the line)
    # a late reply: reads starting at late_address (None: every read) are answered late_s later, and while this
    # is set the unit answers its requests in order (a meter handles one request at a time: later ones wait)
    late_s: float = 0.0
    late_address: int | None = None

    @classmethod
    def from_dict(cls, d: dict) -> Faults:
        late_address = d.get("late_address")
        return cls(no_reply=bool(d.get("no_reply", False)), corrupt_crc=bool(d.get("corrupt_crc", False)),
                   exception_code=d.get("exception_code"), delay_s=float(d.get("delay_s", 0.0)),
                   garbage=bool(d.get("garbage", False)), late_s=float(d.get("late_s", 0.0)),
                   late_address=None if late_address is None else int(late_address))


def runs(image: dict[int, int]) -> list[SimData]:
    """Contiguous address runs of a register image as SimData blocks."""
    out: list[SimData] = []
    addrs = sorted(image)
    i = 0
    while i < len(addrs):
        j = i
        while j + 1 < len(addrs) and addrs[j + 1] == addrs[j] + 1:
            j += 1
        out.append(SimData(addrs[i], values=[image[a] for a in addrs[i:j + 1]], datatype=DataType.REGISTERS))
        i = j + 1
    return out


class MeterServer:
    """Faults, timing and silence for a set of meters served by one pymodbus server."""

    def __init__(
        self, meters: Sequence[SimulatedMeter], *, framing: Framing | None = None, line_timing: bool = False,
        turnaround_ms: int = 0, rtu_frames: bool = True,
        client_framing: Callable[[], Framing | None] | None = None,
    ) -> None:
        ids = [m.unit_id for m in meters]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate unit ids on one bus: {sorted(ids)}")
        self.meters = {m.unit_id: m for m in meters}
        self.framing, self.line_timing, self.turnaround_ms = framing, line_timing, turnaround_ms
        self.rtu_frames, self.client_framing = rtu_frames, client_framing
        self.faults: dict[int, Faults] = {}
        self.dropped = 0  # replies not sent (silence): unknown ids, framing mismatch, no_reply
        self.late_replies = 0  # reads answered late (Faults.late_s), counted as the reply goes out
        self._in_order: dict[int, asyncio.Lock] = {}
        self._last_mismatch: tuple[int, Framing | None] | None = None
        self.comparable: Callable[[Framing], Framing] = lambda f: f  # what the link can observe of a framing

    def set_fault(self, unit_id: int, **kw: object) -> None:
        self.faults[unit_id] = Faults(**kw)  # type: ignore[arg-type]

    def clear_faults(self) -> None:
        self.faults.clear()

    def devices(self) -> list[SimDevice]:
        out = []
        for m in self.meters.values():
            blocks = []
            for fc in (3, 4):
                image = m.image(fc) if fc in m.function_codes() else {}
                blocks.append(runs(image) or [SimData(PLACEHOLDER_ADDRESS, values=[0], datatype=DataType.REGISTERS)])
            bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
            out.append(SimDevice(m.unit_id, simdata=(bits, list(bits), blocks[0], blocks[1]),
                                 action=functools.partial(self._action, m)))
        return out

    def meter_framing(self, meter: SimulatedMeter) -> Framing:
        return meter.framing or self.framing or Framing()

    def framing_ok(self, meter: SimulatedMeter) -> bool:
        if self.client_framing is None:
            return True
        client = self.client_framing()
        ok = client is not None and self.comparable(client) == self.comparable(self.meter_framing(meter))
        if not ok:  # silence by design; say why once per distinct cause (a flaky test needs this to be diagnosed)
            cause = (meter.unit_id, client)
            if cause != self._last_mismatch:
                self._last_mismatch = cause
                log.warning("unit %d stays silent: client framing %s, meter framing %s", meter.unit_id, client,
                            self.meter_framing(meter))
        return ok

    def wire_time_s(self, meter: SimulatedMeter, response_bytes: int) -> float:
        """Request (8 bytes) + response + 2 x t3.5 at the meter's framing (B.3)."""
        f = self.meter_framing(meter)
        tc = char_time_s(f.baudrate, f.parity, f.stopbits, f.bytesize)
        return (8 + response_bytes) * tc + 2 * t35_s(f.baudrate, f.parity, f.stopbits, f.bytesize)

    async def _action(self, meter: SimulatedMeter, fc: int, start: int, address: int, count: int,
                      registers: list[int], values: list[int] | list[bool] | None) -> ExcCodes | None:
        fault = self.faults.get(meter.unit_id, Faults())
        if not fault.late_s:
            return await self._answer(meter, fault, fc, start, address, count, registers, values)
        async with self._in_order.setdefault(meter.unit_id, asyncio.Lock()):
            late = fault.late_address in (None, address)
            result = await self._answer(meter, fault, fc, start, address, count, registers, values,
                                        fault.late_s if late else 0.0)
            self.late_replies += late
            return result

    async def _answer(self, meter: SimulatedMeter, fault: Faults, fc: int, start: int, address: int, count: int,
                      registers: list[int], values: list[int] | list[bool] | None, late_s: float = 0.0
                      ) -> ExcCodes | None:
        if not self.framing_ok(meter) or fault.no_reply:
            return None  # the reply is dropped in trace_packet; do not hold the line
        if values is not None:
            return ExcCodes.ILLEGAL_FUNCTION  # the simulated meters are read-only
        delay = fault.delay_s + late_s + self.turnaround_ms / 1000
        if fault.exception_code is not None:
            if self.line_timing:
                delay += self.wire_time_s(meter, 5)
            await asyncio.sleep(delay)
            return ExcCodes(fault.exception_code)
        image = meter.image(fc)
        meter.reads += 1
        for a in range(address, address + count):
            if a in image:
                registers[a - start] = image[a]
        if self.line_timing:
            delay += self.wire_time_s(meter, 5 + 2 * count)
        if delay > 0:
            await asyncio.sleep(delay)
        return None

    def trace_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending or not data:
            return data
        unit = data[0] if self.rtu_frames else (data[6] if len(data) > 6 else -1)
        meter = self.meters.get(unit)
        fault = self.faults.get(unit, Faults())
        if meter is None or not self.framing_ok(meter) or fault.no_reply:
            self.dropped += 1
            return b""  # a real RS-485 bus stays silent (pymodbus would answer exception 4 for unknown ids)
        if fault.corrupt_crc and self.rtu_frames:
            return data[:-1] + bytes([data[-1] ^ 0xFF])
        if fault.garbage:
            return os.urandom(len(data))
        return data
