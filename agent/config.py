"""The agent's one TOML config file: parsed once at start into frozen dataclasses, strictly.

Unknown keys are rejected, every error names the key path and the value received
(`buses[0].baudrate: must be one of 1200, 2400, ... (got 9601)`). Secrets may come from the environment
(ENV_OVERRIDES) so they need not sit in a world-readable file. After load_config() the rest of the agent
trusts the typed config and does no ad-hoc checks.

What lives where: this module holds the typed sections ([agent], [clock], [mqtt], [store], [status],
[homeassistant]) with their defaults and readers, parse_config / load_config and build_specs;
agent.config_meters holds the [[buses]] and [[meters]] tables (MeterConfig) and the checks across them.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from agent.bus import BusSpec
from agent.config_meters import MeterConfig, array_of_tables, cross_check, read_bus, read_meter
from base.toml_table import Table, between, one_of, path_or_none
from protocol.errors import InvalidFieldError
from protocol.identifiers import mqtt_username_problem
from protocol.signing import VerifyKey
from protocol.topics import client_id_problem, prefix_problem

# 10 s is the common meter-poll cadence (mbmd/evcc); faster than 1 s floods a 9600 baud bus.
DEFAULT_POLL_INTERVAL_S = 10.0
# The shortest poll interval accepted. The gateway's default min_read_spacing_ms (gateway.intake.checks) equals it, so
# no poll interval allowed here is refused there as too_frequent.
MIN_POLL_INTERVAL_S = 0.1
# Readings are committed in groups: one SQLite transaction (one fsync of the WAL, each touched page written once
# more) per flush interval instead of per reading. Measured at 4 meters x 1 s (bench/footprint.py): 1000 ms ->
# ~6 kB written per reading, 5000 ms -> ~1 kB (the SD-card budget is 2 KiB). The price: readings wait up to this
# long before they are published, and a power cut loses the readings of at most this long (never energy: the
# registers are cumulative, the next reading carries it; their seqs were never published, so none is reused).
DEFAULT_FLUSH_INTERVAL_MS = 5000
# A gateway normally acks within a second; 30 s avoids resending during a short gateway hiccup.
DEFAULT_ACK_TIMEOUT_S = 30.0
# 500 readings x ~230 bytes = ~115 kB per MQTT message: big enough for a fast drain, far below limits.
DEFAULT_BATCH_MAX = 500
# ~1M readings = 4 meters x 10 s polling for ~29 days offline; ~300 MB of SQLite on the SD card.
DEFAULT_MAX_READINGS = 1_000_000
# A wall-clock step of more than 2 s against the monotonic clock is a jump, not NTP slewing (<= 500 ppm).
DEFAULT_CLOCK_JUMP_TOLERANCE_MS = 2000
DEFAULT_STATUS_LISTEN = "127.0.0.1:9101"
ENV_OVERRIDES = {
    "GRIDMETER_MQTT_USERNAME": ("mqtt", "username"),
    "GRIDMETER_MQTT_PASSWORD": ("mqtt", "password"),
}
_HOST_PORT_RE = re.compile(r"(?P<host>[A-Za-z0-9.\-:\[\]]+):(?P<port>[0-9]{1,5})")


class ConfigError(Exception):
    """A bad config file. str() is one line per problem: `<key path>: <what is wrong> (got <value>)`."""


@dataclass(frozen=True)
class AgentSection:
    state_dir: Path
    key_file: Path
    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S
    profile_dirs: tuple[Path, ...] = ()  # searched after the built-in profile library (site-specific meters)


@dataclass(frozen=True)
class ClockSection:
    require_sync: bool = True
    check: str = "auto"  # auto | always-synced | file:/path
    jump_tolerance_ms: int = DEFAULT_CLOCK_JUMP_TOLERANCE_MS


@dataclass(frozen=True)
class MqttSection:
    gateway_public_key: bytes
    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = ""
    username: str = ""
    password: str = ""
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    topic_prefix: str = "gridmeter/v1"
    ack_timeout_s: float = DEFAULT_ACK_TIMEOUT_S
    batch_max: int = DEFAULT_BATCH_MAX
    keepalive_s: int = 30  # broker declares us dead (LWT) after 1.5x this
    session_expiry_s: int = 7 * 24 * 3600  # broker keeps our session (ack subscription) a week offline
    inflight_max: int = 64  # unacked PUBLISHes in flight: 1 would cap the drain at one batch per RTT
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0

    def __repr__(self) -> str:  # never print the password
        return f"MqttSection(host={self.host!r}, port={self.port}, client_id={self.client_id!r})"


@dataclass(frozen=True)
class StoreSection:
    max_readings: int = DEFAULT_MAX_READINGS
    overflow: Literal["drop_oldest", "stop_reading"] = "drop_oldest"
    flush_interval_ms: int = DEFAULT_FLUSH_INTERVAL_MS  # readings are grouped per transaction this long


@dataclass(frozen=True)
class StatusSection:
    listen: str = DEFAULT_STATUS_LISTEN  # "" disables the endpoint (and the household page on it)
    # Read-only Solana JSON-RPC for the household page's "what the chain says" (on-chain totals, last confirmed
    # submission): one getMultipleAccounts per chain_refresh_s, no key. "" = the page shows no chain column.
    chain_rpc_url: str = ""
    chain_program_id: str = ""  # the oracle program the gateway submits to (required with chain_rpc_url)
    chain_refresh_s: float = 60.0

    @property
    def host_port(self) -> tuple[str, int] | None:
        if not self.listen:
            return None
        m = _HOST_PORT_RE.fullmatch(self.listen)
        assert m is not None  # validated at load
        return m["host"].strip("[]"), int(m["port"])


@dataclass(frozen=True)
class HomeAssistantSection:
    """Optional MQTT discovery for Home Assistant on a LOCAL broker (never the uplink): per meter an import and an
    export energy sensor (kWh, total_increasing: the Energy dashboard) and a power sensor. Values are the
    agent's readings as they are stored, so HA sees the same numbers the gateway gets."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 1883
    username: str = ""
    password: str = ""  # env GRIDMETER_HA_MQTT_PASSWORD overrides
    client_id: str = ""  # "" = gridmeter-ha-<hostname>
    discovery_prefix: str = "homeassistant"  # Home Assistant's default
    state_interval_s: float = 10.0  # publish states at most this often (retained, QoS 0: only the latest matters)

    def __repr__(self) -> str:  # never print the password
        return f"HomeAssistantSection(enabled={self.enabled}, host={self.host!r}, port={self.port})"


