"""agent.rtu_sync: what a received RTU frame can be the reply to, and when a unit is in sync again (pure)."""

from __future__ import annotations

import pytest
from pymodbus.framer import FramerRTU

from agent.rtu_sync import SUSPECT_EXPIRY_S, LineSync, frame_len, reply_quiet_s, split_idle, stale_reason

CRC = FramerRTU.check_CRC


def frame(body: bytes) -> bytes:
    return body + FramerRTU.compute_CRC(body).to_bytes(2, "big")


READ_2 = frame(bytes([1, 4, 4, 0x44, 0x9A, 0x52, 0x25]))  # unit 1, FC04, 2 registers
EXC_2 = frame(bytes([1, 0x84, 2]))  # unit 1, FC04 exception 2


@pytest.mark.parametrize(("buf", "length"), [
    (READ_2, 9),
    (READ_2 + b"\x01\x04", 9),  # a frame followed by the start of another
    (READ_2[:8], None),  # incomplete
    (READ_2[:-1] + bytes([READ_2[-1] ^ 0xFF]), None),  # bad CRC: left to pymodbus (CRC error)
    (EXC_2, 5),
    (frame(bytes([1, 6, 0, 1, 0, 3])), None),  # a write echo: not a read reply
    (b"\x01\x04", None),
])
def test_frame_len(buf: bytes, length: int | None) -> None:
    assert frame_len(buf, CRC) == length


@pytest.mark.parametrize(("f", "expect", "reason"), [
    (READ_2, (1, 4, 2), None),
    (READ_2, (2, 4, 2), "wrong_unit"),
    (READ_2, (1, 3, 2), "wrong_function"),
    (READ_2, (1, 4, 1), "wrong_byte_count"),
    (READ_2, (1, 4, 76), "wrong_byte_count"),
    (EXC_2, (1, 4, 76), None),  # an exception answers any count
    (EXC_2, (1, 3, 2), "wrong_function"),
])
def test_stale_reason(f: bytes, expect: tuple[int, int, int], reason: str | None) -> None:
    assert stale_reason(f, *expect) == reason


def test_split_idle_frames_and_noise() -> None:
    assert split_idle(b"\xff\x00" + READ_2 + EXC_2 + b"\x01", CRC) == [
        ("noise", b"\xff\x00"), ("late_reply", READ_2), ("late_reply", EXC_2), ("noise", b"\x01")]
    assert split_idle(b"", CRC) == []


def test_reply_quiet_time_at_9600_8n1() -> None:
    # 9 characters of 10 bits + t3.5 (3.5 characters) at 9600 baud
    assert reply_quiet_s(2, 9600) == pytest.approx(12.5 * 10 / 9600)
    assert reply_quiet_s(2, 115200) == pytest.approx(9 * 10 / 115200 + 0.00175)  # fixed t3.5 above 19200


def test_a_reply_of_a_shape_no_suspect_has_brings_the_unit_in_sync() -> None:
    s = LineSync()
    s.unanswered(1, 4, 0x48, 2, now=0.0)
    assert s.ambiguous(1, 4, 2, now=0.0)  # any block of that size, even the same one (an old value)
    assert not s.ambiguous(1, 4, 76, now=0.0) and not s.ambiguous(1, 3, 2, now=0.0)
    assert not s.ambiguous(2, 4, 2, now=0.0)  # another unit's reply carries its own id
    s.answered(1, 4, 0x48, 2)  # same shape as the suspect: maybe its late reply; still in doubt
    assert s.suspects(1) == {(4, 2): {0x48: 1}}
    s.answered(1, 4, 0x00, 76)
    assert s.suspects(1) == {} and not s.in_doubt(1)


def test_suspects_expire() -> None:
    s = LineSync()
    s.unanswered(1, 4, 0x48, 2, now=0.0)
    s.unanswered(1, 4, 0x00, 76, now=30.0)
    assert s.ambiguous(1, 4, 2, now=SUSPECT_EXPIRY_S - 0.1)
    assert not s.ambiguous(1, 4, 2, now=SUSPECT_EXPIRY_S) and s.ambiguous(1, 4, 76, now=SUSPECT_EXPIRY_S)
    assert not s.ambiguous(1, 4, 76, now=30.0 + SUSPECT_EXPIRY_S) and not s.in_doubt(1)


def test_a_discarded_frame_resolves_the_only_block_that_can_have_sent_it() -> None:
    s = LineSync()
    s.unanswered(1, 4, 0x48, 2, now=0.0)
    s.unanswered(1, 4, 0x48, 2, now=1.0)  # retried: two replies may come
    s.unanswered(1, 4, 0x4A, 1, now=1.0)
    s.discarded(READ_2)
    assert s.suspects(1) == {(4, 2): {0x48: 1}, (4, 1): {0x4A: 1}}
    s.discarded(READ_2)
    s.discarded(frame(bytes([1, 4, 2, 0, 7])))
    assert not s.in_doubt(1)
    s.unanswered(1, 4, 0x48, 2, now=0.0)
    s.unanswered(1, 4, 0x4A, 2, now=0.0)
    s.discarded(READ_2)  # either block may have sent it: nothing resolved
    s.discarded(frame(bytes([2, 4, 4, 0, 0, 0, 0])))  # another unit
    s.discarded(EXC_2)  # an exception answers any FC04 read: either block
    assert s.suspects(1) == {(4, 2): {0x48: 1, 0x4A: 1}}


def test_resync_read_is_of_a_shape_no_suspect_has() -> None:
    s = LineSync()
    s.answered(1, 4, 0x48, 2)
    s.answered(1, 4, 0x00, 76)
    s.unanswered(1, 4, 0x48, 2, now=0.0)
    assert s.resync_read(1, 4, 0x4A, 2) == (4, 0x00, 76)  # a block this meter answered before
    s.unanswered(1, 4, 0x00, 76, now=0.0)
    assert s.resync_read(1, 4, 0x4A, 2) == (4, 0x4A, 1)  # else a prefix of the request
    s.unanswered(1, 4, 0x4A, 1, now=0.0)
    assert s.resync_read(1, 4, 0x4A, 2) == (4, 0x00, 4)  # else a prefix of a known block, even counts first
    s.unanswered(1, 4, 0x00, 4, now=0.0)
    assert s.resync_read(1, 4, 0x4A, 2) == (4, 0x00, 6)
    t = LineSync()
    t.unanswered(1, 4, 0x48, 2, now=0.0)
    t.unanswered(1, 4, 0x4A, 1, now=0.0)
    assert t.resync_read(1, 4, 0x4A, 2) is None  # nothing left: the bus refuses the request (unsynced)
