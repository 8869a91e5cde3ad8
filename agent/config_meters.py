"""The [[buses]] and [[meters]] tables of the agent config: the meters to read and the buses they sit on.

One reader per table (read_bus, read_meter; the defaults of every [[buses]] key come from agent.bus.BusSpec)
and the checks across tables (cross_check: duplicate names, one bus per device, one meter per bus and unit id).
The single-table sections, parse_config and load_config are in agent.config, which calls these readers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

from agent.bus import BusSpec
from base.toml_table import Table, between, one_of
from firmware_config.schema import BAUDRATES, PARITIES
from protocol.identifiers import meter_id_problem


@dataclass(frozen=True)
class MeterConfig:
    meter_id: str
    bus: str
    unit_id: int
    profile: str
    key_file: Path | None = None  # None: [agent].key_file
    rated_max_power_w: int | None = None  # None: the profile's rated limit


_BUS_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,32}")
# Defaults of every [[buses]] key come from agent.bus.BusSpec (one place, with the reasons next to them).
_BUS_DEFAULTS = {f.name: f.default for f in fields(BusSpec) if f.default is not MISSING}


def read_bus(t: Table) -> tuple[str, BusSpec | None]:
    """(name, spec); spec is None when the table had errors (they are in t.errors)."""
    n_errors = len(t.errors)
    d = _BUS_DEFAULTS
    kind = t.get("kind", str, check=one_of("rtu", "tcp", "rtu-over-tcp"))
    name = t.get("name", str, check=lambda v: None if _BUS_NAME_RE.fullmatch(v) else "1-32 of A-Z a-z 0-9 . _ -")
    values = {
        "port": t.get("port", str, d["port"]),
        "baudrate": t.get("baudrate", int, d["baudrate"], check=one_of(*BAUDRATES)),
        "parity": t.get("parity", str, d["parity"], check=one_of(*PARITIES)),
        "stopbits": t.get("stopbits", int, d["stopbits"], check=one_of(1, 2)),
        "bytesize": t.get("bytesize", int, d["bytesize"], check=one_of(7, 8)),
        "host": t.get("host", str, d["host"]),
        "tcp_port": t.get("tcp_port", int, d["tcp_port"], check=between(1, 65535)),
        "timeout_s": t.get("timeout_s", float, d["timeout_s"], check=between(0.05, 30)),
        "retries": t.get("retries", int, d["retries"], check=between(0, 10)),
        # absent: BusSpec's default for the kind (RTU needs a turnaround pause, TCP none)
        "turnaround_ms": t.get("turnaround_ms", int, d["turnaround_ms"], check=between(0, 5000)),
        "inter_request_delay_ms": t.get("inter_request_delay_ms", int, d["inter_request_delay_ms"],
                                        check=between(0, 5000)),
    }
    if kind == "rtu" and not values["port"]:
        t.errors.append(f"{t.path}.port: required for kind = \"rtu\" (serial device, e.g. /dev/ttyAMA0)")
    if kind in ("tcp", "rtu-over-tcp") and not values["host"]:
        t.errors.append(f"{t.path}.host: required for kind = {kind!r}")
    t.done()
    if len(t.errors) > n_errors:
        return name or "", None
    return name, BusSpec(name=name, kind=kind, **values)


def read_meter(t: Table, base: Path) -> MeterConfig:
    key = t.get("key_file", str, "")
    m = MeterConfig(
        meter_id=t.get("meter_id", str, check=meter_id_problem),
        bus=t.get("bus", str),
        unit_id=t.get("unit_id", int, check=between(1, 247)),
        profile=t.get("profile", str, check=lambda v: None if v else "must not be empty"),
        key_file=base / key if key else None,
        rated_max_power_w=t.get("rated_max_power_w", int, None, check=between(1, 10_000_000)),
    )
    t.done()
    return m


def array_of_tables(data: Mapping[str, Any], key: str, errors: list[str]) -> list[tuple[Any, str]]:
    raw = data.get(key, [])
    if not isinstance(raw, list):
        errors.append(f"{key}: must be an array of tables ([[{key}]]) (got {type(raw).__name__})")
        return []
    return [(item, f"{key}[{i}]") for i, item in enumerate(raw)]


def cross_check(buses: list[tuple[str, BusSpec | None]], meters: tuple[MeterConfig, ...],
                 errors: list[str]) -> None:
    names: dict[str, int] = {}
    endpoints: dict[str, int] = {}
    for i, (name, b) in enumerate(buses):
        if name in names:
            errors.append(f"buses[{i}].name: duplicate of buses[{names[name]}] (got {name!r})")
        names.setdefault(name, i)
        if b is None:
            continue
        if b.key in endpoints:
            errors.append(f"buses[{i}]: same device as buses[{endpoints[b.key]}] (got {b.key!r}); "
                          "one bus per port, put all its meters on that bus")
        endpoints.setdefault(b.key, i)
    if not meters:
        errors.append("meters: at least one [[meters]] entry is required")
    ids: dict[str, int] = {}
    units: dict[tuple[str, int], int] = {}
    for i, m in enumerate(meters):
        if m.meter_id in ids:
            errors.append(f"meters[{i}].meter_id: duplicate of meters[{ids[m.meter_id]}] (got {m.meter_id!r})")
        ids.setdefault(m.meter_id, i)
        if m.bus is not None and m.bus not in names:
            errors.append(f"meters[{i}].bus: no [[buses]] entry with this name (got {m.bus!r})")
        if (m.bus, m.unit_id) in units:
            errors.append(f"meters[{i}].unit_id: same bus and unit id as meters[{units[(m.bus, m.unit_id)]}] "
                          f"(got {m.unit_id!r})")
        units.setdefault((m.bus, m.unit_id), i)
