"""`python -m bench scan --json`: `provision scan` of one virtual RS-485 bus carrying every RTU profile's meter.

One simulated meter per profile (socat pty pair + pymodbus RTU server, line timing emulated at 9600 8N1) at unit
ids 1..N; the scan probes exactly those ids at 9600 8N1. Keys: scan_s (measured), meters, found (meters named),
identify_reads_per_unit (distinct identification reads of the library, first function code of each rule),
line_estimate_s (same-run reference: per unit one presence read + each of those reads at the RTU wire time of a
data reply, Modbus over Serial Line V1.02 §2.5.1, plus the scan's deliberate pause between units; most reads are
answered by a shorter exception reply, so a scan can beat it), ratio = scan_s / line_estimate_s.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from agent.planner import rtu_read_time_s
from firmware_config.loader import load_all
from provisioning.scan import DEFAULT_PROBE_DELAY_MS, ScanOptions, run_scan
from testbed.meter import SimulatedMeter
from testbed.rtu import VirtualRtuBus

BAUD = 9600
TIMEOUT_S = 0.15  # every id on the bus answers; the timeout only matters for ids that do not


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout-s", type=float, default=TIMEOUT_S, help="scan read timeout")


def run(args: argparse.Namespace) -> dict[str, Any]:
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    profiles = {pid: p for pid, p in sorted(load_all().items()) if "rtu" in p.transports}
    # a site exports unless its meter has no export counter (consumption-only circuit, unsigned power)
    meters = [SimulatedMeter(p, unit, import_wh=1_000_000, export_wh=10_000,
                             power_w=-1500 if "energy_export_wh" in p.measurements else 1500,
                             serial_number="SN" if p.serial_number and p.serial_number.type == "string" else unit)
              for unit, p in enumerate(profiles.values(), start=1)]
    reads = {(r.function_codes[0], r.address, r.words) for p in profiles.values() for r in p.identify}
    per_unit_s = sum(rtu_read_time_s(n, BAUD) for _fc, _a, n in reads) + rtu_read_time_s(1, BAUD)
    minimum_s = len(meters) * (per_unit_s + DEFAULT_PROBE_DELAY_MS / 1000)
    bus = VirtualRtuBus(meters, baudrate=BAUD, parity="N")
    await bus.start()
    try:
        opts = ScanOptions(tuple(profiles.values()), tuple(range(1, len(meters) + 1)), port=bus.client_port,
                           framings=((BAUD, "N"),), timeout_s=args.timeout_s)
        started = time.monotonic()
        report = await asyncio.to_thread(run_scan, opts)
        scan_s = time.monotonic() - started
    finally:
        await bus.stop()
    named = sum(1 for f in report.found if f.profile.id == list(profiles)[f.unit_id - 1])
    return {"meters": len(meters), "found": len(report.found), "named_as_simulated": named,
            "identify_reads_per_unit": len(reads), "scan_s": round(scan_s, 2),
            "line_estimate_s": round(minimum_s, 2), "ratio": round(scan_s / minimum_s, 2)}
