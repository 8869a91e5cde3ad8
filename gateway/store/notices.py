"""Cross-host wake-up of the active submitter on PostgreSQL (LISTEN/NOTIFY).

An intake transaction that stored readings issues `NOTIFY gridmeter_readings` (PostgresStore.write_batch); the
server delivers it at that transaction's COMMIT to every session listening on the channel (several in one
transaction arrive as one). Each gateway of a fleet listens on a connection of its own and wakes its
submitter, so an interval closed by a reading that ANOTHER gateway received is planned and sent at once, not
after chain.submit_interval_s (a standby's submitter ignores wake-ups: it does not hold the lease). A notice
carries no data and losing one loses nothing but time: the submitter's timer still runs. The listener thread
never ends on an error: it logs it, waits and listens again on a new connection.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg

log = logging.getLogger(__name__)

CHANNEL = "gridmeter_readings"
NOTIFY_SQL = f"NOTIFY {CHANNEL}"
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
