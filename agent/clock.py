"""Clock gating: is the wall clock trustworthy enough to stamp a reading that moves money?

Scheduling uses the monotonic clock only. The wall clock stamps read_at; a Raspberry Pi boots with a
stale clock until NTP syncs, so each reading carries clock_synced and, when the clock is not known to be
synchronised or jumped against the monotonic clock, a quality flag (not good). Decisions are pure
functions (table-tested); probing the system happens in ClockProbe.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from protocol.reading import Quality

log = logging.getLogger(__name__)

# Re-probe at most every 30 s: sync state changes slowly and timedatectl/chronyc cost a fork each.
DEFAULT_PROBE_INTERVAL_S = 30.0
# systemd (src/basic/time-util.c ntp_synced) treats the clock as synced when the kernel's maxerror is
# below 16 s, the kernel's own "unsynchronised" ceiling. We use the same rule.
MAX_SYNCED_ERROR_US = 16_000_000
TIME_ERROR = 5  # adjtimex() return value: clock not synchronised
PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True, slots=True)
class ClockState:
    synced: bool
    source: str  # adjtimex | timedatectl | chronyc | file | always-synced | none
    detail: str = ""


# -- pure decisions ------------------------------------------------------------------------------


def adjtimex_synced(state: int, maxerror_us: int) -> bool:
    return state != TIME_ERROR and 0 <= maxerror_us < MAX_SYNCED_ERROR_US


def parse_timedatectl(output: str) -> bool | None:
    """`timedatectl show -p NTPSynchronized` -> True/False, None if the output is not understood."""
    for line in output.splitlines():
        key, _, value = line.strip().partition("=")
        if key == "NTPSynchronized":
            return {"yes": True, "no": False}.get(value.strip())
    return None


def parse_chronyc_tracking(output: str) -> bool | None:
    """`chronyc tracking`: synced when 'Leap status' is Normal/Insert/Delete (not 'Not synchronised')."""
    for line in output.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Leap status":
            return value.strip().lower() in ("normal", "insert second", "delete second")
    return None


def clock_jumped(prev_wall_ms: int, prev_mono_ms: int, wall_ms: int, mono_ms: int, tolerance_ms: int) -> bool:
    """True if the wall clock moved differently from the monotonic clock by more than tolerance_ms."""
    return abs((wall_ms - prev_wall_ms) - (mono_ms - prev_mono_ms)) > tolerance_ms


def reading_clock_quality(synced: bool, jumped: bool) -> tuple[bool, Quality]:
    """(clock_synced flag to sign, quality flags) for one reading."""
    q = Quality.NONE
    if not synced:
        q |= Quality.CLOCK_UNSYNCED
    if jumped:
        q |= Quality.CLOCK_JUMPED
    return synced, q


# -- probing (the edge) --------------------------------------------------------------------------


def _probe_adjtimex() -> ClockState | None:
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return None
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        buf = ctypes.create_string_buffer(1024)  # >= sizeof(struct timex) on every ABI; modes = 0 (read only)
        state = libc.adjtimex(buf)
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    long_size = ctypes.sizeof(ctypes.c_long)
    # struct timex { unsigned int modes; long offset; long freq; long maxerror; ... }
    off = max(4, long_size) + 2 * long_size
    maxerror = int.from_bytes(buf.raw[off : off + long_size], sys.byteorder, signed=True)
    return ClockState(adjtimex_synced(state, maxerror), "adjtimex", f"state={state} maxerror_us={maxerror}")


def _run(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def probe_auto() -> ClockState:
    """The kernel's view (adjtimex: what timedatectl's NTPSynchronized reports, without a fork), then
    timedatectl, then chronyc. The first one that answers decides."""
    state = _probe_adjtimex()
    if state is not None:
        return state
    out = _run(["timedatectl", "show", "-p", "NTPSynchronized"])
    if out is not None and (v := parse_timedatectl(out)) is not None:
        return ClockState(v, "timedatectl", out.strip())
    out = _run(["chronyc", "-n", "tracking"])
    if out is not None and (v := parse_chronyc_tracking(out)) is not None:
        return ClockState(v, "chronyc", "")
    return ClockState(False, "none", "no way to learn the sync state (timedatectl, chronyc, adjtimex all failed)")


class ClockProbe:
    """Cached sync state from the configured check: "auto" | "always-synced" | "file:/path"."""

    def __init__(
        self,
        check: str,
        *,
        require_sync: bool = True,
        interval_s: float = DEFAULT_PROBE_INTERVAL_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.check, self.require_sync, self.interval_s, self._mono = check, require_sync, interval_s, monotonic
        self._state: ClockState | None = None
        self._at = 0.0

    def _probe(self) -> ClockState:
        if not self.require_sync:
            return ClockState(True, "not-required", "clock.require_sync = false: wall clock trusted unchecked")
        if self.check == "always-synced":
            return ClockState(True, "always-synced")
        if self.check.startswith("file:"):
            path = self.check[5:]
            return ClockState(os.path.exists(path), "file", path)
        return probe_auto()

    def state(self) -> ClockState:
        now = self._mono()
        if self._state is None or now - self._at >= self.interval_s:
            new = self._probe()
            if self._state is None or new.synced != self._state.synced:
                log.log(logging.INFO if new.synced else logging.WARNING, "wall clock %s (%s %s)",
                        "synchronised" if new.synced else "NOT synchronised", new.source, new.detail)
            self._state, self._at = new, now
        return self._state

    def invalidate(self) -> None:
        """Force a re-probe on the next state() (e.g. after a detected jump)."""
        self._state = None
