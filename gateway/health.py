"""Meter and chain health: pure decisions from facts the store already holds (table-tested, no I/O).

A meter's health comes from its expected cadence: the interval its own recent readings show (seq and read_at
of its newest reading and of one a few seqs earlier), or the fleet default (`[health] expected_interval_s`,
the agent's default poll interval) until it has sent two. With E the expected interval:

    late    nothing heard for more than E + max(late_margin, E/2), or its newest reading is that old
    silent  nothing heard for more than max(silent_after, 10 x E)
    held    its newest stored reading is held (not submitted); the reason says why (clock_unsynced, ...)
    rejecting  the last thing it sent was rejected (within the silent window); the reason says why
    suspended / retired  registry status (an operator's decision)
    new     registered, never heard from
    ok      none of the above

"Heard" is the gateway's clock (last_seen: any message of the meter), so a meter with a wrong clock is judged
by when its messages arrive, not by what it claims. States are ordered by severity for sorting.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from protocol import Quality
from protocol.reading import NOT_MEASURED


class State(StrEnum):
    SILENT = "silent"
    LATE = "late"
    REJECTING = "rejecting"
    HELD = "held"
    NEW = "new"
    SUSPENDED = "suspended"
    OK = "ok"
    RETIRED = "retired"


SEVERITY = {s: i for i, s in enumerate(State)}  # most urgent first (declaration order)

# Reasons a reading is held: the first of its quality flags (a bounded set: metric label values).
# *_NOT_MEASURED flags are informational (a meter without that counter), never a reason to hold.
HELD_REASONS = ("clock_unsynced", *(f.name.lower() for f in Quality
                                    if f and f.name and f.name != "CLOCK_UNSYNCED" and not f & NOT_MEASURED),
                "quality")


@dataclass(frozen=True, slots=True)
class Thresholds:
    default_interval_ms: int = 10_000  # the agent's default poll_interval_s
    late_margin_ms: int = 10_000
    silent_after_ms: int = 300_000
    silent_after_intervals: int = 10
    window_readings: int = 8  # the observed interval spans this many seqs back from the newest reading

    def late_after_ms(self, interval_ms: int) -> int:
        return interval_ms + max(self.late_margin_ms, interval_ms // 2)

    def silent_ms(self, interval_ms: int) -> int:
        return max(self.silent_after_ms, self.silent_after_intervals * interval_ms)


@dataclass(frozen=True, slots=True)
class MeterFacts:
    """What the store knows about one registered meter (times in ms, gateway clock except read_at)."""

    status: str  # registry: active | suspended | retired
    last_seen_ms: int | None = None  # any message (accepted, held, rejected, duplicate)
    newest_read_at_ms: int | None = None  # newest stored (accepted or held) reading
    newest_received_ms: int | None = None
    newest_status: str | None = None  # accepted | held
    newest_reason: str | None = None
    newest_detail: str | None = None
    observed_interval_ms: int | None = None
    last_rejection_ms: int | None = None  # newest rejection within the silent window
    last_rejection_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Health:
    state: State
    reason: str | None  # held / rejecting reason code; None otherwise
    text: str  # one line for a person
    expected_interval_ms: int
    heard_age_ms: int | None
    lag_ms: int | None  # now - newest reading's read_at


def held_reason(reason: str | None, detail: str | None) -> str:
    """Bounded reason of a held reading: its first quality flag that holds it ("clock_unsynced", "partial", ...)."""
    if reason == "quality":
        for flag in (detail or "").split(","):
            if flag.strip() in HELD_REASONS:
                return flag.strip()
    return reason if reason in HELD_REASONS else "quality"


def observed_interval_ms(newest: tuple[int, int] | None, earlier: tuple[int, int] | None) -> int | None:
    """(seq, read_at_ms) of the newest reading and of an earlier one -> the meter's cadence, or None."""
    if newest is None or earlier is None or newest[0] <= earlier[0] or newest[1] <= earlier[1]:
        return None
    return (newest[1] - earlier[1]) // (newest[0] - earlier[0]) or None


