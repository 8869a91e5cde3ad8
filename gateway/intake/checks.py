"""Pure per-reading checks: what the gateway believes about one signed reading, and why.

Order (cheap and unauthenticated first, then the signature, then checks on authenticated fields):
  1. envelope  (before verify; only REJECTS, never trusts): malformed bytes, topic/payload meter_id
     disagree, unknown / suspended / retired meter, key_id is not the registered key, and byte-identical
     duplicates of a reading already handled (acked and dropped; no need to verify them again);
  2. signature over the exact received bytes against the registered key (`verify_signatures`, run in
     worker processes);
  3. progress  (after verify): seq strictly increasing (gaps recorded), quality (not good -> HOLD: stored,
     never submitted), read_at strictly increasing, not in the future beyond the skew, not older than the
     window, not closer than the minimum spacing, counters never decreasing (unless a provisioned meter
     replacement came in between), energy over the elapsed time not above the meter's rated power.
Every verdict carries a stable reason code (the `Reason` values); those strings are stored and exported
as metric labels, so they never change meaning.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from base.plausibility import max_rise_mwh, mean_power_w
from gateway.registry import Meter, MeterStatus
from gateway.store.records import Progress
from protocol import BadSignatureError, BatchItem, InvalidFieldError, Quality, Reading, VerifyKey


class Outcome(StrEnum):
    ACCEPT = "accept"  # stored; its counters feed interval submissions
    HOLD = "hold"  # stored with a reason; never submitted (quality not good)
    DUPLICATE = "duplicate"  # byte-identical to one already handled: acked, dropped
    REJECT = "reject"  # quarantined with reason + original signed bytes


class Reason(StrEnum):
    MALFORMED = "malformed"
    UNSUPPORTED_VERSION = "unsupported_version"
    TRUNCATED = "truncated"
    OVERSIZED = "oversized"
    INVALID_FIELD = "invalid_field"
    TOPIC_MISMATCH = "topic_mismatch"
    UNKNOWN_METER = "unknown_meter"
    METER_SUSPENDED = "meter_suspended"
    METER_RETIRED = "meter_retired"
    KEY_MISMATCH = "key_mismatch"
    BAD_SIGNATURE = "bad_signature"
    INGRESS_RATE = "ingress_rate_exceeded"
    VERIFY_BUDGET = "verify_budget_exceeded"  # the topic's signature checks over budget: refused unverified
    SEQ_NOT_INCREASING = "seq_not_increasing"
    READ_AT_NOT_INCREASING = "read_at_not_increasing"
    READ_AT_FUTURE = "read_at_future"
    READ_AT_TOO_OLD = "read_at_too_old"
    TOO_FREQUENT = "too_frequent"
    COUNTER_DECREASED = "counter_decreased"
    IMPLAUSIBLE_ENERGY = "implausible_energy"
    QUALITY = "quality"  # HOLD; detail lists the flags
    SOURCE_CONFLICT = "source_conflict"  # the meter's energy comes over the GridTokenX HTTP ingest


_PROTOCOL_REASONS = {r.value for r in Reason}

# Spacing rule (too_frequent): a reading is refused when it comes less than HALF of min_read_spacing_ms after the
# last accepted one. Half, because an agent polls on a fixed monotonic schedule of period P and consecutive read
# times are P +- jitter apart (a slow answer or a retry delays one read, not the next; NTP slews the wall clock):
# at 1 s polling a strict rule refused 27% of readings as "999 ms after the last reading". The default is the
# agent's shortest poll interval (0.1 s, agent.config), so no poll interval an agent may be given is refused for
# jitter; sustained floods are the per-meter ingress token bucket's job.
MIN_READ_SPACING_MS = 100


@dataclass(frozen=True, slots=True)
class Limits:
    """The intake's own limits (config [limits]); the oracle's thresholds live in intervals.OracleLimits."""

    future_skew_ms: int = 30_000
    acceptance_window_ms: int = 7 * 86_400_000
    min_read_spacing_ms: int = MIN_READ_SPACING_MS
    plausibility_margin_pct: int = 10
    plausibility_slack_wh: int = 100
    gap_grace_ms: int = 900_000


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Outcome
    reason: Reason | None = None
    detail: str = ""
    gap: tuple[int, int] | None = None  # first..last missing seq, when this reading skipped some
    rebaseline: bool = False  # first reading after a meter replacement: a new baseline, no interval across

    @property
    def authenticated(self) -> bool:
        """The reading's fields are trustworthy (its seq may advance the meter's progress)."""
        return self.outcome in (Outcome.ACCEPT, Outcome.HOLD) or (
            self.outcome is Outcome.REJECT and self.reason in _POST_VERIFY
        )


ACCEPTED = Verdict(Outcome.ACCEPT)  # immutable: shared by every plain accepted reading
NO_PROGRESS = Progress()  # a meter never heard from


def _reject(reason: Reason, detail: str) -> Verdict:
    return Verdict(Outcome.REJECT, reason, detail)


def check_envelope(item: BatchItem, topic_meter_id: str, meter: Meter | None, progress: Progress,
                   stored_payload: bytes | None) -> Verdict | None:
    """Checks needing no trust in the payload. None = go on and verify. `stored_payload` = the payload
    already handled for this (meter, seq), looked up by the caller when seq <= progress.last_seq."""
    if item.error is not None or item.signed is None:
        code = getattr(item.error, "reason", "malformed")
        return _reject(Reason(code) if code in _PROTOCOL_REASONS else Reason.MALFORMED, str(item.error))
    r = item.signed.reading
    if r.meter_id != topic_meter_id:
        return _reject(Reason.TOPIC_MISMATCH, f"payload meter_id {r.meter_id!r} on the topic of {topic_meter_id!r}")
    if meter is None:
        return _reject(Reason.UNKNOWN_METER, f"{r.meter_id} is not registered")
    if meter.status is MeterStatus.RETIRED:
        return _reject(Reason.METER_RETIRED, f"{r.meter_id} is retired")
    if meter.status is MeterStatus.SUSPENDED:
        return _reject(Reason.METER_SUSPENDED, f"{r.meter_id} is suspended")
    if r.key_id != meter.key_id:
        return _reject(Reason.KEY_MISMATCH, f"key_id {r.key_id.hex()} is not the registered {meter.key_id.hex()}")
    if r.seq <= progress.last_seq and stored_payload is not None and stored_payload == item.payload:
        return Verdict(Outcome.DUPLICATE, None, f"seq {r.seq} already handled")
    return None


_VERIFY_KEYS: dict[bytes, VerifyKey] = {}  # per-process memo: building a VerifyKey costs as much as a verify
_VERIFY_KEYS_MAX = 100_000


def verify_signatures(triples: list[tuple[bytes, bytes, bytes]]) -> list[bool]:
    """(public_key, payload, signature) -> signature valid? Picklable: runs in verify worker processes."""
    out = []
    for pub, payload, sig in triples:
        vk = _VERIFY_KEYS.get(pub)
        if vk is None:
            if len(_VERIFY_KEYS) >= _VERIFY_KEYS_MAX:
                _VERIFY_KEYS.clear()
            try:
                vk = _VERIFY_KEYS[pub] = VerifyKey(pub)
            except InvalidFieldError:
                out.append(False)
                continue
        try:
            vk.verify(payload, sig)
            out.append(True)
        except BadSignatureError:
            out.append(False)
    return out


def check_progress(r: Reading, meter: Meter, progress: Progress, now_ms: int, limits: Limits) -> Verdict:
    """Checks on authenticated fields. Returns ACCEPT, HOLD or REJECT."""
    if r.seq <= progress.last_seq:
        return _reject(Reason.SEQ_NOT_INCREASING, f"seq {r.seq} <= last {progress.last_seq} (different bytes)")
    gap = (progress.last_seq + 1, r.seq - 1) if r.seq > progress.last_seq + 1 else None
    if not r.good:
        flags = [f.name.lower() for f in Quality if f and f.name and f in r.quality] if r.quality else []
        if not r.clock_synced:
            flags.insert(0, "clock_unsynced")
        return Verdict(Outcome.HOLD, Reason.QUALITY, ",".join(dict.fromkeys(flags)), gap)
    rebaseline = _is_rebaseline(r, meter, progress)  # a provisioned replacement: counters restart
    verdict = _time_checks(r, progress, now_ms, limits) or (None if rebaseline else
                                                            _counter_checks(r, meter, progress, limits))
    if verdict is not None:  # refused, but its seq is authentic: the seqs it skipped are a gap all the same
        return Verdict(verdict.outcome, verdict.reason, verdict.detail, gap)
    if gap is None and not rebaseline:
        return ACCEPTED  # the common case: one shared verdict, no object per reading
    return Verdict(Outcome.ACCEPT, None, "", gap, rebaseline=rebaseline)


def _time_checks(r: Reading, progress: Progress, now_ms: int, limits: Limits) -> Verdict | None:
    at = r.read_at_ms
    if window := read_at_window(at, now_ms, limits):
        return _reject(*window)
    last = progress.last_read_at_ms
    if last is not None and at <= last:
        return _reject(Reason.READ_AT_NOT_INCREASING, f"read_at {at} <= last {last}")
    if last is not None and (at - last) * 2 < limits.min_read_spacing_ms:  # jitter allowance: half the spacing
        return _reject(Reason.TOO_FREQUENT, f"{at - last} ms after the last reading (at least "
                                            f"{(limits.min_read_spacing_ms + 1) // 2} ms: half of min_read_spacing_ms"
                                            f" {limits.min_read_spacing_ms})")
    return None


def _is_rebaseline(r: Reading, meter: Meter, progress: Progress) -> bool:
    rep = meter.replaced_at_ms
    return (progress.last_read_at_ms is not None and rep is not None and rep > progress.last_read_at_ms
            and r.read_at_ms > rep)


def _counter_checks(r: Reading, meter: Meter, progress: Progress, limits: Limits) -> Verdict | None:
    """Counters never decrease and move no faster than the meter's rated power (not after a replacement)."""
    old_imp, old_exp, last_at = progress.last_import_wh, progress.last_export_wh, progress.last_read_at_ms
    if old_imp is None or old_exp is None or last_at is None:
        return None  # first accepted reading: the baseline
    imp, exp = r.energy_import_wh, r.energy_export_wh
    if imp < old_imp:
        return _reject(Reason.COUNTER_DECREASED, f"energy_import_wh {imp} < last {old_imp}")
    if exp < old_exp:
        return _reject(Reason.COUNTER_DECREASED, f"energy_export_wh {exp} < last {old_exp}")
    dt_ms = r.read_at_ms - last_at
    most = max_rise_mwh(meter.rated_max_power_w, dt_ms, limits.plausibility_margin_pct, limits.plausibility_slack_wh)
    rise_imp, rise_exp = (imp - old_imp) * 1000, (exp - old_exp) * 1000
    if rise_imp > most or rise_exp > most:
        name, rise = ("import", rise_imp) if rise_imp > most else ("export", rise_exp)
        return _reject(Reason.IMPLAUSIBLE_ENERGY, _implausible(name, rise, dt_ms, meter.rated_max_power_w))
    return None


