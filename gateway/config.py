"""Gateway configuration: one TOML file, validated once and strictly at startup.

Read through the strict TOML reader shared with the agent (base.toml_table): unknown keys are rejected, and
every problem of the file is reported at once, each naming the key path and the value received
(`limits.future_skew_s: must be between 0 and 59 (got 90)`; never the value of a secret). Secrets may come from the
environment instead of the file (see ENV_OVERRIDES) so the TOML can be world-readable. After `load_config`
returns, the rest of the gateway trusts the typed values and does no ad-hoc checks of its own.

The oracle's thresholds (min/max energy, ratio, min_reading_interval) are NOT configuration: they are
read from the OracleData account on chain at run time.
"""

from __future__ import annotations

import itertools
import os
import secrets
import tomllib
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlparse

from base.toml_table import Check, Table, between, one_of
from oracle_interface.layout import DEVNET_PROGRAM_ID, FUTURE_SKEW_S, account_key_problem
from protocol.identifiers import client_id_problem, mqtt_username_problem
from protocol.topics import prefix_problem

# The devnet deployment is only a default (defined once, in oracle_interface.layout): production sets
# chain.program_id.
DEFAULT_PROGRAM_ID = DEVNET_PROGRAM_ID
DEFAULT_CONFIG_PATH = "/etc/gridmeter/gateway.toml"
# Environment variables that override secrets from the file: (section, key) -> variable.
ENV_OVERRIDES = {
    ("mqtt", "password"): "GRIDMETER_GATEWAY_MQTT_PASSWORD",
    ("dashboard", "token"): "GRIDMETER_GATEWAY_DASHBOARD_TOKEN",
    ("dashboard", "password"): "GRIDMETER_GATEWAY_DASHBOARD_PASSWORD",
    ("http", "api_keys"): "GRIDMETER_GATEWAY_INGEST_API_KEYS",  # comma-separated
    ("gateway", "postgres_dsn"): "GRIDMETER_GATEWAY_POSTGRES_DSN",  # may hold the database password
}


class ConfigError(Exception):
    """`path: problem (got value)`; from parse_config, every problem of the file (one per line)."""

    def __init__(self, path: str, problem: str, value: object = None) -> None:
        got = "" if value is None else f" (got {value!r})"
        super().__init__(f"{path}: {problem}{got}")
        self.path = path
        self.value = value

    @classmethod
    def from_errors(cls, errors: list[str]) -> ConfigError:
        """One error for all of them: the first is the message's head (its path is .path); the others follow."""
        first, rest = errors[0], errors[1:]
        path, _, problem = first.partition(": ")
        more = "".join(f"\n  {e}" for e in rest)
        return cls(path, problem + (f"\n{len(rest)} more problem(s):{more}" if rest else ""))


def _listen(v: str) -> str | None:
    host, sep, port = v.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return "must be HOST:PORT"
    return None


def _url(v: str) -> str | None:
    u = urlparse(v)
    return None if u.scheme in ("http", "https") and u.netloc else "must be an http(s):// URL"


# A credential shorter than this is guessable by anyone who can reach the port (the dashboard shows fleet data,
# an API key lets a client write intervals); an empty one would even match a request that sends none.
MIN_SECRET_CHARS = 16  # dashboard token, ingest API keys
MIN_PASSWORD_CHARS = 12  # dashboard password (typed by people; still not a PIN)
MIN_DISTINCT_CHARS = 8  # "tttttttttttttttt" is 16 characters and no secret
GEN_TOKEN_HINT = "generate one with `gridmeter gateway gen-token`"
# Values copied from examples and documentation, and words that say "not set yet". Compared lower-case with
# '_' and ' ' read as '-'. The example config's own placeholder is the first.
PLACEHOLDERS = ("change-me", "changeme", "replace-me", "replaceme", "your-token", "your-password", "your-key",
                "placeholder", "example", "insert-", "fixme", "password", "secret", "letmein", "default")


def generate_token() -> str:
    """A fresh credential: 32 random bytes, URL-safe base64 (43 characters); drawn again in the (~1e-8) case
    that it happens to spell a placeholder word."""
    while weak_secret(token := secrets.token_urlsafe(32)):
        pass
    return token


