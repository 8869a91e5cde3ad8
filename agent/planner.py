"""Block planner (pure): coalesce a profile's registers into the fewest read requests.

Victron-style heuristic (dbus-modbus-client device.py `pack_list`): sort by address per function code; start a new
block when the span would exceed the device's max registers per request, when the hole to the next register is
larger than `hole_max`, when a barrier address lies in the hole, or when the device does not return filler for
unimplemented registers there. A multi-register value is never split. `hole_max` weighs the cost of reading
useless registers (2 bytes each) against the fixed cost of one more request (frame overhead, silences and the
device's own inter-request delay), both in RTU character times.

Also the RTU line-time formulas (Modbus over Serial Line V1.02 §2.5.1) used by the
planner, the virtual bus and the bus bench.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from firmware_config.schema import Profile, ReadPolicy, Register

# RTU request FC03/FC04 = 8 bytes; response = 5 + 2N bytes; plus 2 x t3.5 silences = 7 chars (B.3).
DEFAULT_RTU_OVERHEAD_CHARS = 8 + 5 + 7
# Victron device.py modbus_overhead for TCP: 7 + 2 x (20 TCP + 7 MBAP) bytes -> hole_max 31 registers.
DEFAULT_TCP_OVERHEAD_BYTES = 7 + 2 * (20 + 7)
# Character time assumed when the caller does not know the baud rate: 9600 8N1, the most common meter default.
DEFAULT_CHAR_TIME_S = 10 / 9600
# For baud > 19200 the spec fixes t3.5 = 1.75 ms (and t1.5 = 0.75 ms) instead of 3.5 character times.
FIXED_T35_S = 0.00175
FIXED_T35_ABOVE_BAUD = 19200


@dataclass(frozen=True, slots=True)
class ReadBlock:
    function_code: int
    address: int
    count: int
    registers: tuple[Register, ...]

    @property
    def end(self) -> int:
        return self.address + self.count


def char_bits(parity: str, stopbits: int, bytesize: int = 8) -> int:
    """Bits on the wire per character: start + data + parity (if any) + stop."""
    return 1 + bytesize + (0 if parity == "N" else 1) + stopbits


def char_time_s(baudrate: int, parity: str = "N", stopbits: int = 1, bytesize: int = 8) -> float:
    return char_bits(parity, stopbits, bytesize) / baudrate


def t35_s(baudrate: int, parity: str = "N", stopbits: int = 1, bytesize: int = 8) -> float:
    if baudrate > FIXED_T35_ABOVE_BAUD:
        return FIXED_T35_S
    return 3.5 * char_time_s(baudrate, parity, stopbits, bytesize)


def rtu_read_time_s(count: int, baudrate: int, parity: str = "N", stopbits: int = 1, bytesize: int = 8) -> float:
    """Minimum wire time of one FC03/FC04 read of `count` registers: request + response + 2 x t3.5."""
    tc = char_time_s(baudrate, parity, stopbits, bytesize)
    return (8 + 5 + 2 * count) * tc + 2 * t35_s(baudrate, parity, stopbits, bytesize)


def hole_max(policy: ReadPolicy, *, transport: str = "rtu", char_time: float = DEFAULT_CHAR_TIME_S) -> int:
    """Largest hole (registers) worth reading through instead of starting a new request."""
    if policy.max_hole is not None:
        return policy.max_hole
    if transport == "tcp":
        overhead = DEFAULT_TCP_OVERHEAD_BYTES
    else:
        pause_s = (policy.inter_request_delay_ms + policy.turnaround_ms) / 1000
        overhead = DEFAULT_RTU_OVERHEAD_CHARS + int(pause_s / char_time)
    return min((overhead + 1) // 2, policy.max_registers)


def _hole_readable(policy: ReadPolicy, start: int, end: int) -> bool:
    """May addresses [start, end) be read although no register of ours lives there?"""
    if any(start <= b < end for b in policy.barriers):
        return False
    if policy.readable:
        return any(lo <= start and end - 1 <= hi for lo, hi in policy.readable)
    return policy.gaps == "filler"


def plan_registers(
    registers: Iterable[Register], policy: ReadPolicy, *, transport: str = "rtu",
    char_time: float = DEFAULT_CHAR_TIME_S, bridge_holes: bool = True,
) -> tuple[ReadBlock, ...]:
    regs = tuple(registers)  # iterated once per function code: a one-shot iterator would plan only the first
    limit = hole_max(policy, transport=transport, char_time=char_time) if bridge_holes else 0
    blocks: list[ReadBlock] = []
    for fc in sorted({r.function_code for r in regs}):
        cur: list[Register] = []
        for reg in sorted((r for r in regs if r.function_code == fc), key=lambda r: r.address):
            if cur:
                start, end = cur[0].address, max(r.end for r in cur)
                hole = reg.address - end
                fits = reg.end - start <= policy.max_registers
                bridge = hole == 0 or (0 < hole <= limit and _hole_readable(policy, end, reg.address))
                if fits and bridge:
                    cur.append(reg)
                    continue
                blocks.append(_block(fc, cur))
            cur = [reg]
        if cur:
            blocks.append(_block(fc, cur))
    return tuple(blocks)


def _block(fc: int, regs: list[Register]) -> ReadBlock:
    start = regs[0].address
    return ReadBlock(function_code=fc, address=start, count=max(r.end for r in regs) - start, registers=tuple(regs))


def plan_reads(
    profile: Profile, *, transport: str = "rtu", char_time: float = DEFAULT_CHAR_TIME_S, bridge_holes: bool = True,
) -> tuple[ReadBlock, ...]:
    """The read plan for one poll of every register of the profile. `bridge_holes=False` = never read a hole
    (the fallback after a device rejected a gap-spanning read with exception 2)."""
    return plan_registers(profile.registers, profile.read, transport=transport, char_time=char_time,
                          bridge_holes=bridge_holes)
