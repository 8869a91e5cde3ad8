"""Table tests of gateway.intake.checks (pure)."""

from __future__ import annotations

import pytest

from gateway.intake.checks import (
    Limits,
    Neighbors,
    Outcome,
    Progress,
    Reason,
    TokenBucket,
    advance,
    check_envelope,
    check_late,
    check_progress,
    verify_signatures,
)
from gateway.registry import Meter, MeterStatus
from protocol import BatchItem, DecodeError, MeterRole, Quality, TruncatedError, decode_batch, key_id
from tests.gateway_support import T0_MS, batch, key_for, reading

MID = "HOUSE-1"
KEY = key_for(MID)
LIM = Limits(future_skew_ms=30_000, acceptance_window_ms=86_400_000, min_read_spacing_ms=1000,
             plausibility_margin_pct=10, plausibility_slack_wh=2)
PROG = Progress(last_seq=10, last_read_at_ms=T0_MS - 10_000, last_import_wh=1000, last_export_wh=50)


def meter(status: MeterStatus = MeterStatus.ACTIVE, rated_w: int = 3600, replaced_at: int | None = None) -> Meter:
    return Meter(MID, KEY.public_key, key_id(KEY.public_key), 1, "p", MeterRole.GRID, status, rated_w, "SN", "i",
                 T0_MS - 10**9, replaced_at, "GMREG1:x")


def item(seq: int, at: int, imp: int, exp: int = 50, mid: str = MID, **kw: object) -> BatchItem:
    return decode_batch(batch(reading(mid, seq, at, imp, exp, **kw)))[0]  # type: ignore[arg-type]


ENVELOPE_CASES = [
    ("ok", item(11, T0_MS, 1001), MID, meter(), None, None),
    ("topic spoof", item(11, T0_MS, 1001, mid="OTHER-2", key=KEY), MID, meter(), None, Reason.TOPIC_MISMATCH),
    ("unknown", item(11, T0_MS, 1001), MID, None, None, Reason.UNKNOWN_METER),
    ("suspended", item(11, T0_MS, 1001), MID, meter(MeterStatus.SUSPENDED), None, Reason.METER_SUSPENDED),
    ("retired", item(11, T0_MS, 1001), MID, meter(MeterStatus.RETIRED), None, Reason.METER_RETIRED),
    ("other key", item(11, T0_MS, 1001, key=key_for("X")), MID, meter(), None, Reason.KEY_MISMATCH),
    ("malformed", BatchItem(b"junk", b"s" * 64, None, DecodeError("reading: not a gridmeter message")), MID, meter(),
     None, Reason.MALFORMED),
    ("truncated", BatchItem(b"gridmeter/reading/v1", b"s" * 64, None, TruncatedError("meter_id: needs 1 byte")), MID,
     meter(), None, Reason.TRUNCATED),
]


@pytest.mark.parametrize(("name", "it", "topic", "m", "stored", "reason"), ENVELOPE_CASES,
                         ids=[c[0] for c in ENVELOPE_CASES])
def test_envelope(name: str, it: BatchItem, topic: str, m: Meter | None, stored: bytes | None,
                  reason: Reason | None) -> None:
    v = check_envelope(it, topic, m, PROG, stored)
    assert (v.reason if v else None) == reason
    if reason is not None:
        assert v is not None and v.outcome is Outcome.REJECT and v.detail


def test_duplicate_needs_identical_bytes() -> None:
    old = item(10, T0_MS - 10_000, 1000)
    v = check_envelope(old, MID, meter(), PROG, old.payload)
    assert v is not None and v.outcome is Outcome.DUPLICATE
    assert check_envelope(old, MID, meter(), PROG, b"different") is None  # goes on to verify + seq check


def test_verify_exact_bytes() -> None:
    it = item(11, T0_MS, 1001)
    tampered = it.payload[:-1] + bytes([it.payload[-1] ^ 1])
    forged = item(11, T0_MS, 1001, key=key_for("attacker"))
    pub = KEY.public_key
    assert verify_signatures([(pub, it.payload, it.signature), (pub, tampered, it.signature),
                              (pub, forged.payload, forged.signature), (b"\x00" * 31, it.payload, it.signature),
                              (pub, it.payload, it.signature[:10])]) == [True, False, False, False, False]


R = lambda seq, at, imp, exp=50, **kw: item(seq, at, imp, exp, **kw).signed.reading  # noqa: E731

