"""Every supported RS-485 model on one simulated bus (socat ptys + pymodbus simulated meters at distinct unit ids):
`provision scan` finds and names each one, and commissioning decodes each to the values the meter serves, with the
power sign of its site (exporting; importing for a meter without an export counter). Driven by the profile library:
a new profile joins both tables with no new code."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from firmware_config.loader import load_all
from firmware_config.schema import IdentifyRule, Profile
from gridmeter.cli import main
from provisioning.commission import CommissionOptions, run_commission
from provisioning.probe import BusTarget
from testbed.meter import SimulatedMeter, encode_register
from testbed.rtu import VirtualRtuBus

PROFILES = load_all()
RTU_IDS = sorted(pid for pid, p in PROFILES.items() if "rtu" in p.transports)
UNITS = {pid: unit for unit, pid in enumerate(RTU_IDS, start=1)}
EXPORT_W = -1500  # every site that can export does: a profile with the wrong power sign reads +1500 W
IMPORT_W = 1500  # a meter without an export counter sits on a consumption-only circuit: it imports
IMPORT_WH, EXPORT_WH = 1_234_567, 87_654


def site_power(p: Profile) -> int:
    return EXPORT_W if "energy_export_wh" in p.measurements else IMPORT_W


def serial_for(profile: Profile, unit: int) -> int | str:
    sn = profile.serial_number
    return f"SN{unit:04d}X" if sn is not None and sn.type == "string" else 40_000_000 + unit


def sim(pid: str) -> SimulatedMeter:
    p, unit = PROFILES[pid], UNITS[pid]
    return SimulatedMeter(p, unit, import_wh=IMPORT_WH, export_wh=EXPORT_WH, power_w=site_power(p),
                          serial_number=serial_for(p, unit))


def rule_key(r: IdentifyRule) -> tuple[object, ...]:
    return (r.address, r.type, r.length, r.function_codes, r.word_order, r.expected, r.minimum, r.maximum)


def twins(pid: str) -> set[str]:
    """Profiles whose identification is identical to pid's (e.g. SDM120/SDM230 share meter code 32): the scan can
    only name one of them and must list the other as a candidate."""
    mine = [rule_key(r) for r in PROFILES[pid].identify]
    return {o for o in RTU_IDS if o != pid and [rule_key(r) for r in PROFILES[o].identify] == mine}


@pytest.fixture
async def every_meter() -> AsyncIterator[tuple[VirtualRtuBus, dict[str, SimulatedMeter]]]:
    meters = {pid: sim(pid) for pid in RTU_IDS}
    bus = VirtualRtuBus(list(meters.values()), baudrate=9600, parity="N")
    await bus.start()
    try:
        yield bus, meters
    finally:
        await bus.stop()


def test_library_has_the_new_models() -> None:
    assert len(PROFILES) >= 26
    assert len(RTU_IDS) == len(set(UNITS.values())) and max(UNITS.values()) <= 247


@pytest.mark.integration
async def test_scan_names_every_model_on_one_bus(every_meter: tuple[VirtualRtuBus, dict[str, SimulatedMeter]],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    bus, _meters = every_meter
    # every id on the bus answers, so the timeout costs nothing unless a reply is late on a loaded machine
    args = ["provision", "scan", "--json", "--port", bus.client_port, "--ids", f"1-{len(RTU_IDS)}",
            "--bauds", "9600", "--parities", "N", "--timeout-s", "1.0"]
    rc = await asyncio.to_thread(main, args)
    out = capsys.readouterr()
    assert rc == 0, out.err
    found = {f["unit_id"]: f for f in json.loads(out.out)}
    assert sorted(found) == sorted(UNITS.values()), out.err
    wrong = {}
    for pid, unit in UNITS.items():
        f = found[unit]
        same = twins(pid)
        ok = f["profile"] == pid if not same else (
            f["profile"] in same | {pid} and pid in {f["profile"], *f["candidates"]})
        sn = serial_for(PROFILES[pid], unit) if PROFILES[f["profile"]].serial_number is not None else None
        if not ok or f["serial_number"] != sn or (f["baud"], f["parity"]) != (9600, "N"):
            wrong[pid] = (f["profile"], f["candidates"], f["serial_number"])
    assert not wrong, wrong
    # the only names the scan may not tell apart are declared twins; every other family is told apart
    assert {pid for pid in RTU_IDS if twins(pid)} <= {"eastron-sdm120", "eastron-sdm230"}


@pytest.mark.integration
async def test_commissioning_decodes_every_model_with_the_site_power_sign(
        every_meter: tuple[VirtualRtuBus, dict[str, SimulatedMeter]]) -> None:
    bus, meters = every_meter
    target = BusTarget("rtu", port=bus.client_port, baudrate=9600, parity="N")
    failures: dict[str, object] = {}
    for pid in RTU_IDS:
        m, p = meters[pid], PROFILES[pid]
        opts = CommissionOptions(profile=p, target=target, unit_id=m.unit_id, wait_s=0.2)
        result = await asyncio.to_thread(run_commission, opts, ask=None)
        served = m.measurement_values()
        want = {r.measurement: encode_register(r, served[r.measurement])[1] for r in p.registers if r.measurement}
        if result.second != want or result.invalid:
            failures[pid] = ("decoded", result.second, "served", want, result.invalid)
        elif "power_w" in want and (result.second["power_w"] < 0) != (site_power(p) < 0):
            failures[pid] = ("power sign", result.second["power_w"], "site", site_power(p))
        elif not result.passed:
            failures[pid] = ("checks", [c.message for c in result.checks if c.severity == "fail" and not c.ok])
        elif result.serial_number != (serial_for(p, m.unit_id) if p.serial_number is not None else None):
            failures[pid] = ("serial", result.serial_number)
    assert not failures, failures
