"""SimulatedMeter: a meter model that serves its profile's registers from exact integer counters.

Energy is kept in integer Wh plus an exact sub-Wh remainder (W x ms), so a test can compare published Wh with
`served_import_wh` / `served_export_wh` = what the registers decoded to at the moment they were last served.
The register encoding here is written independently of agent/decode.py (struct + Fraction), so a decoding bug is
not mirrored by the simulator. Keep float32 kWh meters below 8192 kWh in tests: float32 then round-trips every
whole Wh (24-bit mantissa, ulp <= 0.49 Wh).
"""

from __future__ import annotations

import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from fractions import Fraction

from base.units import MS_PER_HOUR
from firmware_config.schema import REGISTER_TYPES, IdentifyRule, Profile, Register, SerialNumberRule, sentinel_raw

# Served values remembered for tests that check "every published value was really served".
DEFAULT_SERVED_LOG = 10_000
FILLER_WORD = 0x0000  # what a "filler" device answers for registers we do not model
NO_FUNCTION_CODE = 0  # an identification rule answered by a measurement register is not served on its own


@dataclass(frozen=True, slots=True)
class Framing:
    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1
    bytesize: int = 8


def _pack(reg_type: str, raw: int | Fraction, word_order: str, byte_order: str) -> list[int]:
    words, signed, kind = REGISTER_TYPES[reg_type]
    if kind == "float":
        data = struct.pack(">f" if words == 2 else ">d", float(raw))
    else:
        data = int(raw).to_bytes(words * 2, "big", signed=signed)
    out = [int.from_bytes(data[i:i + 2], "big" if byte_order == "big" else "little") for i in range(0, len(data), 2)]
    return out if word_order == "big" else list(reversed(out))


def _sentinel_raw(reg: Register) -> int | float:
    words, signed, kind = REGISTER_TYPES[reg.type]
    if kind == "float":
        return float("nan")
    if not reg.not_implemented:
        raise ValueError(f"register {reg.name} has no not-implemented sentinel to serve")
    bits = words * 16
    raw = sentinel_raw(reg.not_implemented[0], words)
    return raw - (1 << bits) if signed and raw >= 1 << (bits - 1) else raw


def encode_register(reg: Register, value: int, sf: int = 0) -> tuple[list[int], int]:
    """Vocabulary integer -> register words, and the integer those words decode back to (exact)."""
    factor = reg.scale * reg.unit_factor * Fraction(10) ** sf
    raw = Fraction(value) / factor
    kind = REGISTER_TYPES[reg.type][2]
    if kind == "float":
        fmt = ">f" if REGISTER_TYPES[reg.type][0] == 2 else ">d"
        back = Fraction(struct.unpack(fmt, struct.pack(fmt, float(raw)))[0])
        return _pack(reg.type, back, reg.word_order, reg.byte_order), round(back * factor)
    r = round(raw)
    return _pack(reg.type, r, reg.word_order, reg.byte_order), round(r * factor)


def _encode_identity(rule: IdentifyRule | SerialNumberRule, value: int | str) -> list[int]:
    if rule.type == "string":
        data = str(value).encode("ascii").ljust(rule.words * 2, b"\x00")[: rule.words * 2]
        return [int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2)]
    return _pack(rule.type, int(value), rule.word_order, "big")