def weak_secret(v: str, min_chars: int = MIN_SECRET_CHARS) -> str | None:
    """Why `v` is not a usable credential (without quoting it), or None. Empty = not configured: None."""
    if not v:
        return None
    if len(v) < min_chars:
        return f"must be at least {min_chars} characters; {GEN_TOKEN_HINT}"
    norm = v.lower().replace("_", "-").replace(" ", "-")
    if any(p in norm for p in PLACEHOLDERS):
        return f"is a placeholder or a well-known word, not a secret; {GEN_TOKEN_HINT}"
    steps = {ord(b) - ord(a) for a, b in itertools.pairwise(v)}
    if len(set(v)) < MIN_DISTINCT_CHARS or len(steps) == 1:
        return f"is too predictable (repeated or sequential characters); {GEN_TOKEN_HINT}"
    return None


def _secret(v: str) -> str | None:
    return weak_secret(v, MIN_SECRET_CHARS)


def _password(v: str) -> str | None:
    return weak_secret(v, MIN_PASSWORD_CHARS)


def _mqtt_password(v: str) -> str | None:
    """The broker decides its own password rules; a placeholder is still refused here."""
    problem = weak_secret(v, 1)
    return problem if problem and "placeholder" in problem else None


def _api_keys(v: list[str]) -> str | None:
    if any(not k for k in v):
        return f"every key must be at least {MIN_SECRET_CHARS} characters (an empty one)"
    weak = [p for k in v if (p := weak_secret(k))]
    if weak:
        return f"{len(weak)} of {len(v)} keys: {weak[0]}"
    return None


def _nonempty(v: str) -> str | None:
    return None if v.strip() else "must not be empty"


@dataclass(frozen=True)
class GatewaySection:
    state_dir: str = "/var/lib/gridmeter-gateway"  # SQLite database lives here
    ack_key_file: str = "/etc/gridmeter/gateway.key"  # Ed25519 seed (64 hex) signing the acks
    verify_workers: int = 0  # signature-checking processes; 0 = one per core
    retention_days: int = 30  # decided rows older than this are pruned (gateway/store/retention.py)
    postgres_dsn: str = ""  # empty: SQLite in state_dir (one box); set: PostgreSQL shared by N gateways (fleet)
    checks: ClassVar[dict[str, Check]] = {"state_dir": _nonempty, "ack_key_file": _nonempty,
                                          "verify_workers": between(0, 64), "retention_days": between(1, 3650)}


@dataclass(frozen=True)
class ChainSection:
    enabled: bool = True
    rpc_url: str = "http://127.0.0.1:8899"
    program_id: str = DEFAULT_PROGRAM_ID
    authority_key_file: str = "/etc/gridmeter/chain-bridge.json"  # the oracle's chain_bridge keypair
    commitment: str = "confirmed"
    submit_interval_s: float = 5.0  # how often the outbox is drained
    config_refresh_s: float = 60.0  # OracleData thresholds are re-read at least this often
    max_backoff_s: float = 60.0  # cap of the exponential backoff after RPC failures
    sent_recheck_s: float = 120.0  # a `sent` row without a result is reconciled after this (blockhash expiry)
    checks: ClassVar[dict[str, Check]] = {
        "rpc_url": _url, "program_id": account_key_problem, "authority_key_file": _nonempty,
        "commitment": one_of("processed", "confirmed", "finalized"),
        "submit_interval_s": between(0.05, 3600), "config_refresh_s": between(1, 86400),
        "max_backoff_s": between(1, 3600), "sent_recheck_s": between(1, 3600),
    }


@dataclass(frozen=True)
class MqttSection:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = "gridmeter-gateway-1"  # unique per gateway process
    share_group: str = "gridmeter-gateway"  # $share/<group>/...: processes of one group split the load
    username: str = ""
    password: str = field(default="", repr=False)  # a secret: never in a repr (nor in a log line)
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    topic_prefix: str = "gridmeter/v1"
    # 0: the MQTT session ends with the connection, so a stopped gateway leaves the $share group at once (the
    # agents re-send what no gateway acked). Above 0 the broker keeps feeding a stopped gateway its share.
    session_expiry_s: int = 0
    max_pending_messages: int = 2000  # bound of the receive queue; paho stops reading beyond it
    checks: ClassVar[dict[str, Check]] = {
        "host": _nonempty, "port": between(1, 65535), "client_id": client_id_problem, "share_group": client_id_problem,
        "username": lambda v: mqtt_username_problem(v) if v else None, "password": _mqtt_password,
        "topic_prefix": prefix_problem, "session_expiry_s": between(0, 2**32 - 1),
        "max_pending_messages": between(1, 1_000_000),
    }


