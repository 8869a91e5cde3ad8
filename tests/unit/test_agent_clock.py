from __future__ import annotations

from pathlib import Path

import pytest

from agent.clock import (
    ClockProbe,
    adjtimex_synced,
    clock_jumped,
    parse_chronyc_tracking,
    parse_timedatectl,
    reading_clock_quality,
)
from protocol.reading import Quality


@pytest.mark.parametrize(
    "state, maxerror, synced",
    [(0, 1_000, True), (0, 15_999_999, True), (0, 16_000_000, False), (5, 10, False), (1, 500, True), (0, -1, False)],
)
def test_adjtimex_rule(state: int, maxerror: int, synced: bool) -> None:
    assert adjtimex_synced(state, maxerror) is synced


@pytest.mark.parametrize(
    "out, expected",
    [("NTPSynchronized=yes\n", True), ("NTPSynchronized=no\n", False), ("NTPSynchronized=maybe", None), ("", None)],
)
def test_parse_timedatectl(out: str, expected: bool | None) -> None:
    assert parse_timedatectl(out) is expected


CHRONY_OK = """Reference ID    : C0A80001 (192.168.0.1)
Stratum         : 3
System time     : 0.000012 seconds fast of NTP time
Leap status     : Normal
"""


@pytest.mark.parametrize(
    "out, expected",
    [(CHRONY_OK, True), (CHRONY_OK.replace("Normal", "Not synchronised"), False), ("garbage", None)],
)
def test_parse_chronyc(out: str, expected: bool | None) -> None:
    assert parse_chronyc_tracking(out) is expected


@pytest.mark.parametrize(
    "prev_wall, prev_mono, wall, mono, jumped",
    [
        (1_000_000, 500, 1_010_000, 10_500, False),  # both moved 10 s
        (1_000_000, 500, 1_011_999, 10_500, False),  # 1.999 s drift: slew, within tolerance
        (1_000_000, 500, 1_012_001, 10_500, True),  # forward step
        (1_000_000, 500, 990_000, 10_500, True),  # backwards step
        (0, 500, 1_700_000_000_000, 10_500, True),  # NTP fixed a 1970 boot clock
    ],
)
def test_clock_jump(prev_wall: int, prev_mono: int, wall: int, mono: int, jumped: bool) -> None:
    assert clock_jumped(prev_wall, prev_mono, wall, mono, 2000) is jumped


def test_reading_quality() -> None:
    assert reading_clock_quality(True, False) == (True, Quality.NONE)
    assert reading_clock_quality(False, False) == (False, Quality.CLOCK_UNSYNCED)
    assert reading_clock_quality(True, True) == (True, Quality.CLOCK_JUMPED)


def test_probe_modes_and_caching(tmp_path: Path) -> None:
    assert ClockProbe("always-synced").state().synced
    flag = tmp_path / "synced"
    now = [0.0]
    probe = ClockProbe(f"file:{flag}", interval_s=30, monotonic=lambda: now[0])
    assert not probe.state().synced
    flag.touch()
    assert not probe.state().synced  # cached
    now[0] = 31.0
    assert probe.state().synced and probe.state().source == "file"
    assert ClockProbe("file:/nonexistent", require_sync=False).state().synced
