"""register / rotate-key: validated agent config, record signed by the meter key, QR round trip, rotation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.config import load_config
from agent.keys import load_key_file
from gridmeter.cli import main
from protocol.errors import BadSignatureError
from protocol.registration import MeterRole, parse_registration
from protocol.signing import SigningKey
from provisioning.register import matrix_from_ascii, qr_ascii, qr_matrix

GATEWAY_KEY = SigningKey(bytes(range(32))).public_key.hex()


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["provision", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def register_args(tmp: Path, meter_id: str = "HOUSE-1", **over: str) -> list[str]:
    a = {
        "--config": str(tmp / "agent.toml"), "--meter-id": meter_id, "--profile": "eastron-sdm630",
        "--serial-number": "19283746", "--role": "grid", "--zone-id": "7", "--installer-id": "inst-042",
        "--key-file": str(tmp / "device.key"), "--port": "/dev/ttyAMA0", "--unit-id": "3",
        "--state-dir": str(tmp / "state"), "--gateway-public-key": GATEWAY_KEY, "--mqtt-host": "127.0.0.1",
        "--mqtt-port": "1883", "--clock-check": "always-synced",
    }
    a.update(over)
    return ["register", *[x for kv in a.items() for x in kv if kv[1] is not None]]


@pytest.fixture
def keyed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    assert run(capsys, "keygen", "--key-file", str(tmp_path / "device.key"))[0] == 0
    return tmp_path


def test_register_writes_valid_config_and_signed_record(keyed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys, *register_args(keyed))
    assert rc == 0, err
    cfg = load_config(keyed / "agent.toml", env={})
    (meter,) = cfg.meters
    (bus,) = cfg.buses
    assert (meter.meter_id, meter.unit_id, meter.profile, meter.bus) == ("HOUSE-1", 3, "eastron-sdm630", bus.name)
    assert (bus.kind, bus.port, bus.baudrate, bus.parity, bus.stopbits) == ("rtu", "/dev/ttyAMA0", 9600, "N", 1)
    assert cfg.mqtt.gateway_public_key.hex() == GATEWAY_KEY
    assert cfg.agent.key_file == keyed / "device.key"

    text = (keyed / "HOUSE-1.gmreg").read_text().strip()
    signed = parse_registration(text)  # verifies the proof-of-possession signature
    r = signed.registration
    key = load_key_file(keyed / "device.key")
    assert r.public_key == key.public_key
    assert (r.meter_id, r.profile, r.serial_number, r.role, r.zone_id) == (
        "HOUSE-1", "eastron-sdm630", "19283746", MeterRole.GRID, 7)
    assert r.rated_max_power_w == 83000  # the profile's rated limit
    assert r.installer_id == "inst-042" and r.previous_public_key is None
    # the QR code printed is the record: decode the terminal art back into modules
    art = qr_ascii(text)
    assert art in out
    m = qr_matrix(text)
    back = matrix_from_ascii(art)
    assert back[: len(m)] == m
    assert all(not any(row) for row in back[len(m):])  # only the light pad row beyond


def test_record_tamper_is_detected(keyed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, *register_args(keyed))[0] == 0
    signed = parse_registration((keyed / "HOUSE-1.gmreg").read_text())
    forged = bytearray(signed.body)
    forged[-20] ^= 1  # inside created_at_ms / installer id
    import base64

    text = "GMREG1:" + base64.urlsafe_b64encode(bytes(forged) + signed.signature).decode().rstrip("=")
    with pytest.raises(BadSignatureError):
        parse_registration(text)


def test_second_meter_shares_bus_and_key(keyed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, *register_args(keyed))[0] == 0
    rc, _, err = run(capsys, *register_args(keyed, "PV-1", **{"--profile": "eastron-sdm120", "--unit-id": "2",
                                                              "--role": "production"}))
    assert rc == 0, err
    cfg = load_config(keyed / "agent.toml", env={})
    assert [m.meter_id for m in cfg.meters] == ["HOUSE-1", "PV-1"]
    assert len(cfg.buses) == 1  # same port -> same bus
    r2 = parse_registration((keyed / "PV-1.gmreg").read_text()).registration
    assert r2.role is MeterRole.PRODUCTION and r2.rated_max_power_w == 12500
    # re-registering the same meter replaces it instead of duplicating
    assert run(capsys, *register_args(keyed, **{"--unit-id": "4"}))[0] == 0
    cfg = load_config(keyed / "agent.toml", env={})
    assert sorted((m.meter_id, m.unit_id) for m in cfg.meters) == [("HOUSE-1", 4), ("PV-1", 2)]


def test_register_tcp_meter_uses_profile_port(keyed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = register_args(keyed, "SE-1", **{"--profile": "solaredge-meter", "--port": None, "--unit-id": None})
    rc, _, err = run(capsys, *args, "--host", "192.0.2.10")
    assert rc == 0, err
    cfg = load_config(keyed / "agent.toml", env={})
    assert (cfg.buses[0].kind, cfg.buses[0].host, cfg.buses[0].tcp_port) == ("tcp", "192.0.2.10", 1502)
    assert cfg.meters[0].unit_id == 1


@pytest.mark.parametrize(
    ("over", "needle", "code"),
    [
        ({"--meter-id": "X" * 33}, "--meter-id", 2),
        ({"--gateway-public-key": None}, "--gateway-public-key", 2),
        ({"--gateway-public-key": "abc"}, "mqtt.gateway_public_key", 2),
        ({"--profile": "eastron-sdm999"}, "--profile", 2),
        ({"--baud": "9601"}, "baudrate", 2),
        ({"--unit-id": "300"}, "unit_id", 2),
        ({"--serial-number": None}, "--serial-number", 2),
        ({"--key-file": "/nonexistent/dir/device.key"}, "provision keygen", 1),
    ],
)
def test_register_bad_input_names_it(keyed: Path, capsys: pytest.CaptureFixture[str], over: dict[str, str | None],
                                     needle: str, code: int) -> None:
    rc, _, err = run(capsys, *register_args(keyed, **over))
    assert rc == code, err
    assert needle in err
    assert not (keyed / "agent.toml").exists()  # nothing written on failure


def test_register_from_commissioning_result(keyed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    com = keyed / "commission.json"
    com.write_text(json.dumps({"result": "pass", "profile": "inepro-pro380", "unit_id": 5, "serial_number": "15060001",
                               "bus": {"port": "/dev/ttyUSB0", "baudrate": 9600, "parity": "E", "stopbits": 1}}))
    args = register_args(keyed, **{"--profile": None, "--serial-number": None, "--port": None, "--unit-id": None})
    rc, _, err = run(capsys, *args, "--commissioning", str(com))
    assert rc == 0, err
    cfg = load_config(keyed / "agent.toml", env={})
    assert (cfg.meters[0].profile, cfg.meters[0].unit_id) == ("inepro-pro380", 5)
    assert (cfg.buses[0].port, cfg.buses[0].parity) == ("/dev/ttyUSB0", "E")
    assert parse_registration((keyed / "HOUSE-1.gmreg").read_text()).registration.serial_number == "15060001"
    com.write_text(json.dumps({"result": "fail", "profile": "inepro-pro380"}))
    rc, _, err = run(capsys, *args, "--commissioning", str(com))
    assert rc == 2 and "did not pass" in err


def test_rotate_key_signed_by_new_and_old(keyed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, *register_args(keyed))[0] == 0
    assert run(capsys, *register_args(keyed, "PV-1", **{"--unit-id": "2", "--role": "production"}))[0] == 0
    old = load_key_file(keyed / "device.key")
    rc, out, err = run(capsys, "rotate-key", "--config", str(keyed / "agent.toml"), "--meter-id", "HOUSE-1",
                       "--no-qr")
    assert rc == 0, err
    new = load_key_file(keyed / "device.key")
    assert new.public_key != old.public_key
    assert old.seed.hex() not in out and new.seed.hex() not in out
    backups = list(keyed.glob("device.key.bak-*"))
    assert [b.read_text().strip() for b in backups] == [old.seed.hex()]
    for meter_id in ("HOUSE-1", "PV-1"):  # both meters sign with this key: both get a rotation record
        signed = parse_registration((keyed / f"{meter_id}.gmreg").read_text())  # verifies both signatures
        assert signed.registration.public_key == new.public_key
        assert signed.registration.previous_public_key == old.public_key
        assert signed.rotation_signature is not None
        prev = parse_registration((keyed / f"{meter_id}.gmreg.prev").read_text())
        assert prev.registration.public_key == old.public_key
        assert signed.registration.serial_number == prev.registration.serial_number


def test_rotate_key_needs_previous_record(keyed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, *register_args(keyed))[0] == 0
    before = (keyed / "device.key").read_text()
    (keyed / "HOUSE-1.gmreg").unlink()
    rc, _, err = run(capsys, "rotate-key", "--config", str(keyed / "agent.toml"), "--meter-id", "HOUSE-1")
    assert rc == 1 and "HOUSE-1.gmreg" in err
    assert (keyed / "device.key").read_text() == before  # key untouched when rotation cannot complete
    rc, _, err = run(capsys, "rotate-key", "--config", str(keyed / "agent.toml"), "--meter-id", "NOPE")
    assert rc == 2 and "NOPE" in err


def test_gateway_registry_accepts_record_then_rotation(keyed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The records provisioning writes are what the gateway's registry takes: added, then rotated."""
    from gateway.registry import registry_path
    from gateway.store.registry import Registry

    assert run(capsys, *register_args(keyed))[0] == 0
    reg = Registry(registry_path(keyed / "gw"))
    try:
        meter, action = reg.add((keyed / "HOUSE-1.gmreg").read_text(), 1)
        assert (meter.meter_id, action) == ("HOUSE-1", "added")
        assert run(capsys, "rotate-key", "--config", str(keyed / "agent.toml"), "--meter-id", "HOUSE-1",
                   "--no-qr")[0] == 0
        meter, action = reg.add((keyed / "HOUSE-1.gmreg").read_text(), 2)
        assert action == "rotated"
        assert meter.public_key == load_key_file(keyed / "device.key").public_key
    finally:
        reg.close()
