"""`python -m bench bus --json`: one full SDM630 read over a virtual RS-485 link, 9600 8N1, line timing emulated.

The simulated meter (testbed.rtu, socat pty pair + pymodbus RTU server in its own thread) holds every reply for
the RTU wire time of the request + response + 2 x t3.5, so a perfect master would measure exactly the line
minimum. Keys: wire_time_ms (measured median of a full read through agent.bus.Bus + agent.poller.Poller),
line_minimum_ms (computed RTU minimum of the same requests, Modbus over Serial Line V1.02 §2.5.1), ratio,
requests_per_read. Targets: ratio <= 1.15, requests_per_read <= 3.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from agent.bus import BusSpec, open_bus
from agent.planner import rtu_read_time_s
from agent.poller import MeterSpec, Poller
from firmware_config.loader import get_profile, load_all
from firmware_config.schema import BAUDRATES
from testbed.meter import SimulatedMeter
from testbed.rtu import VirtualRtuBus

DEFAULT_READS = 20
DEFAULT_BAUD = 9600
TARGET_RATIO = 1.15
TARGET_REQUESTS = 3
# Idle time between measured reads, longer than the SDM's 100 ms inter-request pause and the 30 ms bus
# turnaround, so the measured time is the read itself and not a pause the profile asks for.
IDLE_BETWEEN_READS_S = 0.25


MAX_READS = 10_000  # ~45 min at 9600 baud: more says nothing new


def _reads(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number (got {text!r})") from None
    if not 1 <= n <= MAX_READS:
        raise argparse.ArgumentTypeError(f"1..{MAX_READS} (got {n})")
    return n


def add_arguments(parser: argparse.ArgumentParser) -> None:
    rtu_profiles = sorted(pid for pid, p in load_all().items() if "rtu" in p.transports)
    parser.add_argument("--reads", type=_reads, default=DEFAULT_READS, help=f"measured full reads (1..{MAX_READS})")
    parser.add_argument("--baud", type=int, default=DEFAULT_BAUD, choices=BAUDRATES)
    parser.add_argument("--profile", default="eastron-sdm630", choices=rtu_profiles)


async def _measure(port: str, profile_id: str, baud: int, reads: int) -> tuple[list[float], Any, Any]:
    profile = get_profile(profile_id)
    bus = open_bus(BusSpec("bench", "rtu", port=port, baudrate=baud, timeout_s=1.0, retries=0))
    try:
        poller = Poller(bus, [MeterSpec("BENCH", "bench", 1, profile)])
        meter = poller.meters[0]
        await poller.read_meter(meter)  # warm-up: opens the port
        times = []
        for _ in range(reads):
            await asyncio.sleep(IDLE_BETWEEN_READS_S)
            t0 = time.perf_counter()
            sample = await poller.read_meter(meter)
            times.append(time.perf_counter() - t0)
        return times, poller.plan(meter), sample
    finally:
        await bus.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    profile = get_profile(args.profile)
    sim = SimulatedMeter(profile, 1, import_wh=4_321_000, export_wh=12_345, power_w=7_400)
    vbus = VirtualRtuBus([sim], args.baud, "N", 1, line_timing=True).run_in_thread()
    try:
        times, plan, sample = asyncio.run(_measure(vbus.client_port, args.profile, args.baud, args.reads))
    finally:
        vbus.stop_thread()
    if sample.values["energy_import_wh"] != sim.served_import_wh:
        raise RuntimeError(f"read {sample.values['energy_import_wh']} Wh, meter served {sim.served_import_wh}")
    line_min = sum(rtu_read_time_s(b.count, args.baud, "N", 1) for b in plan)
    wire = statistics.median(times)
    ratio = wire / line_min
    return {
        "benchmark": "bus", "profile": args.profile, "framing": f"{args.baud} 8N1", "reads": len(times),
        "wire_time_ms": round(wire * 1000, 2), "wire_time_min_ms": round(min(times) * 1000, 2),
        "wire_time_max_ms": round(max(times) * 1000, 2), "line_minimum_ms": round(line_min * 1000, 2),
        "ratio": round(ratio, 4), "requests_per_read": len(plan),
        "registers_per_read": sum(b.count for b in plan),
        "ok": ratio <= TARGET_RATIO and len(plan) <= TARGET_REQUESTS,
        "targets": {"ratio_max": TARGET_RATIO, "requests_per_read_max": TARGET_REQUESTS},
    }
