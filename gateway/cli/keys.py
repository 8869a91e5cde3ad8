"""`gridmeter gateway keygen`, `authority-key` and `gen-token`: the gateway's key files and secrets."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway.cli.output import fail


def keygen(args: argparse.Namespace) -> int:
    from gateway.keys import KeyFileError, create_key_file

    try:
        key = create_key_file(Path(args.path))
    except KeyFileError as exc:
        return fail(str(exc))
    print(f"gateway ack public key, hex (agents' mqtt.gateway_public_key): {key.public_key.hex()}")
    return 0


def authority_key(args: argparse.Namespace) -> int:
    from gateway.oracle.authority_key import create_authority_key_file, load_authority_keypair
    from gateway.oracle.errors import OracleClientError

    try:
        kp = load_authority_keypair(args.path) if args.show else create_authority_key_file(args.path)
    except OracleClientError as exc:
        return fail(str(exc))
    if not args.show:
        print(f"created {args.path} (mode 0600; set chain.authority_key_file to it)", file=sys.stderr)
    print(f"chain_bridge public key (base58): {kp.pubkey()}")
    return 0


def gen_token(_args: argparse.Namespace) -> int:
    from gateway.config import generate_token

    print(generate_token())
    return 0
