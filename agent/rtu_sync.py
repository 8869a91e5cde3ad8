"""Which replies may still be on an RTU line, and what a received frame can be the reply to (pure; agent/bus.py
does the I/O).

RTU has no transaction id: a reply that arrives after its request timed out looks like the reply to the next
request of the same unit, function code and register count. `stale_reason` tells a complete frame that cannot be
the reply to the request on the line; `LineSync` remembers, per unit, the requests whose reply may still come
("suspects"): a request of a suspect's shape is ambiguous, and a read of another shape resynchronises the unit
first. A meter answers in order and once per request, so the first reply whose shape (function code, count) no
suspect has proves every earlier request of that unit answered or lost, and a discarded late frame that only one
suspect can have sent resolves that one. The guarantee holds for replies up to SUSPECT_EXPIRY_S late.
"""

from __future__ import annotations

from collections.abc import Callable

from agent.planner import char_time_s, t35_s

# A request whose reply has not come for this long is forgotten: no meter answers a minute late. (It also bounds
# the shapes a silent meter's timed-out requests and resynchronising reads can use up.)
SUSPECT_EXPIRY_S = 60.0
MAX_KNOWN_GOOD = 32  # blocks per unit remembered as resynchronising reads
STALE_REASONS = {
    "late_reply": "a frame that arrived while no request was waiting (a reply after its request timed out)",
    "wrong_unit": "a frame from another unit than the one asked",
    "wrong_function": "a frame with another function code than the one asked",
    "wrong_byte_count": "a frame with another byte count than the registers asked",
    "noise": "bytes that form no valid frame while no request was waiting",
}
CrcCheck = Callable[[bytes, int], bool]  # (frame without CRC, CRC as sent, big-endian int) -> valid
Block = tuple[int, int, int]  # (function code, address, count)


def reply_quiet_s(count: int, baudrate: int, parity: str = "N", stopbits: int = 1, bytesize: int = 8) -> float:
    """Wire time of the reply to a read of `count` registers plus the t3.5 silence that ends it (B.3)."""
    return (5 + 2 * count) * char_time_s(baudrate, parity, stopbits, bytesize) + t35_s(baudrate, parity, stopbits,
                                                                                       bytesize)


def frame_len(buf: bytes, crc_ok: CrcCheck) -> int | None:
    """Length of the CRC-valid FC03/FC04 reply or exception frame at the start of `buf`; None if there is none (yet):
    too short, another function code or a bad CRC (left to the Modbus library, which hunts and reports CRC errors)."""
    if len(buf) < 5:
        return None
    n = 5 if buf[1] & 0x80 else 5 + buf[2] if buf[1] in (3, 4) else 0
    if not n or len(buf) < n or not crc_ok(buf[:n - 2], int.from_bytes(buf[n - 2:n], "big")):
        return None
    return n


def stale_reason(frame: bytes, unit_id: int, function_code: int, count: int) -> str | None:
    """Why a complete RTU frame cannot be the reply to a read of `count` registers (None: it can be)."""
    if frame[0] != unit_id:
        return "wrong_unit"
    if frame[1] & 0x7F != function_code:
        return "wrong_function"
    if not frame[1] & 0x80 and frame[2] != 2 * count:
        return "wrong_byte_count"
    return None


def split_idle(buf: bytes, crc_ok: CrcCheck) -> list[tuple[str, bytes]]:
    """Bytes received while no request waited, as ("late_reply", frame) and ("noise", burst) pieces in order."""
    out: list[tuple[str, bytes]] = []
    pos = noise = 0
    while pos < len(buf):
        n = frame_len(buf[pos:], crc_ok)
        if n is None:
            noise, pos = noise + 1, pos + 1
            continue
        if noise:
            out.append(("noise", buf[pos - noise:pos]))
            noise = 0
        out.append(("late_reply", buf[pos:pos + n]))
        pos += n
    if noise:
        out.append(("noise", buf[pos - noise:pos]))
    return out


