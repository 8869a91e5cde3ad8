"""Commissioning catches the installer mistakes of issue 9 with a hint naming the fix, and passes the meters that
main (72ff4a4) refused or misread: import-only ABB / EM24, SolarEdge power sign, power scale x10, reversed CT on a
consumption-only site, wrong CT ratio, word order. Simulated meters serve the peer register maps; a deliberately
broken profile is a copy of a shipped one with one mistake (as a careless profile author would make)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from firmware_config.loader import load_all
from gridmeter.cli import main
from provisioning.commission import CommissionOptions, installer_questions, run_commission
from provisioning.probe import BusTarget
from testbed.meter import SimulatedMeter
from testbed.tcp import ModbusTcpMeters
from tests.provisioning.test_commission import broken_profile

PROFILES = load_all()
pytestmark = pytest.mark.integration


async def commission(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    def run() -> tuple[int, str, str]:
        rc = main(["provision", "commission", *args])
        out = capsys.readouterr()
        return rc, out.out, out.err

    return await asyncio.to_thread(run)


@pytest.fixture
async def tcp_meters() -> AsyncIterator[tuple[ModbusTcpMeters, dict[str, SimulatedMeter]]]:
    sims = {
        "steel": SimulatedMeter(PROFILES["abb-b2x"], 1, import_wh=2_000_000, power_w=1500,
                                invalid={"energy_export_wh"}, live=True),
        "em24": SimulatedMeter(PROFILES["carlogavazzi-em24"], 2, import_wh=7_654_300, power_w=2000,
                               absent={"energy_export_wh"}, serial_number="EM24SN1", live=True),
        # SolarEdge grid meter exporting 2,000 W: its W register reads +2000 (positive while exporting)
        "se": SimulatedMeter(PROFILES["solaredge-meter"], 3, import_wh=5_000_000, export_wh=1_000_000,
                             power_w=-2000, raw_power_sign=-1, serial_number="SE-MTR", live=True),
        "sdm": SimulatedMeter(PROFILES["eastron-sdm630"], 4, import_wh=1_234_567, export_wh=8_700, power_w=8000,
                              live=True),
        "reversed": SimulatedMeter(PROFILES["eastron-sdm630"], 5, import_wh=1_234_567, export_wh=8_700,
                                   power_w=-3000, live=True),  # no PV here: supply and load swapped
        "em340": SimulatedMeter(PROFILES["carlogavazzi-em340"], 6, import_wh=3_000_000, power_w=400,
                                serial_number="CG340", live=True),
    }
    server = ModbusTcpMeters(list(sims.values()))
    await server.start()
    try:
        yield server, sims
    finally:
        await server.stop()


def args(server: ModbusTcpMeters, profile: str, unit: int, out: Path, *extra: str) -> list[str]:
    return ["--profile", profile, "--host", server.host, "--tcp-port", str(server.port), "--unit-id", str(unit),
            "--out", str(out), *extra]


async def test_import_only_meters_commission(tcp_meters: tuple[ModbusTcpMeters, dict[str, SimulatedMeter]],
                                             tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Defect 1: ABB 'Steel' (export all 0xFF) and EM24 without export (exception 2) failed commissioning."""
    server, _ = tcp_meters
    for profile, unit in (("abb-b2x", 1), ("carlogavazzi-em24", 2)):
        out = tmp_path / f"{profile}.json"
        rc, text, err = await commission(capsys, *args(server, profile, unit, out, "--wait-s", "0", "--yes"))
        assert rc == 0, text + err
        res = json.loads(out.read_text())
        assert res["not_measured"] == ["energy_export_wh"] and "energy_export_wh" not in res["second"]
        assert "has no such counter" in text


