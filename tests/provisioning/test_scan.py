"""scan: simulated meters on virtual RS-485 buses (socat ptys, framing enforced) and over Modbus TCP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
import serial

from firmware_config.loader import load_all
from gridmeter.cli import main
from provisioning.scan import DEFAULT_IDS, ScanInputError, parse_ids
from testbed.meter import SimulatedMeter
from testbed.rtu import VirtualRtuBus
from testbed.tcp import ModbusTcpMeters

PROFILES = load_all()
FAST = ["--timeout-s", "0.15"]  # the simulated line answers in ms; absent ids cost one timeout per framing


def scan_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[dict], str]:
    rc = main(["provision", "scan", "--json", *args])
    out = capsys.readouterr()
    return rc, json.loads(out.out) if out.out.strip() else [], out.err


async def in_thread(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[dict], str]:
    """The CLI runs its own event loop (asyncio.run): run it in a worker thread next to the simulator's loop."""
    return await asyncio.to_thread(scan_cli, capsys, *args)


def meter(profile_id: str, unit_id: int, serial: int | str, **kw: object) -> SimulatedMeter:
    return SimulatedMeter(PROFILES[profile_id], unit_id, import_wh=1_234_567, export_wh=8_700, power_w=2300,
                          serial_number=serial, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def mixed_bus() -> AsyncIterator[VirtualRtuBus]:
    meters = [meter("eastron-sdm630", 1, 19283746), meter("eastron-sdm72d-m-v2", 2, 23107788),
              meter("abb-b2x", 3, 7001234), meter("eastron-sdm120", 5, 21004711, identify_function_code=4),
              meter("carlogavazzi-em340", 7, "BX1234567890A")]
    bus = VirtualRtuBus(meters, baudrate=9600, parity="N")
    await bus.start()
    try:
        yield bus
    finally:
        await bus.stop()


@pytest.mark.integration
async def test_scan_finds_and_identifies_mixed_bus(mixed_bus: VirtualRtuBus,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # the reply timeout from this machine's measured timing (a fixed 0.15 s missed a present meter under load):
    # identifying the one meter at id 1 (several round trips, none timing out) bounds one round trip from above
    t0 = asyncio.get_running_loop().time()
    rc, _, err = await in_thread(capsys, "--port", mixed_bus.client_port, "--ids", "1", "--bauds", "9600",
                                 "--parities", "N", "--timeout-s", "2")
    assert rc == 0, err
    timeout_s = max(0.15, asyncio.get_running_loop().time() - t0)
    rc, found, err = await in_thread(capsys, "--port", mixed_bus.client_port, "--ids", "1-8", "--bauds", "9600,19200",
                                     "--parities", "N", "--timeout-s", f"{timeout_s:.3f}")
    assert rc == 0, err
    got = {(f["unit_id"], f["profile"], f["baud"], f["parity"], f["serial_number"]) for f in found}
    assert got == {
        (1, "eastron-sdm630", 9600, "N", 19283746),
        (2, "eastron-sdm72d-m-v2", 9600, "N", 23107788),
        (3, "abb-b2x", 9600, "N", 7001234),
        (5, "eastron-sdm120", 9600, "N", 21004711),
        (7, "carlogavazzi-em340", 9600, "N", "BX1234567890A"),
    }
    by_unit = {f["unit_id"]: f for f in found}
    # the SDM120 meter code (read via the FC04 fallback) is shared with the SDM230 profile: both named
    assert by_unit[5]["candidates"] == ["eastron-sdm230"]
    assert any("factory default is 2400" in h for h in by_unit[5]["hints"])  # SDM120 found at 9600
    assert any("unit id 7; the factory default is 1" in h for h in by_unit[7]["hints"])
    assert by_unit[1]["hints"] == [h for h in by_unit[1]["hints"] if "unit id" not in h]  # unit 1 = default
    assert "trying" in err  # progress output for the installer (stderr, JSON stays clean)


@pytest.mark.integration
async def test_scan_finds_meter_at_non_default_framing(capsys: pytest.CaptureFixture[str]) -> None:
    bus = VirtualRtuBus([meter("eastron-sdm630", 4, 555)], baudrate=19200, parity="N")
    await bus.start()
    try:
        # at 9600 the meter stays silent (framing enforced): nothing found, wiring hints, exit code 4
        rc, found, err = await in_thread(capsys, "--port", bus.client_port, "--ids", "1-5", "--bauds", "9600",
                                         "--parities", "N", *FAST)
        assert (rc, found) == (4, [])
        rc, found, err = await in_thread(capsys, "--port", bus.client_port, "--ids", "1-5", "--bauds",
                                         "9600,19200", "--parities", "N", *FAST)
        assert rc == 0, err
        (f,) = found
        assert (f["unit_id"], f["profile"], f["baud"], f["parity"], f["serial_number"]) == (
            4, "eastron-sdm630", 19200, "N", 555)
        assert any("runs at 19200 8N1; the factory default is 9600 8N1" in h for h in f["hints"])
        assert any("unit id 4" in h for h in f["hints"])
    finally:
        await bus.stop()


@pytest.mark.integration
async def test_scan_nothing_answers_gives_wiring_hints(capsys: pytest.CaptureFixture[str]) -> None:
    bus = VirtualRtuBus([meter("abb-b2x", 9, 1)], baudrate=9600)
    await bus.start()
    try:
        rc = await asyncio.to_thread(main, ["provision", "scan", "--port", bus.client_port, "--ids", "1-3",
                                            "--bauds", "9600", "--parities", "N", *FAST])
        out = capsys.readouterr().out
        assert rc == 4
        assert "no meter identified" in out and "A/B polarity" in out and "termination" in out
    finally:
        await bus.stop()


@pytest.mark.integration
async def test_scan_refuses_while_port_is_held(mixed_bus: VirtualRtuBus, capsys: pytest.CaptureFixture[str]) -> None:
    # the agent's bus opens the port through pymodbus/pyserial with exclusive=True (flock)
    held = serial.Serial(mixed_bus.client_port, 9600, exclusive=True)
    try:
        rc = await asyncio.to_thread(main, ["provision", "scan", "--port", mixed_bus.client_port, "--ids", "1"])
        err = capsys.readouterr().err
        assert rc == 5
        assert "in use" in err and "systemctl stop gridmeter-agent" in err
    finally:
        held.close()


@pytest.mark.integration
async def test_every_profile_identified_over_tcp(capsys: pytest.CaptureFixture[str]) -> None:
    """Each profile's identification rule, through the real bus stack: one simulated meter per profile."""
    ids = {pid: i + 1 for i, pid in enumerate(sorted(PROFILES))}
    sims = [meter(pid, uid, f"SN{uid}") if PROFILES[pid].serial_number and PROFILES[pid].serial_number.type == "string"
            else meter(pid, uid, 1000 + uid) for pid, uid in ids.items()]
    server = ModbusTcpMeters(sims)
    await server.start()
    try:
        rc, found, err = await in_thread(capsys, "--host", server.host, "--tcp-port", str(server.port), "--ids",
                                         f"1-{len(ids)}", *FAST)
    finally:
        await server.stop()
    assert rc == 0, err
    by_unit = {f["unit_id"]: f for f in found}
    assert set(by_unit) == set(ids.values())
    for pid, uid in ids.items():
        f = by_unit[uid]
        named = [f["profile"], *f["candidates"]]
        assert pid in named, (pid, f)
        if pid != "eastron-sdm230":  # shares the SDM120 meter code (documented): best match is the SDM120
            assert f["profile"] == pid, (pid, f)
        sn_rule = PROFILES[pid].serial_number
        expected_sn = None if sn_rule is None else f"SN{uid}" if sn_rule.type == "string" else 1000 + uid
        assert f["serial_number"] == expected_sn
        assert (f["host"], f["tcp_port"], f["baud"]) == (server.host, server.port, None)


def test_parse_ids() -> None:
    assert parse_ids("1-3,240,2") == (1, 2, 3, 240)
    assert 240 in DEFAULT_IDS and 200 in DEFAULT_IDS and 1 in DEFAULT_IDS
    for bad in ("0", "1-300", "5-1", "x"):
        with pytest.raises(ScanInputError, match="--ids"):
            parse_ids(bad)


@pytest.mark.parametrize(("args", "needle"), [
    (["--port", "/dev/null", "--bauds", "9601"], "--bauds"),
    (["--port", "/dev/null", "--parities", "X"], "--parities"),
    (["--port", "/dev/null", "--profiles", "nope"], "--profiles"),
    (["--port", "/dev/null", "--ids", "1-247", "--parities", "N,E,O"], "exceed"),
    (["--port", "/dev/null", "--timeout-s", "99"], "--timeout-s"),
])
def test_scan_bad_input_names_flag(capsys: pytest.CaptureFixture[str], args: list[str], needle: str) -> None:
    assert main(["provision", "scan", *args]) == 2
    assert needle in capsys.readouterr().err


def test_scan_missing_port(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["provision", "scan", "--port", "/dev/ttyNOPE9", "--ids", "1"]) == 1
    assert "/dev/ttyNOPE9" in capsys.readouterr().err