class LineSync:
    def __init__(self) -> None:
        # unit -> (fc, count) -> address -> [replies that may still come, when the last such request was sent]
        self._suspects: dict[int, dict[tuple[int, int], dict[int, list[float]]]] = {}
        self._good: dict[int, list[Block]] = {}  # unit -> blocks answered before

    def suspects(self, unit_id: int) -> dict[tuple[int, int], dict[int, int]]:
        """(fc, count) -> address -> replies that may still come."""
        return {shape: {a: int(v[0]) for a, v in p.items()} for shape, p in self._suspects.get(unit_id, {}).items()}

    def in_doubt(self, unit_id: int) -> bool:
        return unit_id in self._suspects

    def unanswered(self, unit_id: int, fc: int, address: int, count: int, now: float) -> None:
        """The request got no reply we could take (timeout, CRC, a possibly stale exception): it may still come."""
        entry = self._suspects.setdefault(unit_id, {}).setdefault((fc, count), {}).setdefault(address, [0, now])
        entry[0] += 1
        entry[1] = now

    def answered(self, unit_id: int, fc: int, address: int, count: int) -> None:
        """A reply of the request's shape arrived. If no suspect has that shape it is this request's reply, and every
        earlier request of the unit is answered or lost: in sync again."""
        shapes = self._suspects.get(unit_id)
        if shapes is not None and (fc, count) not in shapes:
            del self._suspects[unit_id]
        good = self._good.setdefault(unit_id, [])
        if (fc, address, count) not in good:
            good.append((fc, address, count))
            del good[:-MAX_KNOWN_GOOD]

    def discarded(self, frame: bytes) -> None:
        """A stale frame was received. A meter sends one reply per request, so if exactly one suspect block could
        have sent it, one of that block's replies is no longer outstanding."""
        shapes = self._suspects.get(frame[0])
        if shapes is None:
            return
        fc = frame[1] & 0x7F
        fits = [(shape, a) for shape, pending in shapes.items() for a in pending
                if shape[0] == fc and (frame[1] & 0x80 or 2 * shape[1] == frame[2])]
        if len(fits) != 1:
            return
        shape, address = fits[0]
        entry = shapes[shape][address]
        entry[0] -= 1
        if entry[0] <= 0:
            del shapes[shape][address]
            if not shapes[shape]:
                del shapes[shape]
            if not shapes:
                del self._suspects[frame[0]]

    def ambiguous(self, unit_id: int, fc: int, count: int, now: float) -> bool:
        """Could a late reply to an earlier request arrive looking like the reply to this one? Even a late reply of
        the same block is refused: it would pass a slow meter's old value off as read now (and hide its timeouts).
        Suspects older than SUSPECT_EXPIRY_S are forgotten first."""
        shapes = self._suspects.get(unit_id)
        if shapes is None:
            return False
        for shape in list(shapes):
            for address in [a for a, v in shapes[shape].items() if now - v[1] >= SUSPECT_EXPIRY_S]:
                del shapes[shape][address]
            if not shapes[shape]:
                del shapes[shape]
        if not shapes:
            del self._suspects[unit_id]
        return (fc, count) in shapes

    def resync_read(self, unit_id: int, fc: int, address: int, count: int) -> Block | None:
        """The read to send first so that `(fc, address, count)` is unambiguous, of a shape no suspect has: a block
        of this unit answered before (the smallest first), else a prefix of the request or of such a block (even
        counts first: meters with 32-bit registers may refuse half of one). None if every shape is taken."""
        shapes = self._suspects.get(unit_id, {})
        good = sorted(self._good.get(unit_id, []), key=lambda b: b[2])
        candidates = good + [(f, a, k) for f, a, n in [(fc, address, count), *good]
                             for k in sorted(range(1, n), key=lambda k: (k % 2, k))]
        return next(((f, a, n) for f, a, n in candidates if (f, n) not in shapes), None)