@dataclass(frozen=True)
class AgentConfig:
    path: Path
    agent: AgentSection
    clock: ClockSection
    mqtt: MqttSection
    store: StoreSection
    status: StatusSection
    buses: tuple[BusSpec, ...]  # validated here, defaults and reasons from agent.bus
    meters: tuple[MeterConfig, ...]
    homeassistant: HomeAssistantSection = HomeAssistantSection()

    def key_file_for(self, meter: MeterConfig) -> Path:
        return meter.key_file or self.agent.key_file

    @property
    def db_path(self) -> Path:
        return self.agent.state_dir / "agent.sqlite"


def _agent(t: Table, base: Path) -> AgentSection:
    state = t.get("state_dir", str, "/var/lib/gridmeter", check=lambda v: None if v else "must not be empty")
    key = t.get("key_file", str, "/etc/gridmeter/device.key", check=lambda v: None if v else "must not be empty")
    poll = t.get("poll_interval_s", float, DEFAULT_POLL_INTERVAL_S, check=between(MIN_POLL_INTERVAL_S, 3600))
    dirs = tuple(base / d for d in t.get("profile_dirs", list, [], check=_dir_list) or [])
    missing = [str(d) for d in dirs if not d.is_dir()]
    if missing:
        t.fail("profile_dirs", "directory does not exist", missing[0])
    t.done()
    return AgentSection(base / (state or "."), base / (key or "."), poll, dirs)


def _dir_list(v: list[Any]) -> str | None:
    return None if all(isinstance(d, str) and d for d in v) else "must be a list of directory paths"


def _clock_check(v: str) -> str | None:
    if v in ("auto", "always-synced") or (v.startswith("file:") and len(v) > 5):
        return None
    return 'must be "auto", "always-synced" or "file:/path"'


def _clock(t: Table) -> ClockSection:
    c = ClockSection(
        require_sync=t.get("require_sync", bool, True),
        check=t.get("check", str, "auto", check=_clock_check),
        jump_tolerance_ms=t.get(
            "jump_tolerance_ms", int, DEFAULT_CLOCK_JUMP_TOLERANCE_MS, check=between(100, 3_600_000)
        ),
    )
    t.done()
    return c


