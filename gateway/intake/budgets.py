"""What a publisher may make the MQTT intake do, as token buckets (gateway.intake.checks.TokenBucket; the clock is
the caller's):

- `IngressLimit`, per meter: NEW readings whose signature verified (the meter's own rate). Only they pay for it,
  so a forger publishing on a meter's topic cannot spend that meter's budget and starve its honest readings.
- `VerifyBudget`, per topic and overall: every other signature check, the ones no honest new reading pays for (a
  signature that failed, a replay of a handled reading, a reading over its meter's rate). It bounds what forged
  input can cost in CPU: beyond it a topic's readings are refused unverified (`verify_budget_exceeded`), until
  the budget refills.
- `QuarantineBudget`: rows and bytes per second of UNAUTHENTICATED rejections that are stored; beyond it they are
  only counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.intake.checks import TokenBucket

# Unauthenticated rejections (forged, unknown meter, malformed) are stored up to this rate; beyond it they
# are only counted, so a publisher flooding made-up topics cannot fill the disk (the broker's ACL is the
# first line of defence).
DEFAULT_FLOOD_RATE_PER_S = 200.0
DEFAULT_FLOOD_BURST = 20_000
# ... and up to this many BYTES (quarantine_cost: a bounded prefix of the message, its length and sha256, the
# detail): sustained 4 KiB/s is at most ~350 MB a day of a publisher's garbage; a burst absorbs an incident.
DEFAULT_QUARANTINE_BYTES_PER_S = 4096.0
DEFAULT_QUARANTINE_BURST_BYTES = 8 * 1024 * 1024
# Signature checks not paid for by a new authenticated reading, per meter topic: as many as the meter's own
# ingress bucket (limits.ingress_rate_per_s / ingress_burst by default). A verify costs ~45 us of one core: 1000/s
# sustained is ~5 % of a core per attacked topic, the burst ~0.5 s of CPU. Overall (all topics together), five
# times that: ~23 % of a core sustained, whatever the number of topics attacked.
DEFAULT_VERIFY_BUDGET_PER_S = 1000.0
DEFAULT_VERIFY_BUDGET_BURST = 10_000
GLOBAL_VERIFY_BUDGET_FACTOR = 5
MAX_TOPIC_BUCKETS = 100_000  # only registered meters' topics get one


@dataclass
class IngressLimit:
    """Per-meter token bucket of new authenticated readings."""

    rate_per_s: float = 1000.0
    burst: int = 10000
    buckets: dict[str, TokenBucket] = field(default_factory=dict)

    def available(self, meter_id: str, now_s: float) -> int:
        """Readings the meter may still bring now (nothing is taken)."""
        b = self.buckets.get(meter_id)
        if b is None:
            return self.burst
        b, _ = b.take(0, now_s, self.rate_per_s, self.burst)
        return int(b.tokens)

    def take(self, meter_id: str, now_s: float) -> bool:
        """One verified new reading: True if the meter's rate allows it (then it is taken)."""
        b = self.buckets.get(meter_id) or TokenBucket(float(self.burst), now_s)
        self.buckets[meter_id], ok = b.take(1, now_s, self.rate_per_s, self.burst)
        return ok


class VerifyBudget:
    """Signature checks that no new authenticated reading paid for, per meter topic and overall. Asked before
    verifying (`topic_available`, `overall_available`: nothing taken); `charge`d after, once per check that turned
    out unpaid. A charge may overdraw (a group admitted on what was left before the previous group was charged):
    the refill pays the debt back first."""

    def __init__(self, now_s: float, rate_per_s: float = DEFAULT_VERIFY_BUDGET_PER_S,
                 burst: int = DEFAULT_VERIFY_BUDGET_BURST) -> None:
        self.rate_per_s, self.burst = rate_per_s, burst
        self.overall_rate_per_s = rate_per_s * GLOBAL_VERIFY_BUDGET_FACTOR
        self.overall_burst = burst * GLOBAL_VERIFY_BUDGET_FACTOR
        self._topics: dict[str, TokenBucket] = {}
        self._overall = TokenBucket(float(self.overall_burst), now_s)

    def topic_available(self, meter_id: str, now_s: float) -> int:
        return max(0, int(self._topic(meter_id, now_s).tokens))

    def overall_available(self, now_s: float) -> int:
        return max(0, int(self._overall.take(0, now_s, self.overall_rate_per_s, self.overall_burst)[0].tokens))

    def charge(self, meter_id: str, now_s: float, n: int = 1) -> None:
        t = self._topic(meter_id, now_s)
        g = self._overall.take(0, now_s, self.overall_rate_per_s, self.overall_burst)[0]
        self._topics[meter_id] = TokenBucket(max(-float(self.burst), t.tokens - n), now_s)
        self._overall = TokenBucket(max(-float(self.overall_burst), g.tokens - n), now_s)
        if len(self._topics) > MAX_TOPIC_BUCKETS:  # refilled buckets need no entry
            self._topics = {m: b for m, b in self._topics.items() if self._refill(b, now_s).tokens < self.burst}

    def _topic(self, meter_id: str, now_s: float) -> TokenBucket:
        b = self._topics.get(meter_id)
        return TokenBucket(float(self.burst), now_s) if b is None else self._refill(b, now_s)

    def _refill(self, b: TokenBucket, now_s: float) -> TokenBucket:
        return b.take(0, now_s, self.rate_per_s, self.burst)[0]


class VerifyGate:
    """One group's admission to signature checks, per topic: while the topic's and the overall verify budgets are
    not spent, as many readings as the meter's rate may still pay for plus what the topic's budget still allows;
    the rest is refused unverified (verify_budget_exceeded)."""

    def __init__(self, ingress: IngressLimit, budget: VerifyBudget, now_s: float) -> None:
        self.ingress, self.budget, self.now_s = ingress, budget, now_s
        self._left: dict[str, int] = {}
        self._overall = budget.overall_available(now_s)

    def admit(self, meter_id: str) -> bool:
        left = self._left.get(meter_id)
        if left is None:
            unpaid = self.budget.topic_available(meter_id, self.now_s)
            left = self.ingress.available(meter_id, self.now_s) + unpaid if unpaid > 0 else 0
        if left > 0 and self._overall > 0:
            self._left[meter_id], self._overall = left - 1, self._overall - 1
            return True
        self._left[meter_id] = 0
        return False


class QuarantineBudget:
    """What unauthenticated rejections may write: rows and bytes per second (token buckets). Beyond it a
    rejection is only counted (metrics + the store's quarantine_dropped hourly counter)."""

    def __init__(self, bytes_per_s: float, burst_bytes: int, now_s: float) -> None:
        self.bytes_per_s, self.burst_bytes = bytes_per_s, burst_bytes
        self._rows = TokenBucket(float(DEFAULT_FLOOD_BURST), now_s)
        self._bytes = TokenBucket(float(burst_bytes), now_s)

    def allows(self, nbytes: int, now_s: float) -> bool:
        rows, ok_rows = self._rows.take(1, now_s, DEFAULT_FLOOD_RATE_PER_S, DEFAULT_FLOOD_BURST)
        size, ok_bytes = self._bytes.take(nbytes, now_s, self.bytes_per_s, self.burst_bytes)
        if ok_rows and ok_bytes:
            self._rows, self._bytes = rows, size
            return True
        return False
