"""commission: plausibility against the profile's rated ranges, counters, display comparison; a wrong word order
or scale in a profile is caught (non-zero exit, message naming the value)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest

from firmware_config.loader import PROFILES_DIR, load_all
from gridmeter.cli import main
from provisioning.agent_toml import AgentTomlError, write_atomic
from provisioning.commission import CommissionInputError, CommissionOptions, CommissionResult, _confirm, parse_kwh
from provisioning.commission_checks import check_counters, check_instantaneous, compare_display
from provisioning.probe import BusTarget
from testbed.meter import SimulatedMeter
from testbed.rtu import VirtualRtuBus

PROFILES = load_all()


def broken_profile(tmp: Path, source_id: str, new_id: str, edit: tuple[str, str], count: int = 1) -> None:
    """A copy of a shipped profile with one deliberate mistake (as a careless profile author would make)."""
    text = (PROFILES_DIR / f"{source_id}.toml").read_text()
    assert text.count(edit[0]) >= count, edit[0]
    text = text.replace(f'id = "{source_id}"', f'id = "{new_id}"', 1).replace(edit[0], edit[1])
    (tmp / f"{new_id}.toml").write_text(text)


@pytest.fixture
async def bench(tmp_path: Path) -> AsyncIterator[tuple[VirtualRtuBus, Path]]:
    meters = [
        SimulatedMeter(PROFILES["eastron-sdm630"], 1, import_wh=1_234_567, export_wh=8_700, power_w=5000,
                       serial_number=19283746, live=True),
        SimulatedMeter(PROFILES["abb-b2x"], 2, import_wh=2_000_000, export_wh=0, power_w=1500,
                       serial_number=7001234, live=True),
    ]
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    broken_profile(profiles, "eastron-sdm630", "test-sdm630-swapped", ('word_order = "big"', 'word_order = "little"'))
    broken_profile(profiles, "abb-b2x", "test-abb-voltage-x10", ('scale = "0.1"', 'scale = "1"'), count=3)
    broken_profile(profiles, "eastron-sdm630", "test-sdm630-wh-as-kwh",
                   ('type = "float32"\nunit = "kWh"', 'type = "float32"\nunit = "Wh"'), count=2)
    bus = VirtualRtuBus(meters, baudrate=9600)
    await bus.start()
    try:
        yield bus, profiles
    finally:
        await bus.stop()


async def commission(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    def run() -> tuple[int, str, str]:
        rc = main(["provision", "commission", *args])
        out = capsys.readouterr()
        return rc, out.out, out.err

    return await asyncio.to_thread(run)


@pytest.mark.integration
async def test_commission_passes_and_records(bench: tuple[VirtualRtuBus, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    bus, _ = bench
    out_file = tmp_path / "commission.json"
    rc, out, err = await commission(capsys, "--profile", "eastron-sdm630", "--port", bus.client_port, "--unit-id",
                                    "1", "--wait-s", "1.5", "--expect-flow", "--display-kwh", "1234.5", "--yes",
                                    "--out", str(out_file))
    assert rc == 0, out + err
    assert "RESULT: PASS" in out
    res = json.loads(out_file.read_text())
    assert res["result"] == "pass"
    assert (res["profile"], res["unit_id"], res["serial_number"]) == ("eastron-sdm630", 1, 19283746)
    assert res["bus"] == {"port": bus.client_port, "baudrate": 9600, "parity": "N", "stopbits": 1}
    assert res["first"]["voltage_l1_dv"] == 2300 and res["first"]["frequency_mhz"] == 50_000
    # 5 kW for >= 1.5 s = >= 2 Wh: the counter moved, by what the simulated meter served
    assert res["second"]["energy_import_wh"] > res["first"]["energy_import_wh"] >= 1_234_567
    assert res["confirmations"]["display_import"].startswith("matches the display")
    assert res["unconfirmed"] and all(v == "accepted (--yes)" for k, v in res["confirmations"].items()
                                      if k.startswith("check: "))


@pytest.mark.integration
async def test_commission_catches_wrong_word_order(bench: tuple[VirtualRtuBus, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    bus, profiles = bench
    rc, out, err = await commission(capsys, "--profile", "test-sdm630-swapped", "--profile-dir", str(profiles),
                                    "--port", bus.client_port, "--unit-id", "1", "--wait-s", "0", "--yes",
                                    "--out", str(tmp_path / "c.json"))
    assert rc == 3, out + err
    assert "RESULT: FAIL" in out
    assert re.search(r"\[FAIL\] voltage_l1_dv", out), out
    assert "wrong word order" in out
    assert json.loads((tmp_path / "c.json").read_text())["result"] == "fail"


@pytest.mark.integration
async def test_commission_catches_wrong_scale(bench: tuple[VirtualRtuBus, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    bus, profiles = bench
    rc, out, err = await commission(capsys, "--profile", "test-abb-voltage-x10", "--profile-dir", str(profiles),
                                    "--port", bus.client_port, "--unit-id", "2", "--wait-s", "0", "--yes",
                                    "--out", str(tmp_path / "c.json"))
    assert rc == 3, out + err
    assert "[FAIL] voltage_l1_dv = 23000" in out  # 2300.0 V: x10
    assert "wrong scale" in out


@pytest.mark.integration
async def test_commission_catches_energy_scale_against_display(bench: tuple[VirtualRtuBus, Path], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """kWh registers declared as Wh: voltages are fine, the counter is 1000x too small; the display catches it."""
    bus, profiles = bench
    rc, out, err = await commission(capsys, "--profile", "test-sdm630-wh-as-kwh", "--profile-dir", str(profiles),
                                    "--port", bus.client_port, "--unit-id", "1", "--wait-s", "0",
                                    "--display-kwh", "1234.6", "--yes", "--out", str(tmp_path / "c.json"))
    assert rc == 3, out + err
    assert "does not match the display 1234.6 kWh" in out


@pytest.mark.integration
async def test_commission_silent_meter_says_what_to_check(bench: tuple[VirtualRtuBus, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    bus, _ = bench
    rc, _, err = await commission(capsys, "--profile", "eastron-sdm630", "--port", bus.client_port, "--unit-id",
                                  "9", "--wait-s", "0", "--yes", "--out", str(tmp_path / "c.json"))
    assert rc == 1
    assert "unit 9" in err and "provision scan" in err


@pytest.mark.integration
async def test_commission_interactive_display_mismatch(bench: tuple[VirtualRtuBus, Path], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    bus, _ = bench
    # site: cannot export; no known load; the display shows 12.3 kWh: another meter
    answers = iter(["n", "n", "12.3"] + ["y"] * 10)
    monkeypatch.setattr("builtins.input", lambda _q="": next(answers))
    rc, out, _ = await commission(capsys, "--profile", "eastron-sdm630", "--port", bus.client_port, "--unit-id",
                                  "1", "--wait-s", "0", "--out", str(tmp_path / "c.json"))
    assert rc == 3
    assert "MISMATCH" in out


@pytest.mark.integration
async def test_commission_unwritable_result_is_a_message(bench: tuple[VirtualRtuBus, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """--out under a regular file: exit 1 naming the path, not a NotADirectoryError traceback."""
    bus, _ = bench
    (tmp_path / "a-file").write_text("")
    rc, out, err = await commission(capsys, "--profile", "eastron-sdm630", "--port", bus.client_port, "--unit-id",
                                    "1", "--wait-s", "0", "--yes", "--out", str(tmp_path / "a-file" / "c.json"))
    assert rc == 1, out + err
    assert "RESULT: PASS" in out
    assert err.startswith("error: ") and "a-file/c.json: cannot write" in err


# ---- pure checks ----------------------------------------------------------------------------------------------


def test_single_phase_wiring_on_three_phase_meter_is_a_warning() -> None:
    p = PROFILES["eastron-sdm630"]
    vals = {"voltage_l1_dv": 2301, "voltage_l2_dv": 0, "voltage_l3_dv": 0, "frequency_mhz": 50_010, "power_w": 100,
            "current_l1_ma": 400, "current_l2_ma": 0, "current_l3_ma": 0, "power_factor_milli": 990}
    checks = {c.name: c for c in check_instantaneous(p, vals)}
    assert checks["voltage_l2_dv"].severity == "warn" and checks["voltage_l2_dv"].ok
    assert all(c.ok for c in checks.values())
    bad = {**vals, "frequency_mhz": 5_001}
    assert not {c.name: c for c in check_instantaneous(p, bad)}["frequency_mhz"].ok


def test_counter_checks() -> None:
    p = PROFILES["eastron-sdm120"]
    a = {"energy_import_wh": 1000, "energy_export_wh": 5}
    ok = check_counters(p, a, {"energy_import_wh": 1003, "energy_export_wh": 5}, 10_000, 12_500, expect_flow=True)
    assert all(c.ok for c in ok)
    back = check_counters(p, a, {"energy_import_wh": 999, "energy_export_wh": 5}, 10_000, 12_500, expect_flow=False)
    assert [c.name for c in back if not c.ok] == ["energy_import_wh"]
    jump = check_counters(p, a, {"energy_import_wh": 1000 + 5000, "energy_export_wh": 5}, 10_000, 12_500,
                          expect_flow=False)
    assert [c.name for c in jump if not c.ok] == ["energy_import_wh"]  # 5 kWh in 10 s > 12.5 kW rated
    zero = check_counters(p, {"energy_import_wh": 0, "energy_export_wh": 0},
                          {"energy_import_wh": 0, "energy_export_wh": 0}, 1000, 12_500, expect_flow=False)
    assert [c.name for c in zero if not c.ok] == ["counters_nonzero"]
    still = check_counters(p, a, a, 10_000, 12_500, expect_flow=True)
    assert [c.name for c in still if not c.ok] == ["counters_increasing"]


def test_compare_display() -> None:
    assert compare_display(1_234_567, Decimal("1234.5"))[0]
    assert compare_display(1_234_567, Decimal("1235"))[0]
    assert not compare_display(1_234_567, Decimal("12345.6"))[0]  # x10
    assert not compare_display(1_234, Decimal("1234.5"))[0]  # Wh read as kWh


@pytest.mark.integration
async def test_every_profile_commissions_against_its_simulated_meter(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Each shipped profile: read plan, decoding and rated ranges agree with a meter serving the manual's map."""
    from testbed.tcp import ModbusTcpMeters

    ids = {pid: i + 1 for i, pid in enumerate(sorted(PROFILES))}
    sims = [SimulatedMeter(PROFILES[pid], uid, import_wh=1_234_500, export_wh=8_700, power_w=2300,
                           serial_number=f"S{uid}" if (PROFILES[pid].serial_number and
                                                       PROFILES[pid].serial_number.type == "string") else uid)
            for pid, uid in ids.items()]
    server = ModbusTcpMeters(sims)
    await server.start()
    try:
        for pid, uid in ids.items():
            out_file = tmp_path / f"{pid}.json"
            rc, out, err = await commission(capsys, "--profile", pid, "--host", server.host, "--tcp-port",
                                            str(server.port), "--unit-id", str(uid), "--wait-s", "0",
                                            "--display-kwh", "1234.5", "--yes", "--out", str(out_file))
            assert rc == 0, f"{pid}:\n{out}{err}"
            res = json.loads(out_file.read_text())
            assert res["second"]["energy_import_wh"] == 1_234_500, pid  # 0.1 kWh resolution: exact
            if "energy_export_wh" in PROFILES[pid].measurements:  # import-only models have no export counter
                assert res["second"]["energy_export_wh"] == 8_700, pid
            assert res["second"]["power_w"] == 2300, pid
    finally:
        await server.stop()


