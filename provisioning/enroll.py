"""Enrollment steps with I/O: `register` (config + signed record) and `rotate-key` (new key vouched for by the old).

The key that signs the record is loaded from the path the AGENT will use for this meter (computed from the
validated config), so a record can never carry a key the agent does not sign with.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config import ConfigError, load_config
from agent.keys import KeyFileError, load_key_file
from firmware_config.loader import get_profile
from firmware_config.schema import Profile, ProfileError
from protocol.errors import InvalidFieldError, ProtocolError
from protocol.reading import validate_meter_id
from protocol.registration import MeterRole, SignedRegistration
from provisioning.agent_toml import AgentTomlError, merge_meter, read_doc, validate_doc, write_atomic
from provisioning.errors import ProvisionError, ProvisionInputError
from provisioning.keygen import generate_key
from provisioning.register import (
    MeterFacts,
    RegisterError,
    build_record,
    facts_from_record,
    load_commissioning,
    read_record,
    record_path_for,
    write_record,
)

DEFAULT_KEY_FILE = Path("/etc/gridmeter/device.key")
_BUS_NAME_BAD = re.compile(r"[^A-Za-z0-9._-]+")
# Flags that fill config keys, named in the error when validation reports the key missing or wrong.
FLAG_FOR_KEY = {
    "mqtt.gateway_public_key": "--gateway-public-key",
    "mqtt.host": "--mqtt-host",
    "mqtt.port": "--mqtt-port",
    "agent.state_dir": "--state-dir",
    "clock.check": "--clock-check",
    "status.listen": "--status-listen",
    "baudrate": "--baud",
    "unit_id": "--unit-id",
}


class EnrollError(ProvisionError):
    """A step failed (key missing, file unwritable, record invalid); the message says what and what to do."""


class EnrollInputError(EnrollError, ProvisionInputError):
    """Bad or missing input; the message names the flag."""


@dataclass(frozen=True)
class RegisterRequest:
    config: Path
    meter_id: str
    role: str
    zone_id: int
    installer_id: str
    profile: str | None = None
    serial_number: str | None = None
    rated_max_power_w: int | None = None
    key_file: Path | None = None
    meter_key_file: Path | None = None
    port: str | None = None
    host: str | None = None
    tcp_port: int | None = None
    baud: int | None = None
    parity: str | None = None
    stopbits: int | None = None
    unit_id: int | None = None
    bus_name: str | None = None
    state_dir: str | None = None
    mqtt_host: str | None = None
    mqtt_port: int | None = None
    mqtt_username: str | None = None
    gateway_public_key: str | None = None
    clock_check: str | None = None
    poll_interval_s: float | None = None
    status_listen: str | None = None
    record_out: Path | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RegisterRequest:
        """Flags win over the commissioning result, which fills profile, bus, unit id and serial number."""
        com: dict[str, Any] = {}
        if args.commissioning:
            try:
                com = dict(load_commissioning(Path(args.commissioning)))
            except RegisterError as exc:
                raise EnrollInputError(str(exc)) from exc
        bus = com.get("bus", {}) if isinstance(com.get("bus"), dict) else {}

        def pick(flag: Any, value: Any) -> Any:
            return flag if flag is not None else value

        def path(v: str | None) -> Path | None:
            return Path(v).absolute() if v else None

        return cls(
            config=Path(args.config).absolute(), meter_id=args.meter_id, role=args.role, zone_id=args.zone_id,
            installer_id=args.installer_id, profile=pick(args.profile, com.get("profile")),
            serial_number=pick(args.serial_number, com.get("serial_number")),
            rated_max_power_w=args.rated_max_power_w, key_file=path(args.key_file),
            meter_key_file=path(args.meter_key_file),
            port=pick(args.port, bus.get("port")), host=pick(args.host, bus.get("host")),
            tcp_port=pick(args.tcp_port, bus.get("tcp_port")), baud=pick(args.baud, bus.get("baudrate")),
            parity=pick(args.parity, bus.get("parity")), stopbits=pick(args.stopbits, bus.get("stopbits")),
            unit_id=pick(args.unit_id, com.get("unit_id")), bus_name=args.bus_name, state_dir=args.state_dir,
            mqtt_host=args.mqtt_host, mqtt_port=args.mqtt_port, mqtt_username=args.mqtt_username,
            gateway_public_key=args.gateway_public_key, clock_check=args.clock_check,
            poll_interval_s=args.poll_interval_s, status_listen=args.status_listen,
            record_out=path(args.record_out),
        )


@dataclass
class EnrollResult:
    config: Path
    records: list[tuple[Path, SignedRegistration]] = field(default_factory=list)
    backup: Path | None = None


def _profile(profile_id: str | None) -> Profile:
    if not profile_id:
        raise EnrollInputError("--profile: required (or give --commissioning with a passed commissioning result)")
    try:
        return get_profile(profile_id)
    except ProfileError as exc:
        raise EnrollInputError(f"--profile: {exc}") from exc


def default_bus_name(port: str | None, host: str | None, tcp_port: int) -> str:
    raw = f"rs485-{os.path.basename(port)}" if port else f"tcp-{host}-{tcp_port}"
    return _BUS_NAME_BAD.sub("-", raw)[:32]


def _bus(req: RegisterRequest, profile: Profile) -> dict[str, Any]:
    if bool(req.port) == bool(req.host):
        raise EnrollInputError("--port or --host: give exactly one (or --commissioning with the bus)")
    if req.host:
        tcp_port = req.tcp_port or profile.tcp_port
        name = req.bus_name or default_bus_name(None, req.host, tcp_port)
        return {"name": name, "kind": "tcp", "host": req.host, "tcp_port": tcp_port}
    if profile.serial is None:
        raise EnrollInputError(f"--port: profile {profile.id} is not a serial (RS-485) meter; use --host")
    s = profile.serial
    return {
        "name": req.bus_name or default_bus_name(req.port, None, 0), "kind": "rtu", "port": req.port,
        "baudrate": req.baud or s.baudrate, "parity": req.parity or s.parity, "stopbits": req.stopbits or s.stopbits,
    }


def _explain(exc: AgentTomlError) -> str:
    msg = str(exc)
    hints = sorted({flag for key, flag in FLAG_FOR_KEY.items() if key in msg})
    return msg + (f"\n  (set with {', '.join(hints)})" if hints else "")


def _config_entries(req: RegisterRequest, profile: Profile, doc: dict[str, Any],
                    unit_id: int) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """(config sections to set, [[meters]] entry) from the flags. Pure. The device key goes to [agent] unless the
    config already names another one: then this meter gets its own key_file and the other meters keep theirs."""
    agent_sec: dict[str, Any] = {"state_dir": req.state_dir, "poll_interval_s": req.poll_interval_s}
    meter: dict[str, Any] = {"meter_id": req.meter_id, "unit_id": unit_id, "profile": profile.id}
    existing_key = doc.get("agent", {}).get("key_file")
    if req.meter_key_file:
        meter["key_file"] = str(req.meter_key_file)
    elif req.key_file and existing_key and Path(existing_key) != req.key_file:
        meter["key_file"] = str(req.key_file)  # keep the other meters' device key; this meter signs with its own
    elif not existing_key:
        agent_sec["key_file"] = str(req.key_file or DEFAULT_KEY_FILE)
    if req.rated_max_power_w is not None:
        meter["rated_max_power_w"] = req.rated_max_power_w
    sections = {
        "agent": agent_sec,
        "clock": {"check": req.clock_check},
        "status": {"listen": req.status_listen},
        "mqtt": {"host": req.mqtt_host, "port": req.mqtt_port, "username": req.mqtt_username,
                 "gateway_public_key": req.gateway_public_key},
    }
    return sections, meter


def register_meter(req: RegisterRequest, *, now_ms: int) -> EnrollResult:
    try:
        validate_meter_id(req.meter_id)
        role = MeterRole.parse(req.role)
    except InvalidFieldError as exc:
        raise EnrollInputError(f"--meter-id/--role: {exc}") from exc
    profile = _profile(req.profile)
    if not req.serial_number:
        raise EnrollInputError("--serial-number: required (from the label, or --commissioning)")
    unit_id = req.unit_id if req.unit_id is not None else profile.default_unit_id
    try:
        doc = read_doc(req.config)
    except AgentTomlError as exc:
        raise EnrollError(str(exc)) from exc
    sections, meter = _config_entries(req, profile, doc, unit_id)
    new_doc = merge_meter(doc, sections, _bus(req, profile), meter)
    try:
        cfg = validate_doc(new_doc, req.config)
    except AgentTomlError as exc:
        raise EnrollInputError(_explain(exc)) from exc
    mcfg = next(m for m in cfg.meters if m.meter_id == req.meter_id)
    key_path = cfg.key_file_for(mcfg)
    try:
        key = load_key_file(key_path)
    except KeyFileError as exc:
        raise EnrollError(f"{exc}\n  (run `gridmeter provision keygen --key-file {key_path}` first)") from exc
    facts = MeterFacts(req.meter_id, profile.id, str(req.serial_number), role, req.zone_id,
                       req.rated_max_power_w or profile.rated.max_power_w, req.installer_id)
    try:
        signed = build_record(facts, key, now_ms)
    except ProtocolError as exc:
        raise EnrollInputError(f"record: {exc}") from exc
    header = "gridmeter agent config (written by `gridmeter provision register`; validated at agent start)"
    from provisioning.agent_toml import dumps

    try:
        write_atomic(req.config, dumps(new_doc, header=header))
        out = req.record_out or record_path_for(req.config, req.meter_id)
        write_record(out, signed)
    except AgentTomlError as exc:
        raise EnrollError(str(exc)) from exc
    return EnrollResult(req.config, [(out, signed)])


def rotate_key(config: Path, meter_id: str, *, owner: str | None, installer_id: str | None,
               now_ms: int) -> EnrollResult:
    """New key at the meter's key path; a record signed by new + old key for every meter sharing that key."""
    try:
        cfg = load_config(Path(config), env={})
    except ConfigError as exc:
        raise EnrollError(str(exc)) from exc
    target = next((m for m in cfg.meters if m.meter_id == meter_id), None)
    if target is None:
        known = ", ".join(m.meter_id for m in cfg.meters)
        raise EnrollInputError(f"--meter-id: {meter_id!r} is not in {config} (known: {known})")
    key_path = cfg.key_file_for(target)
    sharing = [m for m in cfg.meters if cfg.key_file_for(m) == key_path]
    try:
        old = load_key_file(key_path)
    except KeyFileError as exc:
        raise EnrollError(f"{exc}\n  (rotation needs the current key to vouch for the new one)") from exc
    previous: list[tuple[Path, MeterFacts]] = []
    for m in sharing:
        path = record_path_for(Path(config), m.meter_id)
        try:
            rec = read_record(path).registration
        except RegisterError as exc:
            raise EnrollError(f"{exc}\n  (rotation re-issues each meter's record: the previous one is needed)") from exc
        if rec.public_key != old.public_key:
            raise EnrollError(f"{path}: record is for another key than {key_path}; was the key replaced already?")
        facts = facts_from_record(rec)
        if installer_id:
            facts = MeterFacts(facts.meter_id, facts.profile, facts.serial_number, facts.role, facts.zone_id,
                               facts.rated_max_power_w, installer_id)
        previous.append((path, facts))
    try:
        result, _ = generate_key(key_path, owner=owner, force=True)
        new = load_key_file(key_path)
    except KeyFileError as exc:
        raise EnrollError(str(exc)) from exc
    out = EnrollResult(Path(config), backup=result.backup)
    for path, facts in previous:
        signed = build_record(facts, new, now_ms, previous=old)
        try:
            path.replace(path.with_name(path.name + ".prev"))
            write_record(path, signed)
        except (OSError, AgentTomlError) as exc:
            raise EnrollError(
                f"{path}: cannot write the rotation record ({exc}). The new key is already in {key_path} and the "
                f"old one in {result.backup}: fix the directory, restore the old key (cp {result.backup} {key_path}) "
                f"and any {path.name}.prev, then run rotate-key again"
            ) from exc
        out.records.append((path, signed))
    return out


def summary_json(result: EnrollResult) -> str:
    from provisioning.register import record_summary

    return json.dumps([{**record_summary(s), "record_file": str(p)} for p, s in result.records])
