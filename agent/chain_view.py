"""What the chain says about this agent's meters: read-only Solana JSON-RPC (getMultipleAccounts), no key.

The household page shows each meter's on-chain totals and its last confirmed submission beside the register
movement, so a household sees its energy arrived. Only reads: the agent never signs or sends a transaction.

The oracle program keeps one MeterState account per meter at the PDA ["meter", meter_id] (Anchor account,
Borsh, 102 bytes): discriminator (8) | meter_id bytes (32, padded) | meter_id_len u8 | bump u8 | zone_id i32 |
energy_produced u64 | energy_consumed u64 | total_energy_produced u64 | total_energy_consumed u64 |
last_reading_timestamp i64 | total_readings u64 | created_at i64. The gateway has the full interface
(gateway/oracle_layout.py); the agent may not import the gateway, so these few bytes are decoded here and a
test checks both decoders agree on an account written by the real program (tests/integration/test_agent_page.py).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import struct
import time
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp
from solders.pubkey import Pubkey

log = logging.getLogger(__name__)

METER_STATE_SIZE = 102
METER_STATE_DISCRIMINATOR = hashlib.sha256(b"account:MeterState").digest()[:8]
MAX_METER_ID_SEED = 32
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
    if len(data) < METER_STATE_SIZE or data[:8] != METER_STATE_DISCRIMINATOR:
        raise ChainViewError(f"not a MeterState account ({len(data)} bytes, discriminator {data[:8].hex()})")
    _zone, _prod, _cons, tprod, tcons, last_ts, total, _created = struct.unpack_from("<iQQQQqQq", data, 42)
    return OnChain(tprod, tcons, total, last_ts)


def program_id_problem(text: str) -> str | None:
    """None if text is a base58 Solana program id, else what is wrong (for config errors)."""
    try:
        Pubkey.from_string(text)
    except ValueError:
        return "must be a base58 Solana program id"
    return None


def meter_state_address(program_id: Pubkey, meter_id: str) -> Pubkey:
    seed = meter_id.encode("utf-8")
    if len(seed) > MAX_METER_ID_SEED:
        raise ValueError(f"meter_id {meter_id!r} is longer than a PDA seed")
    return Pubkey.find_program_address([b"meter", seed], program_id)[0]


class ChainView:
    """Refreshes the meters' MeterState every refresh_s in the background; snapshot() never waits on the RPC."""

    def __init__(self, rpc_url: str, program_id: str, meter_ids: list[str], *,
                 refresh_s: float = DEFAULT_REFRESH_S) -> None:
        self.rpc_url, self.refresh_s = rpc_url, refresh_s
        self.program_id = Pubkey.from_string(program_id)
        self._addresses = {m: meter_state_address(self.program_id, m) for m in meter_ids}
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
