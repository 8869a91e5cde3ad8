"""What an operator sees of a `gridmeter gateway` command besides its data: one-line errors with exit code 2,
UTC times, ages, and text from untrusted sources escaped so it cannot drive the terminal."""

from __future__ import annotations

import sys
from datetime import UTC, datetime


def fail(msg: str) -> int:
    print(f"gridmeter gateway: {msg}", file=sys.stderr)
    return 2


def ts(ms: int | None) -> str:
    return "-" if ms is None else datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def age(seconds: float | None) -> str:
    from gateway.health import age_text

    return "-" if seconds is None else age_text(int(seconds * 1000))


def printable(text: str) -> str:
    """Quarantined text may come from anyone (a claimed meter id, a topic): control characters are shown
    escaped, so they cannot drive the operator's terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