def _gateway_key(v: str) -> str | None:
    try:
        VerifyKey(bytes.fromhex(v))
    except (ValueError, InvalidFieldError):
        return "must be 64 hex characters of the gateway's Ed25519 public key"
    return None


def _mqtt(t: Table, env: Mapping[str, str], base: Path) -> MqttSection:
    for var, (section, key) in ENV_OVERRIDES.items():
        if section == "mqtt" and var in env:
            t.data[key] = env[var]
    gw = t.get("gateway_public_key", str, check=_gateway_key)
    host = t.get("host", str, "127.0.0.1", check=lambda v: None if v else "must not be empty")
    prefix = t.get("topic_prefix", str, "gridmeter/v1", check=_topic_prefix)
    cid = t.get("client_id", str, "", check=lambda v: client_id_problem(v) if v else None)
    if not cid:
        cid = f"gridmeter-agent-{os.uname().nodename}"[:64]
        if client_id_problem(cid):
            t.errors.append(f"{t.path}.client_id: not set, and the default {cid!r} (from the host name) "
                            "is not a valid client id; set it (1-64 characters of A-Z a-z 0-9 . _ -)")
    m = MqttSection(
        gateway_public_key=bytes.fromhex(gw) if gw else b"",
        host=host,
        port=t.get("port", int, 1883, check=between(1, 65535)),
        client_id=cid,
        username=t.get("username", str, "", check=lambda v: mqtt_username_problem(v) if v else None),
        password=t.get("password", str, ""),
        tls_ca=path_or_none(t, "tls_ca", base, must_exist=True),
        tls_cert=path_or_none(t, "tls_cert", base, must_exist=True),
        tls_key=path_or_none(t, "tls_key", base, must_exist=True),
        topic_prefix=prefix,
        ack_timeout_s=t.get("ack_timeout_s", float, DEFAULT_ACK_TIMEOUT_S, check=between(0.1, 86400)),
        batch_max=t.get("batch_max", int, DEFAULT_BATCH_MAX, check=between(1, 1000)),
        keepalive_s=t.get("keepalive_s", int, 30, check=between(5, 3600)),
        session_expiry_s=t.get("session_expiry_s", int, 7 * 24 * 3600, check=between(0, 0xFFFFFFFF)),
        inflight_max=t.get("inflight_max", int, 64, check=between(1, 1000)),
        reconnect_min_s=t.get("reconnect_min_s", float, 1.0, check=between(0.05, 600)),
        reconnect_max_s=t.get("reconnect_max_s", float, 60.0, check=between(0.05, 3600)),
    )
    if (m.tls_cert is None) != (m.tls_key is None):
        t.errors.append(f"{t.path}.tls_cert/tls_key: give both or neither (got cert={m.tls_cert}, key={m.tls_key})")
    if m.tls_cert is not None and m.tls_ca is None:  # TLS is switched on by tls_ca: without it, plain MQTT
        t.errors.append(f"{t.path}.tls_ca: required with a client certificate (got tls_cert={m.tls_cert})")
    t.done()
    return m


def _topic_prefix(v: str) -> str | None:
    return prefix_problem(v)


def _store(t: Table) -> StoreSection:
    s = StoreSection(
        max_readings=t.get("max_readings", int, DEFAULT_MAX_READINGS, check=between(100, 100_000_000)),
        overflow=t.get("overflow", str, "drop_oldest", check=one_of("drop_oldest", "stop_reading")),
        flush_interval_ms=t.get("flush_interval_ms", int, DEFAULT_FLUSH_INTERVAL_MS, check=between(0, 60_000)),
    )
    t.done()
    return s


def _listen(v: str) -> str | None:
    if v == "":
        return None
    m = _HOST_PORT_RE.fullmatch(v)
    if m is None or not 1 <= int(m["port"]) <= 65535:
        return 'must be "host:port" (or "" to disable)'
    return None


def _http_url(v: str) -> str | None:
    if v == "" or re.fullmatch(r"https?://[A-Za-z0-9.\-:\[\]]+(:\d{1,5})?(/[^\s]*)?", v):
        return None
    return 'must be an http:// or https:// URL (or "" to disable)'


def _program_id(v: str) -> str | None:
    if v == "":
        return None
    from oracle_interface.layout import account_key_problem

    return account_key_problem(v)