def implausible_energy(name: str, delta_mwh: int, dt_ms: int, rated_w: int, limits: Limits) -> str | None:
    """The rated-power rule (base.plausibility) with the configured margin and slack; used by the MQTT checks
    and the HTTP ingest alike. Returns why the rise is implausible, or None."""
    if delta_mwh <= max_rise_mwh(rated_w, dt_ms, limits.plausibility_margin_pct, limits.plausibility_slack_wh):
        return None
    return _implausible(name, delta_mwh, dt_ms, rated_w)


def _implausible(name: str, delta_mwh: int, dt_ms: int, rated_w: int) -> str:
    return (f"energy_{name}_wh +{delta_mwh // 1000} Wh in {dt_ms} ms = {mean_power_w(delta_mwh, dt_ms)} W "
            f"> rated {rated_w} W")


def read_at_window(at_ms: int, now_ms: int, limits: Limits) -> tuple[Reason, str] | None:
    """A reading's time against the gateway's clock: not beyond the future skew, not older than the acceptance
    window (MQTT and HTTP entries alike). Returns the reason and detail, or None."""
    if at_ms > now_ms + limits.future_skew_ms:
        return Reason.READ_AT_FUTURE, f"read_at {at_ms} is {at_ms - now_ms} ms ahead"
    if at_ms < now_ms - limits.acceptance_window_ms:
        return Reason.READ_AT_TOO_OLD, f"read_at {at_ms} is {now_ms - at_ms} ms old"
    return None


