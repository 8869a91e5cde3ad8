"""`gridmeter gateway run` and `check-config`: the service itself, and the check that it could start."""

from __future__ import annotations

import argparse

from gateway.cli.output import fail
from gateway.cli.settings import full_config


def run(args: argparse.Namespace) -> int:
    import asyncio

    from gateway.config import ConfigError
    from gateway.keys import KeyFileError
    from gateway.oracle.errors import OracleClientError
    from gateway.service import configure_logging
    from gateway.service import run as run_service

    configure_logging(args.log_format)
    try:
        cfg = full_config(args)
        return asyncio.run(run_service(cfg))
    except (ConfigError, KeyFileError, OracleClientError) as exc:  # startup problems: say what, exit non-zero
        return fail(str(exc))
    except OSError as exc:  # e.g. the dashboard port is taken, the state directory is not writable
        return fail(f"cannot start: {exc}")


def check_config(args: argparse.Namespace) -> int:
    from gateway.config import ConfigError
    from gateway.keys import KeyFileError, load_key_file
    from gateway.oracle.authority_key import load_authority_keypair
    from gateway.oracle.errors import OracleClientError

    try:
        cfg = full_config(args)
        ack = load_key_file(cfg.gateway.ack_key_file)
        if cfg.chain.enabled:
            load_authority_keypair(cfg.chain.authority_key_file)
    except (ConfigError, KeyFileError, OracleClientError, ValueError, OSError) as exc:
        return fail(str(exc))
    print(f"{args.config}: OK (gateway public key {ack.public_key.hex()}, chain "
          f"{cfg.chain.rpc_url if cfg.chain.enabled else 'disabled'}, MQTT {cfg.mqtt.host}:{cfg.mqtt.port})")
    return 0