def age_text(ms: int | None) -> str:
    if ms is None:
        return "never"
    if 0 < ms < 10_000 and ms % 1000:
        return f"{ms / 1000:.1f} s"  # a sub-10-s cadence: 1.5 s, not 1 s
    s = max(0, ms) // 1000
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172_800:
        return f"{s // 3600} h"
    return f"{s // 86400} d"


def meter_health(f: MeterFacts, now_ms: int, th: Thresholds) -> Health:
    interval = f.observed_interval_ms or th.default_interval_ms
    heard = None if f.last_seen_ms is None else max(0, now_ms - f.last_seen_ms)
    lag = None if f.newest_read_at_ms is None else max(0, now_ms - f.newest_read_at_ms)
    every = f"expected every {age_text(interval)}"

    def h(state: State, text: str, reason: str | None = None) -> Health:
        return Health(state, reason, text, interval, heard, lag)

    if f.status == "retired":
        return h(State.RETIRED, "retired: readings are refused")
    if f.status == "suspended":
        return h(State.SUSPENDED, "suspended by an operator: readings are refused")
    if heard is None:
        return h(State.NEW, "registered, never heard from")
    if heard > th.silent_ms(interval):
        return h(State.SILENT, f"nothing heard for {age_text(heard)} ({every})")
    if heard > th.late_after_ms(interval):
        return h(State.LATE, f"last heard {age_text(heard)} ago ({every})")
    if f.last_rejection_ms is not None and (f.newest_received_ms is None
                                            or f.last_rejection_ms >= f.newest_received_ms):
        reason = f.last_rejection_reason or "rejected"
        return h(State.REJECTING, f"its last readings were rejected: {reason}", reason)
    if f.newest_status == "held":
        reason = held_reason(f.newest_reason, f.newest_detail)
        return h(State.HELD, f"readings held, not submitted: {f.newest_detail or reason}", reason)
    if lag is None or lag > th.late_after_ms(interval):
        return h(State.LATE, f"newest reading is {age_text(lag)} old ({every})")
    return h(State.OK, f"heard {age_text(heard)} ago ({every})")


# ---- chain ------------------------------------------------------------------------------------------------------

CHAIN_ERROR_REASONS = ("rpc_unreachable", "rpc_error", "not_chain_bridge", "oracle_inactive", "not_landed",
                       "internal_error")


@dataclass(frozen=True, slots=True)
class ChainFacts:
    enabled: bool
    reachable: bool | None = None  # None: not tried yet
    failing_reason: str | None = None  # reason of the last cycle when it failed
    failing_message: str | None = None
    failing_since_ms: int | None = None
    last_ok_ms: int | None = None  # last cycle whose RPC calls all answered
    last_submission_ms: int | None = None  # last submission confirmed on chain
    oldest_unconfirmed_age_ms: int | None = None
    unconfirmed: int = 0
    epoch_ms: int = 900_000


def chain_banner(c: ChainFacts, now_ms: int) -> tuple[str, str] | None:
    """(kind, text) of the dashboard's chain banner, or None when the chain is healthy (or not used here)."""
    if not c.enabled:
        return None
    waiting = (f"{c.unconfirmed} interval submissions wait in the outbox"
               + ("" if c.oldest_unconfirmed_age_ms is None else
                  f", the oldest for {age_text(c.oldest_unconfirmed_age_ms)}"))
    since = "" if c.failing_since_ms is None else f" for {age_text(now_ms - c.failing_since_ms)}"
    if c.reachable is False:
        return "unreachable", f"Chain RPC unreachable{since}: {c.failing_message or 'no answer'}. {waiting}."
    if c.failing_reason is not None:
        return "failing", f"Chain submissions failing{since} ({c.failing_reason}): {c.failing_message}. {waiting}."
    if c.oldest_unconfirmed_age_ms is not None and c.oldest_unconfirmed_age_ms > c.epoch_ms:
        return "behind", (f"Chain submissions behind: {waiting}, more than one epoch "
                          f"({age_text(c.epoch_ms)}).")
    return None