PROGRESS_CASES = [
    ("next", R(11, T0_MS, 1002), PROG, meter(), Outcome.ACCEPT, None),
    ("gap", R(14, T0_MS, 1002), PROG, meter(), Outcome.ACCEPT, None),
    ("old seq", R(9, T0_MS, 1002), PROG, meter(), Outcome.REJECT, Reason.SEQ_NOT_INCREASING),
    ("same seq", R(10, T0_MS, 1002), PROG, meter(), Outcome.REJECT, Reason.SEQ_NOT_INCREASING),
    ("backdated", R(11, T0_MS - 20_000, 1002), PROG, meter(), Outcome.REJECT, Reason.READ_AT_NOT_INCREASING),
    ("same time", R(11, T0_MS - 10_000, 1002), PROG, meter(), Outcome.REJECT, Reason.READ_AT_NOT_INCREASING),
    ("too soon", R(11, T0_MS - 9_501, 1000), PROG, meter(), Outcome.REJECT, Reason.TOO_FREQUENT),  # 499 ms
    ("half spacing", R(11, T0_MS - 9_500, 1000), PROG, meter(), Outcome.ACCEPT, None),  # 500 ms: jitter allowance
    ("poll jitter", R(11, T0_MS - 9_001, 1001), PROG, meter(), Outcome.ACCEPT, None),  # 999 ms at 1 s polling
    ("future", R(11, T0_MS + 31_000, 1002), PROG, meter(), Outcome.REJECT, Reason.READ_AT_FUTURE),
    ("skew ok", R(11, T0_MS + 30_000, 1002), PROG, meter(), Outcome.ACCEPT, None),
    ("too old", R(11, T0_MS - 86_400_001, 1002), Progress(10), meter(), Outcome.REJECT, Reason.READ_AT_TOO_OLD),
    ("import down", R(11, T0_MS, 999), PROG, meter(), Outcome.REJECT, Reason.COUNTER_DECREASED),
    ("export down", R(11, T0_MS, 1000, 49), PROG, meter(), Outcome.REJECT, Reason.COUNTER_DECREASED),
    # 3600 W for 10 s = 10 Wh; +10 % = 11 Wh, + 2 Wh slack = 13 Wh allowed
    ("plausible", R(11, T0_MS, 1013), PROG, meter(), Outcome.ACCEPT, None),
    ("implausible", R(11, T0_MS, 1014), PROG, meter(), Outcome.REJECT, Reason.IMPLAUSIBLE_ENERGY),
    ("glitch jump", R(11, T0_MS, 2**31), PROG, meter(), Outcome.REJECT, Reason.IMPLAUSIBLE_ENERGY),
    ("replaced", R(11, T0_MS, 5), PROG, meter(replaced_at=T0_MS - 5000), Outcome.ACCEPT, None),
    ("replaced earlier", R(11, T0_MS, 5), PROG, meter(replaced_at=T0_MS - 20_000), Outcome.REJECT,
     Reason.COUNTER_DECREASED),
    ("unsynced held", R(11, 5, 0, synced=False), PROG, meter(), Outcome.HOLD, Reason.QUALITY),
    ("glitch held", R(11, T0_MS, 0, quality=Quality.GLITCH_SUSPECTED), PROG, meter(), Outcome.HOLD, Reason.QUALITY),
    ("baseline", R(1, T0_MS, 10**9), Progress(), meter(), Outcome.ACCEPT, None),
]


@pytest.mark.parametrize(("name", "r", "prog", "m", "outcome", "reason"), PROGRESS_CASES,
                         ids=[c[0] for c in PROGRESS_CASES])
def test_progress(name: str, r, prog: Progress, m: Meter, outcome: Outcome, reason: Reason | None) -> None:  # type: ignore[no-untyped-def]
    v = check_progress(r, m, prog, T0_MS, LIM)
    assert (v.outcome, v.reason) == (outcome, reason), v.detail


def test_gap_and_rebaseline_flags() -> None:
    v = check_progress(R(14, T0_MS, 1002), meter(), PROG, T0_MS, LIM)
    assert v.gap == (11, 13)
    v = check_progress(R(11, T0_MS, 5), meter(replaced_at=T0_MS - 5000), PROG, T0_MS, LIM)
    assert v.rebaseline


def test_hold_reason_names_flags() -> None:
    v = check_progress(R(11, T0_MS, 0, synced=False, quality=Quality.PARTIAL), meter(), PROG, T0_MS, LIM)
    assert v.detail == "clock_unsynced,partial"


