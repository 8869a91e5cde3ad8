"""The plain records the store persists and hands back: per-meter progress of the intake, the interval planner's
inputs (Point), state (PlanState) and output (Planned). Pure data, no I/O: the checks (gateway/intake/checks.py)
and the planner (gateway/submit/intervals.py) compute with them, the store only keeps them, so the store needs
nothing from the rooms above it (tests/unit/test_layout.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Progress:
    """Per-meter state the checks compare against. Counters/read_at are those of the last ACCEPTED reading."""

    last_seq: int = 0  # highest seq of an authenticated reading (accepted, held or rejected after verify)
    last_read_at_ms: int | None = None
    last_import_wh: int | None = None
    last_export_wh: int | None = None


@dataclass(frozen=True, slots=True)
class Point:
    """An accepted reading, reduced to what the planner needs."""

    seq: int
    read_at_ms: int
    import_wh: int
    export_wh: int
    rebaseline: bool = False


def http_point(seq: int, timestamp_ms: int, cum_import_mwh: int, cum_export_mwh: int) -> Point:
    """A GridTokenX HTTP reading as a planner point: its running sums in whole Wh (the sub-Wh rest stays in the
    sums, so it is carried into a later point, never rounded away)."""
    return Point(seq, timestamp_ms, cum_import_mwh // 1000, cum_export_mwh // 1000)


@dataclass(frozen=True, slots=True)
class PlanState:
    """Per-meter planner state (persisted by the store)."""

    baseline_set: bool = False
    last_seq: int = 0  # highest seq consumed by the planner
    anchor_read_at_ms: int = 0  # read_at of the baseline / last closing reading
    sub_import_wh: int = 0  # import counter value up to which energy has been planned
    sub_export_wh: int = 0
    last_import_wh: int = 0  # counters of the last point seen
    last_export_wh: int = 0
    last_read_at_ms: int = 0  # read_at of the last point seen
    last_ts: int | None = None  # reading_timestamp of the last submission planned for sending


@dataclass(frozen=True, slots=True)
class Planned:
    meter_id: str
    produced_wh: int
    consumed_wh: int
    reading_timestamp: int
    closing_seq: int
    part: int = 0  # 0..parts-1 when an interval was split
    parts: int = 1
    held_reason: str | None = None  # set: stored, never sent (its outbox key: gateway.store.outbox.outbox_key)


@dataclass(frozen=True, slots=True)
class MeterPlan:
    """One meter's planner result, saved with others in one transaction (store.save_plans)."""

    meter_id: str
    state: PlanState
    planned: list[Planned]
    zone_id: int