def _status(t: Table) -> StatusSection:
    s = StatusSection(
        listen=t.get("listen", str, DEFAULT_STATUS_LISTEN, check=_listen),
        chain_rpc_url=t.get("chain_rpc_url", str, "", check=_http_url),
        chain_program_id=t.get("chain_program_id", str, "", check=_program_id),
        chain_refresh_s=t.get("chain_refresh_s", float, 60.0, check=between(5, 86400)),
    )
    if s.chain_rpc_url and not s.chain_program_id:
        t.errors.append(f"{t.path}.chain_program_id: required with chain_rpc_url (got \"\")")
    t.done()
    return s


def _homeassistant(t: Table, env: Mapping[str, str]) -> HomeAssistantSection:
    if "GRIDMETER_HA_MQTT_PASSWORD" in env:
        t.data["password"] = env["GRIDMETER_HA_MQTT_PASSWORD"]
    prefix = t.get("discovery_prefix", str, "homeassistant",
                   check=lambda v: None if re.fullmatch(r"[A-Za-z0-9_-]{1,64}", v) else "1-64 of A-Z a-z 0-9 _ -")
    h = HomeAssistantSection(
        enabled=t.get("enabled", bool, False),
        host=t.get("host", str, "127.0.0.1", check=lambda v: None if v else "must not be empty"),
        port=t.get("port", int, 1883, check=between(1, 65535)),
        username=t.get("username", str, ""),
        password=t.get("password", str, ""),
        client_id=t.get("client_id", str, "", check=lambda v: client_id_problem(v) if v else None),
        discovery_prefix=prefix,
        state_interval_s=t.get("state_interval_s", float, 10.0, check=between(1, 3600)),
    )
    t.done()
    return h


def parse_config(data: Mapping[str, Any], *, path: Path, env: Mapping[str, str] | None = None) -> AgentConfig:
    """Validate a parsed TOML document. Relative paths are relative to the config file's directory."""
    env = os.environ if env is None else env
    errors: list[str] = []
    base = path.parent
    root = Table(data, "", errors)
    sections = {k: Table(root.get(k, dict, {}), k, errors)
                for k in ("agent", "clock", "mqtt", "store", "status", "homeassistant")}
    agent = _agent(sections["agent"], base)
    clock = _clock(sections["clock"])
    mqtt = _mqtt(sections["mqtt"], env, base)
    store = _store(sections["store"])
    status = _status(sections["status"])
    homeassistant = _homeassistant(sections["homeassistant"], env)
    root.seen |= {"buses", "meters"}
    buses = [read_bus(Table(d, p, errors)) for d, p in array_of_tables(data, "buses", errors)]
    meters = tuple(read_meter(Table(d, p, errors), base) for d, p in array_of_tables(data, "meters", errors))
    root.done()
    cross_check(buses, meters, errors)
    if errors:
        raise ConfigError(f"{path}: invalid config:\n  " + "\n  ".join(errors))
    specs = tuple(b for _name, b in buses if b is not None)
    return AgentConfig(path, agent, clock, mqtt, store, status, specs, meters, homeassistant)


def load_config(path: Path, *, env: Mapping[str, str] | None = None) -> AgentConfig:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    return parse_config(data, path=path, env=env)


def build_specs(cfg: AgentConfig, profiles: Mapping[str, Any] | None = None) -> tuple[dict[str, BusSpec], list[Any]]:
    """BusSpec per bus name and MeterSpec per meter for agent.poller; profiles from firmware_config.loader.

    Raises ConfigError naming `meters[i].profile` for an unknown or invalid profile.
    """
    from agent.poller import MeterSpec
    from firmware_config.loader import PROFILES_DIR, load_all
    from firmware_config.schema import ProfileError

    if profiles is None:
        try:
            profiles = load_all((PROFILES_DIR, *cfg.agent.profile_dirs))
        except ProfileError as exc:
            raise ConfigError(f"{cfg.path}: the profile library does not load: {exc}") from exc
    buses = {b.name: b for b in cfg.buses}
    errors = [
        f"meters[{i}].profile: unknown profile; known: {', '.join(sorted(profiles))} (got {m.profile!r})"
        for i, m in enumerate(cfg.meters) if m.profile not in profiles
    ]
    if errors:
        raise ConfigError(f"{cfg.path}: invalid config:\n  " + "\n  ".join(errors))
    meters = [
        MeterSpec(meter_id=m.meter_id, bus=m.bus, unit_id=m.unit_id, profile=profiles[m.profile],
                  rated_max_power_w=m.rated_max_power_w)
        for m in cfg.meters
    ]
    return buses, meters
