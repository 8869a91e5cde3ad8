"""The gateway's chain client for the GridTokenX oracle program, over any Solana JSON-RPC URL.

Public surface: OracleClient (gateway.oracle.client) and the data it takes and gives, free of solders types:
Submission and SubmitResult (gateway.oracle.submission), OracleConfig and MeterState (the decoded accounts,
oracle_interface.layout), OracleClientError and TxFailure (gateway.oracle.errors).

Inside: client (reads, submit, lookup tables), instructions (compute budget, lookup-table instructions),
packing (transactions within 1232 bytes), landing (send, confirm, re-sign), errors, authority_key (the
chain_bridge keypair file). The oracle's bytes and addresses come from oracle_interface, shared with localchain.
The only package of the gateway that imports solana / solders.
"""

from gateway.oracle.client import OracleClient, rpc_failure_reason
from gateway.oracle.errors import OracleClientError, TxFailure
from gateway.oracle.submission import Submission, SubmitResult
from oracle_interface.layout import MeterState, OracleConfig

__all__ = ["MeterState", "OracleClient", "OracleClientError", "OracleConfig", "Submission", "SubmitResult",
           "TxFailure", "rpc_failure_reason"]
