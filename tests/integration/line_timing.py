"""Deadlines for bus tests, derived from line timing measured just before the test, never fixed wall times.

A timeout a test WAITS FOR (no reply, a reply too slow) must be short to keep the test fast, yet longer than any
honest reply, and an honest reply on a shared 2-core machine takes what the scheduler gives it: the simulated
meters, socat and the client all need CPU. So each test first measures the round trip of real reads on its own
line (through agent.bus, turnaround pauses included) and derives from the slowest one:

    timeout_s          = max(floor, MARGIN x slowest round trip, 2 x computed wire time)
    in_time_delay_s    = timeout_s / 4        a slow reply that must still be read: delay + round trip <= timeout/2
    too_slow_delay_s   = (attempts + 1) x timeout_s   later than all attempts together, with one attempt to spare
    settle_s           = how long a line may need to answer again after a fault (stale slow replies drain)

Set GRIDMETER_TIMING_LOG=<file> to append one JSON line per measurement (scripts/loadcheck reports them).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace

from agent.bus import BusSpec, open_bus

MARGIN = 4.0
PROBES = 3
PROBE_TIMEOUT_S = 10.0  # only bounds a probe; an honest reply comes far sooner even on a loaded machine
DEFAULT_FLOOR_S = 0.4


@dataclass(frozen=True)
class LineTiming:
    wire_s: float  # computed RTU wire time of the probed read (0 for a line without emulated timing)
    rtts_s: tuple[float, ...]  # measured round trips of the probe reads
    floor_s: float = DEFAULT_FLOOR_S
    attempts: int = 2  # tries per read of the bus under test (1 + retries)

    @property
    def rtt_s(self) -> float:
        return max(self.rtts_s)

    @property
    def timeout_s(self) -> float:
        return max(self.floor_s, MARGIN * self.rtt_s, 2 * self.wire_s)

    @property
    def in_time_delay_s(self) -> float:
        return self.timeout_s / 4

    @property
    def too_slow_delay_s(self) -> float:
        return (self.attempts + 1) * self.timeout_s

    @property
    def settle_s(self) -> float:
        """Upper bound for a line to read a meter again after a fault was cleared: queued stale replies, each up to
        too_slow_delay_s late, then a few full reads with retries."""
        return 3 * self.too_slow_delay_s + 10 * self.attempts * self.timeout_s


async def measure(spec: BusSpec, unit_id: int, function_code: int, address: int, count: int, *, wire_s: float = 0.0,
                  floor_s: float = DEFAULT_FLOOR_S, attempts: int = 2) -> LineTiming:
    """Round trips of PROBES reads on the line of `spec` (its own Bus, closed again: one owner per port)."""
    bus = open_bus(replace(spec, name=f"{spec.name}-probe", timeout_s=PROBE_TIMEOUT_S, retries=0))
    rtts = []
    try:
        for _ in range(PROBES):
            t0 = time.monotonic()
            await bus.read_registers(unit_id, function_code, address, count)
            rtts.append(time.monotonic() - t0)
    finally:
        await bus.close()
    timing = LineTiming(wire_s, tuple(rtts), floor_s, attempts)
    log = os.environ.get("GRIDMETER_TIMING_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({"test": os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0],
                                "wire_ms": round(wire_s * 1000, 1), "rtt_ms": [round(r * 1000, 1) for r in rtts],
                                "timeout_ms": round(timing.timeout_s * 1000, 1)}) + "\n")
    return timing
