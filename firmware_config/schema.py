"""Typed meter profiles (pure, no I/O): what a meter model is, how to reach it, how to read and decode it.

A profile is plain data loaded from `profiles/<brand>-<model>.toml` by `firmware_config.loader`; every field is
documented in firmware_config/README.md. This module holds the frozen dataclasses, the closed vocabularies
(types, units, measurements, sentinels) and the cross-field checks. Register length and signedness follow from
`type`, never written twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from itertools import pairwise

from protocol.reading import Instantaneous

# ---- closed vocabularies ------------------------------------------------------------------------------------------

ENERGY_MEASUREMENTS = ("energy_import_wh", "energy_export_wh")
MEASUREMENTS: tuple[str, ...] = ENERGY_MEASUREMENTS + Instantaneous.names()
# A profile reads at least one energy counter; a meter without the other (import-only, production-only) simply
# leaves it out, or marks its register `optional` when only some variants have it.
REQUIRED_ANY_MEASUREMENT = ENERGY_MEASUREMENTS

# register type -> (words, signed, kind)   kind: int | float | acc | sf
REGISTER_TYPES: dict[str, tuple[int, bool, str]] = {
    "int16": (1, True, "int"),
    "uint16": (1, False, "int"),
    "int32": (2, True, "int"),
    "uint32": (2, False, "int"),
    "int64": (4, True, "int"),
    "uint64": (4, False, "int"),
    "acc32": (2, False, "acc"),  # SunSpec accumulator: unsigned, 0 = not implemented
    "float32": (2, True, "float"),
    "float64": (4, True, "float"),
    "sunssf": (1, True, "sf"),  # SunSpec scale factor: signed int16 exponent, value = raw x 10^sf
}
IDENTIFY_TYPES = ("uint16", "int16", "uint32", "int32", "string")

# measurement -> family; family -> {unit written in the profile: factor to the vocabulary's unit}
FAMILY_OF = {
    "energy_import_wh": "energy", "energy_export_wh": "energy", "power_w": "power",
    "voltage_l1_dv": "voltage", "voltage_l2_dv": "voltage", "voltage_l3_dv": "voltage",
    "current_l1_ma": "current", "current_l2_ma": "current", "current_l3_ma": "current",
    "frequency_mhz": "frequency", "power_factor_milli": "power_factor",
}
UNITS: dict[str, dict[str, int]] = {
    "energy": {"Wh": 1, "kWh": 1000},  # -> Wh
    "power": {"W": 1, "kW": 1000},  # -> W
    "voltage": {"V": 10, "dV": 1},  # -> 0.1 V
    "current": {"A": 1000, "mA": 1},  # -> mA
    "frequency": {"Hz": 1000, "mHz": 1},  # -> mHz
    "power_factor": {"ratio": 1000, "pct": 10, "milli": 1},  # -> 1/1000 (SunSpec PF is percent)
}

# Named "not implemented / invalid" raw patterns (ABB manual §9.3, pysunspec2 sunspec2/mb.py).
# NaN/Inf of float types is always invalid and needs no entry.
SENTINELS = ("all_ones", "signed_min", "signed_max", "zero")


def sentinel_raw(name: str, words: int) -> int:
    """The raw register value (unsigned, `words` x 16 bits) that the sentinel `name` stands for."""
    bits = words * 16
    return {"all_ones": (1 << bits) - 1, "signed_min": 1 << (bits - 1), "signed_max": (1 << (bits - 1)) - 1,
            "zero": 0}[name]


WORD_ORDERS = ("big", "little")  # big = high word at the lower address (ABCD); little = LSW first (CDAB)
BYTE_ORDERS = ("big", "little")  # inside one register; "big" for every meter we know
GAP_POLICIES = ("filler", "exception")
TRANSPORTS = ("rtu", "tcp", "rtu-over-tcp")
PARITIES = ("N", "E", "O")
BAUDRATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
FUNCTION_CODES = (3, 4)
MAX_REGISTERS_PER_REQUEST = 125  # Modbus Application Protocol V1.1b3 §6.3/6.4: quantity 1..125


class ProfileError(ValueError):
    """A profile is invalid. The message names the file, the key path and the value received."""

    def __init__(self, source: str, key_path: str, message: str, value: object = None) -> None:
        self.source, self.key_path, self.value = source, key_path, value
        got = "" if value is None else f" (got {value!r})"
        super().__init__(f"{source}: {key_path}: {message}{got}")


# ---- dataclasses --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Register:
    """One value on the wire. `measurement` is None only for `sunssf` registers, which carry a `name`."""

    name: str  # measurement name, or the scale-factor name ("W_SF")
    measurement: str | None
    address: int
    type: str
    function_code: int
    word_order: str = "big"
    byte_order: str = "big"
    unit: str | None = None
    scale: Fraction = Fraction(1)
    scale_factor: str | None = None  # name of a sunssf register of the same profile
    not_implemented: tuple[str, ...] = ()
    # Some variants of the model lack this value: exception 2 on its own read, a `not_implemented` sentinel or
    # NaN mean "not measured" (an energy counter is then flagged *_NOT_MEASURED), never a failed read.
    optional: bool = False

    @property
    def words(self) -> int:
        return REGISTER_TYPES[self.type][0]

    @property
    def end(self) -> int:
        """First address after this register (exclusive)."""
        return self.address + self.words

    @property
    def unit_factor(self) -> int:
        if self.measurement is None or self.unit is None:
            return 1
        return UNITS[FAMILY_OF[self.measurement]][self.unit]


@dataclass(frozen=True, slots=True)
class SerialDefaults:
    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1
    bytesize: int = 8
    baud_options: tuple[int, ...] = ()
    confirmed: bool = False
    source: str = ""


@dataclass(frozen=True, slots=True)
class ReadPolicy:
    max_registers: int = MAX_REGISTERS_PER_REQUEST
    gaps: str = "exception"  # what the device does for an unimplemented register inside a block read
    readable: tuple[tuple[int, int], ...] = ()  # inclusive ranges known to answer (holes inside may be bridged)
    barriers: tuple[int, ...] = ()  # addresses never to be read (exception 2, side effects)
    max_hole: int | None = None  # None -> planner heuristic from the bus overhead
    inter_request_delay_ms: int = 0  # pause between two requests to this device
    unit_switch_delay_ms: int = 0  # pause before this device when the previous request went to another unit
    turnaround_ms: int = 0  # device needs this long after its reply before the next frame (CG "T delay")


@dataclass(frozen=True, slots=True)
class IdentifyRule:
    address: int
    type: str
    expected: tuple[int | str, ...]  # accepted values (may be empty when a range is given)
    function_codes: tuple[int, ...] = (3,)  # tried in order: the first that answers decides
    length: int = 0  # words, for type = "string"
    word_order: str = "big"
    confirmed: bool = False
    note: str = ""
    # Values that match only weakly (e.g. 0 from early SDM630 firmware without a meter code): the scan marks the
    # match as needing a look at the label.
    weak: tuple[int | str, ...] = ()
    # Inclusive range of the register's value as `type` decodes it (raw integer, no scale): a distinguishing read
    # of a plausible voltage or frequency. A value matches if it is in `expected` or in the range.
    minimum: int | None = None
    maximum: int | None = None

    @property
    def words(self) -> int:
        return self.length if self.type == "string" else REGISTER_TYPES[self.type][0]

    def in_range(self, value: int) -> bool:
        return self.minimum is not None and self.maximum is not None and self.minimum <= value <= self.maximum

    @property
    def example(self) -> int | str:
        """A value the rule accepts (the simulated meter serves it): the first expected value, else the minimum."""
        if self.expected:
            return self.expected[0]
        assert self.minimum is not None  # the loader requires `expected` or a range
        return self.minimum


def int_type_bounds(type_name: str) -> tuple[int, int]:
    """Smallest and largest value an integer register type holds."""
    words, signed, _kind = REGISTER_TYPES[type_name]
    bits = words * 16
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


@dataclass(frozen=True, slots=True)
class SerialNumberRule:
    address: int
    type: str
    function_codes: tuple[int, ...] = (3,)
    length: int = 0
    word_order: str = "big"

    @property
    def words(self) -> int:
        return self.length if self.type == "string" else REGISTER_TYPES[self.type][0]


@dataclass(frozen=True, slots=True)
class Rated:
    max_power_w: int
    voltage_min_v: int = 0
    voltage_max_v: int = 0
    frequency_min_hz: int = 0
    frequency_max_hz: int = 0
    max_current_a: int = 0
    # Current-transformer meter: current and power scale with the CT fitted. max_power_w / max_current_a are
    # then the largest CT the meter supports (a glitch bound only); commissioning asks the CT's primary current.
    current_transformer: bool = False


@dataclass(frozen=True, slots=True)
class Fact:
    text: str
    confirmed: bool
    source: str = ""
    # A question an installer can answer by looking at the meter (label, display, a known load), with how.
    # Commissioning asks only facts that have one; the others are documentation.
    check: str = ""


@dataclass(frozen=True, slots=True)
class SunSpec:
    """SunSpec device: the register addresses of the profile assume the meter model's ID register at
    `model_address`; discovery (SunS at 40000, 0 or 50000, then the model chain) finds where it really is and
    every address shifts by the difference. Works over TCP and RTU."""

    models: tuple[int, ...]  # accepted meter model ids (201-204 int+SF, 211-214 float)
    model_address: int  # where this profile's addresses put the model's ID register
    occurrence: int = 1  # the n-th matching model in the chain (SolarEdge: meter 1, 2, 3)
    behind: tuple[int, ...] = ()  # a model of these must come first in the chain (SolarEdge: inverter 101-103)


@dataclass(frozen=True, slots=True)
class Profile:
    id: str
    manufacturer: str
    model: str
    description: str
    transports: tuple[str, ...]
    default_unit_id: int
    serial: SerialDefaults | None
    read: ReadPolicy
    identify: tuple[IdentifyRule, ...]
    serial_number: SerialNumberRule | None
    rated: Rated
    registers: tuple[Register, ...]
    tcp_port: int = 502
    sunspec: SunSpec | None = None
    facts: tuple[Fact, ...] = ()
    sources: tuple[str, ...] = ()
    source_path: str = field(default="", compare=False)

    @property
    def measurements(self) -> tuple[str, ...]:
        return tuple(r.measurement for r in self.registers if r.measurement is not None)

    def register(self, name: str) -> Register:
        for r in self.registers:
            if r.name == name:
                return r
        raise KeyError(f"profile {self.id}: no register named {name!r}")

    @property
    def absent_measurements(self) -> tuple[str, ...]:
        """Energy counters this model never has (import-only / production-only meters)."""
        return tuple(m for m in ENERGY_MEASUREMENTS if m not in self.measurements)

    @property
    def installer_checks(self) -> tuple[str, ...]:
        """Questions commissioning asks: only what can be checked on the meter, each saying how."""
        return tuple(dict.fromkeys(f.check for f in self.facts if f.check))

    @property
    def unconfirmed(self) -> tuple[str, ...]:
        """Facts the installer must confirm on the meter's display (provisioning asks)."""
        out = [f.text for f in self.facts if not f.confirmed]
        if self.serial is not None and not self.serial.confirmed:
            s = self.serial
            out.append(f"serial default {s.baudrate} {s.bytesize}{s.parity}{s.stopbits}")
        out += [f"identification: {r.note or hex(r.address)}" for r in self.identify if not r.confirmed]
        return tuple(out)


