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


# ---- identification ranges: `min`/`max` on the raw value (a distinguishing read of a plausible voltage) ----------


def _ranged(**keys: Any) -> Any:
    def fn(d: dict[str, Any]) -> None:
        rule = d["identify"][0]
        rule.pop("expected")
        rule.update(keys)
    return fn


RANGE_ERRORS = [
    ("min without max", _ranged(min=4500), "identify[0].max: required key missing (min and max go together)"),
    ("max without min", _ranged(max=6500), "identify[0].min: required key missing (min and max go together)"),
    ("min above max", _ranged(min=6500, max=4500), "identify[0].min: must not exceed max (4500) (got 6500)"),
    ("max beyond uint16", _ranged(min=0, max=65536), "identify[0].max: must be in 0..65535 for uint16 (got 65536)"),
    ("min below int16", _ranged(type="int16", min=-32769, max=0),
     "identify[0].min: must be in -32768..32767 for int16 (got -32769)"),
    ("min not integer", _ranged(min=45.0, max=65), "identify[0].min: must be an integer (got 45.0)"),
    ("max is bool", _ranged(min=0, max=True), "identify[0].max: must be an integer (got True)"),
    ("range on string", _ranged(type="string", length=2, min=0, max=1),
     "identify[0].min: only for integer types, not \"string\""),
    ("neither expected nor range", _ranged(), "identify[0].expected: required key missing"),
    ("empty expected, no range", lambda d: d["identify"][0].update(expected=[]),
     "identify[0].expected: must be a non-empty array of integers (or give min and max) (got [])"),
]


@pytest.mark.parametrize(("name", "fn", "message"), RANGE_ERRORS, ids=[e[0] for e in RANGE_ERRORS])
def test_range_errors_name_key_path(name: str, fn: Any, message: str) -> None:
    with pytest.raises(ProfileError) as e:
        parse_profile(mutate(fn), "test.toml")
    assert str(e.value) == f"test.toml: {message}"


# rule keys -> (value, matches?)
RANGE_MATCHES = [
    ({"min": 4500, "max": 6500}, [(4499, False), (4500, True), (5000, True), (6500, True), (6501, False)]),
    ({"type": "int16", "min": -10, "max": 10}, [(-11, False), (-10, True), (0, True), (10, True), (11, False)]),
    ({"type": "uint32", "min": 70_000, "max": 70_000}, [(69_999, False), (70_000, True), (70_001, False)]),
    # a range and a list: either one accepts (ET112-style codes with a gap plus a contiguous block)
    ({"expected": [100, 102], "min": 120, "max": 121},
     [(100, True), (101, False), (102, True), (119, False), (120, True), (121, True), (122, False)]),
]


@pytest.mark.parametrize(("keys", "cases"), RANGE_MATCHES, ids=[str(k) for k, _ in RANGE_MATCHES])
def test_range_rule_matches(keys: dict[str, Any], cases: list[tuple[int, bool]]) -> None:
    from agent.decode import identify_matches

    p = parse_profile(mutate(_ranged(**keys)), "x.toml")
    rule = p.identify[0]
    assert [(v, identify_matches(rule, v)) for v, _ in cases] == cases
    assert identify_matches(rule, rule.example)  # what the simulated meter serves is accepted


def test_range_example_is_first_expected_else_min() -> None:
    only_range = parse_profile(mutate(_ranged(min=4500, max=6500)), "x.toml").identify[0]
    assert (only_range.expected, only_range.minimum, only_range.maximum, only_range.example) == ((), 4500, 6500, 4500)
    both = parse_profile(mutate(_ranged(expected=[5000], min=4500, max=6500)), "x.toml").identify[0]
    assert both.example == 5000


def test_shipped_range_rules_replace_enumerations() -> None:
    """The ORNO WE-514 frequency/voltage reads are ranges now, accepting exactly 45.00-65.00 Hz / 184.00-276.00 V."""
    p = load_all()["orno-we514"]
    assert [(r.address, r.expected, r.minimum, r.maximum) for r in p.identify] == [
        (0x0130, (), 4500, 6500), (0x0131, (), 18400, 27600)]
    assert (PROFILES_DIR / "orno-we514.toml").stat().st_size < 4096
