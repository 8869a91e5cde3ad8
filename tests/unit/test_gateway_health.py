"""gateway.health: meter states from expected cadence, held reasons, chain banner (pure table tests)."""

from __future__ import annotations

import pytest

from gateway.health import (
    HELD_REASONS,
    ChainFacts,
    MeterFacts,
    State,
    Thresholds,
    chain_banner,
    held_reason,
    meter_health,
    observed_interval_ms,
)

NOW = 1_780_000_000_000
TH = Thresholds()  # 10 s default interval, late after 10 + max(10, 5) = 20 s, silent after 300 s


def seen(age_ms: int, *, status: str = "active", newest: str = "accepted", lag_ms: int | None = None,
         interval_ms: int | None = 10_000, reason: str | None = None, detail: str | None = None,
         rejected_ms: int | None = None, rejected_reason: str | None = None) -> MeterFacts:
    """A meter last heard `age_ms` ago whose newest stored reading arrived then (read `lag_ms` ago)."""
    last = NOW - age_ms
    return MeterFacts(status, last, NOW - (age_ms if lag_ms is None else lag_ms), last, newest, reason, detail,
                      interval_ms, None if rejected_ms is None else NOW - rejected_ms, rejected_reason)


@pytest.mark.parametrize(("facts", "state", "reason", "text"), [
    (seen(3_000), State.OK, None, "heard 3 s ago (expected every 10 s)"),
    (seen(20_000), State.OK, None, "heard 20 s ago"),  # exactly at the threshold: not yet late
    (seen(20_001), State.LATE, None, "last heard 20 s ago (expected every 10 s)"),
    (seen(150_000), State.LATE, None, "last heard 2 min ago"),  # the agent stopped 2.5 min ago: late, not "active"
    (seen(300_001), State.SILENT, None, "nothing heard for 5 min (expected every 10 s)"),
    # a 15-min meter is late only after 15 + 7.5 min, silent after 150 min
    (seen(1_300_000, interval_ms=900_000), State.OK, None, "expected every 15 min"),
    (seen(1_400_000, interval_ms=900_000), State.LATE, None, "last heard 23 min ago"),
    (seen(9_000_001, interval_ms=900_000), State.SILENT, None, "nothing heard for 2 h"),
    # no cadence learnt yet: the fleet default (10 s)
    (seen(25_000, interval_ms=None), State.LATE, None, "expected every 10 s"),
    # heard recently, but its newest reading is old (a backlog, or it repeats an old reading)
    (seen(2_000, lag_ms=3_600_000), State.LATE, None, "newest reading is 60 min old"),
    # held: the reason is the first quality flag
    (seen(2_000, newest="held", reason="quality", detail="clock_unsynced"), State.HELD, "clock_unsynced",
     "readings held, not submitted: clock_unsynced"),
    (seen(2_000, newest="held", reason="quality", detail="partial,clock_jumped"), State.HELD, "partial",
     "partial,clock_jumped"),
    # rejecting: the last thing it sent was rejected
    (seen(2_000, rejected_ms=1_000, rejected_reason="bad_signature"), State.REJECTING, "bad_signature",
     "its last readings were rejected: bad_signature"),
    # an older rejection, then accepted readings again: ok
    (seen(2_000, rejected_ms=60_000, rejected_reason="counter_decreased"), State.OK, None, "heard 2 s ago"),
    # silence beats everything but the registry status
    (seen(400_000, newest="held", reason="quality", detail="clock_unsynced"), State.SILENT, None, "nothing heard"),
    (seen(400_000, status="suspended"), State.SUSPENDED, None, "suspended by an operator"),
    (seen(400_000, status="retired"), State.RETIRED, None, "retired"),
    (MeterFacts("active"), State.NEW, None, "registered, never heard from"),
    # never stored a reading but sends: everything rejected
    (MeterFacts("active", NOW - 1_000, last_rejection_ms=NOW - 1_000, last_rejection_reason="key_mismatch"),
     State.REJECTING, "key_mismatch", "key_mismatch"),
])
def test_meter_health(facts: MeterFacts, state: State, reason: str | None, text: str) -> None:
    h = meter_health(facts, NOW, TH)
    assert (h.state, h.reason) == (state, reason)
    assert text in h.text


def test_thresholds_scale_with_the_interval() -> None:
    assert TH.late_after_ms(10_000) == 20_000
    assert TH.late_after_ms(1_000) == 11_000  # the margin floors short intervals
    assert TH.late_after_ms(900_000) == 1_350_000
    assert TH.silent_ms(10_000) == 300_000 and TH.silent_ms(900_000) == 9_000_000


@pytest.mark.parametrize(("newest", "earlier", "interval"), [
    ((9, 90_000), (1, 10_000), 10_000),
    ((20, 200_000), (10, 100_000), 10_000),  # gaps in seq are fine: time per seq
    ((5, 5_000), None, None),
    (None, (1, 1_000), None),
    ((5, 5_000), (5, 5_000), None),  # one reading only
    ((5, 1_000), (4, 2_000), None),  # clock went backwards: no cadence from that
])
def test_observed_interval(newest: tuple[int, int] | None, earlier: tuple[int, int] | None,
                           interval: int | None) -> None:
    assert observed_interval_ms(newest, earlier) == interval


@pytest.mark.parametrize(("reason", "detail", "label"), [
    ("quality", "clock_unsynced", "clock_unsynced"),
    ("quality", "clock_unsynced,partial", "clock_unsynced"),
    ("quality", "glitch_suspected", "glitch_suspected"),
    ("quality", "late; quality not good", "quality"),
    ("quality", "export_not_measured,partial", "partial"),  # *_not_measured is informational, never the reason
    ("quality", "import_not_measured", "quality"),
    ("quality", "made-up\nflag", "quality"),  # bounded: anything unknown is "quality"
    (None, None, "quality"),
])
def test_held_reason_is_bounded(reason: str | None, detail: str | None, label: str) -> None:
    assert held_reason(reason, detail) == label
    assert label in HELD_REASONS


@pytest.mark.parametrize(("facts", "kind", "text"), [
    (ChainFacts(False), None, None),
    (ChainFacts(True, True, last_ok_ms=NOW), None, None),
    (ChainFacts(True, False, "rpc_unreachable", "SolanaRpcException: connection refused", NOW - 50_000,
                oldest_unconfirmed_age_ms=120_000, unconfirmed=7), "unreachable",
     "Chain RPC unreachable for 50 s: SolanaRpcException: connection refused. 7 interval submissions wait in the "
     "outbox, the oldest for 2 min."),
    (ChainFacts(True, True, "oracle_inactive", "the oracle is inactive", NOW - 5_000), "failing",
     "Chain submissions failing for 5 s (oracle_inactive)"),
    (ChainFacts(True, True, oldest_unconfirmed_age_ms=900_001, unconfirmed=3), "behind",
     "Chain submissions behind: 3 interval submissions wait in the outbox, the oldest for 15 min, more than one "
     "epoch (15 min)."),
    (ChainFacts(True, True, oldest_unconfirmed_age_ms=899_000, unconfirmed=3), None, None),
])
def test_chain_banner(facts: ChainFacts, kind: str | None, text: str | None) -> None:
    banner = chain_banner(facts, NOW)
    if kind is None:
        assert banner is None
    else:
        assert banner is not None and banner[0] == kind and text is not None and text in banner[1]
