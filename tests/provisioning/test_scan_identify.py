"""Scan (issue 9 defects 3-6, issue 13): SunSpec meters on RS-485 found by SunSpec discovery (SunS at 40000/0/50000,
model chain), Carlo Gavazzi codes 330-345, SDM630 code 121 (the SDM630MCT) no longer taken for an SDM630 and
early SDM630s answering 0 identified with a label check, the fast path stopping once the bus answered (`--full`
for a sweep), factory unit ids per family in the default ids. Virtual RS-485 (socat ptys, framing enforced)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from agent.sunspec import Location, discover, resolve
from firmware_config.loader import load_all
from gridmeter.cli import main
from provisioning.scan import quick_ids
from testbed.meter import SimulatedMeter
from testbed.rtu import VirtualRtuBus
from tests.unit.test_poller_logic import make

PROFILES = load_all()
FAST = ["--timeout-s", "0.15"]


async def scan(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[dict], str]:
    def run() -> tuple[int, list[dict], str]:
        rc = main(["provision", "scan", "--json", *args])
        out = capsys.readouterr()
        return rc, json.loads(out.out) if out.out.strip() else [], out.err

    return await asyncio.to_thread(run)


def meter(pid: str, unit: int, **kw: object) -> SimulatedMeter:
    return SimulatedMeter(PROFILES[pid], unit, import_wh=1_234_500, export_wh=8_700, power_w=2300, **kw)  # type: ignore[arg-type]


@pytest.mark.integration
async def test_sunspec_meters_on_rs485_are_found_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    """Defect 3: a SunSpec meter (Fronius-style, unit 240) and a SolarEdge inverter's meter whose chain is shifted
    by a multi-MPPT model 160, both on RS-485 at 9600 8N1: found without --ids (factory ids), serials from the
    common model before each meter model."""
    bus = VirtualRtuBus([meter("sunspec-meter-int", 240, serial_number="FRO-240"),
                         meter("solaredge-meter", 1, serial_number="SE-1", sunspec_before=((160, 48),),
                               sunspec_device=("SolarEdge", "SE-MTR-3Y"))],
                        baudrate=9600, parity="N")
    await bus.start()
    try:
        rc, found, err = await scan(capsys, "--port", bus.client_port, "--bauds", "9600", "--parities", "N", *FAST)
    finally:
        await bus.stop()
    assert rc == 0, err
    got = {(f["unit_id"], f["profile"], f["serial_number"]) for f in found}
    assert got == {(240, "sunspec-meter-int", "FRO-240"), (1, "solaredge-meter", "SE-1")}
    se = next(f for f in found if f["unit_id"] == 1)
    assert se["candidates"] == ["sunspec-meter-int"]  # the generic profile also reads it; the specific one wins
    assert se["device"] == "SolarEdge SE-MTR-3Y"  # model 1 identification: what the device says it is


@pytest.mark.integration
async def test_identification_codes(capsys: pytest.CaptureFixture[str]) -> None:
    """Defects 4 and 5: EM330/ET340 codes 330-345; SDM630 code 121 (SDM630MCT) is not an SDM630; 0 (early SDM630
    firmware) is, with a label check."""
    bus = VirtualRtuBus([meter("carlogavazzi-em340", 2, identity={0x000B: 335}, serial_number="CG335"),
                         meter("eastron-sdm630", 3, identity={0xFC02: 121}, serial_number=121121),
                         meter("eastron-sdm630", 4, identity={0xFC02: 0}, serial_number=4444)],
                        baudrate=9600, parity="N")
    await bus.start()
    try:
        rc, found, err = await scan(capsys, "--port", bus.client_port, "--bauds", "9600", "--parities", "N",
                                    "--ids", "2-4", *FAST)
    finally:
        await bus.stop()
    assert rc == 0, err
    by_unit = {f["unit_id"]: f for f in found}
    assert by_unit[2]["profile"] == "carlogavazzi-em340"
    assert 3 not in by_unit or by_unit[3]["profile"] != "eastron-sdm630", by_unit.get(3)
    assert by_unit[4]["profile"] == "eastron-sdm630"
    assert any("label" in h and "SDM630" in h for h in by_unit[4]["hints"])


@pytest.mark.integration
async def test_fast_path_stops_once_the_bus_answered(capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 13: the scan used to try every framing (8) although the meter answered at the first; --full still
    sweeps everything."""
    bus = VirtualRtuBus([meter("eastron-sdm630", 1, serial_number=1)], baudrate=9600, parity="N")
    await bus.start()
    try:
        t0 = time.monotonic()
        rc, found, err = await scan(capsys, "--port", bus.client_port, *FAST)
        fast_s = time.monotonic() - t0
        assert rc == 0 and [f["unit_id"] for f in found] == [1], err
        assert err.count("trying ") == 1 and "9600 8N1" in err
        rc, found, err = await scan(capsys, "--port", bus.client_port, "--full", "--bauds", "9600,19200",
                                    "--parities", "N", "--ids", "1-3", *FAST)
        assert rc == 0 and err.count("trying ") == 2, err
    finally:
        await bus.stop()
    assert fast_s < 60  # not a benchmark: a bound that only a sweep of all framings would break