async def test_solaredge_exporting_is_seen_as_export(tcp_meters: tuple[ModbusTcpMeters, dict[str, SimulatedMeter]],
                                                     tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Defect 2: a SolarEdge site exporting 2,000 W was commissioned as importing 2,000 W, and passed."""
    server, _ = tcp_meters
    out = tmp_path / "se.json"
    rc, text, err = await commission(capsys, *args(server, "solaredge-meter", 3, out, "--wait-s", "4", "--yes"))
    assert rc == 0, text + err
    res = json.loads(out.read_text())
    assert res["second"]["power_w"] == -2000
    assert res["second"]["energy_export_wh"] > res["first"]["energy_export_wh"]
    # the same device read with the generic SunSpec profile (no sign inversion): refused, naming the fix
    out = tmp_path / "generic.json"
    rc, text, _ = await commission(capsys, *args(server, "sunspec-meter-int", 3, out, "--wait-s", "4", "--yes"))
    assert rc == 3 and "--profile solaredge-meter" in text, text
    assert json.loads(out.read_text())["second"]["power_w"] == 2000


async def test_power_scale_x10_is_caught_by_the_counters(
        tcp_meters: tuple[ModbusTcpMeters, dict[str, SimulatedMeter]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Defect 6: power x10 (80 kW for an 8 kW load) is inside the rated 83 kW and passed on main."""
    server, _ = tcp_meters
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    broken_profile(profiles, "eastron-sdm630", "test-sdm630-power-x10",
                   ('(manual 30053)\ntype = "float32"\nunit = "W"',
                    '(manual 30053)\ntype = "float32"\nunit = "W"\nscale = "10"'))
    rc, text, _ = await commission(capsys, *args(server, "test-sdm630-power-x10", 4, tmp_path / "x10.json",
                                                 "--profile-dir", str(profiles), "--wait-s", "5", "--yes"))
    assert rc == 3, text
    assert "power_w = 80000 W predicts" in text and "power of ten" in text
    rc, text, _ = await commission(capsys, *args(server, "eastron-sdm630", 4, tmp_path / "ok.json", "--wait-s", "5",
                                                 "--yes"))
    assert rc == 0 and "[ok  ] energy_import_wh moved" in text, text


async def test_reversed_wiring_on_a_consumption_only_site(
        tcp_meters: tuple[ModbusTcpMeters, dict[str, SimulatedMeter]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    server, _ = tcp_meters
    rc, text, _ = await commission(capsys, *args(server, "eastron-sdm630", 5, tmp_path / "r.json", "--wait-s", "2",
                                                 "--no-generation", "--yes"))
    assert rc == 3, text
    assert "cannot export" in text and "supply and load are swapped" in text


async def test_wrong_ct_ratio_with_a_known_load(tcp_meters: tuple[ModbusTcpMeters, dict[str, SimulatedMeter]],
                                               tmp_path: Path) -> None:
    """An EM330 set to 5/5 A on 100/5 A CTs reads 1/20 of the real power: a 2,000 W kettle shows as +100 W."""
    server, sims = tcp_meters
    questions: list[str] = []

    def ask(q: str) -> str:
        questions.append(q)
        if "feed power into the grid" in q:
            return "n"
        if "current transformers" in q:
            return "100"
        if "load you can switch on" in q:
            return "2000"
        if "Switch the 2000 W load on" in q:
            sims["em340"].set_power(400 + 2000 // 20)
            return "y"
        return "y"

    opts = CommissionOptions(PROFILES["carlogavazzi-em340"], BusTarget("tcp", host=server.host, tcp_port=server.port),
                             6, wait_s=0, out=tmp_path / "ct.json")
    result = await asyncio.to_thread(run_commission, opts, ask=ask)
    failed = [c for c in result.checks if not c.ok and c.severity == "fail"]
    assert [c.name for c in failed] == ["known_load"], result.checks
    assert "CT ratio set in the meter's menu" in failed[0].message and failed[0].value == 100
    assert len(questions) == len(set(questions))  # no question asked twice


def test_questions_are_checkable_on_site_and_asked_once() -> None:
    """Issue 13: no developer notes (register addresses, source names) as questions; each says how to check."""
    for p in PROFILES.values():
        qs = installer_questions(p)
        assert len(qs) == len(set(qs)), p.id
        for q in qs:
            assert "0x" not in q and "mbmd" not in q and "evcc" not in q and "Victron" not in q, (p.id, q)
            assert "?" in q, (p.id, q)
    assert installer_questions(PROFILES["eastron-sdm630"])[-1] == \
        "Does the meter's label say Eastron SDM630-Modbus v2?"


async def test_word_order_mistake_names_word_order(tcp_meters: tuple[ModbusTcpMeters, dict[str, SimulatedMeter]],
                                                   tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A float32 profile read low word first: the range check fails and says the swapped reading is plausible."""
    server, _ = tcp_meters
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    broken_profile(profiles, "eastron-sdm630", "test-sdm630-swapped", ('word_order = "big"', 'word_order = "little"'))
    rc, text, _ = await commission(capsys, *args(server, "test-sdm630-swapped", 4, tmp_path / "w.json",
                                                 "--profile-dir", str(profiles), "--wait-s", "0", "--yes"))
    assert rc == 3, text
    assert "With the words swapped it reads 2300, which is plausible: word order" in text
    assert "Eastron meters can be set to the other word order" in text
