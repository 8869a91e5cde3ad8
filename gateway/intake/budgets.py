"""What a publisher may make the MQTT intake do: the per-meter ingress token bucket (readings per second), and the
quarantine budget (rows and bytes per second) of UNAUTHENTICATED rejections, beyond which they are only counted.
Token buckets (gateway.intake.checks.TokenBucket); the clock is the caller's."""

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


@dataclass
class IngressLimit:
    rate_per_s: float = 1000.0
    burst: int = 10000
    buckets: dict[str, TokenBucket] = field(default_factory=dict)

    def allow(self, meter_id: str, now_s: float, n: int = 1) -> int:
        """How many of `n` readings arriving now may pass (the first ones; the same as asking one at a time)."""
        b = self.buckets.get(meter_id) or TokenBucket(float(self.burst), now_s)
        b, _ = b.take(0, now_s, self.rate_per_s, self.burst)  # refill
        passed = min(n, int(b.tokens))
        self.buckets[meter_id], _ = b.take(passed, now_s, self.rate_per_s, self.burst)
        return passed


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
