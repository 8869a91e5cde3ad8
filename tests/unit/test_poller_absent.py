"""Meters without an export counter (issue 9 defect 1): ABB B23 "Steel" (export all 0xFF), EM24 variants answering
exception 2 on the export register, SunSpec acc32 TotWhExp = 0. Each yields samples whose export is explicitly not
measured, never a failed read; the agent signs them with EXPORT_NOT_MEASURED and the last measured export value.
Scripted stand-in bus over SimulatedMeters (see test_poller_logic.py); the socket path is in tests/system."""

from __future__ import annotations

from dataclasses import replace

import pytest

from agent.plausibility import Baseline
from agent.poller import MeterReadError, MeterSample
from agent.service import _counters
from firmware_config.loader import load_all
from protocol import Quality
from testbed.meter import SimulatedMeter
from tests.unit.test_poller_logic import make

PROFILES = load_all()
ABB, EM24 = PROFILES["abb-b2x"], PROFILES["carlogavazzi-em24"]


async def test_abb_steel_import_only_is_a_sample_without_export() -> None:
    p, _bus, _c = make([SimulatedMeter(ABB, 1, import_wh=2_000_000, invalid={"energy_export_wh"})], ABB)
    for _ in range(3):  # the field report: 3 of 3 polls failed with decode (energy_export_wh: not_implemented)
        s = await p.read_meter(p.meters[0])
        assert s.values["energy_import_wh"] == 2_000_000 and "energy_export_wh" not in s.values
        assert s.not_measured == ("energy_export_wh",) and s.errors == ()


async def test_em24_export_register_exception_2_is_not_measured() -> None:
    p, bus, _c = make([SimulatedMeter(EM24, 1, import_wh=7_654_300, absent={"energy_export_wh"})], EM24)
    s = await p.read_meter(p.meters[0])
    assert s.values["energy_import_wh"] == 7_654_300 and s.not_measured == ("energy_export_wh",)
    assert s.errors == () and s.values["voltage_l1_dv"] == 2300
    first = len(bus.calls)
    s = await p.read_meter(p.meters[0])  # same plan again: one (refused) request for the export, no re-planning
    assert s.not_measured == ("energy_export_wh",) and len(bus.calls) == 2 * first


async def test_optional_register_inside_a_block_is_read_alone_after_exception_2() -> None:
    """An optional counter adjacent to other registers: the whole block is refused once, then the agent reads
    the optional register on its own and every other value still arrives."""
    regs = tuple(replace(r, address=0x40) if r.name == "energy_export_wh" else r for r in EM24.registers)
    em24 = replace(EM24, registers=regs)  # export right after import 0x3E: one contiguous block
    p, bus, _c = make([SimulatedMeter(em24, 1, import_wh=1_000_000, absent={"energy_export_wh"})], em24)
    s = await p.read_meter(p.meters[0])
    assert s.values["energy_import_wh"] == 1_000_000 and s.not_measured == ("energy_export_wh",)
    assert p.device_status()["M1"]["optional_read_alone"] is True
    assert (1, 4, 0x40, 2, None) in bus.calls  # read alone


async def test_present_optional_export_is_read_normally() -> None:
    p, _bus, _c = make([SimulatedMeter(EM24, 1, import_wh=1_000, export_wh=2_000)], EM24)
    s = await p.read_meter(p.meters[0])
    assert (s.values["energy_import_wh"], s.values["energy_export_wh"], s.not_measured) == (1_000, 2_000, ())


async def test_sunspec_acc32_zero_export_means_not_implemented() -> None:
    prof = PROFILES["sunspec-meter-int"]
    p, _bus, _c = make([SimulatedMeter(prof, 1, import_wh=5_000_000, invalid={"energy_export_wh"},
                                       scale_factors={"TotWh_SF": 0})], prof)
    s = await p.read_meter(p.meters[0])
    assert s.values["energy_import_wh"] == 5_000_000 and s.not_measured == ("energy_export_wh",)


async def test_mandatory_import_sentinel_still_fails_the_read() -> None:
    p, _bus, _c = make([SimulatedMeter(ABB, 1, invalid={"energy_import_wh"})], ABB)
    with pytest.raises(MeterReadError) as e:
        await p.read_meter(p.meters[0])
    assert (e.value.reason, e.value.detail) == ("decode", "energy_import_wh: not_implemented")


async def test_declared_sentinel_on_an_instantaneous_value_is_absent_not_partial() -> None:
    """ABB B21 (single phase): L2/L3 read the invalid marker; the reading must not be PARTIAL (held) forever."""
    p, _bus, _c = make([SimulatedMeter(ABB, 1, import_wh=5, invalid={"voltage_l2_dv", "voltage_l3_dv"})], ABB)
    s = await p.read_meter(p.meters[0])
    assert s.errors == () and "voltage_l2_dv" not in s.values and s.values["voltage_l1_dv"] == 2300


async def test_profile_without_export_register() -> None:
    regs = tuple(r for r in EM24.registers if r.name != "energy_export_wh")
    em24 = replace(EM24, registers=regs)
    p, _bus, _c = make([SimulatedMeter(em24, 1, import_wh=4_200)], em24)
    s = await p.read_meter(p.meters[0])
    assert s.values["energy_import_wh"] == 4_200 and s.not_measured == ("energy_export_wh",)


def _sample(not_measured: tuple[str, ...], **values: int) -> MeterSample:
    return MeterSample("M1", "abb-b2x", 1, 1000, 1000, dict(values), not_measured=not_measured)


def test_agent_signs_not_measured_export_as_the_last_measured_value() -> None:
    imp, exp, q = _counters(_sample(("energy_export_wh",), energy_import_wh=500), None)
    assert (imp, exp, q) == (500, 0, Quality.EXPORT_NOT_MEASURED)
    imp, exp, q = _counters(_sample(("energy_export_wh",), energy_import_wh=600), Baseline(500, 70, 1))
    assert (imp, exp, q) == (600, 70, Quality.EXPORT_NOT_MEASURED)  # no energy booked, none lost
    imp, exp, q = _counters(_sample(("energy_import_wh",), energy_export_wh=9), Baseline(500, 7, 1))
    assert (imp, exp, q) == (500, 9, Quality.IMPORT_NOT_MEASURED)
    assert _counters(_sample((), energy_import_wh=1, energy_export_wh=2), None) == (1, 2, Quality.NONE)
