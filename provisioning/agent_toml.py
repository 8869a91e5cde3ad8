"""Write the agent's TOML config (contracts.md schema): merge one meter into it, validate, write atomically.

The document is validated with agent.config.parse_config BEFORE it replaces the old file, so provisioning
can never leave a config the agent refuses to start with. Written tmp + fsync + rename + fsync(dir): a power
cut in the cellar leaves the old config or the new one, never half of one.

TOML is written with tomli-w (tomllib, in the stdlib, only reads).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

from agent.config import AgentConfig, ConfigError, parse_config
from base.durable_file import write_durably
from provisioning.errors import ProvisionError

SECTION_ORDER = ("agent", "clock", "mqtt", "store", "status")
ARRAY_ORDER = ("buses", "meters")
# A config file is a few kB; refuse to parse something that is obviously not one.
MAX_CONFIG_BYTES = 1_000_000


class AgentTomlError(ProvisionError):
    """The config could not be read, merged or written; the message names the file and the problem."""


def dumps(doc: Mapping[str, Any], header: str = "") -> str:
    """TOML text of `doc` (tomli-w), sections in a fixed, readable order, None values left out."""
    keys = [k for k in SECTION_ORDER if k in doc] + sorted(k for k in doc if k not in SECTION_ORDER + ARRAY_ORDER)
    ordered: dict[str, Any] = {}
    for key in keys:
        if not isinstance(doc[key], Mapping):
            raise AgentTomlError(f"{key}: expected a table")
        ordered[key] = {k: v for k, v in doc[key].items() if v is not None}
    for key in ARRAY_ORDER:
        if doc.get(key):
            ordered[key] = [{k: v for k, v in item.items() if v is not None} for item in doc[key]]
    try:
        body = tomli_w.dumps(ordered)
    except TypeError as exc:
        raise AgentTomlError(f"cannot write config as TOML: {exc}") from exc
    comments = "".join(f"# {line}\n" for line in header.splitlines())
    return comments + ("\n" if comments else "") + body


def read_doc(path: Path) -> dict[str, Any]:
    """The existing config as a plain dict ({} if the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        raw = path.read_bytes()
        if len(raw) > MAX_CONFIG_BYTES:
            raise AgentTomlError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes; not an agent config")
        return tomllib.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise AgentTomlError(f"{path}: cannot read existing config ({exc}); fix or move it away") from exc


def merge_meter(doc: Mapping[str, Any], sections: Mapping[str, Mapping[str, Any]], bus: Mapping[str, Any],
                meter: Mapping[str, Any]) -> dict[str, Any]:
    """Return a new doc: `sections` keys set, `bus` added or replaced (by name, or by same device),
    `meter` added or replaced (by meter_id). Pure."""
    new: dict[str, Any] = {k: dict(v) for k, v in doc.items() if isinstance(v, Mapping)}
    for name, values in sections.items():
        new.setdefault(name, {}).update({k: v for k, v in values.items() if v is not None})
    buses = [dict(b) for b in doc.get("buses", [])]
    endpoint = _endpoint(bus)
    same = [i for i, b in enumerate(buses) if _endpoint(b) == endpoint or b.get("name") == bus["name"]]
    if same:
        i = same[0]
        bus_name = buses[i]["name"]  # keep the existing name: other meters on that bus refer to it
        buses[i] = {**buses[i], **dict(bus), "name": bus_name}
    else:
        bus_name = bus["name"]
        buses.append(dict(bus))
    meters = [dict(m) for m in doc.get("meters", []) if m.get("meter_id") != meter["meter_id"]]
    meters.append({**dict(meter), "bus": bus_name})
    new["buses"], new["meters"] = buses, meters
    return new


def _endpoint(bus: Mapping[str, Any]) -> str:
    if bus.get("kind", "rtu") == "rtu":
        return f"rtu:{bus.get('port')}"
    return f"{bus.get('kind')}:{bus.get('host')}:{bus.get('tcp_port', 502)}"


def validate_doc(doc: Mapping[str, Any], path: Path) -> AgentConfig:
    """Validate exactly as the agent will at start; env overrides are not applied (file content only)."""
    try:
        return parse_config(doc, path=Path(path), env={})
    except ConfigError as exc:
        raise AgentTomlError(str(exc)) from exc


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """tmp + fsync + rename + fsync(dir). Mode 0644: the agent runs as its own user and must read its config;
    provisioning never writes secrets into it (the MQTT password goes to the 0600 EnvironmentFile)."""
    try:
        write_durably(Path(path), text.encode("utf-8"), mode)
    except OSError as exc:
        raise AgentTomlError(f"{path}: cannot write ({exc.strerror or exc})") from exc
