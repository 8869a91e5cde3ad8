"""Bounded little-endian reader/writer used by every encoder in this package (pure, no I/O)."""

from __future__ import annotations

import struct

from protocol.errors import InvalidFieldError, TruncatedError

U64_MAX = 2**64 - 1
I64_MIN, I64_MAX = -(2**63), 2**63 - 1
I32_MIN, I32_MAX = -(2**31), 2**31 - 1
U32_MAX = 2**32 - 1
U16_MAX = 2**16 - 1
# The one integer domain of every wire integer that is STORED (seq, timestamps, counters): the fields are u64 on
# the wire, but SQLite's INTEGER (agent and gateway stores) is signed 64-bit, so 2^63 and above would raise
# OverflowError at INSERT. Decoders refuse them up front as invalid_field, like any other out-of-domain value.
STORED_INT_MAX = I64_MAX


def check_stored(name: str, value: int, lo: int = 0) -> int:
    """`value` must be an integer in lo..STORED_INT_MAX (what SQLite's signed 64-bit INTEGER holds)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidFieldError(f"{name}: must be an integer (got {type(value).__name__})")
    if value > STORED_INT_MAX:
        raise InvalidFieldError(f"{name}: {value} exceeds 2^63-1, the largest integer the stores hold")
    return check_range(name, value, lo, STORED_INT_MAX)


def check_range(name: str, value: int, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidFieldError(f"{name}: must be an integer (got {type(value).__name__})")
    if not lo <= value <= hi:
        raise InvalidFieldError(f"{name}: must be in {lo}..{hi} (got {value})")
    return value


class Writer:
    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def raw(self, data: bytes) -> Writer:
        self._parts.append(bytes(data))
        return self

    def u8(self, name: str, v: int) -> Writer:
        return self.raw(struct.pack("<B", check_range(name, v, 0, 255)))

    def u16(self, name: str, v: int) -> Writer:
        return self.raw(struct.pack("<H", check_range(name, v, 0, U16_MAX)))

    def u32(self, name: str, v: int) -> Writer:
        return self.raw(struct.pack("<I", check_range(name, v, 0, U32_MAX)))

    def i32(self, name: str, v: int) -> Writer:
        return self.raw(struct.pack("<i", check_range(name, v, I32_MIN, I32_MAX)))

    def u64(self, name: str, v: int) -> Writer:
        return self.raw(struct.pack("<Q", check_range(name, v, 0, U64_MAX)))

    def i64(self, name: str, v: int) -> Writer:
        return self.raw(struct.pack("<q", check_range(name, v, I64_MIN, I64_MAX)))

    def str8(self, name: str, v: str, max_len: int) -> Writer:
        data = v.encode("utf-8")
        if len(data) > max_len:
            raise InvalidFieldError(f"{name}: at most {max_len} UTF-8 bytes (got {len(data)})")
        return self.u8(name, len(data)).raw(data)

    def bytes16(self, name: str, v: bytes, max_len: int) -> Writer:
        if len(v) > max_len:
            raise InvalidFieldError(f"{name}: at most {max_len} bytes (got {len(v)})")
        return self.u16(name, len(v)).raw(v)

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


class Reader:
    def __init__(self, data: bytes) -> None:
        self._data = memoryview(bytes(data))
        self._pos = 0

    def take(self, name: str, n: int) -> bytes:
        end = self._pos + n
        if end > len(self._data):
            raise TruncatedError(f"{name}: needs {n} bytes at offset {self._pos}, message has {len(self._data)}")
        out = bytes(self._data[self._pos : end])
        self._pos = end
        return out

    def _unpack(self, name: str, fmt: str) -> int:
        size = struct.calcsize(fmt)
        value: int = struct.unpack(fmt, self.take(name, size))[0]
        return value

    def u8(self, name: str) -> int:
        return self._unpack(name, "<B")

    def u16(self, name: str) -> int:
        return self._unpack(name, "<H")

    def u32(self, name: str) -> int:
        return self._unpack(name, "<I")

    def i32(self, name: str) -> int:
        return self._unpack(name, "<i")

    def u64(self, name: str) -> int:
        return self._unpack(name, "<Q")

    def i64(self, name: str) -> int:
        return self._unpack(name, "<q")

    def stored_u64(self, name: str, lo: int = 0) -> int:
        """A u64 field that is stored: bounded to lo..STORED_INT_MAX (InvalidFieldError beyond)."""
        return check_stored(name, self.u64(name), lo)

    def str8(self, name: str, max_len: int) -> str:
        n = self.u8(name)
        if n > max_len:
            raise InvalidFieldError(f"{name}: at most {max_len} UTF-8 bytes (got {n})")
        raw = self.take(name, n)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidFieldError(f"{name}: not valid UTF-8") from exc

    def bytes16(self, name: str, max_len: int) -> bytes:
        n = self.u16(name)
        if n > max_len:
            raise InvalidFieldError(f"{name}: at most {max_len} bytes (got {n})")
        return self.take(name, n)

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def expect_end(self, what: str) -> None:
        if self.remaining:
            raise InvalidFieldError(f"{what}: {self.remaining} unexpected trailing bytes")
