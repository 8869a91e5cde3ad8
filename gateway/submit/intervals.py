"""Pure: cumulative counters -> interval submissions for the oracle, that the oracle cannot refuse.

Per meter, in seq order of ACCEPTED readings:
- the first one is the baseline (nothing submitted); so is the first one after a meter replacement;
- an interval closes at the first reading whose read_at lies in a later market epoch (default 15 min)
  than the reading that closed the previous one, provided its timestamp is at least
  min_reading_interval after the last planned submission (else it waits for a later reading);
- energies by role: GRID produced = export delta, consumed = import delta; PRODUCTION produced = export
  delta; CONSUMPTION consumed = import delta (the other register is not an oracle quantity);
- reading_timestamp = read_at_ms // 1000 of the reading closing the interval.
The oracle's rules are mirrored exactly (`oracle_verdict`, thresholds from the OracleData account):
- a non-zero value below min_energy_value is carried into the next interval (never rounded away); at a meter
  replacement there is no next interval, so such a remainder is held (`below_min_energy_value`);
- a delta above max_energy_value is split into k submissions, each within [min, max], with timestamps
  spaced by min_reading_interval and ending at the closing reading's timestamp;
- if the production/consumption ratio check would fail, the interval is HELD with a reason (stored,
  never sent, visible to staff) instead of being sent to fail.
Energy is conserved exactly: for every meter, the sum of planned (sent or held) energies plus the carry
still in `PlanState` equals the counter movement since the baseline, in integer Wh.
Intervals with no energy in either direction are not submitted (they would cost a transaction each).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from gateway.store.records import Planned, PlanState, Point
from oracle_interface.layout import FUTURE_SKEW_S, U64_MAX, OracleConfig
from protocol import MeterRole


@dataclass(frozen=True, slots=True)
class OracleLimits:
    """The thresholds of the on-chain OracleData account that submit_meter_reading enforces."""

    min_energy_value: int = 0
    max_energy_value: int = 1_000_000
    min_reading_interval: int = 60
    max_production_consumption_ratio: int = 1000  # 1000 = 10x
    anomaly_detection_enabled: bool = True
    active: bool = True

    @classmethod
    def from_config(cls, cfg: OracleConfig) -> OracleLimits:
        """From the decoded OracleData account."""
        return cls(cfg.min_energy_value, cfg.max_energy_value, cfg.min_reading_interval,
                   cfg.max_production_consumption_ratio, bool(cfg.anomaly_detection_enabled), bool(cfg.active))


def oracle_verdict(produced: int, consumed: int, ts: int, last_ts: int | None, limits: OracleLimits,
                   chain_now_s: int | None = None) -> str | None:
    """The oracle's submit_meter_reading checks 2-7, in its order; returns its error name or None."""
    if not limits.active:
        return "OracleInactive"
    if chain_now_s is not None and ts > chain_now_s + FUTURE_SKEW_S:
        return "FutureReading"
    if last_ts is not None:
        if ts <= last_ts:
            return "OutdatedReading"
        if ts < last_ts + limits.min_reading_interval:
            return "RateLimitExceeded"
    for v in (produced, consumed):
        if (v != 0 and v < limits.min_energy_value) or v > limits.max_energy_value:
            return "EnergyValueOutOfRange"
    if limits.anomaly_detection_enabled and consumed > 0:
        lhs, rhs = produced * 100, limits.max_production_consumption_ratio * consumed
        if lhs > U64_MAX or rhs > U64_MAX:
            return "InvalidConfiguration"
        if lhs > rhs:
            return "AnomalousReading"
    return None


def map_role(role: MeterRole, d_import: int, d_export: int) -> tuple[int, int]:
    """(produced, consumed) of a counter movement for the meter's role."""
    if role is MeterRole.PRODUCTION:
        return d_export, 0
    if role is MeterRole.CONSUMPTION:
        return 0, d_import
    return d_export, d_import


def _carry_small(v: int, limits: OracleLimits) -> int:
    """The part of v that may be submitted now: 0 if it is non-zero but below the oracle minimum."""
    return 0 if 0 < v < limits.min_energy_value else v