@dataclass(frozen=True, slots=True)
class Neighbors:
    """The accepted readings around a late seq: (read_at_ms, import_wh, export_wh) or None."""

    prev: tuple[int, int, int] | None
    next: tuple[int, int, int] | None


def check_late(r: Reading, neighbors: Neighbors, now_ms: int, limits: Limits) -> Verdict:
    """A reading whose seq lies in a recorded gap (it arrived after later ones, e.g. processed by another
    gateway process of the share group): it must fit between its accepted neighbours in time and counters.
    Accepted late readings are stored; the interval planner uses them only if it has not moved past them
    (counters are cumulative, so skipping one loses no energy)."""
    if not r.good:
        return Verdict(Outcome.HOLD, Reason.QUALITY, "late; quality not good")
    if window := read_at_window(r.read_at_ms, now_ms, limits):
        return _reject(window[0], f"late reading: {window[1]}")
    for nb, later in ((neighbors.prev, False), (neighbors.next, True)):
        if nb is None:
            continue
        at, imp, exp = nb
        if (r.read_at_ms >= at) if later else (r.read_at_ms <= at):
            return _reject(Reason.READ_AT_NOT_INCREASING, f"late reading: read_at {r.read_at_ms} out of order "
                                                          f"with its neighbour at {at}")
        if (r.energy_import_wh > imp or r.energy_export_wh > exp) if later else (
                r.energy_import_wh < imp or r.energy_export_wh < exp):
            return _reject(Reason.COUNTER_DECREASED, f"late reading: counters {r.energy_import_wh}/"
                                                     f"{r.energy_export_wh} do not fit between its neighbours")
    return Verdict(Outcome.ACCEPT, None, "late arrival: filled a gap")