class SimulatedMeter:
    """One meter. Positive power imports, negative exports. Thread-safe (served from another thread/process)."""

    def __init__(
        self, profile: Profile, unit_id: int, *, import_wh: int = 0, export_wh: int = 0, power_w: int = 0,
        voltage_dv: int = 2300, frequency_mhz: int = 50_000, power_factor_milli: int = 1000,
        serial_number: int | str = 12_345_678, framing: Framing | None = None, live: bool = False,
        invalid: set[str] | None = None, scale_factors: dict[str, int] | None = None,
        identify_function_code: int | None = None, clock: Callable[[], int] = time.monotonic_ns,
        absent: set[str] | None = None, identity: dict[int, int | str] | None = None,
        raw_power_sign: int | None = None, sunspec_base: int = 40000,
        sunspec_before: tuple[tuple[int, int], ...] = (), sunspec_device: tuple[str, str] = ("Sim", "Meter"),
    ) -> None:
        """`invalid`: measurements served as their "not implemented" sentinel (NaN for floats); `absent`:
        measurements whose registers the meter does not have at all (a read of them answers exception 2 unless
        the profile's device returns filler there: EM24 variants without export); `identity`: identification
        register address -> value served instead of the rule's first expected value (a variant's code);
        `raw_power_sign`: the device's own convention for its power register, whatever the profile assumes:
        +1 = raw power > 0 while importing, -1 = raw power > 0 while exporting (a SolarEdge grid meter); None =
        as the profile decodes it. SunSpec profiles: the device serves "SunS" at `sunspec_base` and a model chain
        (common model 1, any `sunspec_before` (model id, length) pairs such as the multi-MPPT model 160, the
        inverter and meter common models as the profile's layout implies, the meter model, end 0xFFFF); the
        profile's registers move with the chain, as on a real device."""
        if not 0 <= unit_id <= 247:
            raise ValueError(f"unit_id must be 0..247 (got {unit_id})")
        self.profile, self.unit_id, self.framing = profile, unit_id, framing
        self.chain: dict[int, int] = {}  # SunSpec marker + model headers (FC03)
        if profile.sunspec is not None:
            self.profile, self.chain = _sunspec_layout(profile, sunspec_base, sunspec_before, sunspec_device)
        self.import_wh, self.export_wh, self.power_w = import_wh, export_wh, power_w
        self.voltage_dv, self.frequency_mhz, self.power_factor_milli = voltage_dv, frequency_mhz, power_factor_milli
        self.serial_number, self.live, self.invalid = serial_number, live, set(invalid or ())
        self.absent, self.identity, self.raw_power_sign = set(absent or ()), dict(identity or {}), raw_power_sign
        self.scale_factors = dict(scale_factors or {})
        self.identify_function_code = identify_function_code
        self._clock, self._last_ns = clock, clock()
        self._remainder_wms = 0  # W x ms not yet a whole Wh (sign follows the direction)
        self._lock = threading.RLock()
        self.served_import_wh, self.served_export_wh = 0, 0
        self.served_log: deque[tuple[int, int]] = deque(maxlen=DEFAULT_SERVED_LOG)
        self.reads = 0
        for fc in self.function_codes():
            self.image(fc)  # initialise served_* from the registers

    # ---- physics -------------------------------------------------------------------------------------------------

    def advance(self, ms: int) -> None:
        """Let `ms` milliseconds pass at the current power: exact integer energy, no float."""
        with self._lock:
            self._remainder_wms += self.power_w * ms
            whole = abs(self._remainder_wms) // MS_PER_HOUR
            if whole:
                if self._remainder_wms > 0:
                    self.import_wh += whole
                    self._remainder_wms -= whole * MS_PER_HOUR
                else:
                    self.export_wh += whole
                    self._remainder_wms += whole * MS_PER_HOUR

    def set_power(self, power_w: int) -> None:
        with self._lock:
            self._tick()
            if (power_w > 0) != (self.power_w > 0):
                self._remainder_wms = 0  # a direction change starts a fresh partial Wh
            self.power_w = power_w

    def _tick(self) -> None:
        now = self._clock()
        if self.live:
            elapsed_ms = (now - self._last_ns) // 1_000_000
            if elapsed_ms:
                self.advance(elapsed_ms)
                self._last_ns += elapsed_ms * 1_000_000
        else:
            self._last_ns = now

    # ---- registers -----------------------------------------------------------------------------------------------

    def measurement_values(self) -> dict[str, int]:
        phases = sum(1 for r in self.profile.registers if r.measurement and r.measurement.startswith("voltage_"))
        current = abs(self.power_w) * 10_000 // max(self.voltage_dv * max(phases, 1), 1)  # mA per phase
        values = {"energy_import_wh": self.import_wh, "energy_export_wh": self.export_wh, "power_w": self.power_w,
                  "frequency_mhz": self.frequency_mhz, "power_factor_milli": self.power_factor_milli}
        for n in (1, 2, 3):
            values[f"voltage_l{n}_dv"] = self.voltage_dv
            values[f"current_l{n}_ma"] = current
        return values

    def image(self, function_code: int) -> dict[int, int]:
        """The meter's registers for one function code right now (advances a live clock first)."""
        with self._lock:
            self._tick()
            values = self.measurement_values()
            out: dict[int, int] = {a: FILLER_WORD for a in self.filler_addresses(function_code)}
            served: dict[str, int] = {}
            for reg in self.profile.registers:
                if reg.function_code != function_code or reg.measurement in self.absent:
                    continue
                if reg.measurement is None:  # sunssf
                    words = _pack("sunssf", self.scale_factors.get(reg.name, 0), reg.word_order, reg.byte_order)
                elif reg.measurement in self.invalid:
                    words = _pack(reg.type, _sentinel_raw(reg), reg.word_order, reg.byte_order)  # type: ignore[arg-type]
                else:
                    sf = self.scale_factors.get(reg.scale_factor, 0) if reg.scale_factor else 0
                    value = values[reg.measurement]
                    if reg.measurement == "power_w" and self.raw_power_sign is not None:
                        value *= self.raw_power_sign * (1 if reg.scale > 0 else -1)  # raw sign fixed by the device
                    words, served[reg.measurement] = encode_register(reg, value, sf)
                out.update({reg.address + i: w for i, w in enumerate(words)})
            if function_code == 3:
                out.update(self.chain)
            for rule in self.profile.identify if not self.chain else ():
                if self._identity_fc(rule) == function_code:
                    words = _encode_identity(rule, self.identity.get(rule.address, rule.example))
                    out.update({rule.address + i: w for i, w in enumerate(words)})
            sn = self.profile.serial_number
            if sn is not None and sn.function_codes[0] == function_code:
                out.update({sn.address + i: w for i, w in enumerate(_encode_identity(sn, self.serial_number))})
            if "energy_import_wh" in served or "energy_export_wh" in served:
                self.served_import_wh = served.get("energy_import_wh", self.served_import_wh)
                self.served_export_wh = served.get("energy_export_wh", self.served_export_wh)
                self.served_log.append((self.served_import_wh, self.served_export_wh))
            return out

    def _identity_fc(self, rule: IdentifyRule) -> int:
        if self._answered_by_measurement(rule):
            return NO_FUNCTION_CODE  # a distinguishing read: the measurement register answers it, not rule.example
        return self._rule_fc(rule)

    def _rule_fc(self, rule: IdentifyRule) -> int:
        """The function code this device answers the rule's register at: the configured one if the rule allows it."""
        fc = self.identify_function_code
        return fc if fc is not None and fc in rule.function_codes else rule.function_codes[0]

    def filler_addresses(self, function_code: int) -> set[int]:
        """Addresses a "filler" device answers although the profile does not use them."""
        return self._filler(function_code) - set(self.chain)

    def _filler(self, function_code: int) -> set[int]:
        """filler_addresses before the SunSpec chain's own words are taken out."""
        read = self.profile.read
        regs = [r for r in self.profile.registers if r.function_code == function_code]
        if not regs:
            return set()
        if read.readable:
            spans = list(read.readable)
        elif read.gaps == "filler":
            spans = [(min(r.address for r in regs), max(r.end for r in regs) - 1)]
        else:
            return set()
        return {a for lo, hi in spans for a in range(lo, hi + 1)} - set(read.barriers)

    def function_codes(self) -> tuple[int, ...]:
        fcs = {r.function_code for r in self.profile.registers}
        fcs |= {self._identity_fc(r) for r in self.profile.identify} - {NO_FUNCTION_CODE}
        if self.profile.serial_number is not None:
            fcs.add(self.profile.serial_number.function_codes[0])
        return tuple(sorted(fcs))

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            self._tick()
            return {"unit_id": self.unit_id, "import_wh": self.import_wh, "export_wh": self.export_wh,
                    "power_w": self.power_w, "served_import_wh": self.served_import_wh,
                    "served_export_wh": self.served_export_wh, "reads": self.reads}

    def _answered_by_measurement(self, rule: IdentifyRule) -> bool:
        """A rule that reads a register the profile also measures (e.g. a plausible phase voltage) is answered by
        the measured value, as on a real meter; overwriting it with rule.example would falsify the measurement."""
        fc = self._rule_fc(rule)
        return any(r.function_code == fc and r.address < rule.address + rule.words and rule.address < r.end
                   for r in self.profile.registers)


