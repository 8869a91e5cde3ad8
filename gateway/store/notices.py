"""Cross-host wake-up of the active submitter on PostgreSQL (LISTEN/NOTIFY).

After its intake committed and acked a batch, a gateway sends a notice on the channel `gridmeter_readings`
(ReadingNotifier: its own autocommit connection, at most one notice per DEFAULT_MIN_GAP_S). Each gateway
listens on a connection of its own (ReadingNotices) and wakes its submitter, so an interval closed by a reading
that ANOTHER gateway received is planned and sent at once, not after chain.submit_interval_s (a standby's
submitter ignores wake-ups: it does not hold the lease). A notice carries no data; losing one loses nothing
but time (the submitter's timer still runs). Neither side ever ends on an error: it is logged and retried.
The notice is NOT sent inside the intake's transaction: PostgreSQL serializes the commits of notifying
transactions, which made two gateways' intakes wait for each other (measured: 2 gateways x0.5-0.8 of one).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import psycopg

log = logging.getLogger(__name__)

CHANNEL = "gridmeter_readings"
DEFAULT_MIN_GAP_S = 0.05  # at most 20 notices a second per gateway (one cycle of the submitter is longer)
DEFAULT_POLL_S = 1.0  # how often the thread looks at its stop flag while no notice comes
DEFAULT_RETRY_S = 2.0  # wait before listening again after a lost connection


class ReadingNotices:
    def __init__(self, dsn: str, on_notice: Callable[[], None]) -> None:
        self.dsn, self.on_notice = dsn, on_notice
        self.received = 0
        self._stop = threading.Event()
        self._listening = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pg-reading-notices", daemon=True)

    def start(self) -> ReadingNotices:
        self._thread.start()
        return self

    def wait_listening(self, timeout_s: float) -> bool:
        return self._listening.wait(timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen()
            except Exception as exc:  # connection lost, server restarting: wake-ups pause, the timer goes on
                self._listening.clear()
                log.warning("submitter wake-ups from other gateways paused (%s: %s); listening again in %.0f s",
                            type(exc).__name__, str(exc).strip(), DEFAULT_RETRY_S)
                self._stop.wait(DEFAULT_RETRY_S)

    def _listen(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5, keepalives=1, keepalives_idle=5,
                             keepalives_interval=2, keepalives_count=3) as conn:
            conn.execute(f"LISTEN {CHANNEL}")
            self._listening.set()
            while not self._stop.is_set():
                for _notice in conn.notifies(timeout=DEFAULT_POLL_S, stop_after=1):
                    self.received += 1
                    self.on_notice()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(DEFAULT_POLL_S * 5)


class ReadingNotifier:
    """notify(): called by the intake thread after each committed batch with readings (rate-limited)."""

    def __init__(self, dsn: str, min_gap_s: float = DEFAULT_MIN_GAP_S) -> None:
        self.dsn, self.min_gap_s = dsn, min_gap_s
        self.sent = 0
        self._conn: psycopg.Connection[object] | None = None
        self._last = float("-inf")
        self._failed_at = float("-inf")

    def notify(self) -> None:
        now = time.monotonic()
        if now - self._last < self.min_gap_s or now - self._failed_at < DEFAULT_RETRY_S:
            return
        self._last = now
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
            self._conn.execute(f"NOTIFY {CHANNEL}")
            self.sent += 1
        except psycopg.Error as exc:  # the other gateways' submitters wait for their timer meanwhile
            self._failed_at = now
            log.warning("cannot notify the other gateways of committed readings (%s); retrying in %.0f s",
                        str(exc).strip(), DEFAULT_RETRY_S)
            self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None
