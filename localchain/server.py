"""Solana JSON-RPC 2.0 over HTTP (aiohttp) in front of a LocalChain.

Implements what solana-py's AsyncClient (and a wallet/CLI) needs for the oracle flow, in the same JSON shapes
a validator returns: getLatestBlockhash, sendTransaction, simulateTransaction, getSignatureStatuses,
getAccountInfo, getMultipleAccounts, getBalance, requestAirdrop, getSlot, getBlockHeight, getTransaction,
getHealth, getVersion, getMinimumBalanceForRentExemption, getFeeForMessage, isBlockhashValid, getEpochInfo,
getGenesisHash. Batch requests are supported. Commitment levels are accepted and ignored: a transaction is
visible as soon as it executed (its status reports "confirmed", then "finalized" 32 slots later).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import base58
from aiohttp import web
from solders.hash import Hash
from solders.message import MessageV0, from_bytes_versioned
from solders.pubkey import Pubkey
from solders.transaction import VersionedTransaction

from localchain.rpc_wire import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    UNSUPPORTED_TX_VERSION,
    RpcError,
    account_json,
    config_object,
    decode_wire,
    message_json,
    params_list,
    parse_pubkey,
)
from localchain.svm import ChainRequestError, LocalChain, TxRecord, decode_transaction, describe_error
from oracle_interface.layout import DEVNET_PROGRAM_ID

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 1 << 20  # 1 MiB per HTTP request (a batch of max-size transactions fits easily)
DEFAULT_MAX_BATCH = 256  # requests per batch
DEFAULT_MAX_KEYS = 100  # getMultipleAccounts limit of a validator
DEFAULT_MAX_SIGNATURES = 256  # getSignatureStatuses limit of a validator
DEFAULT_SAVE_INTERVAL_S = 2.0  # state file rewritten at most every 2 s while the chain changes (and on stop)
API_VERSION = "2.2.0"  # reported as solana-core version (a client may gate features on it)
FEATURE_SET = 3271415109

class RpcHandler:
    """JSON-RPC method dispatch over one LocalChain (runs on the event loop; LiteSVM calls are short)."""

    def __init__(self, chain: LocalChain) -> None:
        self.chain = chain
        self.methods: dict[str, Callable[[list[Any] | None], Any]] = {
            "getLatestBlockhash": self.get_latest_blockhash,
            "sendTransaction": self.send_transaction,
            "simulateTransaction": self.simulate_transaction,
            "getSignatureStatuses": self.get_signature_statuses,
            "getAccountInfo": self.get_account_info,
            "getMultipleAccounts": self.get_multiple_accounts,
            "getBalance": self.get_balance,
            "requestAirdrop": self.request_airdrop,
            "getSlot": lambda _p: self.chain.tick(),
            "getBlockHeight": self.get_block_height,
            "getTransaction": self.get_transaction,
            "getHealth": lambda _p: "ok",
            "getVersion": lambda _p: {"solana-core": API_VERSION, "feature-set": FEATURE_SET},
            "getMinimumBalanceForRentExemption": self.get_min_rent,
            "getFeeForMessage": self.get_fee_for_message,
            "isBlockhashValid": self.is_blockhash_valid,
            "getEpochInfo": self.get_epoch_info,
            "getGenesisHash": lambda _p: str(Hash.default()),
        }

    def _ctx(self, value: Any) -> dict[str, Any]:
        return {"context": {"apiVersion": API_VERSION, "slot": self.chain.slot}, "value": value}

    # ---- dispatch ---------------------------------------------------------------------------------------
    def handle_one(self, req: Any) -> dict[str, Any] | None:
        if not isinstance(req, dict) or req.get("jsonrpc") != "2.0" or not isinstance(req.get("method"), str):
            return {"jsonrpc": "2.0", "error": {"code": INVALID_REQUEST, "message": "Invalid Request"},
                    "id": req.get("id") if isinstance(req, dict) else None}
        rid = req.get("id")
        fn = self.methods.get(req["method"])
        try:
            if fn is None:
                raise RpcError(METHOD_NOT_FOUND, "Method not found")
            result = fn(req.get("params"))
        except RpcError as e:
            return self._error(rid, e.code, e.message, e.data)
        except ChainRequestError as e:
            return self._error(rid, e.code, e.message, e.data)
        except Exception as e:  # a bug here must not kill the endpoint; the client sees -32603
            log.exception("RPC %s failed", req["method"])
            return self._error(rid, INTERNAL_ERROR, f"Internal error: {type(e).__name__}: {e}")
        if "id" not in req:
            return None  # a notification
        return {"jsonrpc": "2.0", "result": result, "id": rid}

    @staticmethod
    def _error(rid: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
        err: dict[str, Any] = {"code": code, "message": message}
        if data is not None:
            err["data"] = data
        return {"jsonrpc": "2.0", "error": err, "id": rid}

    # ---- methods ----------------------------------------------------------------------------------------
    def get_block_height(self, params: Any) -> Any:
        params_list(params, 0, 1)
        self.chain.tick()
        return self.chain.block_height

    def get_latest_blockhash(self, params: Any) -> Any:
        params_list(params, 0, 1)
        h, last_valid = self.chain.latest_blockhash()
        return self._ctx({"blockhash": str(h), "lastValidBlockHeight": last_valid})

    def send_transaction(self, params: Any) -> Any:
        raw_s, cfg = params_list(params, 1, 2)
        cfg = config_object(cfg)
        raw = decode_wire(raw_s, cfg.get("encoding", "base58"))
        return self.chain.send(raw, skip_preflight=bool(cfg.get("skipPreflight", False)))

    def simulate_transaction(self, params: Any) -> Any:
        raw_s, cfg = params_list(params, 1, 2)
        cfg = config_object(cfg)
        raw = decode_wire(raw_s, cfg.get("encoding", "base58"))
        sig_verify = bool(cfg.get("sigVerify", False))
        replace = bool(cfg.get("replaceRecentBlockhash", False))
        if sig_verify and replace:
            raise RpcError(INVALID_PARAMS, "sigVerify may not be used with replaceRecentBlockhash")
        sim = self.chain.simulate(raw, sig_verify=sig_verify, replace_blockhash=replace)
        accounts = None
        acfg = cfg.get("accounts")
        if isinstance(acfg, dict) and isinstance(acfg.get("addresses"), list):
            post = dict(sim.accounts or [])
            enc = acfg.get("encoding", "base64")
            accounts = [account_json(post.get(parse_pubkey(a), self.chain.get_account(parse_pubkey(a))), enc)
                        for a in acfg["addresses"][:DEFAULT_MAX_KEYS]]
        value: dict[str, Any] = {"err": sim.err, "logs": sim.logs, "accounts": accounts,
                                 "unitsConsumed": sim.units_consumed, "returnData": None,
                                 "innerInstructions": None}
        if sim.replacement_blockhash is not None:
            _, last_valid = self.chain.latest_blockhash()
            value["replacementBlockhash"] = {"blockhash": sim.replacement_blockhash,
                                             "lastValidBlockHeight": last_valid}
        return self._ctx(value)

    def get_signature_statuses(self, params: Any) -> Any:
        sigs, _cfg = params_list(params, 1, 2)
        if not isinstance(sigs, list) or len(sigs) > DEFAULT_MAX_SIGNATURES:
            raise RpcError(INVALID_PARAMS, f"Invalid params: up to {DEFAULT_MAX_SIGNATURES} signatures")
        self.chain.tick()
        out: list[dict[str, Any] | None] = []
        for s in sigs:
            if not isinstance(s, str):
                raise RpcError(INVALID_PARAMS, "Invalid param: signature must be a string")
            rec = self.chain.transaction(s)
            if rec is None:
                out.append(None)
                continue
            conf = self.chain.confirmations(rec)
            out.append({"slot": rec.slot, "confirmations": conf, "err": rec.err,
                        "status": {"Ok": None} if rec.err is None else {"Err": rec.err},
                        "confirmationStatus": "finalized" if conf is None else "confirmed"})
        return self._ctx(out)

    def get_account_info(self, params: Any) -> Any:
        key, cfg = params_list(params, 1, 2)
        cfg = config_object(cfg)
        return self._ctx(account_json(self.chain.get_account(parse_pubkey(key)), cfg.get("encoding", "base58")))

    def get_multiple_accounts(self, params: Any) -> Any:
        keys, cfg = params_list(params, 1, 2)
        cfg = config_object(cfg)
        if not isinstance(keys, list) or len(keys) > DEFAULT_MAX_KEYS:
            raise RpcError(INVALID_PARAMS, f"Too many inputs provided; max {DEFAULT_MAX_KEYS}")
        enc = cfg.get("encoding", "base58")
        return self._ctx([account_json(self.chain.get_account(parse_pubkey(k)), enc) for k in keys])

    def get_balance(self, params: Any) -> Any:
        key, _cfg = params_list(params, 1, 2)
        return self._ctx(self.chain.balance(parse_pubkey(key)))

    def request_airdrop(self, params: Any) -> Any:
        key, lamports, _cfg = params_list(params, 2, 3)
        if not isinstance(lamports, int) or isinstance(lamports, bool):
            raise RpcError(INVALID_PARAMS, "Invalid params: lamports must be an integer")
        return self.chain.airdrop(parse_pubkey(key), lamports)

    def get_min_rent(self, params: Any) -> Any:
        size, _cfg = params_list(params, 1, 2)
        if not isinstance(size, int) or not 0 <= size <= 10 * 1024 * 1024:
            raise RpcError(INVALID_PARAMS, "Invalid params: data length must be 0..10 MiB")
        return self.chain.svm.minimum_balance_for_rent_exemption(size)

    def get_fee_for_message(self, params: Any) -> Any:
        msg_s, _cfg = params_list(params, 1, 2)
        raw = decode_wire(msg_s, "base64")
        try:
            msg = from_bytes_versioned(raw)
        except Exception as e:  # solders' own error types
            raise RpcError(INVALID_PARAMS, f"invalid message: {e}") from e
        if not self.chain.is_blockhash_valid(msg.recent_blockhash):
            return self._ctx(None)
        return self._ctx(self.chain.fee_for_message(msg))

    def is_blockhash_valid(self, params: Any) -> Any:
        h, _cfg = params_list(params, 1, 2)
        if not isinstance(h, str):
            raise RpcError(INVALID_PARAMS, "Invalid param: blockhash must be a string")
        return self._ctx(self.chain.is_blockhash_valid(h))

    def get_epoch_info(self, params: Any) -> Any:
        params_list(params, 0, 1)
        slot = self.chain.tick()
        c = self.chain.svm.get_clock()
        return {"absoluteSlot": slot, "blockHeight": self.chain.block_height, "epoch": c.epoch,
                "slotIndex": slot % 432_000, "slotsInEpoch": 432_000, "transactionCount": len(self.chain.history)}

    def get_transaction(self, params: Any) -> Any:
        sig, cfg = params_list(params, 1, 2)
        if isinstance(cfg, str):
            cfg = {"encoding": cfg}
        cfg = config_object(cfg)
        if not isinstance(sig, str):
            raise RpcError(INVALID_PARAMS, "Invalid param: signature must be a string")
        rec = self.chain.transaction(sig)
        if rec is None:
            return None
        tx = VersionedTransaction.from_bytes(rec.raw)
        is_v0 = isinstance(tx.message, MessageV0)
        max_ver = cfg.get("maxSupportedTransactionVersion")
        if is_v0 and (max_ver is None or max_ver < 0):
            raise RpcError(UNSUPPORTED_TX_VERSION, "Transaction version (0) is not supported by the requesting "
                           "client. Please try the request again with the following configuration parameter: "
                           "\"maxSupportedTransactionVersion\": 0")
        enc = cfg.get("encoding", "json")
        if enc in ("json", "jsonParsed"):
            tx_json: Any = {"signatures": [str(s) for s in tx.signatures], "message": message_json(tx.message)}
        elif enc == "base64":
            tx_json = [base64.b64encode(rec.raw).decode(), "base64"]
        elif enc == "base58":
            tx_json = [base58.b58encode(rec.raw).decode(), "base58"]
        else:
            raise RpcError(INVALID_PARAMS, f"unsupported encoding: {enc}")
        out: dict[str, Any] = {"slot": rec.slot, "blockTime": rec.block_time, "transaction": tx_json,
                               "meta": self._meta(rec)}
        if is_v0 or max_ver is not None:
            out["version"] = 0 if is_v0 else "legacy"
        return out

    @staticmethod
    def _meta(rec: TxRecord) -> dict[str, Any]:
        return {"err": rec.err, "status": {"Ok": None} if rec.err is None else {"Err": rec.err}, "fee": rec.fee,
                "preBalances": rec.pre_balances, "postBalances": rec.post_balances, "innerInstructions": [],
                "logMessages": rec.logs, "preTokenBalances": [], "postTokenBalances": [], "rewards": [],
                "loadedAddresses": {"writable": rec.loaded_writable, "readonly": rec.loaded_readonly},
                "computeUnitsConsumed": rec.compute_units}


class LocalChainServer:
    """The chain behind HTTP JSON-RPC on 127.0.0.1. `async with LocalChainServer(chain_bridge=pk) as srv: srv.url`."""

    def __init__(
        self,
        chain_bridge: Pubkey | str | None = None,
        *,
        program_id: Pubkey | str = DEVNET_PROGRAM_ID,
        host: str = "127.0.0.1",
        port: int = 0,
        state_file: Path | None = None,
        chain: LocalChain | None = None,
        save_interval_s: float = DEFAULT_SAVE_INTERVAL_S,
        clock_offset_s: int = 0,
        pda_derivation_cu: int | None = None,
    ) -> None:
        if isinstance(chain_bridge, str):
            chain_bridge = Pubkey.from_string(chain_bridge)
        self.chain = chain or LocalChain(chain_bridge, program_id=program_id, state_file=state_file,
                                         clock_offset_s=clock_offset_s, pda_derivation_cu=pda_derivation_cu)
        self.rpc = RpcHandler(self.chain)
        self.host, self.port = host, port
        self.save_interval_s = save_interval_s
        self._runner: web.AppRunner | None = None
        self._saver: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=DEFAULT_MAX_BODY)
        app.router.add_post("/", self._handle)
        app.router.add_get("/health", self._health)
        return app

    async def _health(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _handle(self, request: web.Request) -> web.Response:
        try:
            raw = await request.read()
        except ConnectionError:  # the client went away mid-request (a killed gateway): nobody to answer
            log.debug("JSON-RPC client disconnected before its request was read")
            return web.Response(status=400)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return web.json_response({"jsonrpc": "2.0", "error": {"code": PARSE_ERROR, "message": "Parse error"},
                                      "id": None})
        if isinstance(body, list):
            if not body or len(body) > DEFAULT_MAX_BATCH:
                return web.json_response({"jsonrpc": "2.0", "id": None, "error": {
                    "code": INVALID_REQUEST, "message": f"Invalid Request: batch of 1..{DEFAULT_MAX_BATCH}"}})
            out = [r for r in (self.rpc.handle_one(x) for x in body) if r is not None]
            return web.json_response(out)
        res = self.rpc.handle_one(body)
        return web.json_response(res) if res is not None else web.Response(status=204)

    async def start(self) -> None:
        self._runner = web.AppRunner(self.make_app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        if self.port == 0 and isinstance(server, asyncio.Server):
            self.port = server.sockets[0].getsockname()[1]
        if self.chain.state_file is not None:
            self._saver = asyncio.create_task(self._save_loop())
        log.info("local chain JSON-RPC on %s (program %s)", self.url, self.chain.program_id)

    async def _save_loop(self) -> None:
        while True:
            await asyncio.sleep(self.save_interval_s)
            if self.chain.dirty:
                try:
                    self.chain.save()
                except OSError as e:
                    log.error("cannot save chain state to %s: %s", self.chain.state_file, e)

    async def stop(self) -> None:
        if self._saver is not None:
            self._saver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._saver
            self._saver = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.chain.state_file is not None:
            self.chain.save()

    async def __aenter__(self) -> LocalChainServer:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()


__all__ = ["LocalChainServer", "RpcHandler", "decode_transaction", "describe_error"]
