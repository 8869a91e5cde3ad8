"""The signed reading: what a meter said, when, and how much we trust it.

Energy is integer watt-hours (u64 on the wire, at most 2^63-1: protocol.wire.STORED_INT_MAX); time is integer
unix milliseconds. Instantaneous values are scaled integers (units in the field names). Nothing here is a float.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import IntFlag

from protocol.errors import InvalidFieldError
from protocol.identifiers import MAX_METER_ID_BYTES as MAX_METER_ID_BYTES  # re-exported: existing importers
from protocol.identifiers import METER_ID_RE as METER_ID_RE
from protocol.identifiers import validate_meter_id
from protocol.wire import I32_MAX, I32_MIN, check_range, check_stored

MAX_PROFILE_ID_BYTES = 64
KEY_ID_BYTES = 8
# meter_id's rule and validator live in protocol.identifiers (one validator per identifier kind).


class Quality(IntFlag):
    """Quality flags carried inside the signed bytes. A reading with any flag outside NOT_MEASURED is not 'good'."""

    NONE = 0
    GLITCH_SUSPECTED = 1 << 0  # counter decreased, read 0, sentinel, or jumped faster than rated power
    CLOCK_UNSYNCED = 1 << 1  # wall clock not known to be synchronised when read
    CLOCK_JUMPED = 1 << 2  # wall clock moved against the monotonic clock since the last reading
    PARTIAL = 1 << 3  # some instantaneous registers failed; energy counters are intact
    COUNTER_RESET = 1 << 4  # a provisioned meter replacement reset the counters
    # The meter has no such counter (declared absent, exception 2, or its "not implemented" marker). The field
    # repeats the last measured value of that counter (0 if it never had one): no energy is booked for it in
    # this reading and none is lost (movement since the last measured value counts when it is measured again).
    # Informational: a reading with only these flags is still good (an import-only meter is not a fault).
    IMPORT_NOT_MEASURED = 1 << 5
    EXPORT_NOT_MEASURED = 1 << 6


NOT_MEASURED = Quality.IMPORT_NOT_MEASURED | Quality.EXPORT_NOT_MEASURED


@dataclass(frozen=True, slots=True)
class Instantaneous:
    """Optional instantaneous values, each a scaled integer or None when the meter lacks it."""

    power_w: int | None = None
    voltage_l1_dv: int | None = None  # decivolts (230.1 V -> 2301)
    voltage_l2_dv: int | None = None
    voltage_l3_dv: int | None = None
    current_l1_ma: int | None = None  # milliamperes
    current_l2_ma: int | None = None
    current_l3_ma: int | None = None
    frequency_mhz: int | None = None  # millihertz (50.00 Hz -> 50000)
    power_factor_milli: int | None = None  # thousandths (-0.95 -> -950)

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if v is not None:
                check_range(f.name, v, I32_MIN, I32_MAX)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


@dataclass(frozen=True, slots=True)
class Reading:
    meter_id: str
    key_id: bytes
    seq: int
    read_at_ms: int
    clock_synced: bool
    energy_import_wh: int
    energy_export_wh: int
    profile_id: str
    quality: Quality = Quality.NONE
    instant: Instantaneous = field(default_factory=Instantaneous)

    def __post_init__(self) -> None:
        validate_meter_id(self.meter_id)
        if len(self.key_id) != KEY_ID_BYTES:
            raise InvalidFieldError(f"key_id: must be {KEY_ID_BYTES} bytes (got {len(self.key_id)})")
        # u64 on the wire, bounded to 2^63-1: the stores' INTEGER is signed 64-bit (protocol.wire.STORED_INT_MAX)
        check_stored("seq", self.seq, 1)
        check_stored("read_at_ms", self.read_at_ms)
        check_stored("energy_import_wh", self.energy_import_wh)
        check_stored("energy_export_wh", self.energy_export_wh)
        check_range("quality", int(self.quality), 0, 0xFFFF)
        if len(self.profile_id.encode("utf-8")) > MAX_PROFILE_ID_BYTES:
            raise InvalidFieldError(f"profile_id: at most {MAX_PROFILE_ID_BYTES} UTF-8 bytes")

    @property
    def good(self) -> bool:
        """Good = clock synchronised and no quality flag but NOT_MEASURED: the only readings that may move money."""
        return self.clock_synced and not self.quality & ~NOT_MEASURED


@dataclass(frozen=True, slots=True)
class SignedReading:
    """The exact bytes that were signed plus the signature. `reading` is decoded from `payload`."""

    payload: bytes
    signature: bytes
    reading: Reading
