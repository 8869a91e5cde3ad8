"""Solana JSON-RPC wire shapes (pure): error codes, parameter checks and the JSON a validator returns for
accounts and messages. localchain/server.py maps methods onto LocalChain with these."""

from __future__ import annotations

import base64
from typing import Any

import base58
from solders.account import Account
from solders.message import MessageV0
from solders.pubkey import Pubkey

from localchain.compute import AnyMessage

__all__ = [
    "BASE58_MAX_DATA", "INTERNAL_ERROR", "INVALID_PARAMS", "INVALID_REQUEST", "METHOD_NOT_FOUND", "PARSE_ERROR",
    "UNSUPPORTED_TX_VERSION", "RpcError", "account_json", "config_object", "decode_wire", "message_json",
    "params_list", "parse_pubkey",
]

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR = -32700, -32600, -32601, -32602, -32603
UNSUPPORTED_TX_VERSION = -32015
BASE58_MAX_DATA = 128  # a validator refuses base58 account data above 128 bytes


class RpcError(Exception):
    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


def params_list(params: Any, n_required: int, n_max: int) -> list[Any]:
    if params is None:
        params = []
    if not isinstance(params, list):
        raise RpcError(INVALID_PARAMS, "Invalid params: expected an array")
    if not n_required <= len(params) <= n_max:
        raise RpcError(INVALID_PARAMS, f"Invalid params: expected {n_required}..{n_max} parameters, got {len(params)}")
    return params + [None] * (n_max - len(params))


def config_object(cfg: Any) -> dict[str, Any]:
    if cfg is None:
        return {}
    if not isinstance(cfg, dict):
        raise RpcError(INVALID_PARAMS, "Invalid params: config must be an object")
    return cfg


def parse_pubkey(v: Any) -> Pubkey:
    if not isinstance(v, str) or len(v) > 44:
        raise RpcError(INVALID_PARAMS, "Invalid param: Invalid")
    try:
        return Pubkey.from_string(v)
    except ValueError as e:
        raise RpcError(INVALID_PARAMS, f"Invalid param: {e}") from e


def decode_wire(data: Any, encoding: str) -> bytes:
    if not isinstance(data, str):
        raise RpcError(INVALID_PARAMS, "Invalid params: transaction must be a string")
    try:
        if encoding == "base64":
            return base64.b64decode(data, validate=True)
        if encoding == "base58":
            return base58.b58decode(data)
    except ValueError as e:
        raise RpcError(INVALID_PARAMS, f"invalid transaction: invalid {encoding} encoding: {e}") from e
    raise RpcError(INVALID_PARAMS, f"unsupported encoding: {encoding}. Supported encodings: base58, base64")


def account_json(acc: Account | None, encoding: str) -> dict[str, Any] | None:
    if acc is None:
        return None
    data = bytes(acc.data)
    if encoding == "base58":
        if len(data) > BASE58_MAX_DATA:
            raise RpcError(INVALID_PARAMS, "Encoded binary (base 58) data should be less than 128 bytes, "
                           "please use Base64 encoding.")
        enc: Any = [base58.b58encode(data).decode(), "base58"]
    elif encoding in ("base64", "jsonParsed"):  # jsonParsed falls back to base64 for unparsed owners
        enc = [base64.b64encode(data).decode(), "base64"]
    else:
        raise RpcError(INVALID_PARAMS, f"unsupported encoding: {encoding}")
    return {"data": enc, "executable": acc.executable, "lamports": acc.lamports, "owner": str(acc.owner),
            "rentEpoch": acc.rent_epoch, "space": len(data)}


def message_json(msg: AnyMessage) -> dict[str, Any]:
    h = msg.header
    out: dict[str, Any] = {
        "header": {"numRequiredSignatures": h.num_required_signatures,
                   "numReadonlySignedAccounts": h.num_readonly_signed_accounts,
                   "numReadonlyUnsignedAccounts": h.num_readonly_unsigned_accounts},
        "accountKeys": [str(k) for k in msg.account_keys],
        "recentBlockhash": str(msg.recent_blockhash),
        "instructions": [{"programIdIndex": ix.program_id_index, "accounts": list(bytes(ix.accounts)),
                          "data": base58.b58encode(bytes(ix.data)).decode(), "stackHeight": None}
                         for ix in msg.instructions],
    }
    if isinstance(msg, MessageV0):
        out["addressTableLookups"] = [{"accountKey": str(lk.account_key),
                                       "writableIndexes": list(bytes(lk.writable_indexes)),
                                       "readonlyIndexes": list(bytes(lk.readonly_indexes))}
                                      for lk in msg.address_table_lookups]
    return out
