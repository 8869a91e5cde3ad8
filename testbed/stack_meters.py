"""The simulated meters of a testbed.stack run: which meters (StackMeter, demo_meters) and their servers.

What lives where: this module says which meters a stack has and runs their Modbus servers (MeterServers, on their
own event loop in a thread, so they keep counting while the stack's processes are killed); testbed.stack starts
and stops the processes, testbed.stack_config writes their config files, testbed.stack_report settles and reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass
from typing import Any

# A StackMeter's role as the registration record's MeterRole number.
ROLES = {"grid": 0, "production": 1, "consumption": 2}


@dataclass(frozen=True)
class StackMeter:
    meter_id: str
    profile: str
    link: str  # "rtu" | "tcp"
    unit_id: int
    role: str  # grid | production | consumption
    power_w: int  # + imports, - exports
    import_wh: int
    export_wh: int


# The demo's meters: three on one RS-485 line, then Modbus TCP. Float32 kWh registers (SDM630/SDM120) stay
# below 8192 kWh so every whole Wh round-trips (see testbed.meter).
_TEMPLATES = (
    ("HOUSE", "eastron-sdm630", "grid", 4_200, 1_234_567, 89_012),
    ("FLAT", "eastron-sdm120", "consumption", 1_800, 456_789, 0),
    ("SHOP", "carlogavazzi-em340", "consumption", 7_500, 2_345_600, 0),
    ("PV", "eastron-sdm630", "production", -5_400, 0, 3_210_987),
    ("BAKERY", "eastron-sdm630", "consumption", 9_600, 3_100_000, 0),
    ("ROOF", "eastron-sdm630", "grid", -3_000, 700_000, 1_500_000),
)
MAX_RTU_METERS = 3  # 9600 baud: three meters per line keep a poll cycle well under the demo's 2 s


def demo_meters(n: int, *, rtu: bool = True) -> list[StackMeter]:
    """n meters cycling through the templates; the first three on RS-485 when `rtu`, the rest Modbus TCP."""
    out = []
    tcp_unit = 0
    for i in range(n):
        name, profile, role, power, imp, exp = _TEMPLATES[i % len(_TEMPLATES)]
        on_rtu = rtu and i < MAX_RTU_METERS
        if not on_rtu:
            tcp_unit += 1
        out.append(StackMeter(f"{name}-{i + 1}", profile, "rtu" if on_rtu else "tcp",
                              i + 1 if on_rtu else tcp_unit, role, power, imp + 1000 * i, exp + 1000 * i))
    return out


class MeterServers:
    """The simulated meters' servers on their own event loop in a thread: they keep counting and answering
    while the agent is killed, and the caller stays synchronous."""

    def __init__(self, servers: list[Any]) -> None:
        self.servers = servers
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="meter-servers", daemon=True)

    def start(self) -> None:
        self._thread.start()
        for s in self.servers:
            asyncio.run_coroutine_threadsafe(s.start(), self._loop).result(60)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        for s in reversed(self.servers):
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(s.stop(), self._loop).result(30)
        asyncio.run_coroutine_threadsafe(self._cancel_rest(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    @staticmethod
    async def _cancel_rest() -> None:
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in rest:
            t.cancel()
        await asyncio.gather(*rest, return_exceptions=True)
