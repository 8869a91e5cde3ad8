"""`gridmeter agent run | check-config | status | reset-counter`.

Exit codes: 0 ok; 1 runtime failure (store cannot open, a background task died, agent degraded for `status`);
2 bad config or key file (fix the file, restarting will not help: the systemd unit does not restart on 2);
3 status endpoint unreachable.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.config import AgentConfig

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG, EXIT_UNREACHABLE = 0, 1, 2, 3
DEFAULT_STATUS_URL = "http://127.0.0.1:9101/health"
# The reason lands in the store's bounded event log: a sentence, not a document.
MAX_REASON_CHARS = 500
# /health of an agent with many meters is a few tens of kB; anything far larger is not our endpoint.
MAX_HEALTH_BYTES = 4 * 1024 * 1024


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("agent", help="edge agent: read meters, sign, store, publish",
                       description="Edge agent: reads Modbus meters, signs readings, stores and publishes them.")
    asub = p.add_subparsers(dest="agent_command", metavar="ACTION")
    asub.required = True
    run = asub.add_parser("run", help="run the agent (foreground; systemd Type=notify aware)")
    run.add_argument("--config", required=True, metavar="FILE", help="agent TOML config")
    run.set_defaults(func=_run)
    chk = asub.add_parser("check-config", help="validate a config file, its profiles and key files; start nothing")
    chk.add_argument("config", metavar="FILE")
    chk.set_defaults(func=_check)
    rc = asub.add_parser("reset-counter", help="after replacing a meter: its next reading starts a new baseline "
                         "(flagged COUNTER_RESET); run while the agent is stopped, takes effect at start")
    rc.add_argument("--config", required=True, metavar="FILE")
    rc.add_argument("meter_id")
    rc.add_argument("--reason", required=True, help="recorded in the store's event log")
    rc.set_defaults(func=_reset_counter)
    st = asub.add_parser("status", help="say in plain words how the running agent is doing (--json: its /health)")
    st.add_argument("--url", default=DEFAULT_STATUS_URL, help=f"health URL (default {DEFAULT_STATUS_URL})")
    st.add_argument("--json", action="store_true", help="print the /health JSON (for scripts and monitoring)")
    st.set_defaults(func=_status)


class _CliError(Exception):
    """A problem the operator must fix; printed as one line, the process exits with `code`."""

    def __init__(self, message: object, code: int) -> None:
        super().__init__(str(message))
        self.code = code


def _fail(exc: _CliError) -> int:
    print(f"gridmeter agent: {exc}", file=sys.stderr)
    return exc.code


def _config(path: str) -> AgentConfig:
    """The validated config; a bad file is a _CliError(EXIT_CONFIG) naming the file and the key."""
    from agent.config import ConfigError, load_config

    try:
        return load_config(Path(path))
    except ConfigError as exc:
        raise _CliError(exc, EXIT_CONFIG) from None


def _run(args: argparse.Namespace) -> int:
    import asyncio

    from agent.config import ConfigError
    from agent.keys import KeyFileError
    from agent.service import build_service
    from agent.store import StoreError
    from agent.supervision import TaskFailedError

    try:
        cfg = _config(args.config)
        try:
            service = build_service(cfg)
        except (ConfigError, KeyFileError) as exc:
            raise _CliError(exc, EXIT_CONFIG) from None
        except StoreError as exc:
            raise _CliError(exc, EXIT_FAILURE) from None
        try:
            asyncio.run(service.run())
        except (OSError, StoreError, TaskFailedError) as exc:  # status port taken, store unwritable, a background
            raise _CliError(f"agent stopped: {exc}", EXIT_FAILURE) from None  # task died: exit 1, systemd restarts
    except _CliError as exc:
        return _fail(exc)
    return EXIT_OK


def _check(args: argparse.Namespace) -> int:
    from agent.config import ConfigError, build_specs
    from agent.keys import KeyFileError, load_key_file

    try:
        cfg = _config(args.config)
        _buses, meters = build_specs(cfg)
        for m in cfg.meters:
            load_key_file(cfg.key_file_for(m))
    except (ConfigError, KeyFileError) as exc:
        return _fail(_CliError(exc, EXIT_CONFIG))
    except _CliError as exc:
        return _fail(exc)
    print(f"{args.config}: OK ({len(cfg.buses)} buses, {len(meters)} meters: "
          + ", ".join(f"{m.meter_id}={m.profile.id}@{m.bus}/{m.unit_id}" for m in meters) + ")")
    return EXIT_OK


def _reset_counter(args: argparse.Namespace) -> int:
    from agent.store import Store, StoreError

    try:
        if not args.reason.strip() or len(args.reason) > MAX_REASON_CHARS:
            raise _CliError(f"--reason: 1..{MAX_REASON_CHARS} characters (got {len(args.reason)})", EXIT_CONFIG)
        cfg = _config(args.config)
        if args.meter_id not in {m.meter_id for m in cfg.meters}:
            raise _CliError(f"meter {args.meter_id!r} is not in {args.config}", EXIT_CONFIG)
        try:
            store = Store(cfg.db_path, max_readings=cfg.store.max_readings, overflow=cfg.store.overflow)
            try:
                store.request_counter_reset(args.meter_id, args.reason)
            finally:
                store.close()
        except StoreError as exc:
            raise _CliError(exc, EXIT_FAILURE) from None
    except _CliError as exc:
        return _fail(exc)
    print(f"{args.meter_id}: counter reset recorded; (re)start the agent to apply it")
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(args.url, timeout=5) as resp:
            raw = resp.read(MAX_HEALTH_BYTES + 1)
        if len(raw) > MAX_HEALTH_BYTES:
            raise ValueError(f"answer over {MAX_HEALTH_BYTES} bytes")
        body = json.loads(raw)
        if not isinstance(body, dict):
            raise ValueError(f"answer is not a JSON object (got {type(body).__name__})")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"gridmeter agent: status endpoint {args.url} unreachable or not the agent: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if args.json:
        print(json.dumps(body, indent=2, sort_keys=True))
    else:
        from agent.household import summary

        try:
            print(summary(body))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # an older or foreign /health
            print(f"gridmeter agent: cannot read {args.url} ({exc}); try --json", file=sys.stderr)
            return EXIT_UNREACHABLE
    return EXIT_OK if body.get("status") == "ok" else EXIT_FAILURE
