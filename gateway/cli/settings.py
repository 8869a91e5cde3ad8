"""How the commands read the gateway config: `run` and `check-config` the whole of it; the registry and
read-only commands only what they use ([gateway] state_dir, [health], [intervals]), so an operator can run them
with a config that has no secrets in it yet, and they never refuse because of a dashboard setting they do not
use."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.config import GatewayConfig
    from gateway.store.registry import Registry


def full_config(args: argparse.Namespace) -> GatewayConfig:
    from gateway.config import load_config

    return load_config(args.config)


def state_config(args: argparse.Namespace) -> GatewayConfig:
    """The config of a registry or read-only command, checked as strictly as for `run`, except that the services
    it does not start (the dashboard, the HTTP ingest) need no secrets."""
    import tomllib

    from gateway.config import ConfigError, parse_config

    try:
        data = tomllib.loads(Path(args.config).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(str(args.config), f"cannot read config file ({exc.strerror})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(args.config), f"invalid TOML ({exc})") from exc
    for service in ("dashboard", "http"):
        section = data.setdefault(service, {})
        if isinstance(section, dict):  # else parse_config names the problem
            section["enabled"] = False
    return parse_config(data)


def open_registry(args: argparse.Namespace, cfg: GatewayConfig | None = None) -> Registry:
    """This gateway's registry file, or the fleet's registry in PostgreSQL (gateway.postgres_dsn)."""
    from gateway import registry

    return registry.open_registry(cfg or state_config(args))