def test_default_ids_cover_factory_defaults_per_family() -> None:
    ids = quick_ids(list(PROFILES.values()))
    assert set(range(1, 11)) <= set(ids) and {200, 240} <= set(ids)
    assert {p.default_unit_id for p in PROFILES.values() if p.default_unit_id} <= set(ids)


# ---- SunSpec discovery (scripted bus) ------------------------------------------------------------------------------


@pytest.mark.parametrize("base", [40000, 0, 50000])
async def test_discovery_at_every_base_address(base: int) -> None:
    prof = PROFILES["sunspec-meter-float"]
    sim = meter("sunspec-meter-float", 1, sunspec_base=base, sunspec_before=((160, 48),))
    image = sim.image(3)

    async def read(fc: int, address: int, count: int) -> list[int]:
        if any(a not in image for a in range(address, address + count)):
            raise LookupError("exception 2")
        return [image[a] for a in range(address, address + count)]

    loc = await discover(read, prof.sunspec.models, absent=LookupError)  # type: ignore[union-attr]
    assert isinstance(loc, Location) and loc.base == base and loc.model_id == 211
    assert loc.model_address == base + 2 + 67 + 50
    assert resolve(prof, loc).register("energy_import_wh").address == \
        prof.register("energy_import_wh").address + loc.model_address - 40069


async def test_agent_reads_a_shifted_sunspec_meter() -> None:
    """The agent's poller discovers the model and reads the shifted addresses (SolarEdge with model 160)."""
    prof = PROFILES["solaredge-meter"]
    sim = SimulatedMeter(prof, 1, import_wh=5_000_000, export_wh=1_000_000, power_w=-2000, raw_power_sign=-1,
                         sunspec_before=((160, 48),))
    p, _bus, _c = make([sim], prof)
    s = await p.read_meter(p.meters[0])
    assert (s.values["energy_import_wh"], s.values["energy_export_wh"], s.values["power_w"]) == (
        5_000_000, 1_000_000, -2000)
    assert p.located(p.meters[0]).register("energy_import_wh").address == 40234 + 50


async def test_cg_invalid_markers_are_absent_not_numbers() -> None:
    """Defect 4: Carlo Gavazzi INT32 0x7FFFFFFF and frequency 0xFFFF are invalid markers, not -0.1 Hz."""
    prof = PROFILES["carlogavazzi-em340"]
    p, _bus, _c = make([SimulatedMeter(prof, 1, import_wh=1_000, invalid={"frequency_mhz", "power_w"})], prof)
    s = await p.read_meter(p.meters[0])
    assert "frequency_mhz" not in s.values and "power_w" not in s.values and s.errors == ()
