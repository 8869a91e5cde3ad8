"""Load meter profiles from TOML (tomllib): parse, reject unknown keys, validate, reject duplicate ids.

Errors are `ProfileError` naming the file, the key path and the value, e.g.
`eastron-sdm630.toml: registers[3].type: must be one of float32, int16, ... (got 'float')`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from pathlib import Path
from typing import Any

from firmware_config.schema import (
    BAUDRATES,
    BYTE_ORDERS,
    FAMILY_OF,
    FUNCTION_CODES,
    GAP_POLICIES,
    IDENTIFY_TYPES,
    MAX_REGISTERS_PER_REQUEST,
    MEASUREMENTS,
    PARITIES,
    REGISTER_TYPES,
    SENTINELS,
    TRANSPORTS,
    UNITS,
    WORD_ORDERS,
    Fact,
    IdentifyRule,
    Profile,
    ProfileError,
    Rated,
    ReadPolicy,
    Register,
    SerialDefaults,
    SerialNumberRule,
    SunSpec,
    int_type_bounds,
    validate_profile,
)

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"
_MISSING = object()


class _Table:
    """A TOML table being consumed: typed `take`, then `done` rejects whatever key was not taken."""

    def __init__(self, data: object, src: str, path: str) -> None:
        if not isinstance(data, dict):
            raise ProfileError(src, path or "<root>", "must be a table", data)
        self.data, self.src, self.path, self.taken = data, src, path, set[str]()

    def key(self, k: str) -> str:
        return f"{self.path}.{k}" if self.path else k

    def fail(self, k: str, msg: str, value: object = None) -> ProfileError:
        return ProfileError(self.src, self.key(k), msg, value)

    def take(self, k: str, kind: type | tuple[type, ...], default: Any = _MISSING) -> Any:
        self.taken.add(k)
        if k not in self.data:
            if default is _MISSING:
                raise self.fail(k, "required key missing")
            return default
        v = self.data[k]
        if isinstance(v, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self.fail(k, f"must be {_kind_name(kind)}", v)
        if not isinstance(v, kind):
            raise self.fail(k, f"must be {_kind_name(kind)}", v)
        return v

    def choice(self, k: str, options: Iterable[object], default: Any = _MISSING) -> Any:
        opts = tuple(options)
        v = self.take(k, (str, int), default)
        if v not in opts:
            raise self.fail(k, "must be one of " + ", ".join(str(o) for o in opts), v)
        return v

    def int_in(self, k: str, lo: int, hi: int, default: Any = _MISSING) -> int:
        if k not in self.data and default is not _MISSING:
            self.taken.add(k)
            return int(default)
        v = self.take(k, int)
        if not lo <= v <= hi:
            raise self.fail(k, f"must be in {lo}..{hi}", v)
        return int(v)

    def sub(self, k: str) -> _Table:
        self.taken.add(k)
        return _Table(self.data.get(k, {}), self.src, self.key(k))

    def items(self, k: str, required: bool = True) -> list[_Table]:
        self.taken.add(k)
        v = self.data.get(k, _MISSING)
        if v is _MISSING:
            if required:
                raise self.fail(k, "required array of tables missing")
            return []
        if not isinstance(v, list):
            raise self.fail(k, "must be an array of tables", v)
        return [_Table(x, self.src, f"{self.key(k)}[{i}]") for i, x in enumerate(v)]

    def done(self) -> None:
        extra = sorted(set(self.data) - self.taken)
        if extra:
            raise self.fail(extra[0], "unknown key")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({int: "an integer", str: "a string", bool: "true/false", list: "an array",
                        float: "a number", dict: "a table"}.get(k, k.__name__) for k in kinds)


def _scale(t: _Table, k: str) -> Fraction:
    v = t.take(k, (int, float, str), 1)
    try:
        f = Fraction(Decimal(str(v)))  # "0.01" and 0.01 both mean exactly 1/100
    except (InvalidOperation, ValueError):
        raise t.fail(k, "must be a decimal number", v) from None
    if f == 0:
        raise t.fail(k, "must not be zero", v)
    return f


def _int_list(t: _Table, k: str, lo: int, hi: int) -> tuple[int, ...]:
    v = t.take(k, list, [])
    for x in v:
        if isinstance(x, bool) or not isinstance(x, int) or not lo <= x <= hi:
            raise t.fail(k, f"items must be integers in {lo}..{hi}", x)
    return tuple(v)


def _fcs(t: _Table, default: tuple[int, ...]) -> tuple[int, ...]:
    v = _int_list(t, "function_codes", 0, 255) or default
    if not set(v) <= set(FUNCTION_CODES):
        raise t.fail("function_codes", "items must be 3 (holding) or 4 (input)", list(v))
    return v


def _register(t: _Table, dec: dict[str, Any]) -> Register:
    rtype = t.choice("type", REGISTER_TYPES)
    fc = t.choice("function_code", FUNCTION_CODES, dec["function_code"])
    common = dict(
        address=t.int_in("address", 0, 0xFFFF), type=rtype, function_code=fc,
        word_order=t.choice("word_order", WORD_ORDERS, dec["word_order"]),
        byte_order=t.choice("byte_order", BYTE_ORDERS, dec["byte_order"]),
    )
    sentinels = tuple(t.take("not_implemented", list, list(dec["not_implemented"])))
    for s in sentinels:
        if s not in SENTINELS:
            raise t.fail("not_implemented", "items must be one of " + ", ".join(SENTINELS), s)
    if rtype == "sunssf":
        name = t.take("name", str)
        t.done()
        return Register(name=name, measurement=None, not_implemented=("signed_min",), **common)
    m = t.choice("measurement", MEASUREMENTS)
    units = UNITS[FAMILY_OF[m]]
    unit = t.choice("unit", units)
    reg = Register(name=m, measurement=m, unit=unit, scale=_scale(t, "scale"),
                   scale_factor=t.take("scale_factor", str, None), not_implemented=sentinels,
                   optional=t.take("optional", bool, False), **common)
    t.done()
    return reg


def _identify(t: _Table, dec: dict[str, Any], serial_number: bool = False) -> Any:
    rtype = t.choice("type", IDENTIFY_TYPES)
    length = t.int_in("length", 1, MAX_REGISTERS_PER_REQUEST, 0 if rtype != "string" else _MISSING)
    if rtype != "string" and length:
        raise t.fail("length", "only for type = \"string\"", length)
    common = dict(address=t.int_in("address", 0, 0xFFFF), type=rtype, length=length,
                  function_codes=_fcs(t, (dec["function_code"],)),
                  word_order=t.choice("word_order", WORD_ORDERS, dec["word_order"]))
    if serial_number:
        t.done()
        return SerialNumberRule(**common)
    lo, hi = _identify_range(t, rtype)
    expected = t.take("expected", list, [] if lo is not None else _MISSING)
    want = str if rtype == "string" else int
    plural = "strings" if want is str else "integers"
    if (not expected and lo is None) or any(isinstance(x, bool) or not isinstance(x, want) for x in expected):
        raise t.fail("expected", f"must be a non-empty array of {plural} (or give min and max)", expected)
    weak = t.take("weak", list, [])
    if any(isinstance(x, bool) or not isinstance(x, want) for x in weak):
        raise t.fail("weak", f"must be an array of {plural}", weak)
    rule = IdentifyRule(expected=tuple(expected) + tuple(x for x in weak if x not in expected),
                        confirmed=t.take("confirmed", bool, False), note=t.take("note", str, ""),
                        weak=tuple(weak), minimum=lo, maximum=hi, **common)
    t.done()
    return rule


def _identify_range(t: _Table, rtype: str) -> tuple[int, int] | tuple[None, None]:
    """`min` and `max` (both or neither): an inclusive range of the raw value, inside what `type` can hold."""
    lo, hi = t.take("min", int, None), t.take("max", int, None)
    if lo is None and hi is None:
        return None, None
    if rtype == "string":
        raise t.fail("min" if lo is not None else "max", "only for integer types, not \"string\"")
    if lo is None or hi is None:
        raise t.fail("max" if hi is None else "min", "required key missing (min and max go together)")
    first, last = int_type_bounds(rtype)
    for k, v in (("min", lo), ("max", hi)):
        if not first <= v <= last:
            raise t.fail(k, f"must be in {first}..{last} for {rtype}", v)
    if lo > hi:
        raise t.fail("min", f"must not exceed max ({hi})", lo)
    return lo, hi


def _serial(t: _Table) -> SerialDefaults:
    s = SerialDefaults(
        baudrate=t.choice("baudrate", BAUDRATES), parity=t.choice("parity", PARITIES),
        stopbits=t.choice("stopbits", (1, 2)), bytesize=t.choice("bytesize", (7, 8), 8),
        baud_options=_int_list(t, "baud_options", 300, 115200), confirmed=t.take("confirmed", bool),
        source=t.take("source", str, ""),
    )
    t.done()
    return s


def _read(t: _Table) -> ReadPolicy:
    readable = []
    for i, pair in enumerate(t.take("readable", list, [])):
        ok = isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, int) for x in pair)
        if not ok or not 0 <= pair[0] <= pair[1] <= 0xFFFF:
            raise ProfileError(t.src, t.key(f"readable[{i}]"), "must be [first, last] addresses", pair)
        readable.append((pair[0], pair[1]))
    max_hole = t.take("max_hole", int, None)
    if max_hole is not None and not 0 <= max_hole <= MAX_REGISTERS_PER_REQUEST:
        raise t.fail("max_hole", f"must be in 0..{MAX_REGISTERS_PER_REQUEST}", max_hole)
    r = ReadPolicy(
        max_registers=t.int_in("max_registers", 1, MAX_REGISTERS_PER_REQUEST),
        gaps=t.choice("gaps", GAP_POLICIES), readable=tuple(readable),
        barriers=_int_list(t, "barriers", 0, 0xFFFF), max_hole=max_hole,
        inter_request_delay_ms=t.int_in("inter_request_delay_ms", 0, 10_000, 0),
        unit_switch_delay_ms=t.int_in("unit_switch_delay_ms", 0, 10_000, 0),
        turnaround_ms=t.int_in("turnaround_ms", 0, 10_000, 0),
    )
    t.done()
    return r


def _rated(t: _Table) -> Rated:
    r = Rated(
        max_power_w=t.int_in("max_power_w", 1, 10_000_000),
        voltage_min_v=t.int_in("voltage_min_v", 0, 1000, 0), voltage_max_v=t.int_in("voltage_max_v", 0, 1000, 0),
        frequency_min_hz=t.int_in("frequency_min_hz", 0, 1000, 0),
        frequency_max_hz=t.int_in("frequency_max_hz", 0, 1000, 0),
        max_current_a=t.int_in("max_current_a", 0, 100_000, 0),
        current_transformer=t.take("current_transformer", bool, False),
    )
    if r.voltage_min_v > r.voltage_max_v or r.frequency_min_hz > r.frequency_max_hz:
        raise t.fail("voltage_min_v", "min must not exceed max", (r.voltage_min_v, r.voltage_max_v))
    t.done()
    return r


def parse_profile(data: dict[str, Any], source: str) -> Profile:
    """Build and validate a Profile from parsed TOML. `source` names the file in errors."""
    root = _Table(data, source, "")
    dec_t = root.sub("decoding")
    dec = {
        "function_code": dec_t.choice("function_code", FUNCTION_CODES),
        "word_order": dec_t.choice("word_order", WORD_ORDERS, "big"),
        "byte_order": dec_t.choice("byte_order", BYTE_ORDERS, "big"),
        "not_implemented": tuple(dec_t.take("not_implemented", list, [])),
    }
    dec_t.done()
    transports = tuple(root.take("transports", list))
    for x in transports:
        if x not in TRANSPORTS:
            raise root.fail("transports", "items must be one of " + ", ".join(TRANSPORTS), x)
    if not transports:
        raise root.fail("transports", "must not be empty")
    serial = _serial(root.sub("serial")) if "serial" in data or "rtu" in transports else None
    sunspec = _sunspec(root.sub("sunspec")) if "sunspec" in data else None
    sn = root.sub("serial_number") if "serial_number" in data else None
    profile = Profile(
        id=root.take("id", str), manufacturer=root.take("manufacturer", str), model=root.take("model", str),
        description=root.take("description", str, ""), transports=transports,
        default_unit_id=root.int_in("default_unit_id", 0, 255), tcp_port=root.int_in("tcp_port", 1, 65535, 502),
        sunspec=sunspec,
        serial=serial, read=_read(root.sub("read")), rated=_rated(root.sub("rated")),
        identify=tuple(_identify(t, dec) for t in root.items("identify")),
        serial_number=_identify(sn, dec, serial_number=True) if sn is not None else None,
        registers=tuple(_register(t, dec) for t in root.items("registers")),
        facts=tuple(_fact(t) for t in root.items("facts", required=False)),
        sources=tuple(str(s) for s in root.take("sources", list, [])), source_path=source,
    )
    root.done()
    if not profile.identify:
        raise root.fail("identify", "at least one identification rule is required")
    return validate_profile(profile)


def _sunspec(t: _Table) -> SunSpec:
    s = SunSpec(models=_int_list(t, "models", 1, 0xFFFE), model_address=t.int_in("model_address", 0, 0xFFFF),
                occurrence=t.int_in("occurrence", 1, 16, 1), behind=_int_list(t, "behind", 1, 0xFFFE))
    t.done()
    return s


def _fact(t: _Table) -> Fact:
    f = Fact(text=t.take("text", str), confirmed=t.take("confirmed", bool), source=t.take("source", str, ""),
             check=t.take("check", str, ""))
    t.done()
    return f


def load_profile(path: Path | str) -> Profile:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(path.name, "<toml>", str(e)) from None
    except OSError as e:
        raise ProfileError(str(path), "<file>", e.strerror or str(e)) from None
    profile = parse_profile(data, path.name)
    if profile.id != path.stem:
        raise ProfileError(path.name, "id", f"must equal the file name {path.stem!r}", profile.id)
    return profile


def load_all(directories: Iterable[Path | str] = (PROFILES_DIR,)) -> dict[str, Profile]:
    """Every *.toml under the directories, keyed by profile id; a duplicate id is an error naming both files."""
    out: dict[str, Profile] = {}
    for d in directories:
        for path in sorted(Path(d).glob("*.toml")):
            p = load_profile(path)
            if p.id in out:
                raise ProfileError(path.name, "id", f"duplicate profile id, also in {out[p.id].source_path}", p.id)
            out[p.id] = p
    return out


def get_profile(profile_id: str, directories: Iterable[Path | str] = (PROFILES_DIR,)) -> Profile:
    profiles = load_all(directories)
    try:
        return profiles[profile_id]
    except KeyError:
        raise ProfileError("profiles", "id", "unknown profile; known: " + ", ".join(sorted(profiles)),
                           profile_id) from None