def test_advance() -> None:
    r = R(12, T0_MS, 1005, 60)
    acc = advance(PROG, r, check_progress(r, meter(), PROG, T0_MS, LIM))
    assert acc == Progress(12, T0_MS, 1005, 60)
    held = R(12, T0_MS, 0, synced=False)
    assert advance(PROG, held, check_progress(held, meter(), PROG, T0_MS, LIM)) == Progress(12, *PROG_TAIL)
    bad = R(12, T0_MS, 1)  # counter decreased: authenticated, seq consumed, counters kept
    assert advance(PROG, bad, check_progress(bad, meter(), PROG, T0_MS, LIM)) == Progress(12, *PROG_TAIL)


PROG_TAIL = (PROG.last_read_at_ms, PROG.last_import_wh, PROG.last_export_wh)


def test_token_bucket() -> None:
    b = TokenBucket(2.0, 0.0)
    b, ok1 = b.take(1, 0.0, 1.0, 2)
    b, ok2 = b.take(1, 0.0, 1.0, 2)
    b, ok3 = b.take(1, 0.0, 1.0, 2)
    assert (ok1, ok2, ok3) == (True, True, False)
    b, ok4 = b.take(1, 1.0, 1.0, 2)
    assert ok4


LATE_CASES = [
    ("fits", R(5, T0_MS - 5000, 1003, 50), Neighbors((T0_MS - 6000, 1000, 50), (T0_MS - 4000, 1005, 50)),
     Outcome.ACCEPT, None),
    ("no prev", R(5, T0_MS - 5000, 1003, 50), Neighbors(None, (T0_MS - 4000, 1005, 50)), Outcome.ACCEPT, None),
    ("after next", R(5, T0_MS - 3000, 1003, 50), Neighbors(None, (T0_MS - 4000, 1005, 50)), Outcome.REJECT,
     Reason.READ_AT_NOT_INCREASING),
    ("before prev", R(5, T0_MS - 7000, 1003, 50), Neighbors((T0_MS - 6000, 1000, 50), None), Outcome.REJECT,
     Reason.READ_AT_NOT_INCREASING),
    ("above next", R(5, T0_MS - 5000, 1006, 50), Neighbors(None, (T0_MS - 4000, 1005, 50)), Outcome.REJECT,
     Reason.COUNTER_DECREASED),
    ("below prev", R(5, T0_MS - 5000, 1003, 49), Neighbors((T0_MS - 6000, 1000, 50), None), Outcome.REJECT,
     Reason.COUNTER_DECREASED),
    ("unsynced", R(5, 1, 0, synced=False), Neighbors(None, None), Outcome.HOLD, Reason.QUALITY),
]


@pytest.mark.parametrize(("name", "r", "nb", "outcome", "reason"), LATE_CASES, ids=[c[0] for c in LATE_CASES])
def test_late(name: str, r, nb: Neighbors, outcome: Outcome, reason: Reason | None) -> None:  # type: ignore[no-untyped-def]
    v = check_late(r, nb, T0_MS, LIM)
    assert (v.outcome, v.reason) == (outcome, reason), v.detail


def test_default_spacing_never_refuses_a_poll_interval_the_agent_allows() -> None:
    """Agent and gateway defaults agree: the shortest poll interval an agent accepts, read with jitter of up to
    half the interval, is never too_frequent under the gateway's default limits."""
    from agent.config import MIN_POLL_INTERVAL_S
    from gateway.config import LimitsSection

    period_ms = round(MIN_POLL_INTERVAL_S * 1000)
    assert Limits().min_read_spacing_ms == LimitsSection().min_read_spacing_ms == period_ms
    lim = Limits(acceptance_window_ms=86_400_000)
    for early_ms in (0, 1, period_ms // 4, period_ms // 2):
        r = R(11, T0_MS - 10_000 + period_ms - early_ms, 1000)
        assert check_progress(r, meter(), PROG, T0_MS, lim).outcome is Outcome.ACCEPT, early_ms
    r = R(11, T0_MS - 10_000 + period_ms // 2 - 1, 1000)
    v = check_progress(r, meter(), PROG, T0_MS, lim)
    assert (v.outcome, v.reason) == (Outcome.REJECT, Reason.TOO_FREQUENT) and "half of min_read_spacing_ms" in v.detail