def _sunspec_layout(profile: Profile, base: int, before: tuple[tuple[int, int], ...],
                    device: tuple[str, str] = ("Sim", "Meter")) -> tuple[Profile, dict[int, int]]:
    """The profile moved to where this device's chain puts the meter model, and the chain's words: "SunS", then
    (ID, L) headers. Without `before`, a profile written for base 40000 lands at its own addresses."""
    ss = profile.sunspec
    assert ss is not None
    nominal_gap = ss.model_address - (40000 + 2)  # registers between the first model and the meter model
    models: list[tuple[int, int]] = [(1, 65)]  # the device's common model
    rest = nominal_gap - 67
    if rest >= 67 + 2:  # an inverter ahead of its meter (SolarEdge): inverter model, then the meter's common model
        models += [(103, rest - 67 - 2), (1, 65)]
    elif rest > 0:
        models.append((64000, rest - 2))  # a vendor model filling the gap
    models[1:1] = list(before)
    meter_id = 203 if 203 in ss.models else ss.models[0]
    meter_len = max(max(r.end for r in profile.registers) - ss.model_address - 2,
                    105 if 201 <= meter_id <= 204 else 124 if 211 <= meter_id <= 214 else 0)  # model L (model JSON)
    models += [(meter_id, meter_len)]
    chain = {base: SUNS_WORDS[0], base + 1: SUNS_WORDS[1]}
    addr, common = base + 2, 0
    for model_id, length in models:
        chain[addr], chain[addr + 1] = model_id, length
        if model_id == 1:
            common = addr
            for offset, text in zip((2, 18), device, strict=True):  # Mn, Md: 16 registers of NUL-padded ASCII
                data = text.encode("ascii")[:32].ljust(32, b"\x00")
                chain.update({addr + offset + i: int.from_bytes(data[2 * i:2 * i + 2], "big") for i in range(16)})
        addr += length + 2
    chain[addr], chain[addr + 1] = 0xFFFF, 0
    model_address = addr - meter_len - 2
    shift = model_address - ss.model_address
    sn = profile.serial_number
    moved = replace(profile, registers=tuple(replace(r, address=r.address + shift) for r in profile.registers),
                    serial_number=replace(sn, address=common + 50) if sn is not None else None,
                    sunspec=replace(ss, model_address=model_address))
    return moved, chain


SUNS_WORDS = (0x5375, 0x6E53)
