"""Submitting interval readings to the GridTokenX oracle over any Solana JSON-RPC URL (solana-py + solders).

The gateway's only chain client (landing.py sends and confirms its transactions). It reaches the local
test chain exactly as it reaches devnet.

How a batch of submissions becomes transactions:
- Each submission is one `submit_meter_reading` instruction (4 accounts: oracle_data, meter_state, authority,
  system program). Packed into v0 transactions whose non-signer accounts come from address lookup tables that
  this client creates and extends as meters appear (oracle_data, the system program and each MeterState PDA:
  one index byte per account instead of 32 bytes), as many as fit in the 1232-byte packet limit.
- Every transaction starts with SetComputeUnitLimit = the units its simulation consumed + 10% + 1,000 (the
  fixed estimates only when simulation fails) + a per-transaction nonce, so a re-signed or repeated batch is
  never byte-identical (a validator silently drops duplicates). A transaction that still runs out of compute
  (ProgramFailedToComplete / ComputationalBudgetExceeded, which name an instruction but are the transaction's
  budget) is resent with its limit doubled, up to the 1.4M cap; at the cap it is split; a single submission
  that does not fit is `retry`.
- Transactions in flight at the same time never share a meter (ordering per meter is kept).
- A transaction that fails (preflight or on chain) names the failing instruction; that submission is rejected
  with the oracle's error name, the rest are checked with simulateTransaction until clean and resubmitted.
- Blockhash expiry: after lastValidBlockHeight passes without the signature landing (checked once more), the
  batch is re-signed with a fresh blockhash and a new nonce.

OracleClient (reads, submit, compute budget) lives here; its parts live beside it in gateway/oracle/: tables
(address lookup tables), submission, instructions, packing, landing, errors and authority_key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import struct
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from solana.exceptions import SolanaRpcException
from solana.rpc.async_api import AsyncClient
from solana.rpc.commitment import Commitment, Confirmed
from solana.rpc.core import RPCException
from solders.compute_budget import set_compute_unit_limit, set_compute_unit_price
from solders.hash import Hash
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.message import MessageV0
from solders.pubkey import Pubkey
from solders.system_program import ID as SYSTEM_PROGRAM_ID
from solders.sysvar import CLOCK as CLOCK_SYSVAR
from solders.transaction import VersionedTransaction

from gateway.oracle.authority_key import load_authority_keypair
from gateway.oracle.errors import OracleClientError, TxFailure, parse_tx_error
from gateway.oracle.instructions import (
    DEFAULT_CU_FIRST_READING,
    DEFAULT_CU_NONCE_RANGE,
    DEFAULT_CU_READING,
    MAX_CU_PER_TX,
    estimate_compute_units,
    meter_pda,
    submit_instruction,
)
from gateway.oracle.landing import Landing, TxBuilder, land
from gateway.oracle.packing import PACKET_DATA_SIZE, disjoint_wave, pack_submits
from gateway.oracle.submission import Submission, SubmitResult, rejected_before_sending, settled_by_chain_state
from gateway.oracle.tables import LookupTables, Table
from oracle_interface import layout as ol
from oracle_interface.addresses import oracle_data_pda

log = logging.getLogger(__name__)

CLOCK_SYSVAR_SIZE = 40  # slot, epoch_start_timestamp, epoch, leader_schedule_epoch, unix_timestamp
CLOCK_UNIX_TIMESTAMP_OFFSET = 32
DEFAULT_POLL_S = 0.25  # signature-status polling interval (a slot is ~0.4 s)
DEFAULT_RPC_TIMEOUT_S = 30.0
MAX_ACCOUNTS_PER_REQUEST = 100  # getMultipleAccounts limit
# Compute budget from simulation: each transaction is simulated (at the highest limit) before it is signed, and
# its limit is the units it consumed plus this margin. The fixed estimates (instructions.DEFAULT_CU_*) are used
# only when a simulation fails (sending then decides) or when simulate_budget is off.
DEFAULT_CU_MARGIN_PCT = 10
DEFAULT_CU_MARGIN_UNITS = 1_000
CU_LIMIT_CAP = MAX_CU_PER_TX - DEFAULT_CU_NONCE_RANGE  # the nonce is added on top
OUT_OF_COMPUTE = frozenset({"ProgramFailedToComplete", "ComputationalBudgetExceeded"})


def rpc_failure_reason(exc: BaseException) -> str | None:
    """"rpc_unreachable" (no answer: connection refused, timeout), "rpc_error" (the RPC answered with an error, or
    the oracle cannot be used) or None (not an RPC failure). For the chain-health metrics."""
    for e in (exc, exc.__cause__):
        if isinstance(e, SolanaRpcException | OSError | TimeoutError):
            return "rpc_unreachable"
    if isinstance(exc, RPCException | OracleClientError):
        return "rpc_error"
    return None


class OracleClient(LookupTables):
    def __init__(
        self,
        rpc_url: str,
        program_id: str,
        authority: Keypair,
        *,
        commitment: Commitment = Confirmed,
        lookup_tables: Sequence[str] = (),
        error_table: dict[int, str] | None = None,
        cu_first_reading: int = DEFAULT_CU_FIRST_READING,
        cu_reading: int = DEFAULT_CU_READING,
        cu_price_micro_lamports: int = 0,
        poll_s: float = DEFAULT_POLL_S,
        rpc_timeout_s: float = DEFAULT_RPC_TIMEOUT_S,
        simulate_budget: bool = True,
    ) -> None:
        self.rpc_url = rpc_url
        self.program_id = Pubkey.from_string(program_id)
        self.authority = authority
        self._payer = authority.pubkey()  # derived once: Keypair.pubkey() costs ~50 us, per instruction it added up
        self.commitment: Commitment = commitment
        self.error_table = error_table
        self.cu_first_reading = cu_first_reading
        self.cu_reading = cu_reading
        self.cu_price = cu_price_micro_lamports
        self.simulate_budget = simulate_budget
        self._cu_limit: dict[tuple[str, ...], int] = {}  # batch (submission keys) -> its limit, within one submit
        # meter -> units its submit_meter_reading consumed in a simulation once its MeterState existed (the program's
        # log line per instruction): a batch of such meters gets sum + margin without simulating (_budget_from_known)
        self._meter_cu: dict[str, int] = {}
        self._consumed_re = re.compile(rf"Program {self.program_id} consumed (\d+) of \d+ compute units")
        self.poll_s = poll_s
        self._rpc = AsyncClient(rpc_url, commitment=commitment, timeout=rpc_timeout_s)
        self._oracle_data = oracle_data_pda(self.program_id)[0]
        self._table_seed = [Pubkey.from_string(t) for t in lookup_tables]
        self._tables: list[Table] | None = None
        self._ready_slot: dict[Pubkey, int] = {}  # address -> first slot it resolves from its table
        self._existing: set[str] = set()  # meters known to have a MeterState
        self._nonce = random.randrange(DEFAULT_CU_NONCE_RANGE)
        self._table_lock = asyncio.Lock()
        self._submit_lock = asyncio.Lock()  # one submit at a time: per-meter order across transactions
        self._used_recent_slots: set[int] = set()
        self.stats = {"transactions": 0, "failed_transactions": 0, "resigned": 0, "simulations": 0,
                      "budget_simulations": 0, "budget_raises": 0}

    @classmethod
    def from_key_file(cls, rpc_url: str, program_id: str, key_file: str | Path, **kw: Any) -> OracleClient:
        return cls(rpc_url, program_id, load_authority_keypair(key_file), **kw)

    async def close(self) -> None:
        await self._rpc.close()

    async def __aenter__(self) -> OracleClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    # ---- reads --------------------------------------------------------------------------------------------
    async def fetch_config(self) -> ol.OracleConfig:
        try:
            resp = await self._rpc.get_account_info(self._oracle_data, encoding="base64")
        except (SolanaRpcException, RPCException) as e:
            raise OracleClientError(f"{self.rpc_url}: cannot read oracle_data {self._oracle_data}: {e}") from e
        if resp.value is None:
            raise OracleClientError(f"oracle {self.program_id} not initialized: no account {self._oracle_data}")
        if resp.value.owner != self.program_id:
            raise OracleClientError(f"{self._oracle_data} is owned by {resp.value.owner}, not {self.program_id}")
        try:
            return ol.decode_oracle_data(bytes(resp.value.data))
        except ol.LayoutError as e:
            raise OracleClientError(f"oracle_data {self._oracle_data}: {e}") from e

    async def fetch_chain_time(self) -> int:
        """The cluster's clock (Clock sysvar unix_timestamp, seconds) at the client's commitment: what the oracle
        compares reading_timestamp with (FutureReading). A real cluster's clock drifts from wall time."""
        try:
            resp = await self._rpc.get_account_info(CLOCK_SYSVAR, encoding="base64")
        except (SolanaRpcException, RPCException) as e:
            raise OracleClientError(f"{self.rpc_url}: cannot read the Clock sysvar: {e}") from e
        if resp.value is None or len(resp.value.data) < CLOCK_SYSVAR_SIZE:
            raise OracleClientError(f"{self.rpc_url}: Clock sysvar missing or short")
        return int(struct.unpack_from("<q", bytes(resp.value.data), CLOCK_UNIX_TIMESTAMP_OFFSET)[0])

    async def fetch_meter_states(self, meter_ids: Sequence[str]) -> dict[str, ol.MeterState | None]:
        out: dict[str, ol.MeterState | None] = {}
        ids = [m for m in dict.fromkeys(meter_ids) if len(m.encode("utf-8")) <= ol.MAX_METER_ID_SEED]
        for m in meter_ids:
            out[m] = None
        chunks = [ids[i : i + MAX_ACCOUNTS_PER_REQUEST] for i in range(0, len(ids), MAX_ACCOUNTS_PER_REQUEST)]

        async def one(chunk: list[str]) -> Any:
            keys = [meter_pda(self.program_id, m)[0] for m in chunk]
            try:
                return (await self._rpc.get_multiple_accounts(keys, encoding="base64")).value
            except (SolanaRpcException, RPCException) as e:
                raise OracleClientError(f"{self.rpc_url}: getMultipleAccounts failed: {e}") from e

        # the requests are in flight together (a 1,000-meter cycle: 10 requests, one round trip's wait)
        answers = await asyncio.gather(*(one(c) for c in chunks))
        for chunk, value in zip(chunks, answers, strict=True):
            for m, acc in zip(chunk, value, strict=True):
                if acc is None or acc.owner != self.program_id:
                    continue
                try:
                    out[m] = ol.decode_meter_state(bytes(acc.data))
                except ol.LayoutError as e:
                    log.error("MeterState of %s unreadable: %s", m, e)
                    continue
                self._existing.add(m)
        return out

    # ---- submit -------------------------------------------------------------------------------------------
    async def submit(self, subs: Sequence[Submission]) -> list[SubmitResult]:
        """One result per submission, same order.

        confirmed: on chain at the client's commitment (signature None if it was already on chain before this
        call: same timestamp and values as the meter's latest state). rejected: the oracle refused it (error =
        the oracle's error name, code = its custom code) or it can never be valid; do not resend as is.
        retry: not known to be on chain (RPC down, blockhash expiries, non-oracle errors); reconcile with
        fetch_meter_states and resend later. A submission older than the meter's latest on-chain reading is
        rejected as OutdatedReading without sending (the chain would refuse it).
        """
        results: dict[int, SubmitResult] = {}
        todo: list[int] = []
        for i, s in enumerate(subs):
            rejected = rejected_before_sending(s, self.error_table)
            if rejected is None:
                todo.append(i)
            else:
                results[i] = rejected
        if todo:
            try:
                async with self._submit_lock:
                    self._cu_limit.clear()
                    await self._submit(subs, todo, results)
            except (OracleClientError, SolanaRpcException, RPCException, OSError, ValueError) as e:
                log.error("submit: %s: %s", type(e).__name__, e)
                for i in todo:
                    results.setdefault(i, SubmitResult(subs[i].key, "retry", None, f"RpcError: {e}"))
        return [results[i] for i in range(len(subs))]

    async def _submit(self, subs: Sequence[Submission], todo: list[int], results: dict[int, SubmitResult]) -> None:
        # Chain state first: idempotent resubmission and which meters still need their account created.
        with self._timed("ms_states"):
            states = await self.fetch_meter_states([subs[i].meter_id for i in todo])
        pending: list[int] = []
        for i in todo:
            settled = settled_by_chain_state(subs[i], states.get(subs[i].meter_id), self.error_table)
            if settled is None:
                pending.append(i)
            else:
                results[i] = settled
        if not pending:
            return
        with self._timed("ms_tables"):
            await self._ensure_tables([meter_pda(self.program_id, subs[i].meter_id)[0] for i in pending])
        batches = self._pack(subs, pending)
        while batches:
            wave, batches = disjoint_wave(subs, batches)
            if self.simulate_budget:
                with self._timed("ms_simulate"):
                    await asyncio.gather(*(self._budget_from_simulation(subs, b) for b in wave
                                           if not self._budget_from_known(subs, b)))
            landings = await self._land([self._builder(subs, b) for b in wave])
            for batch, landing in zip(wave, landings, strict=True):
                batches[:0] = await self._settle(subs, batch, landing, results)

    @contextlib.contextmanager
    def _timed(self, name: str) -> Iterator[None]:  # ms per part of submit, in stats (the submitter's profile)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.stats[name] = self.stats.get(name, 0) + round((time.perf_counter() - t0) * 1000)

    def _pack(self, subs: Sequence[Submission], idx: list[int]) -> list[list[int]]:
        """Greedy: consecutive submissions per transaction while it fits 1232 bytes (wire-format arithmetic,
        then each compiled transaction is checked once)."""
        where: dict[Pubkey, int] = {}  # address -> first table holding it (what try_compile picks)
        for n, t in enumerate(self._tables or []):
            for a in t.addresses:
                where.setdefault(a, n)
        items = [(meter_pda(self.program_id, subs[i].meter_id)[0], subs[i].meter_id) for i in idx]
        packed = pack_submits(items, where, (self._oracle_data, SYSTEM_PROGRAM_ID), cu_price=bool(self.cu_price))
        out: list[list[int]] = []
        for b in ([idx[p] for p in positions] for positions in packed):
            # the arithmetic is exact; the compiled transaction has the last word
            while len(b) > 1 and self._tx_size(subs, b) > PACKET_DATA_SIZE:
                log.error("packing arithmetic disagrees with the compiled size: splitting a transaction")
                out.append(b[:-1])
                b = b[-1:]
            out.append(b)
        return out

    def _tx_size(self, subs: Sequence[Submission], batch: list[int]) -> int:
        return len(bytes(self._build(subs, batch, Hash.default())))

    def _batch_key(self, subs: Sequence[Submission], batch: list[int]) -> tuple[str, ...]:
        return tuple(subs[i].key for i in batch)

    def _cu_for(self, subs: Sequence[Submission], batch: list[int]) -> int:
        """The batch's limit from simulation (or raised after running out), else the fixed estimate."""
        known = self._cu_limit.get(self._batch_key(subs, batch))
        if known is not None:
            return known
        return estimate_compute_units(self.program_id, [subs[i] for i in batch], self._existing,
                                      self.cu_first_reading, self.cu_reading)

    def _instructions(self, subs: Sequence[Submission], batch: list[int], cu: int | None = None) -> list[Instruction]:
        self._nonce = (self._nonce + 1) % DEFAULT_CU_NONCE_RANGE
        cu = (self._cu_for(subs, batch) if cu is None else cu) + self._nonce
        ixs = [set_compute_unit_limit(cu)]
        if self.cu_price:
            ixs.append(set_compute_unit_price(self.cu_price))
        ixs += [submit_instruction(self.program_id, self._payer, subs[i]) for i in batch]
        return ixs

    def _build(self, subs: Sequence[Submission], batch: list[int], blockhash: Hash,
               cu: int | None = None) -> VersionedTransaction:
        ixs = self._instructions(subs, batch, cu)
        msg = MessageV0.try_compile(self._payer, ixs, [t.account() for t in self._tables or []],
                                    blockhash)
        return VersionedTransaction(msg, [self.authority])

    def _builder(self, subs: Sequence[Submission], batch: list[int]) -> TxBuilder:
        return lambda bh: self._build(subs, batch, bh)

    async def _settle(self, subs: Sequence[Submission], batch: list[int], landing: Landing,
                      results: dict[int, SubmitResult]) -> list[list[int]]:
        """Record results for a landed/refused batch; returns the batches to send again (may be none)."""
        if landing.unknown is not None:
            for i in batch:
                results[i] = SubmitResult(subs[i].key, "retry", landing.signature, landing.unknown)
            return []
        if landing.landed and landing.err is None:
            for i in batch:
                results[i] = SubmitResult(subs[i].key, "confirmed", landing.signature, None)
                self._existing.add(subs[i].meter_id)
            return []
        self.stats["failed_transactions"] += 1
        failure = parse_tx_error(landing.err, self.error_table)
        if failure.name in OUT_OF_COMPUTE:
            return self._raise_budget(subs, batch, failure, results)
        rest = await self._drop_failing(subs, batch, failure, results)
        rest = await self._isolate(subs, rest, results) if rest else []
        return [rest] if rest else []

    def _budget_from_known(self, subs: Sequence[Submission], batch: list[int]) -> bool:
        """The batch's limit from its meters' measured costs, if every one is known (see _meter_cu)."""
        key = self._batch_key(subs, batch)
        if key in self._cu_limit:
            return False  # raised after running out of compute: simulate (never below the raised limit)
        costs = [self._meter_cu.get(subs[i].meter_id) for i in batch]
        if any(c is None or subs[i].meter_id not in self._existing for c, i in zip(costs, batch, strict=True)):
            return False
        units = sum(c or 0 for c in costs)
        self._cu_limit[key] = min(CU_LIMIT_CAP, units + units * DEFAULT_CU_MARGIN_PCT // 100 + DEFAULT_CU_MARGIN_UNITS)
        self.stats["budget_known"] = self.stats.get("budget_known", 0) + 1
        return True

    async def _budget_from_simulation(self, subs: Sequence[Submission], batch: list[int]) -> None:
        """Simulate the batch at the highest limit; its limit becomes unitsConsumed plus the margin (never below a
        limit already raised for it). A failing simulation leaves the estimate: sending decides."""
        tx = self._build(subs, batch, Hash.default(), cu=CU_LIMIT_CAP)
        existed = [subs[i].meter_id in self._existing for i in batch]
        self.stats["budget_simulations"] += 1
        resp = await self._rpc.simulate_transaction(tx, replace_recent_blockhash=True)
        units = resp.value.units_consumed
        if resp.value.err is not None or not units:
            return
        per_ix = [int(m.group(1)) for line in resp.value.logs or [] if (m := self._consumed_re.search(line))]
        if len(per_ix) == len(batch):  # one line per instruction, in order (the oracle makes no call to itself)
            for i, was, cost in zip(batch, existed, per_ix, strict=True):
                if was:
                    self._meter_cu[subs[i].meter_id] = cost
        cu = min(CU_LIMIT_CAP, units + units * DEFAULT_CU_MARGIN_PCT // 100 + DEFAULT_CU_MARGIN_UNITS)
        key = self._batch_key(subs, batch)
        self._cu_limit[key] = max(cu, self._cu_limit.get(key, 0))

    def _raise_budget(self, subs: Sequence[Submission], batch: list[int], f: TxFailure,
                      results: dict[int, SubmitResult]) -> list[list[int]]:
        """A transaction ran out of compute (the error names an instruction, but the budget is the transaction's):
        resend the batch with its limit doubled, up to the per-transaction cap; at the cap a batch is split and
        a single submission that still does not fit is `retry` with the error (never resent in a loop)."""
        key = self._batch_key(subs, batch)
        had = self._cu_for(subs, batch)
        self.stats["budget_raises"] += 1
        for i in batch:  # measured costs were too low (a changed program?): measure again
            self._meter_cu.pop(subs[i].meter_id, None)
        if not self.simulate_budget:  # the estimates were too low: later batches start higher too
            self.cu_first_reading = min(CU_LIMIT_CAP, self.cu_first_reading * 2)
            self.cu_reading = min(CU_LIMIT_CAP, self.cu_reading * 2)
        if had < CU_LIMIT_CAP:
            self._cu_limit[key] = min(CU_LIMIT_CAP, had * 2)
            log.warning("transaction of %d submissions ran out of compute at %d CU (%s): resending at %d CU",
                        len(batch), had, f.name, self._cu_limit[key])
            return [batch]
        if len(batch) > 1:
            half = len(batch) // 2
            log.warning("%d submissions do not fit %d CU (%s): splitting the transaction", len(batch), had, f.name)
            parts = [batch[:half], batch[half:]]
            for part in parts:
                self._cu_limit[self._batch_key(subs, part)] = CU_LIMIT_CAP
            return parts
        log.error("submission %s does not fit the compute limit of a transaction (%d CU): %s", subs[batch[0]].key,
                  had, f.name)
        results[batch[0]] = SubmitResult(subs[batch[0]].key, "retry", None, f.name, f.code)
        return []

    def _first_submit_index(self) -> int:
        return 2 if self.cu_price else 1

    async def _drop_failing(self, subs: Sequence[Submission], batch: list[int], f: TxFailure,
                            results: dict[int, SubmitResult]) -> list[int]:
        pos = None if f.index is None else f.index - self._first_submit_index()
        if pos is None or not 0 <= pos < len(batch):
            log.warning("transaction failed without a submit instruction to blame: %s", f.name)
            if f.name in ("ComputationalBudgetExceeded", "ProgramFailedToComplete"):
                self.cu_first_reading, self.cu_reading = self.cu_first_reading * 2, self.cu_reading * 2
            for i in batch:
                results[i] = SubmitResult(subs[i].key, "retry", None, f.name, f.code)
            return []
        bad = batch[pos]
        status: Literal["rejected", "retry"] = "rejected" if f.is_oracle_rejection else "retry"
        log.warning("submission %s rejected by the oracle: %s (%s)", subs[bad].key, f.name, f.code)
        results[bad] = SubmitResult(subs[bad].key, status, None, f.name, f.code)
        return [i for i in batch if i != bad]

    async def _isolate(self, subs: Sequence[Submission], batch: list[int],
                       results: dict[int, SubmitResult]) -> list[int]:
        """Simulate the remaining batch, dropping failing instructions one at a time, until it is clean."""
        while batch:
            tx = self._build(subs, batch, Hash.default())
            self.stats["simulations"] += 1
            resp = await self._rpc.simulate_transaction(tx, replace_recent_blockhash=True)
            if resp.value.err is None:
                return batch
            f = parse_tx_error(resp.value.err, self.error_table)
            if f.index is None:
                return batch  # not an instruction failure (e.g. account in use): let sending decide
            before = len(batch)
            batch = await self._drop_failing(subs, batch, f, results)
            if len(batch) >= before:
                return batch
        return batch

    # ---- getting transactions on chain --------------------------------------------------------------------
    async def _land(self, builders: list[TxBuilder]) -> list[Landing]:
        """Sign, send and confirm transactions concurrently, re-signing after blockhash expiry."""
        return await land(self._rpc, builders, commitment=self.commitment, poll_s=self.poll_s, stats=self.stats)