_POST_VERIFY = frozenset({
    Reason.SEQ_NOT_INCREASING, Reason.READ_AT_NOT_INCREASING, Reason.READ_AT_FUTURE, Reason.READ_AT_TOO_OLD,
    Reason.TOO_FREQUENT, Reason.COUNTER_DECREASED, Reason.IMPLAUSIBLE_ENERGY, Reason.SOURCE_CONFLICT,
})


def advance(progress: Progress, r: Reading, verdict: Verdict) -> Progress:
    """Progress after handling an authenticated reading (pure)."""
    if verdict.outcome is Outcome.ACCEPT:  # first and direct construction: this runs once per reading
        return Progress(max(progress.last_seq, r.seq), r.read_at_ms, r.energy_import_wh, r.energy_export_wh)
    if not verdict.authenticated:
        return progress
    return Progress(max(progress.last_seq, r.seq), progress.last_read_at_ms, progress.last_import_wh,
                    progress.last_export_wh)


@dataclass(frozen=True, slots=True)
class TokenBucket:
    """Per-meter ingress cap (pure): `take` returns the new bucket and whether `n` readings may pass."""

    tokens: float
    updated_s: float

    def take(self, n: int, now_s: float, rate_per_s: float, burst: int) -> tuple[TokenBucket, bool]:
        tokens = min(float(burst), self.tokens + max(0.0, now_s - self.updated_s) * rate_per_s)
        if tokens >= n:
            return TokenBucket(tokens - n, now_s), True
        return TokenBucket(tokens, now_s), False
