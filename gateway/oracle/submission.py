"""What the gateway hands the oracle client (Submission), what it gets back (SubmitResult), and the
submissions the chain cannot take in any state (rejected before sending). Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from oracle_interface import layout as ol


@dataclass(frozen=True)
class Submission:
    key: str  # unique, e.g. f"{meter_id}:{reading_timestamp}"
    meter_id: str
    produced_wh: int
    consumed_wh: int
    reading_timestamp: int
    zone_id: int


@dataclass(frozen=True)
class SubmitResult:
    key: str
    status: Literal["confirmed", "rejected", "retry"]
    signature: str | None
    error: str | None  # error NAME e.g. "RateLimitExceeded"; code in `code`
    code: int | None = None


def invalid_submission(s: Submission) -> tuple[str, int | None] | None:
    """Submissions the chain cannot take in any state: rejected before sending (name, oracle code)."""
    if len(s.meter_id.encode("utf-8")) > ol.MAX_METER_ID_SEED:
        return "MeterIdTooLong", ol.ERROR_CODES["MeterIdTooLong"]
    if not s.meter_id:
        return "InvalidSubmission: empty meter_id", None
    for name, v, lo, hi in (("produced_wh", s.produced_wh, 0, ol.U64_MAX),
                            ("consumed_wh", s.consumed_wh, 0, ol.U64_MAX),
                            ("reading_timestamp", s.reading_timestamp, -(2**63), 2**63 - 1),
                            ("zone_id", s.zone_id, -(2**31), 2**31 - 1)):
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            return f"InvalidSubmission: {name} out of range", None
    return None


def oracle_error_code(name: str, table: dict[int, str] | None) -> int | None:
    """This deployment's custom error code for an oracle error name (table: code -> name, else the IDL's)."""
    return {v: k for k, v in (table or ol.ERRORS).items()}.get(name)


def rejected_before_sending(s: Submission, table: dict[int, str] | None) -> SubmitResult | None:
    """The result for a submission the chain cannot take in any state, else None."""
    problem = invalid_submission(s)
    if problem is None:
        return None
    name, code = problem
    if code is not None:  # this deployment's number for the name
        code = oracle_error_code(name, table)
    return SubmitResult(s.key, "rejected", None, name, code)


def settled_by_chain_state(s: Submission, state: ol.MeterState | None,
                           table: dict[int, str] | None) -> SubmitResult | None:
    """The result for a submission the meter's on-chain state already decides, else None (send it).

    Same timestamp and values as the latest state: confirmed (a resubmission, no signature). Not newer than
    the latest state: rejected as OutdatedReading (the chain would refuse it)."""
    if state is not None and s.reading_timestamp == state.last_reading_timestamp and (
            s.produced_wh, s.consumed_wh) == (state.energy_produced, state.energy_consumed):
        return SubmitResult(s.key, "confirmed", None, None)  # already on chain (resubmission)
    if state is not None and s.reading_timestamp <= state.last_reading_timestamp:
        return SubmitResult(s.key, "rejected", None, "OutdatedReading", oracle_error_code("OutdatedReading", table))
    return None


__all__ = [
    "Submission",
    "SubmitResult",
    "invalid_submission",
    "oracle_error_code",
    "rejected_before_sending",
    "settled_by_chain_state",
]