@dataclass(frozen=True)
class HttpSection:
    """GridTokenX-compatible ingest (POST /v1/private-network/ingest)."""

    enabled: bool = False
    listen: str = "127.0.0.1:8081"
    api_keys: list[str] = field(default_factory=list, repr=False)
    max_body_bytes: int = 16384  # a DLMS reading is < 1 KiB
    # Serve HTTPS directly when both are set (PEM files), like the dashboard; else keep listen on localhost behind
    # a TLS reverse proxy: the X-API-KEY header must not cross a network in clear text.
    tls_cert: str = ""
    tls_key: str = ""
    # A client that stopped posting leaves its last interval open: once that interval's epoch is over and no
    # reading came for this long, the gateway closes it without waiting for a next reading. 60 s = four missed
    # readings of a client posting every 15 s; shorter closes intervals sooner but may close one a slow client
    # would still have added to (its later reading then starts the next interval: energy is never lost).
    idle_close_s: int = 60
    checks: ClassVar[dict[str, Check]] = {"listen": _listen, "max_body_bytes": between(256, 1 << 20),
                                          "api_keys": _api_keys, "idle_close_s": between(1, 86_400)}


@dataclass(frozen=True)
class DashboardSection:
    enabled: bool = True
    listen: str = "127.0.0.1:8090"
    token: str = field(default="", repr=False)  # bearer token (also accepted by /login?token=... for browsers)
    username: str = ""  # HTTP basic auth, with password
    password: str = field(default="", repr=False)
    tls_cert: str = ""  # serve HTTPS directly when both are set; else put it behind a TLS reverse proxy
    tls_key: str = ""
    # Set when a TLS reverse proxy terminates HTTPS in front of the dashboard: the session cookie is then
    # marked Secure although this process speaks plain HTTP on localhost.
    behind_tls_proxy: bool = False
    checks: ClassVar[dict[str, Check]] = {"listen": _listen, "token": _secret, "password": _password}


