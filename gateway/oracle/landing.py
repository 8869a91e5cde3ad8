"""Getting signed transactions on chain: sign with a fresh blockhash, send (with preflight), poll signature
statuses until the commitment is reached or lastValidBlockHeight passes (then check once more), and re-sign
what did not land, up to DEFAULT_MAX_SIGNINGS times. Transactions of one call are in flight together."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from solana.exceptions import SolanaRpcException
from solana.rpc.async_api import AsyncClient
from solana.rpc.commitment import Commitment
from solana.rpc.core import RPCException
from solana.rpc.models import TxOpts
from solders.hash import Hash
from solders.rpc.responses import SendTransactionPreflightFailureMessage
from solders.signature import Signature
from solders.transaction import VersionedTransaction

log = logging.getLogger(__name__)

DEFAULT_MAX_SIGNINGS = 4  # blockhash expiries tolerated per batch before reporting "retry"
MAX_SIGNATURES_PER_REQUEST = 256  # getSignatureStatuses limit

TxBuilder = Callable[[Hash], VersionedTransaction]


@dataclass
class Landing:
    """Outcome of getting one batch on chain: landed (slot, err), preflight-refused (err) or unknown."""

    signature: str | None
    landed: bool
    err: Any = None
    unknown: str | None = None  # why the outcome is unknown (RPC errors, expiry limit)


async def land(rpc: AsyncClient, builders: list[TxBuilder], *, commitment: Commitment, poll_s: float,
               stats: dict[str, int]) -> list[Landing]:
    """Sign, send and confirm transactions concurrently, re-signing after blockhash expiry.

    stats["transactions"] counts sends, stats["resigned"] re-signings."""
    out: list[Landing | None] = [None] * len(builders)
    waiting = list(range(len(builders)))
    for _attempt in range(DEFAULT_MAX_SIGNINGS):
        if not waiting:
            break
        t0 = time.perf_counter()
        bh_resp = await rpc.get_latest_blockhash(commitment)
        blockhash, last_valid = bh_resp.value.blockhash, bh_resp.value.last_valid_block_height
        sent = await _send(rpc, builders, waiting, blockhash, out, commitment, stats)
        t1 = time.perf_counter()
        statuses = await _await_statuses(rpc, sent, last_valid, commitment, poll_s)
        stats["ms_send"] = stats.get("ms_send", 0) + round((t1 - t0) * 1000)
        stats["ms_confirm"] = stats.get("ms_confirm", 0) + round((time.perf_counter() - t1) * 1000)
        for k, sig in sent.items():
            st = statuses.get(k)
            if st is not None:
                out[k] = Landing(str(sig), True, st.err)
        waiting = [k for k in waiting if out[k] is None]
        if waiting:
            stats["resigned"] += len(waiting)
            log.warning("%d transaction(s) not landed before blockhash expiry: re-signing", len(waiting))
    return [o if o is not None else Landing(None, False, unknown="BlockhashExpired: not landed after "
                                            f"{DEFAULT_MAX_SIGNINGS} signings") for o in out]


async def _send(rpc: AsyncClient, builders: list[TxBuilder], keys: list[int], blockhash: Hash,
                out: list[Landing | None], commitment: Commitment, stats: dict[str, int]) -> dict[int, Signature]:
    """Sign and send builders[k] for each k in keys; returns the ones whose status decides (refusals go to out[k])."""
    sent: dict[int, Signature] = {}

    async def one(k: int, tx: VersionedTransaction) -> None:
        try:
            await rpc.send_raw_transaction(bytes(tx), TxOpts(skip_preflight=False, preflight_commitment=commitment))
            stats["transactions"] += 1
            sent[k] = tx.signatures[0]
        except RPCException as e:
            err = e.args[0] if e.args else None
            if isinstance(err, SendTransactionPreflightFailureMessage):
                sim_err = err.data.err
                if sim_err is not None and "BlockhashNotFound" not in str(sim_err):
                    out[k] = Landing(None, False, sim_err)  # refused by simulation
                return  # blockhash expired between fetch and send: re-sign next attempt
            out[k] = Landing(str(tx.signatures[0]), False, unknown=f"RpcError: {err}")
        except SolanaRpcException as e:
            # transport error: it may or may not have reached the node; its status (or the blockhash
            # expiring without it) decides, like any other sent transaction
            log.warning("sendTransaction %s: %s", tx.signatures[0], e)
            sent[k] = tx.signatures[0]

    # The transactions of one call share no meter (packing.disjoint_wave): their order does not matter, so they
    # are in flight together rather than one round trip after another.
    await asyncio.gather(*(one(k, builders[k](blockhash)) for k in keys))
    return {k: sent[k] for k in keys if k in sent}


async def _await_statuses(rpc: AsyncClient, sent: dict[int, Signature], last_valid: int, commitment: Commitment,
                          poll_s: float) -> dict[int, Any]:
    """Poll until every signature reached the commitment or the blockhash expired (then check once more)."""
    found: dict[int, Any] = {}
    rank = {"processed": 0, "confirmed": 1, "finalized": 2}[str(commitment)]
    expired = False
    while len(found) < len(sent):
        keys = [k for k in sent if k not in found]
        for j in range(0, len(keys), MAX_SIGNATURES_PER_REQUEST):
            chunk = keys[j : j + MAX_SIGNATURES_PER_REQUEST]
            resp = await rpc.get_signature_statuses([sent[k] for k in chunk])
            for k, st in zip(chunk, resp.value, strict=True):
                if st is not None and _status_rank(st) >= rank:
                    found[k] = st
        if expired or len(found) == len(sent):
            break
        height = (await rpc.get_block_height(commitment)).value
        expired = height > last_valid  # one more status check after expiry, then give up on them
        if not expired:
            await asyncio.sleep(poll_s)
    return found


def _status_rank(st: Any) -> int:
    cs = st.confirmation_status
    if cs is None:
        return 2  # a rooted transaction reports no confirmation status
    return {"Processed": 0, "Confirmed": 1, "Finalized": 2}.get(str(cs).split(".")[-1], 0)


__all__ = ["DEFAULT_MAX_SIGNINGS", "Landing", "TxBuilder", "land"]
