"""Poll with a deadline instead of sleeping (style rule 13): the one polling loop, sync and async.

`cond` is polled until it returns something truthy (which is returned). `abort` is asked each round for a reason
to stop early (a process that exited); `detail` adds context (log tails) to the failure message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

POLL_S = 0.02
T = TypeVar("T")


def _failure(what: str, timeout_s: float, reason: str | None, detail: Callable[[], str] | None) -> AssertionError:
    head = f"{reason} while waiting for {what}" if reason else f"timed out after {timeout_s}s waiting for {what}"
    return AssertionError(head + (f"\n{detail()}" if detail is not None else ""))


def wait_for(cond: Callable[[], T], timeout_s: float = 10.0, what: str = "condition", *,
             abort: Callable[[], str | None] | None = None, detail: Callable[[], str] | None = None,
             poll_s: float = POLL_S) -> T:
    deadline = time.monotonic() + timeout_s
    while not (value := cond()):
        reason = abort() if abort is not None else None
        if reason or time.monotonic() > deadline:
            raise _failure(what, timeout_s, reason, detail)
        time.sleep(poll_s)
    return value


async def until(cond: Callable[[], T], timeout_s: float = 10.0, what: str = "condition", *,
                abort: Callable[[], str | None] | None = None, detail: Callable[[], str] | None = None,
                poll_s: float = POLL_S) -> T:
    deadline = time.monotonic() + timeout_s
    while not (value := cond()):
        reason = abort() if abort is not None else None
        if reason or time.monotonic() > deadline:
            raise _failure(what, timeout_s, reason, detail)
        await asyncio.sleep(poll_s)
    return value
