"""Registers -> scaled integers (pure). The ONE place where a meter's number becomes our integer.

value = raw x scale x 10^scale_factor x unit factor, computed exactly with Fraction (a float32 is converted to its
exact binary value, never via float arithmetic), then rounded half-to-even once. Sentinels and NaN/Inf give an
`Invalid(reason)`, never a number.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from firmware_config.schema import (
    ENERGY_MEASUREMENTS,
    REGISTER_TYPES,
    IdentifyRule,
    Profile,
    Register,
    sentinel_raw,
)
from firmware_config.schema import SerialNumberRule as _SerialNumberRule
from protocol.wire import STORED_INT_MAX

# Energy counters are u64 on the wire but every store on the way (the agent's and the gateway's SQLite INTEGER) is
# signed 64-bit: a counter beyond 2^63-1 (a glitched float32/uint64 register) is an invalid read here, at decode.
ENERGY_MAX = STORED_INT_MAX
I32_MIN, I32_MAX = -(2**31), 2**31 - 1
SUNSSF_MIN, SUNSSF_MAX = -10, 10  # SunSpec: scale factors are -10..10 (sunspec/models); beyond = corrupt

# (function_code, address) -> 16-bit word: what a set of block reads returned.
RegisterImage = Mapping[tuple[int, int], int]


@dataclass(frozen=True, slots=True)
class Invalid:
    """Not a number: the register said "not implemented", NaN, or a value our vocabulary cannot hold."""

    reason: str  # not_implemented | nan | infinite | negative | out_of_range | missing | scale_factor_invalid
    # (out_of_range for energy: above ENERGY_MAX = 2^63-1, what signed 64-bit storage holds)


@dataclass(frozen=True, slots=True)
class Decoded:
    values: dict[str, int] = field(default_factory=dict)
    invalid: dict[str, str] = field(default_factory=dict)  # measurement -> Invalid.reason


def normalize(words: Sequence[int], word_order: str, byte_order: str) -> bytes:
    """Words as received -> big-endian bytes with the most significant word first."""
    for w in words:
        if not 0 <= w <= 0xFFFF:
            raise ValueError(f"register word out of range: {w!r}")
    ordered = list(words) if word_order == "big" else list(reversed(words))
    fmt = ">H" if byte_order == "big" else "<H"
    return b"".join(struct.pack(fmt, w) for w in ordered)


def _raw(words: Sequence[int], rtype: str, word_order: str, byte_order: str) -> tuple[int, bytes]:
    n = REGISTER_TYPES[rtype][0]
    if len(words) != n:
        raise ValueError(f"{rtype} needs {n} words, got {len(words)}")
    data = normalize(words, word_order, byte_order)
    return int.from_bytes(data, "big"), data


def is_sentinel(raw: int, rtype: str, names: Sequence[str]) -> bool:
    words = REGISTER_TYPES[rtype][0]
    return any(raw == sentinel_raw(n, words) for n in names)


def decode_number(words: Sequence[int], reg: Register) -> int | Fraction | Invalid:
    """The register's own number (signed per type; float -> exact Fraction) before any scaling."""
    raw, data = _raw(words, reg.type, reg.word_order, reg.byte_order)
    names = reg.not_implemented + (("signed_min",) if reg.type == "sunssf" else ())
    if is_sentinel(raw, reg.type, names):
        return Invalid("not_implemented")
    _, signed, kind = REGISTER_TYPES[reg.type]
    if kind == "float":
        f = struct.unpack(">f" if len(data) == 4 else ">d", data)[0]
        if math.isnan(f):
            return Invalid("nan")
        if math.isinf(f):
            return Invalid("infinite")
        return Fraction(f)
    if signed and raw >= 1 << (len(data) * 8 - 1):
        raw -= 1 << (len(data) * 8)
    return raw


def scale(number: int | Fraction, reg: Register, sf: int | None = None) -> int | Invalid:
    """Exact scaling to the vocabulary unit, one round-half-even, then the range of the target field."""
    value = Fraction(number) * reg.scale * reg.unit_factor
    if sf is not None:
        value *= Fraction(10) ** sf
    result = round(value)  # Fraction.__round__ rounds half to even
    if reg.measurement in ENERGY_MEASUREMENTS:
        if result < 0:
            return Invalid("negative")
        if result > ENERGY_MAX:
            return Invalid("out_of_range")
    elif not I32_MIN <= result <= I32_MAX:
        return Invalid("out_of_range")
    return result


def _words(image: RegisterImage, reg: Register | IdentifyRule | _SerialNumberRule, fc: int) -> list[int] | None:
    try:
        return [image[(fc, a)] for a in range(reg.address, reg.address + reg.words)]
    except KeyError:
        return None


def scale_factor(image: RegisterImage, reg: Register) -> int | Invalid:
    words = _words(image, reg, reg.function_code)
    if words is None:
        return Invalid("missing")
    n = decode_number(words, reg)
    if isinstance(n, Invalid):
        return Invalid("scale_factor_invalid")
    if not SUNSSF_MIN <= int(n) <= SUNSSF_MAX:
        return Invalid("scale_factor_invalid")
    return int(n)


def decode_register(image: RegisterImage, reg: Register, profile: Profile) -> int | Invalid:
    words = _words(image, reg, reg.function_code)
    if words is None:
        return Invalid("missing")
    number = decode_number(words, reg)
    if isinstance(number, Invalid):
        return number
    sf: int | None = None
    if reg.scale_factor is not None:
        found = scale_factor(image, profile.register(reg.scale_factor))
        if isinstance(found, Invalid):
            return found
        sf = found
    return scale(number, reg, sf)


def decode_image(profile: Profile, image: RegisterImage, only: Sequence[Register] | None = None) -> Decoded:
    """Every measurement of the profile (or of `only`) from a register image."""
    out = Decoded()
    for reg in only if only is not None else profile.registers:
        if reg.measurement is None:
            continue
        v = decode_register(image, reg, profile)
        if isinstance(v, Invalid):
            out.invalid[reg.measurement] = v.reason
        else:
            out.values[reg.measurement] = v
    return out


def image_from_block(function_code: int, address: int, words: Sequence[int]) -> dict[tuple[int, int], int]:
    return {(function_code, address + i): w for i, w in enumerate(words)}


# ---- identification / serial number -------------------------------------------------------------------------------


def decode_identity(rule: IdentifyRule | _SerialNumberRule, words: Sequence[int]) -> int | str:
    """An identification or serial-number register: an int, or a string with NUL/space padding stripped."""
    if rule.type == "string":
        data = normalize(words, "big", "big")
        return data.replace(b"\x00", b" ").decode("ascii", errors="replace").strip()
    raw, data = _raw(words, rule.type, rule.word_order, "big")
    if REGISTER_TYPES[rule.type][1] and raw >= 1 << (len(data) * 8 - 1):
        raw -= 1 << (len(data) * 8)
    return raw


def identify_matches(rule: IdentifyRule, value: int | str) -> bool:
    if isinstance(value, str):
        return any(isinstance(e, str) and value.startswith(e) for e in rule.expected)
    return value in rule.expected or rule.in_range(value)
