"""ModbusTcpMeters: SimulatedMeters behind a pymodbus SimTcpServer on a free 127.0.0.1 port.

`framing="socket"` is Modbus TCP (MBAP header); `framing="rtu"` is RTU-over-TCP (RTU frames with CRC in a TCP
stream, as cheap serial gateways do). Same fault injection as the virtual RTU bus; unknown unit ids are silent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Literal

from pymodbus.framer import FramerType

from testbed.meter import SimulatedMeter
from testbed.ports import free_port
from testbed.simserver import MeterServer, SimTcpServer

DEFAULT_START_TIMEOUT_S = 10.0


class ModbusTcpMeters:
    def __init__(self, meters: Sequence[SimulatedMeter], *, framing: Literal["socket", "rtu"] = "socket",
                 port: int | None = None, turnaround_ms: int = 0) -> None:
        self.meters = list(meters)
        self.framing = framing
        self.host, self.port = "127.0.0.1", port or free_port()
        self.core = MeterServer(self.meters, turnaround_ms=turnaround_ms, rtu_frames=framing == "rtu")
        self._server: SimTcpServer | None = None

    def set_fault(self, unit_id: int, **kw: object) -> None:
        self.core.set_fault(unit_id, **kw)

    def clear_faults(self) -> None:
        self.core.clear_faults()

    async def start(self, timeout_s: float = DEFAULT_START_TIMEOUT_S) -> ModbusTcpMeters:
        self._server = SimTcpServer(
            self.core.devices(), framer=FramerType.RTU if self.framing == "rtu" else FramerType.SOCKET,
            address=(self.host, self.port), trace_packet=self.core.trace_packet,
        )
        await self._server.serve_forever(background=True)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:  # serve_forever(background=True) returns once listening; confirm with a connect
            try:
                _r, w = await asyncio.open_connection(self.host, self.port)
                w.close()
                await w.wait_closed()
                return self
            except OSError:
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError(f"Modbus TCP meters not listening on {self.port}") from None
                await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.shutdown()
            self._server = None

    async def __aenter__(self) -> ModbusTcpMeters:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