@pytest.mark.integration
async def test_commission_result_next_to_config_feeds_register(bench: tuple[VirtualRtuBus, Path], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    bus, _ = bench
    etc = tmp_path / "etc"
    rc, out, err = await commission(capsys, "--profile", "eastron-sdm630", "--port", bus.client_port, "--unit-id",
                                    "1", "--wait-s", "0", "--yes", "--config", str(etc / "agent.toml"))
    assert rc == 0, out + err
    result = etc / "commission-eastron-sdm630-unit1.json"
    assert json.loads(result.read_text())["serial_number"] == 19283746


def test_interactive_answer_that_is_not_a_number_is_recorded_not_raised() -> None:
    """An installer typing 'n' or '12,3 kWh' must get a FAIL result naming the answer, not an aborted run."""
    p = PROFILES["eastron-sdm630"]
    opts = CommissionOptions(p, BusTarget("rtu", port="/dev/null"), 1)
    for answer in ("n", "12,3 kWh"):
        result = CommissionResult(p.id, 1, {}, None, {}, {"energy_import_wh": 12_300}, {}, 0, [], [])
        _confirm(result, opts, lambda _q, a=answer: a)
        assert result.confirmations["display_import"].startswith("NOT CONFIRMED: the answer ")
        assert not result.passed
    # a blank answer is asked again, then skipped: recorded, not a failure (issue 13)
    asked: list[str] = []
    result = CommissionResult(p.id, 1, {}, None, {}, {"energy_import_wh": 12_300}, {}, 0, [], [])
    _confirm(result, opts, lambda q: asked.append(q) or "")
    assert result.confirmations["display_import"].startswith("skipped") and result.passed
    assert asked[1] == asked[2] != asked[0] and len([q for q in asked if "display" in q]) == 1
    result = CommissionResult(p.id, 1, {}, None, {}, {"energy_import_wh": 12_300}, {}, 0, [], [])
    _confirm(result, opts, lambda _q: "12,3")
    assert result.confirmations["display_import"].startswith("matches the display") and result.passed


@pytest.mark.parametrize("text", ["1e999999", "100000000", "-1", "nan", "inf", "twelve"])
def test_display_kwh_is_bounded(text: str) -> None:
    with pytest.raises(CommissionInputError, match="--display-kwh"):
        parse_kwh(text)
    assert parse_kwh("99999999.99") == Decimal("99999999.99")


def test_write_atomic_under_a_file_is_an_agent_toml_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(AgentTomlError, match="cannot write"):
        write_atomic(tmp_path / "f" / "agent.toml", "x = 1\n")
    write_atomic(tmp_path / "d" / "agent.toml", "x = 1\n")
    assert (tmp_path / "d" / "agent.toml").read_text() == "x = 1\n"
    assert [x.name for x in (tmp_path / "d").iterdir()] == ["agent.toml"]  # no temporary left behind