@dataclass(frozen=True)
class LimitsSection:
    # The oracle rejects reading_timestamp > chain clock + FUTURE_SKEW_S (60 s); a smaller skew leaves room for the
    # gateway's and the validator's clocks to differ.
    future_skew_s: int = 30
    # Readings older than this are refused: 7 days covers a long outage backlog of an agent.
    acceptance_window_s: int = 7 * 86400
    # Readings of one meter closer than HALF of this in signed time are refused as too_frequent (half: poll
    # jitter; see gateway.intake.checks.MIN_READ_SPACING_MS). 100 = the agent's shortest poll interval (0.1 s), so any
    # poll interval an agent may use passes; raise it only if every agent polls slower.
    min_read_spacing_ms: int = 100
    # Per-meter ingress token bucket (readings): a week's backlog at 10 s polling drains in ~1 min. Only NEW readings
    # whose signature verified pay for it: forged ones on a meter's topic cannot spend it.
    ingress_rate_per_s: float = 1000.0
    ingress_burst: int = 10000
    # Per-topic verify budget: signature checks no new authenticated reading paid for (a signature that failed, a
    # replay of a handled reading, a reading over the meter's rate), ~45 us of CPU each. Beyond it the topic's
    # readings are refused unverified (verify_budget_exceeded; not acked, the agent re-sends). All topics together
    # get five times this (gateway.intake.budgets).
    verify_budget_per_s: float = 1000.0
    verify_budget_burst: int = 10000
    # Energy over a reading gap may exceed rated power by this much (meter accuracy class, rounding
    # of 1 Wh counters over short gaps) before it is called implausible.
    plausibility_margin_pct: int = 10
    # Registers count in steps: 0.1 kWh on Carlo Gavazzi EM24/EM340, 0.01 kWh on ABB. A step seen between two
    # reads 2 s apart looks like 180 kW; one 100 Wh step of slack keeps honest quantised counters plausible
    # while a glitch (a 0xFFFF... or 2^31 counter, or a jump of many kWh) is still refused. (The agent's glitch
    # filter uses the same slack.)
    plausibility_slack_wh: int = 100
    # The ack carries the highest CONTIGUOUS seq: a gap (a batch lost by the broker, or readings the agent
    # dropped on store overflow) holds the ack back so the agent keeps and re-sends what is missing. After
    # this long the gap is declared lost (recorded, reported on the dashboard) and the ack moves past it,
    # so an unfillable gap cannot block the agent forever. The agent re-sends after ack_timeout_s (30 s,
    # doubling), so 15 minutes leaves room for several re-sends.
    gap_grace_s: int = 900
    # Quarantine byte budget for UNAUTHENTICATED rejections (anyone allowed to publish can cause them; each keeps
    # a 256-byte prefix, the length and the sha256 of the message): bytes per second sustained and the burst.
    # Beyond it they are only counted (metric gridmeter_gateway_quarantine_bytes_not_stored, table
    # quarantine_dropped). 4 KiB/s is at most ~350 MB a day of an attacker's garbage.
    quarantine_bytes_per_s: int = 4096
    quarantine_burst_bytes: int = 8 * 1024 * 1024
    checks: ClassVar[dict[str, Check]] = {
        "quarantine_bytes_per_s": between(1, 1 << 30), "quarantine_burst_bytes": between(1024, 1 << 34),
        "future_skew_s": between(0, FUTURE_SKEW_S - 1), "acceptance_window_s": between(60, 10 * 365 * 86400),
        "min_read_spacing_ms": between(0, 3_600_000), "ingress_rate_per_s": between(0.001, 1e7),
        "ingress_burst": between(1, 10_000_000), "plausibility_margin_pct": between(0, 1000),
        "verify_budget_per_s": between(1, 1e6), "verify_budget_burst": between(1, 10_000_000),
        "plausibility_slack_wh": between(0, 1_000_000), "gap_grace_s": between(0, 7 * 86400),
    }


@dataclass(frozen=True)
class IntervalsSection:
    # GridTokenX clears the market in 15-minute epochs; submissions close on epoch boundaries.
    epoch_s: int = 900
    checks: ClassVar[dict[str, Check]] = {"epoch_s": between(1, 86400)}


@dataclass(frozen=True)
class HealthSection:
    """Meter health on the dashboard and /metrics (gateway.health): each meter's cadence is learnt from its
    readings; these are the fleet defaults around it."""

    expected_interval_s: float = 10.0  # until a meter has sent two readings (the agent's default poll interval)
    late_margin_s: float = 10.0  # late after one interval + max(margin, half an interval) without a message
    silent_after_s: float = 300.0  # silent after max(this, 10 intervals)
    checks: ClassVar[dict[str, Check]] = {"expected_interval_s": between(0.1, 86400),
                                          "late_margin_s": between(0, 86400), "silent_after_s": between(1, 30 * 86400)}


