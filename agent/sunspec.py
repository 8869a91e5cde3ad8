"""SunSpec discovery: where a SunSpec meter model really sits, over Modbus TCP or RTU alike.

"SunS" (0x5375 0x6E53) at base 40000, else 0, else 50000 (pysunspec2 `base_addr_list`); then the model chain from
base + 2: `ID`, `L`, next model at + L + 2, end at ID 0xFFFF (`L` is read on its own: some devices give none for
the end model). The `occurrence`-th model listed in the profile's `[sunspec] models` is the meter; the common
model 1 before it carries its manufacturer and serial number. `resolve` shifts every address of a profile written
for the usual layout to where the device has it (sunspec/models model_1.json, pysunspec2).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from firmware_config.schema import Profile

SUNS_MARKER = (0x5375, 0x6E53)  # "SunS"
BASE_ADDRESSES = (40000, 0, 50000)
END_MODEL_ID = 0xFFFF
COMMON_MODEL_ID = 1
COMMON_SN_OFFSET = 50  # model 1: ID @0, L @1, Mn @2, Md @18, Opt @34, Vr @42, SN @50 (16 registers)
COMMON_MN_OFFSET, COMMON_MD_OFFSET, COMMON_STRING_WORDS = 2, 18, 16


def model_1_string(words: list[int]) -> str:
    """A model 1 string point (Mn, Md, SN): ASCII, NUL padded; all-NUL = not implemented -> ""."""
    data = b"".join(w.to_bytes(2, "big") for w in words)
    return data.split(b"\x00", 1)[0].decode("ascii", errors="replace").strip()
MAX_MODELS = 64  # a chain longer than this is corrupt (a real device publishes a handful)

# (function code, address, count) -> words; raises on no answer. A Modbus exception at a base address means
# "no SunSpec there" and is the caller's `absent` exception type.
Read = Callable[[int, int, int], Awaitable[list[int]]]


class SunSpecError(Exception):
    """The device has the SunS marker but its model chain is broken; the message says where."""


@dataclass(frozen=True, slots=True)
class Location:
    base: int  # where "SunS" was found
    model_address: int  # the meter model's ID register
    model_id: int
    common_address: int | None  # the common model 1 before it
    earlier: tuple[int, ...] = ()  # ids of the models before it in the chain


async def discover(read: Read, models: tuple[int, ...], occurrence: int = 1,
                   absent: type[BaseException] | tuple[type[BaseException], ...] = (),
                   behind: tuple[int, ...] = ()) -> Location | None:
    """The occurrence-th model of `models` in the device's chain; None when there is no SunS marker or no such
    model, or (`behind` given) when none of those models comes before it. `absent`: exception types of a read that
    mean "nothing at this address" (Modbus exception 2)."""
    for base in BASE_ADDRESSES:
        try:
            marker = await read(3, base, 2)
        except absent:
            continue
        if tuple(marker) != SUNS_MARKER:
            continue
        loc = await _walk(read, base, models, occurrence)
        if loc is not None and behind and not set(behind) & set(loc.earlier):
            return None
        return loc
    return None


async def _walk(read: Read, base: int, models: tuple[int, ...], occurrence: int) -> Location | None:
    addr, common, seen = base + 2, None, 0
    earlier: list[int] = []
    for _ in range(MAX_MODELS):
        if addr + 2 > 0x10000:
            raise SunSpecError(f"SunSpec chain from {base} runs past address 0xFFFF at {addr}")
        (model_id,) = await read(3, addr, 1)
        if model_id == END_MODEL_ID:
            return None
        (length,) = await read(3, addr + 1, 1)
        if model_id == COMMON_MODEL_ID:
            common = addr
        if model_id in models:
            seen += 1
            if seen == occurrence:
                return Location(base, addr, model_id, common, tuple(earlier))
        earlier.append(model_id)
        addr += length + 2
    raise SunSpecError(f"SunSpec chain from {base} has more than {MAX_MODELS} models")


def resolve(profile: Profile, location: Location) -> Profile:
    """The profile with every register address moved to the device's layout, and the serial number read from
    the common model before the meter (SN at offset 50). Identification of a SunSpec profile is the discovery
    itself, so its `[[identify]]` rules (written for the usual layout) stay as they are."""
    if profile.sunspec is None:
        return profile
    shift = location.model_address - profile.sunspec.model_address
    for r in profile.registers:
        if not 0 <= r.address + shift <= 0x10000 - r.words:
            raise SunSpecError(f"profile {profile.id}: {r.name} at {r.address} shifted by {shift} leaves the "
                               "address space")
    sn = profile.serial_number
    if sn is not None and location.common_address is not None:
        sn = replace(sn, address=location.common_address + COMMON_SN_OFFSET)
    return replace(profile, registers=tuple(replace(r, address=r.address + shift) for r in profile.registers),
                   serial_number=sn)