# ---- cross-field checks -------------------------------------------------------------------------------------------


def validate_profile(p: Profile) -> Profile:
    """Checks that need more than one field. Raises ProfileError naming the key path."""
    src = p.source_path or p.id
    names: dict[str, int] = {}
    for i, r in enumerate(p.registers):
        where = f"registers[{i}]"
        if r.name in names:
            raise ProfileError(src, f"{where}.measurement", f"duplicate of registers[{names[r.name]}]", r.name)
        names[r.name] = i
        if r.end > 0x10000:
            raise ProfileError(src, f"{where}.address", "register runs past 0xFFFF", r.address)
        if r.words > p.read.max_registers:
            raise ProfileError(src, f"{where}.type", f"needs {r.words} words > read.max_registers", r.type)
        for b in p.read.barriers:
            if r.address <= b < r.end:
                raise ProfileError(src, f"{where}.address", f"covers barrier address {b:#06x}", r.address)
    for i, r in enumerate(p.registers):
        if r.scale_factor is None:
            continue
        j = names.get(r.scale_factor)
        sf = p.registers[j] if j is not None else None
        if sf is None or sf.type != "sunssf":
            raise ProfileError(src, f"registers[{i}].scale_factor", "must name a sunssf register", r.scale_factor)
        if sf.function_code != r.function_code:
            raise ProfileError(src, f"registers[{i}].scale_factor", "scale factor read with another function code")
    energy = [p.registers[names[m]] for m in REQUIRED_ANY_MEASUREMENT if m in names]
    if not energy:
        raise ProfileError(src, "registers", "needs energy_import_wh or energy_export_wh (or both)")
    if all(r.optional for r in energy):
        raise ProfileError(src, "registers", "at least one energy counter must not be optional")
    if p.sunspec is not None and not p.sunspec.models:
        raise ProfileError(src, "sunspec.models", "must not be empty")
    _check_overlaps(p, src)
    return p


def _check_overlaps(p: Profile, src: str) -> None:
    order = sorted(range(len(p.registers)), key=lambda i: (p.registers[i].function_code, p.registers[i].address))
    for a, b in pairwise(order):
        ra, rb = p.registers[a], p.registers[b]
        if ra.function_code == rb.function_code and rb.address < ra.end:
            raise ProfileError(
                src, f"registers[{b}].address",
                f"overlaps registers[{a}] ({ra.name} at {ra.address:#06x}, {ra.words} words)", rb.address,
            )
