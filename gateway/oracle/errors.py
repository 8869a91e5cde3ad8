"""The oracle client's errors: OracleClientError (the oracle cannot be used) and TxFailure, a transaction error
from the chain (solders' TransactionError) read as the failing instruction, its custom code and a name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from solders.transaction_status import InstructionErrorCustom, TransactionErrorInstructionError

from oracle_interface import layout as ol


class OracleClientError(Exception):
    """The oracle cannot be used (not initialized, unreadable account, RPC unreachable)."""


@dataclass(frozen=True)
class TxFailure:
    """A transaction error: the failing instruction (if any), its custom code and a readable name."""

    index: int | None
    code: int | None
    name: str

    @property
    def is_oracle_rejection(self) -> bool:
        return self.code is not None and self.code in ol.ERRORS


def parse_tx_error(err: Any, table: dict[int, str] | None = None) -> TxFailure:
    if isinstance(err, TransactionErrorInstructionError):
        inner = err.err
        if isinstance(inner, InstructionErrorCustom):
            return TxFailure(err.index, inner.code, ol.error_name(inner.code, table))
        return TxFailure(err.index, None, str(inner).split(".")[-1].split("(")[0])
    return TxFailure(None, None, str(err).split(".")[-1])


__all__ = ["OracleClientError", "TxFailure", "parse_tx_error"]
