"""What the chain says about this agent's meters: read-only Solana JSON-RPC (getMultipleAccounts), no key.

The household page shows each meter's on-chain totals and its last confirmed submission beside the register
movement, so a household sees its energy arrived. Only reads: the agent never signs or sends a transaction.

The oracle program keeps one MeterState account per meter at the PDA ["meter", meter_id]; its address and its
bytes come from oracle_interface (the one description of the oracle's interface, shared with the gateway's
chain client and the local chain), reduced here to what the household page shows.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp

from oracle_interface import layout
from oracle_interface.addresses import meter_state_pda
from oracle_interface.instructions import program_key

log = logging.getLogger(__name__)

# One getMultipleAccounts per refresh; a public RPC endpoint rate-limits far above one call a minute.
DEFAULT_REFRESH_S = 60.0
RPC_TIMEOUT_S = 10.0
MAX_RPC_BYTES = 1024 * 1024


class ChainViewError(Exception):
    """The RPC endpoint did not answer usefully (said in plain words on the page)."""


@dataclass(frozen=True, slots=True)
class OnChain:
    total_produced_wh: int  # the oracle's totals: export (produced) and import (consumed) it accepted
    total_consumed_wh: int
    submissions: int
    last_reading_s: int  # unix seconds of the last confirmed submission's reading


def decode_meter_state(data: bytes) -> OnChain:
    try:
        st = layout.decode_meter_state(data)
    except layout.LayoutError as exc:
        raise ChainViewError(f"not a MeterState account: {exc}") from None
    return OnChain(st.total_energy_produced, st.total_energy_consumed, st.total_readings, st.last_reading_timestamp)


class ChainView:
    """Refreshes the meters' MeterState every refresh_s in the background; snapshot() never waits on the RPC."""

    def __init__(self, rpc_url: str, program_id: str, meter_ids: list[str], *,
                 refresh_s: float = DEFAULT_REFRESH_S) -> None:
        self.rpc_url, self.refresh_s = rpc_url, refresh_s
        self.program_id = program_key(program_id)
        self._addresses = {m: meter_state_pda(self.program_id, m)[0] for m in meter_ids}
        self._state: dict[str, OnChain | None] = {}
        self.fetched_at_ms: int | None = None
        self.error = ""

    async def fetch(self, session: aiohttp.ClientSession) -> dict[str, OnChain | None]:
        body = {"jsonrpc": "2.0", "id": 1, "method": "getMultipleAccounts",
                "params": [[str(a) for a in self._addresses.values()], {"encoding": "base64"}]}
        try:
            async with session.post(self.rpc_url, json=body, timeout=aiohttp.ClientTimeout(total=RPC_TIMEOUT_S)) as r:
                raw = await r.content.read(MAX_RPC_BYTES + 1)
                if r.status != 200 or len(raw) > MAX_RPC_BYTES:
                    raise ChainViewError(f"{self.rpc_url} answered HTTP {r.status}")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ChainViewError(f"{self.rpc_url} does not answer ({exc.__class__.__name__}: {exc})") from exc
        try:
            doc = json.loads(raw)
            values = doc["result"]["value"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ChainViewError(f"{self.rpc_url}: unexpected answer ({raw[:200]!s})") from exc
        out: dict[str, OnChain | None] = {}
        for meter, acc in zip(self._addresses, values, strict=False):
            if not acc or acc.get("owner") != str(self.program_id):
                out[meter] = None  # no confirmed submission yet
                continue
            try:
                out[meter] = decode_meter_state(base64.b64decode(acc["data"][0]))
            except (ChainViewError, ValueError, KeyError, TypeError, IndexError) as exc:
                log.warning("%s: MeterState unreadable: %s", meter, exc)
                out[meter] = None
        return out

    async def run(self, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                try:
                    self._state = await self.fetch(session)
                    self.fetched_at_ms = time.time_ns() // 1_000_000
                    if self.error:
                        log.info("chain endpoint %s answers again", self.rpc_url)
                    self.error = ""
                except ChainViewError as exc:
                    if str(exc) != self.error:
                        log.warning("chain view: %s", exc)
                    self.error = str(exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.refresh_s)

    def snapshot(self) -> dict[str, Any]:
        return {
            "rpc_url": self.rpc_url,
            "fetched_at_ms": self.fetched_at_ms,
            "error": self.error,
            "meters": {m: (asdict(s) if s is not None else None) for m, s in self._state.items()},
        }
