"""firmware_config loader: strict parsing, errors naming file + key path + value."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest

from firmware_config.loader import PROFILES_DIR, load_all, load_profile, parse_profile
from firmware_config.schema import ProfileError

BASE = tomllib.loads((PROFILES_DIR / "eastron-sdm120.toml").read_text())


def mutate(fn: Any) -> dict[str, Any]:
    d = copy.deepcopy(BASE)
    fn(d)
    return d


ERRORS = [
    ("unknown top key", lambda d: d.update(colour="red"), "colour: unknown key"),
    ("unknown register key", lambda d: d["registers"][0].update(lenght=2), "registers[0].lenght: unknown key"),
    ("bad type", lambda d: d["registers"][2].update(type="float"), "registers[2].type: must be one of"),
    ("bad unit", lambda d: d["registers"][0].update(unit="kW"), "registers[0].unit: must be one of V, dV"),
    ("bad measurement", lambda d: d["registers"][0].update(measurement="volts"), "registers[0].measurement"),
    ("duplicate measurement", lambda d: d["registers"][1].update(measurement="voltage_l1_dv", unit="V"),
     "registers[1].measurement: duplicate of registers[0]"),
    ("overlap", lambda d: d["registers"][1].update(address=1), "registers[1].address: overlaps registers[0]"),
    ("missing energy", lambda d: d.update(registers=[r for r in d["registers"] if "energy" not in r["measurement"]]),
     "needs energy_import_wh or energy_export_wh"),
    ("all energy optional", lambda d: [r.update(optional=True) for r in d["registers"] if "energy" in r["measurement"]],
     "at least one energy counter must not be optional"),
    ("optional not bool", lambda d: d["registers"][0].update(optional="yes"), "registers[0].optional: must be"),
    ("weak type", lambda d: d["identify"][0].update(weak=["0"]), "identify[0].weak"),
    ("sunspec unknown key", lambda d: d.update(sunspec={"models": [203], "model_address": 40069, "base": 0}),
     "sunspec.base: unknown key"),
    ("sunspec no models", lambda d: d.update(sunspec={"models": [], "model_address": 40069}),
     "sunspec.models: must not be empty"),
    ("baud", lambda d: d["serial"].update(baudrate=9601), "serial.baudrate: must be one of"),
    ("max registers", lambda d: d["read"].update(max_registers=126), "read.max_registers: must be in 1..125"),
    ("barrier inside register", lambda d: d["read"].update(barriers=[0x49]), "covers barrier"),
    ("identify fc", lambda d: d["identify"][0].update(function_codes=[6]), "identify[0].function_codes"),
    ("identify expected type", lambda d: d["identify"][0].update(expected=["32"]), "identify[0].expected"),
    ("string without length", lambda d: d["identify"][0].update(type="string", expected=["B23"]),
     "identify[0].length: required key missing"),
    ("scale zero", lambda d: d["registers"][0].update(scale=0), "registers[0].scale: must not be zero"),
    ("bool is not int", lambda d: d["registers"][0].update(address=True), "registers[0].address: must be"),
    ("sf reference", lambda d: d["registers"][0].update(scale_factor="V_SF"), "registers[0].scale_factor"),
    ("unknown sentinel", lambda d: d["decoding"].update(not_implemented=["minus_one"]), "not_implemented"),
    ("no identify", lambda d: d.update(identify=[]), "identify: at least one"),
]


@pytest.mark.parametrize(("name", "fn", "message"), ERRORS, ids=[e[0] for e in ERRORS])
def test_errors_name_key_path(name: str, fn: Any, message: str) -> None:
    with pytest.raises(ProfileError) as e:
        parse_profile(mutate(fn), "test.toml")
    assert str(e.value).startswith("test.toml: ")
    assert message in str(e.value)


def test_error_shows_value() -> None:
    with pytest.raises(ProfileError, match=r"serial\.baudrate: must be one of .* \(got 9601\)"):
        parse_profile(mutate(lambda d: d["serial"].update(baudrate=9601)), "x.toml")


def test_decimal_scale_is_exact() -> None:
    p = parse_profile(mutate(lambda d: d["registers"][0].update(scale="0.1")), "x.toml")
    assert p.registers[0].scale.denominator == 10
    p = parse_profile(mutate(lambda d: d["registers"][0].update(scale=0.01)), "x.toml")
    assert p.registers[0].scale.denominator == 100


def test_duplicate_ids_rejected(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    src = (PROFILES_DIR / "eastron-sdm120.toml").read_text()
    (a / "eastron-sdm120.toml").write_text(src)
    (b / "eastron-sdm120.toml").write_text(src)
    with pytest.raises(ProfileError, match="duplicate profile id"):
        load_all([a, b])


def test_id_must_match_file_name(tmp_path: Path) -> None:
    (tmp_path / "other.toml").write_text((PROFILES_DIR / "eastron-sdm120.toml").read_text())
    with pytest.raises(ProfileError, match=r"other\.toml: id: must equal the file name"):
        load_profile(tmp_path / "other.toml")


def test_bad_toml_names_file(tmp_path: Path) -> None:
    (tmp_path / "broken.toml").write_text("id = \n")
    with pytest.raises(ProfileError, match=r"broken\.toml: <toml>"):
        load_profile(tmp_path / "broken.toml")


def test_shipped_profiles_load() -> None:
    profiles = load_all()
    p = profiles["eastron-sdm630"]
    assert p.serial is not None and (p.serial.baudrate, p.serial.parity, p.serial.stopbits) == (9600, "N", 1)
    assert p.identify[0].function_codes == (3, 4) and p.identify[0].expected == (112, 0)
    assert p.identify[0].weak == (0,)  # early SDM630 firmware; 121 is the SDM630MCT (issue 9 defect 5)
    assert p.rated.max_power_w == 83000
    assert p.unconfirmed  # provisioning asks the installer about these


def test_import_only_profile_declares_export_absent() -> None:
    """A model without an export counter leaves it out: its readings carry EXPORT_NOT_MEASURED."""
    p = parse_profile(mutate(lambda d: d.update(
        registers=[r for r in d["registers"] if r["measurement"] != "energy_export_wh"])), "x.toml")
    assert p.absent_measurements == ("energy_export_wh",)


def test_new_fields_parse() -> None:
    def add(d: dict[str, Any]) -> None:
        d["registers"][-1]["optional"] = True
        d["identify"][0]["weak"] = [0]
        d["rated"]["current_transformer"] = True
        d["facts"] = [{"text": "t", "confirmed": False, "check": "Does the label say SDM120?"}]
        d["sunspec"] = {"models": [201, 203], "model_address": 40069, "occurrence": 2}

    p = parse_profile(mutate(add), "x.toml")
    assert p.registers[-1].optional and p.rated.current_transformer
    assert p.identify[0].weak == (0,) and 0 in p.identify[0].expected
    assert p.installer_checks == ("Does the label say SDM120?",)
    assert p.sunspec is not None and (p.sunspec.models, p.sunspec.model_address, p.sunspec.occurrence) == (
        (201, 203), 40069, 2)