def split_value(v: int, k: int, limits: OracleLimits) -> list[int] | None:
    """v as k parts (first ones non-zero), each 0 or within [min, max]; None if impossible."""
    if v == 0:
        return [0] * k
    lo = max(limits.min_energy_value, 1)
    n = min(k, v // lo)
    if n == 0 or -(-v // limits.max_energy_value) > n:
        return None
    base, extra = divmod(v, n)
    return [base + (1 if i < extra else 0) for i in range(n)] + [0] * (k - n)


def split_interval(produced: int, consumed: int, ts: int, last_ts: int | None,
                   limits: OracleLimits) -> list[tuple[int, int, int]] | str | None:
    """Submissions (produced, consumed, ts) for one interval ending at ts that each pass the oracle in
    sequence; a reason string when it must be held; None when it cannot be placed yet (too soon)."""
    if limits.max_energy_value <= 0:
        return "max_energy_value_zero"
    if _carry_small(produced, limits) != produced or _carry_small(consumed, limits) != consumed:
        return "below_min_energy_value"  # only a final close gets here: other intervals carry such energy
    k = max(1, -(-produced // limits.max_energy_value), -(-consumed // limits.max_energy_value))
    ps, cs = split_value(produced, k, limits), split_value(consumed, k, limits)
    if ps is None or cs is None:
        return "energy_unsplittable"
    step = max(limits.min_reading_interval, 1)
    subs = [(ps[i], cs[i], ts - (k - 1 - i) * step) for i in range(k)]
    prev = last_ts
    for p, c, t in subs:
        err = oracle_verdict(p, c, t, prev, limits)
        if err in ("OutdatedReading", "RateLimitExceeded"):
            return None
        if err == "AnomalousReading":
            return "anomalous_ratio"
        if err is not None:
            return err
        prev = t
    return subs


def plan(meter_id: str, role: MeterRole, state: PlanState, points: list[Point], limits: OracleLimits,
         epoch_s: int, chain_last_ts: int | None = None) -> tuple[PlanState, list[Planned]]:
    """Consume `points` (accepted readings with seq > state.last_seq, in seq order)."""
    out: list[Planned] = []
    if chain_last_ts is not None and (state.last_ts is None or chain_last_ts > state.last_ts):
        state = replace(state, last_ts=chain_last_ts)
    for pt in points:
        if pt.seq <= state.last_seq:
            continue
        if not state.baseline_set or pt.rebaseline:
            if state.baseline_set:  # replacement: the old meter's unplanned remainder is closed or held
                state, rest = _close(meter_id, role, state, state.last_import_wh, state.last_export_wh,
                                     state.last_read_at_ms, state.last_seq, limits, final=True)
                out += rest
            state = PlanState(True, pt.seq, pt.read_at_ms, pt.import_wh, pt.export_wh, pt.import_wh, pt.export_wh,
                              pt.read_at_ms, state.last_ts)
            continue
        state = replace(state, last_seq=pt.seq, last_import_wh=pt.import_wh, last_export_wh=pt.export_wh,
                        last_read_at_ms=pt.read_at_ms)
        if pt.read_at_ms // (epoch_s * 1000) > state.anchor_read_at_ms // (epoch_s * 1000):
            state, new = _close(meter_id, role, state, pt.import_wh, pt.export_wh, pt.read_at_ms, pt.seq, limits)
            out += new
    return state, out


def _close(meter_id: str, role: MeterRole, state: PlanState, imp: int, exp: int, read_at_ms: int, seq: int,
           limits: OracleLimits, final: bool = False) -> tuple[PlanState, list[Planned]]:
    produced, consumed = map_role(role, imp - state.sub_import_wh, exp - state.sub_export_wh)
    if not final:  # a final close has no later interval to carry into: below-minimum energy is held instead
        produced, consumed = _carry_small(produced, limits), _carry_small(consumed, limits)
    ts = read_at_ms // 1000
    if produced == 0 and consumed == 0:
        return (state if final else replace(state, anchor_read_at_ms=read_at_ms)), []
    subs = split_interval(produced, consumed, ts, state.last_ts, limits)
    if subs is None and not final:
        return state, []  # too soon after the last submission: a later reading closes it
    # map_role: consumed always comes from import and produced from export (0 for the unmapped one)
    new_state = replace(state, anchor_read_at_ms=read_at_ms, sub_import_wh=state.sub_import_wh + consumed,
                        sub_export_wh=state.sub_export_wh + produced)
    if isinstance(subs, list):
        k = len(subs)
        planned = [Planned(meter_id, p, c, t, seq, i, k) for i, (p, c, t) in enumerate(subs)]
        return replace(new_state, last_ts=subs[-1][2]), planned
    reason = subs if isinstance(subs, str) else "meter_replaced_remainder"
    return new_state, [Planned(meter_id, produced, consumed, ts, seq, 0, 1, reason)]


# ---- sources whose readings carry interval energies (GridTokenX HTTP ingest) ----------------------------
# Such a reading is turned into a point of a virtual cumulative counter: import_wh = floor(sum of import mWh
# received so far / 1000) (likewise export). The planner above then bins it exactly like an MQTT counter
# (epochs, min_reading_interval, oracle thresholds) and the sub-Wh remainder simply stays in the counter: it
# is carried into the next interval by construction, never rounded away. Two differences, both here:
# - there is no baseline reading: the counter starts at 0 and the first reading's energy counts;
# - a meter that stops sending would leave its last interval open for ever (an MQTT counter is read again
#   later; a client that went away is not): once the epoch of its last reading is over and the meter has
#   been quiet, the open interval is closed at the last reading's timestamp (`close_idle`).


def open_energy(role: MeterRole, state: PlanState, limits: OracleLimits) -> tuple[int, int]:
    """(produced, consumed) Wh received but not planned yet, that could be submitted now."""
    produced, consumed = map_role(role, state.last_import_wh - state.sub_import_wh,
                                  state.last_export_wh - state.sub_export_wh)
    return _carry_small(produced, limits), _carry_small(consumed, limits)


def close_idle(meter_id: str, role: MeterRole, state: PlanState, limits: OracleLimits, epoch_s: int,
               now_s: int) -> tuple[PlanState, list[Planned]]:
    """Close the open interval of a meter whose last reading's epoch is over (the caller decides that the
    meter has been quiet). Its timestamp is the last reading's, moved later only as far as the oracle's
    min_reading_interval after the previous submission requires (never past now)."""
    if not state.baseline_set or now_s < (state.last_read_at_ms // 1000 // epoch_s + 1) * epoch_s:
        return state, []
    produced, consumed = open_energy(role, state, limits)
    if produced == 0 and consumed == 0:
        return state, []
    mx = limits.max_energy_value
    k = max(1, -(-produced // mx), -(-consumed // mx)) if mx > 0 else 1
    ts = state.last_read_at_ms // 1000
    if state.last_ts is not None:
        ts = max(ts, state.last_ts + k * max(limits.min_reading_interval, 1))
    if ts > now_s:
        return state, []
    return _close(meter_id, role, state, state.last_import_wh, state.last_export_wh, ts * 1000, state.last_seq,
                  limits)


def hold_open(meter_id: str, role: MeterRole, state: PlanState, reason: str) -> tuple[PlanState, list[Planned]]:
    """Everything received and not planned yet becomes one held row (e.g. the meter was retired)."""
    produced, consumed = map_role(role, state.last_import_wh - state.sub_import_wh,
                                  state.last_export_wh - state.sub_export_wh)
    if produced == 0 and consumed == 0:
        return state, []
    ts = max(state.last_read_at_ms, state.anchor_read_at_ms) // 1000
    new_state = replace(state, anchor_read_at_ms=ts * 1000, sub_import_wh=state.sub_import_wh + consumed,
                        sub_export_wh=state.sub_export_wh + produced)
    return new_state, [Planned(meter_id, produced, consumed, ts, state.last_seq, 0, 1, reason)]


def plan_http(meter_id: str, role: MeterRole, state: PlanState | None, points: list[Point], limits: OracleLimits,
              epoch_s: int, now_s: int, *, quiet: bool, chain_last_ts: int | None = None,
              retired: bool = False) -> tuple[PlanState, list[Planned]]:
    """`plan` for interval-energy points (gateway.store.records.http_point), plus the idle close (`quiet`: no
    reading received for a while) and, for a retired meter, holding what is still open (`meter_retired`)."""
    if state is None:
        if not points:
            return PlanState(), []
        state = PlanState(True, 0, points[0].read_at_ms, 0, 0, 0, 0, points[0].read_at_ms, None)
    state, out = plan(meter_id, role, state, points, limits, epoch_s, chain_last_ts)
    if retired:  # retired is final: nothing more is sent on its behalf; what it sent is reported, not lost
        state, held = hold_open(meter_id, role, state, "meter_retired")
        return state, [replace(p, held_reason=p.held_reason or "meter_retired") for p in out] + held
    if quiet:
        state, more = close_idle(meter_id, role, state, limits, epoch_s, now_s)
        out += more
    return state, out