@dataclass(frozen=True)
class GatewayConfig:
    gateway: GatewaySection = field(default_factory=GatewaySection)
    chain: ChainSection = field(default_factory=ChainSection)
    mqtt: MqttSection = field(default_factory=MqttSection)
    http: HttpSection = field(default_factory=HttpSection)
    dashboard: DashboardSection = field(default_factory=DashboardSection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    intervals: IntervalsSection = field(default_factory=IntervalsSection)
    health: HealthSection = field(default_factory=HealthSection)

    @property
    def db_path(self) -> Path:
        return Path(self.gateway.state_dir) / "gateway.sqlite"


_SECTIONS: dict[str, type] = {f.name: typing.get_type_hints(GatewayConfig)[f.name] for f in fields(GatewayConfig)}


# TOML type per field annotation (base.toml_table.Table checks it and words the error).
_TOML_TYPES: dict[object, type | tuple[type, ...]] = {bool: bool, int: int, float: float, str: str, list[str]: list}


def _section(name: str, data: object, errors: list[str]) -> Any:
    """One [section] through the shared strict reader: every problem is collected in `errors` (key path, problem,
    the value received unless it is a secret); the section object, or None when it has problems. A secret from
    the environment (ENV_OVERRIDES) replaces the file's before it is checked."""
    cls = _SECTIONS[name]
    if isinstance(data, dict):
        data = {**data, **_env_secrets(name, typing.get_type_hints(cls))}
    t = Table(data, name, errors)
    before = len(errors)
    hints = typing.get_type_hints(cls)
    checks: dict[str, Check] = getattr(cls, "checks", {})
    # a service that does not start uses no secret (read-only CLI commands disable them): its secrets go unchecked
    values: dict[str, Any] = {}
    if "enabled" in hints and isinstance(enabled := t.get("enabled", bool, None), bool):
        values["enabled"] = enabled
    enabled = values.get("enabled", getattr(cls, "enabled", True))
    for f in fields(cls):
        if f.name not in t.data or f.name == "enabled":
            continue  # the default; read above
        secret = (name, f.name) in ENV_OVERRIDES  # never echo a credential into logs
        check = None if secret and not enabled else checks.get(f.name)
        if hints[f.name] == list[str]:
            check = _strings_then(check)
        value = t.get(f.name, _TOML_TYPES[hints[f.name]], check=check, secret=secret)
        if value is not None:
            values[f.name] = value
    t.done(known=[f.name for f in fields(cls)])
    return cls(**values) if len(errors) == before else None


def _env_secrets(section: str, hints: dict[str, Any]) -> dict[str, Any]:
    """The secrets of `section` set in the environment; a list (http.api_keys) is comma-separated there."""
    out: dict[str, Any] = {}
    for (sec, key), var in ENV_OVERRIDES.items():
        if sec == section and var in os.environ:
            raw = os.environ[var]
            out[key] = [s.strip() for s in raw.split(",") if s.strip()] if hints[key] is not str else raw
    return out


def _strings_then(check: Check | None) -> Check:
    """A list of strings, then `check` of the list."""
    def run(v: list[Any]) -> str | None:
        if not all(isinstance(x, str) for x in v):
            return "must be a list of strings"
        return check(v) if check else None
    return run


def parse_config(data: dict[str, Any]) -> GatewayConfig:
    """Build a validated config from parsed TOML (a dict). Raises ConfigError naming every problem found."""
    errors: list[str] = []
    for key in data:
        if key not in _SECTIONS:
            errors.append(f"{key}: unknown section (known: {', '.join(sorted(_SECTIONS))})")
    sections = {name: _section(name, data.get(name, {}), errors) for name in _SECTIONS}
    if not errors:
        errors = _cross_check(GatewayConfig(**sections))
    if errors:
        raise ConfigError.from_errors(errors)
    return GatewayConfig(**sections)


def _cross_check(cfg: GatewayConfig) -> list[str]:
    """Rules between keys (and sections), every one that fails."""
    d, http, mqtt = cfg.dashboard, cfg.http, cfg.mqtt
    rules = [
        (d.enabled and not d.token and not (d.username and d.password), "dashboard.token",
         "the dashboard needs a token or username + password (it shows fleet data)"),
        (bool(d.username) != bool(d.password), "dashboard.password", "username and password go together"),
        (bool(d.tls_cert) != bool(d.tls_key), "dashboard.tls_key", "tls_cert and tls_key go together"),
        (http.enabled and not http.api_keys, "http.api_keys", "the HTTP ingest needs at least one API key"),
        (bool(http.tls_cert) != bool(http.tls_key), "http.tls_key", "tls_cert and tls_key go together"),
        (bool(mqtt.tls_cert) != bool(mqtt.tls_key), "mqtt.tls_key", "tls_cert and tls_key go together"),
        # the intake switches TLS on by tls_ca: else plain MQTT
        (bool(mqtt.tls_cert) and not mqtt.tls_ca, "mqtt.tls_ca", "required with a client certificate (tls_cert)"),
    ]
    return [f"{path}: {problem}" for failed, path, problem in rules if failed]


def load_config(path: str | Path) -> GatewayConfig:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(p), f"cannot read config file ({exc.strerror})") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(p), f"invalid TOML ({exc})") from exc
    return parse_config(data)


def with_overrides(cfg: GatewayConfig, **sections: dict[str, Any]) -> GatewayConfig:
    """Copy of cfg with some section fields replaced (tests, bench)."""
    out = cfg
    for name, values in sections.items():
        out = replace(out, **{name: replace(getattr(out, name), **values)})
    return out
