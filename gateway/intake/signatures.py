"""Ed25519 verification of a group's readings, in a pool of worker PROCESSES (`verify_pool`): PyNaCl releases
the GIL inside libsodium, but its Python wrapper (~10 us per call) does not, so threads contend with the intake
thread; processes scale with the cores. A small group is verified inline (the IPC would cost more than it saves);
a broken pool (a worker killed) is dropped and everything is verified inline from then on: slower, never wrong."""

from __future__ import annotations

import logging
import multiprocessing
from concurrent.futures import BrokenExecutor, Executor, Future, ProcessPoolExecutor

from gateway.intake.checks import verify_signatures

log = logging.getLogger(__name__)

# Readings per verify task (at least; sent as soon as the decoded messages reach it): a process-pool task
# costs ~0.2 ms of IPC in this process and more in the worker, a verify ~45 us; 500 (one full agent batch)
# keeps that near 1 % while a 4000-reading group still spreads over 8 workers.
DEFAULT_VERIFY_CHUNK = 500
DEFAULT_INLINE_MAX = 100  # a group with fewer signatures is verified inline: the IPC would cost more than it saves
Triple = tuple[bytes, bytes, bytes]  # (public key, signed payload, signature)


def verify_pool(workers: int) -> ProcessPoolExecutor:
    """Worker processes for signature checks ("spawn": safe with paho's threads; costs ~0.3 s once)."""
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    for f in [pool.submit(verify_signatures, []) for _ in range(workers)]:
        f.result()  # start the workers now, not on the first reading
    return pool


class Verifier:
    """The pool, shared by every group; `pool` is None once it broke (or when there never was one)."""

    def __init__(self, pool: Executor | None) -> None:
        self.pool = pool

    def submit(self, triples: list[Triple]) -> Future[list[bool]] | None:
        """One verify task; None = no pool (any more)."""
        if self.pool is None:
            return None
        try:
            return self.pool.submit(verify_signatures, triples)
        except BrokenExecutor:
            self.broken()
            return None

    def broken(self) -> None:
        log.error("signature worker pool broke (a worker died); verifying inline from now on")
        self.pool = None


class Verifying:
    """One group's checks, started chunk by chunk as its messages are decoded (`add`); `results` waits for them
    (in the order added). Without a pool, or for a small group, they are verified inline in `results`."""

    def __init__(self, verifier: Verifier) -> None:
        self.verifier = verifier
        self.triples: list[Triple] = []
        self.futures: list[Future[list[bool]]] | None = []  # None: verify the whole group inline
        self._sent = 0

    def add(self, triple: Triple) -> None:
        self.triples.append(triple)
        if self.futures is not None and len(self.triples) - self._sent >= DEFAULT_VERIFY_CHUNK:
            self._send()

    def close(self) -> None:
        """The group is complete: send the rest; a small group alone is verified inline (in `results`)."""
        if self.futures is not None and self._sent < len(self.triples):
            if self.futures or len(self.triples) >= DEFAULT_INLINE_MAX:
                self._send()
            else:
                self.futures = None
        if not self.futures:
            self.futures = None

    def _send(self) -> None:
        f = self.verifier.submit(self.triples[self._sent:])
        if f is None or self.futures is None:
            self.futures = None
        else:
            self.futures.append(f)
        self._sent = len(self.triples)

    def results(self) -> list[bool]:
        if self.futures is not None:
            try:
                return [ok for f in self.futures for ok in f.result()]
            except BrokenExecutor:
                self.verifier.broken()
        return verify_signatures(self.triples)
