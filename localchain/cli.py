"""`gridmeter chain` subcommands: serve a local oracle chain over Solana JSON-RPC."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from localchain.compute import CLUSTER_PDA_DERIVATION_CU, MAX_UNITS_PER_TRANSACTION

if TYPE_CHECKING:
    from localchain.server import LocalChainServer

MAX_CLOCK_OFFSET_S = 10 * 365 * 86400
DEFAULT_PORT = 8899  # solana-test-validator's RPC port, so tools find it where they expect


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("chain", help="local Solana chain with the oracle-compatible program (tests, demo)")
    csub = p.add_subparsers(dest="chain_command", metavar="SUBCOMMAND")
    csub.required = True
    s = csub.add_parser(
        "serve",
        help="serve LiteSVM + the oracle program over Solana JSON-RPC",
        description="Run a local chain: the oracle-compatible program loaded at the program ID and initialized "
        "with CHAIN_BRIDGE as the only key allowed to submit readings, behind a Solana JSON-RPC endpoint "
        "(point the gateway's chain.rpc_url at it). Slots and the clock follow wall time. Ctrl-C stops it "
        "(and writes --state).",
    )
    s.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"listen port (default {DEFAULT_PORT})")
    s.add_argument("--chain-bridge", required=True, metavar="PUBKEY",
                   help="base58 public key of the gateway's authority (oracle chain_bridge); funded by airdrop")
    s.add_argument("--program-id", default=None, metavar="ID",
                   help="program ID to load the oracle at (default: the devnet oracle ID)")
    s.add_argument("--state", default=None, metavar="FILE",
                   help="persist chain state (accounts, history) to FILE and resume from it if it exists")
    s.add_argument("--min-reading-interval", type=int, default=None, metavar="SECONDS",
                   help="local chain only: set OracleData.min_reading_interval at genesis (default: the "
                   "program's initialize default, 60 s). The real oracle has no instruction for this.")
    s.add_argument("--clock-offset", type=int, default=0, metavar="SECONDS",
                   help="local chain only: run the cluster clock (Clock sysvar, block times) this many seconds "
                   "ahead of the wall clock (negative: behind), as a real cluster's clock drifts (default 0)")
    s.add_argument("--pda-derivation-cu", type=int, default=None, metavar="UNITS",
                   help="local chain only: charge UNITS compute units per program-address derivation instead of "
                   f"the cluster's {CLUSTER_PDA_DERIVATION_CU}, so the oracle program costs more compute (tests of "
                   "the gateway's compute budget)")
    s.set_defaults(func=_serve)


def _err(msg: str) -> None:
    print(f"gridmeter chain serve: {msg}", file=sys.stderr)


async def _stop(server: LocalChainServer) -> bool:
    """Stop serving and write --state; a state file that cannot be written is a message, not a traceback."""
    try:
        await server.stop()
    except OSError as e:
        _err(f"--state: cannot save chain state to {server.chain.state_file}: {e}")
        return False
    return True


def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import signal
    from pathlib import Path

    from solders.pubkey import Pubkey

    from localchain.server import LocalChainServer
    from localchain.svm import StateFileError
    from oracle_interface.layout import DEVNET_PROGRAM_ID

    log = logging.getLogger("localchain")
    try:
        bridge = Pubkey.from_string(args.chain_bridge)
        program_id = Pubkey.from_string(args.program_id or DEVNET_PROGRAM_ID)
    except ValueError as e:
        _err(f"--chain-bridge/--program-id: not a base58 public key: {e}")
        return 2
    if args.min_reading_interval is not None and not 0 <= args.min_reading_interval <= 65535:
        _err(f"--min-reading-interval: 0..65535 seconds (got {args.min_reading_interval})")
        return 2
    if not -MAX_CLOCK_OFFSET_S <= args.clock_offset <= MAX_CLOCK_OFFSET_S:
        _err(f"--clock-offset: -{MAX_CLOCK_OFFSET_S}..{MAX_CLOCK_OFFSET_S} seconds (got {args.clock_offset})")
        return 2
    if args.pda_derivation_cu is not None and not 0 <= args.pda_derivation_cu <= MAX_UNITS_PER_TRANSACTION:
        _err(f"--pda-derivation-cu: 0..{MAX_UNITS_PER_TRANSACTION} (got {args.pda_derivation_cu})")
        return 2
    if not 0 <= args.port <= 65535:
        _err(f"--port: 0..65535 (got {args.port})")
        return 2

    async def run() -> int:
        try:
            server = LocalChainServer(bridge, program_id=program_id, host=args.host, port=args.port,
                                      state_file=Path(args.state) if args.state else None,
                                      clock_offset_s=args.clock_offset, pda_derivation_cu=args.pda_derivation_cu)
        except (StateFileError, FileNotFoundError) as e:
            _err(f"--state: {e}")
            return 1
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await server.start()
        except OSError as e:
            _err(f"--host/--port: cannot listen on {args.host}:{args.port}: {e}")
            return 1
        if args.min_reading_interval is not None:
            server.chain.set_genesis_fields(min_reading_interval=args.min_reading_interval)
        log.info("serving %s: program %s, chain_bridge %s, admin %s", server.url, program_id, bridge,
                 server.chain.admin.pubkey())
        print(f"RPC {server.url}", flush=True)
        try:
            await stop.wait()
        finally:
            saved = await _stop(server)
        return 0 if saved else 1

    return asyncio.run(run())
