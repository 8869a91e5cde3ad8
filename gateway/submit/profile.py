"""Where the submitter's time goes: cumulative milliseconds per phase of its cycles, logged as one JSON line.

Phases (gateway.submit.submitter): `wait` (between cycles: asleep until woken or the cycle interval),
`lease` (PostgreSQL submitter lease), `config` (OracleData read), `plan` (planner: chain states + store;
`plan_rpc` and `plan_save` are parts of it), `due` (outbox rows due, reconcile, oracle checks), `submit`
(the chain client: build, simulate, send, confirm), `record` (results into the outbox). The chain client's own
split (ms_states, ms_tables, ms_simulate, ms_send, ms_confirm) comes from its `stats`.
`python -m bench latency` reports the last line of each run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator

log = logging.getLogger("gateway.submit.submitter")

DEFAULT_PROFILE_LOG_S = 10.0  # one `submitter profile` line per this many seconds while cycles run


class CycleProfile:
    def __init__(self, log_every_s: float = DEFAULT_PROFILE_LOG_S) -> None:
        self.ms: dict[str, float] = {}
        self.cycles = 0
        self.woken = 0  # cycles started by a wake-up (an interval-closing reading committed), not the timer
        self.rows = 0  # submissions handed to the chain client
        self.log_every_s = log_every_s
        self._last_log = time.monotonic()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - t0) * 1000

    def as_dict(self, client_stats: dict[str, int] | None = None) -> dict[str, object]:
        doc: dict[str, object] = {"cycles": self.cycles, "woken": self.woken, "rows": self.rows,
                                  "ms": {k: round(v) for k, v in sorted(self.ms.items())}}
        if client_stats:
            doc["client"] = dict(sorted(client_stats.items()))
        return doc

    def maybe_log(self, client_stats: dict[str, int] | None = None, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_log >= self.log_every_s:
            self._last_log = now
            log.info("submitter profile: %s", json.dumps(self.as_dict(client_stats), sort_keys=True))
