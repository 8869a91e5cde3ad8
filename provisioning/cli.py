"""`gridmeter provision` subcommands: scan, commission, keygen, register, rotate-key, mqtt-credentials.

Runs on the Pi while the agent is stopped (scan and commission take an flock on the serial device and refuse
while the agent holds it). Thin: parses arguments, calls the domain modules, prints, returns an exit code.

Exit codes (also in provisioning/INSTALLER.md):
    0 ok · 1 failed/refused (message says why) · 2 bad input (names the flag) · 3 commissioning: implausible values
    or not confirmed · 4 scan: no meter found · 5 port busy (the agent or another tool holds it)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_IMPLAUSIBLE = 3
EXIT_NOTHING_FOUND = 4
EXIT_BUSY = 5

DEFAULT_KEY_FILE = "/etc/gridmeter/device.key"
DEFAULT_CONFIG = "/etc/gridmeter/agent.toml"


Handler = Callable[[argparse.Namespace], int]


def _err(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)


def _guarded(handler: Handler) -> Handler:
    """Map every provisioning error to its exit code and a one-line message on stderr: no step ends in a
    traceback. OSError is the last resort for a file or device the step did not anticipate (it names the path)."""

    def run(args: argparse.Namespace) -> int:
        from agent.keys import KeyFileError
        from provisioning.errors import PortBusyError, ProvisionError, ProvisionInputError

        try:
            return handler(args)
        except PortBusyError as exc:
            _err(str(exc))
            return EXIT_BUSY
        except ProvisionInputError as exc:
            _err(str(exc))
            return EXIT_USAGE
        except (ProvisionError, KeyFileError) as exc:
            _err(str(exc))
            return EXIT_FAILED
        except OSError as exc:
            _err(f"{exc.filename or 'I/O'}: {exc.strerror or exc}")
            return EXIT_FAILED

    return run


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "provision",
        help="installer tools: scan, commission, keygen, register, rotate-key, mqtt-credentials",
        description="Installer tools: find and identify meters, check decoded values, create the device key, "
        "write the agent config and a signed registration record. Run with the agent stopped.",
    )
    p.set_defaults(func=lambda _a: p.print_help() or EXIT_USAGE)
    ps = p.add_subparsers(dest="provision_command", metavar="STEP")
    _add_scan(ps)
    _add_commission(ps)
    _add_keygen(ps)
    _add_register(ps)
    _add_rotate(ps)
    _add_credentials(ps)


# ---- scan ---------------------------------------------------------------------------------------------------------


def _add_scan(ps: Any) -> None:
    s = ps.add_parser("scan", help="find and identify meters on a serial port or a Modbus TCP host",
                      description="Try the common framings and unit ids, identify each meter by its profile's rule.")
    where = s.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", help="serial device, e.g. /dev/ttyAMA0 or /dev/ttyUSB0")
    where.add_argument("--host", help="Modbus TCP host (inverter, gateway or meter)")
    s.add_argument("--tcp-port", type=int, help="TCP port (default: 502 and 1502)")
    s.add_argument("--ids", help="unit ids, e.g. 1-10,240 (default: 1-10, every profile's factory default, "
                   "240,200; with --full 1-247)")
    s.add_argument("--full", action="store_true",
                   help="try every framing and unit id 1-247 instead of stopping once the bus answered (slow)")
    s.add_argument("--bauds", help="baud rates to try, e.g. 9600,2400 (default: 9600,19200,2400,38400)")
    s.add_argument("--parities", help="parities to try, e.g. N,E (default: N,E)")
    s.add_argument("--profiles", help="only these profile ids (comma separated)")
    s.add_argument("--profile-dir", action="append", default=[], help="extra directory of profile TOML files")
    s.add_argument("--timeout-s", type=float, help="reply timeout per request in seconds (default 0.5)")
    s.add_argument("--json", action="store_true", help="print a JSON list of found meters")
    s.set_defaults(func=_guarded(_scan))


def _quiet_modbus(args: argparse.Namespace) -> None:
    """Timeouts are expected while probing: pymodbus logs each as ERROR; we report them ourselves."""
    if not getattr(args, "verbose", 0):
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


def _scan(args: argparse.Namespace) -> int:
    from provisioning import scan

    _quiet_modbus(args)
    opts = scan.options_from_args(args)
    progress = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731 - stderr keeps --json clean
    report = scan.run_scan(opts, progress=progress)
    if args.json:
        print(json.dumps([f.to_json() for f in report.found], indent=1))
    else:
        print(scan.format_report(report))
    return EXIT_OK if report.found else EXIT_NOTHING_FOUND


# ---- commission ---------------------------------------------------------------------------------------------------


def _add_commission(ps: Any) -> None:
    c = ps.add_parser("commission", help="read a meter once, check plausibility, confirm against its display",
                      description="Reads the meter through its profile, shows values next to plausible ranges, checks "
                      "that the counters are non-zero and do not go backwards over a short wait, asks you to compare "
                      "the energy counter with the meter's display, and records the result as JSON.")
    c.add_argument("--profile", required=True, help="profile id (see `provision scan`)")
    c.add_argument("--profile-dir", action="append", default=[], help="extra directory of profile TOML files")
    where = c.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", help="serial device")
    where.add_argument("--host", help="Modbus TCP host")
    c.add_argument("--tcp-port", type=int, help="TCP port (default: the profile's)")
    c.add_argument("--unit-id", type=int, help="Modbus unit id (default: the profile's)")
    c.add_argument("--baud", type=int, help="baud rate (default: the profile's)")
    c.add_argument("--parity", choices=("N", "E", "O"), help="parity (default: the profile's)")
    c.add_argument("--stopbits", type=int, choices=(1, 2), help="stop bits (default: the profile's)")
    c.add_argument("--wait-s", type=float, help="seconds between the two reads (default 10)")
    c.add_argument("--expect-flow", action="store_true",
                   help="fail unless a counter increased during the wait (use with a known load)")
    c.add_argument("--display-kwh", help="the import kWh shown on the meter's display (non-interactive check)")
    c.add_argument("--no-generation", action="store_true",
                   help="the site cannot export (no PV, battery or generator): negative power is a wiring fault")
    c.add_argument("--ct-primary-a", type=int, help="CT meters: primary current printed on the CTs (100 for 100/5 A)")
    c.add_argument("--known-load-w", type=int,
                   help="check the power step against a load you switch on when asked (e.g. 2000 for a kettle)")
    c.add_argument("--yes", action="store_true", help="do not ask (benches): accept the display comparison")
    c.add_argument("--config", default=DEFAULT_CONFIG, help="agent config the meter will go into: the result is "
                   "written next to it (default %(default)s)")
    c.add_argument("--out", help="result JSON (default: <config dir>/commission-<profile>-unit<id>.json)")
    c.set_defaults(func=_guarded(_commission))


def _commission(args: argparse.Namespace) -> int:
    from provisioning import commission

    _quiet_modbus(args)
    opts = commission.options_from_args(args)
    result = commission.run_commission(opts, ask=None if args.yes else commission.ask_tty)
    print(commission.format_result(result))
    commission.write_result(opts.out, result)
    print(f"result written to {opts.out}")
    return EXIT_OK if result.passed else EXIT_IMPLAUSIBLE


# ---- keygen -------------------------------------------------------------------------------------------------------


def _add_keygen(ps: Any) -> None:
    k = ps.add_parser("keygen", help="create the device's Ed25519 key (0600); prints only the public key",
                      description="Creates the Ed25519 signing key on this device. The private key is never printed.")
    k.add_argument("--key-file", default=DEFAULT_KEY_FILE, help="where to write the key (default %(default)s)")
    k.add_argument("--owner", help="user the agent runs as (the file is chown'ed to it), e.g. gridmeter")
    k.add_argument("--force", action="store_true", help="overwrite an existing key (the old one is kept as a backup)")
    k.add_argument("--json", action="store_true", help="print {key_file, public_key_hex, public_key_base58}")
    k.set_defaults(func=_guarded(_keygen))


def _keygen(args: argparse.Namespace) -> int:
    from provisioning.keygen import describe, ensure_parent, generate_key

    path = Path(args.key_file)
    ensure_parent(path)
    result, _previous = generate_key(path, owner=args.owner, force=args.force)
    if args.json:
        print(json.dumps({"key_file": str(result.key_file), "public_key_hex": result.public_hex,
                          "public_key_base58": result.public_base58,
                          "backup": str(result.backup) if result.backup else None}))
    else:
        print(describe(result))
    return EXIT_OK


# ---- register -----------------------------------------------------------------------------------------------------


def _add_register(ps: Any) -> None:
    r = ps.add_parser("register", help="write the agent config and a signed registration record (file + QR)",
                      description="Adds the meter to the agent config (validated, atomic write) and creates its "
                      "registration record signed by the meter key. Give the record to the gateway operator: "
                      "`gridmeter gateway meters add FILE`.")
    r.add_argument("--config", default=DEFAULT_CONFIG, help="agent config to create or update (default %(default)s)")
    r.add_argument("--commissioning", help="commissioning result JSON: supplies profile, bus, unit id, serial")
    r.add_argument("--meter-id", required=True, help="1-32 characters of A-Z a-z 0-9 . _ - (e.g. HOUSE-12)")
    r.add_argument("--profile", help="profile id (default: from --commissioning)")
    r.add_argument("--serial-number", help="meter serial number (default: from --commissioning)")
    r.add_argument("--role", required=True, choices=("grid", "production", "consumption"),
                   help="grid = bidirectional grid meter; production = PV meter; consumption = load meter")
    r.add_argument("--zone-id", type=int, required=True, help="grid zone id (from the operator)")
    r.add_argument("--installer-id", required=True, help="your installer id (goes into the record)")
    r.add_argument("--rated-max-power-w", type=int, help="meter's rated max power (default: the profile's)")
    r.add_argument("--key-file", help=f"device key (default: the config's [agent].key_file or {DEFAULT_KEY_FILE})")
    r.add_argument("--meter-key-file", help="a key for this meter only (default: the device key)")
    r.add_argument("--port", help="serial device (default: from --commissioning)")
    r.add_argument("--host", help="Modbus TCP host (default: from --commissioning)")
    r.add_argument("--tcp-port", type=int, help="Modbus TCP port")
    r.add_argument("--baud", type=int, help="baud rate")
    r.add_argument("--parity", choices=("N", "E", "O"), help="parity")
    r.add_argument("--stopbits", type=int, choices=(1, 2), help="stop bits")
    r.add_argument("--unit-id", type=int, help="Modbus unit id")
    r.add_argument("--bus-name", help="name of the bus in the config (default: derived from the port/host)")
    r.add_argument("--state-dir", help="agent state directory (default /var/lib/gridmeter)")
    r.add_argument("--mqtt-host", help="broker host")
    r.add_argument("--mqtt-port", type=int, help="broker port")
    r.add_argument("--mqtt-username", help="broker username (password: env GRIDMETER_MQTT_PASSWORD)")
    r.add_argument("--gateway-public-key", help="gateway's Ed25519 public key, 64 hex (verifies acks)")
    r.add_argument("--clock-check", help='clock check: auto | always-synced | file:/path')
    r.add_argument("--poll-interval-s", type=float, help="seconds between reads")
    r.add_argument("--status-listen", help='agent status endpoint host:port ("" disables; default 127.0.0.1:9101)')
    r.add_argument("--record-out", help="record file (default: <config dir>/<meter-id>.gmreg)")
    r.add_argument("--no-qr", action="store_true", help="do not print the QR code")
    r.add_argument("--json", action="store_true", help="print the record summary as JSON")
    r.set_defaults(func=_guarded(_register))


def _register(args: argparse.Namespace) -> int:
    from provisioning import enroll

    out = enroll.register_meter(enroll.RegisterRequest.from_args(args), now_ms=time.time_ns() // 1_000_000)
    _print_records(args, out)
    return EXIT_OK


def _print_records(args: argparse.Namespace, out: Any) -> None:
    from provisioning.register import qr_ascii, record_summary

    for path, signed in out.records:
        if args.json:
            print(json.dumps({**record_summary(signed), "record_file": str(path), "config": str(out.config)}))
            continue
        print(f"agent config:  {out.config}")
        print(f"record file:   {path}")
        for k, v in record_summary(signed).items():
            print(f"  {k:<18} {v}")
        if not args.no_qr:
            print()
            print(qr_ascii(signed.to_text()))
        print(f"next: give {path.name} to the gateway operator: gridmeter gateway meters add {path.name}")


# ---- rotate-key ---------------------------------------------------------------------------------------------------


def _add_rotate(ps: Any) -> None:
    r = ps.add_parser("rotate-key", help="replace a meter's key; the record is signed by the new AND the old key",
                      description="Creates a new key in place of the meter's key file (the old one is kept as a "
                      "backup) and writes a registration record signed by both keys for every meter using it.")
    r.add_argument("--config", default=DEFAULT_CONFIG, help="agent config (default %(default)s)")
    r.add_argument("--meter-id", required=True, help="meter whose key is rotated")
    r.add_argument("--owner", help="user the agent runs as (owner of the new key file)")
    r.add_argument("--installer-id", help="installer id for the new record (default: the previous record's)")
    r.add_argument("--no-qr", action="store_true", help="do not print the QR code")
    r.add_argument("--json", action="store_true", help="print the record summaries as JSON")
    r.set_defaults(func=_guarded(_rotate))


def _rotate(args: argparse.Namespace) -> int:
    from provisioning import enroll

    out = enroll.rotate_key(Path(args.config), args.meter_id, owner=args.owner,
                            installer_id=args.installer_id, now_ms=time.time_ns() // 1_000_000)
    _print_records(args, out)
    if not args.json:
        print(f"old key kept as {out.backup}: delete it once the gateway accepted the new records")
    return EXIT_OK


# ---- mqtt-credentials ---------------------------------------------------------------------------------------------


def _add_credentials(ps: Any) -> None:
    m = ps.add_parser("mqtt-credentials", help="broker username/password + mosquitto ACL (or TLS key/CSR/cert)",
                      description="Generates the agent's broker identity, the mosquitto password-file line and the "
                      "ACL lines that confine it to its own meters' topics.")
    m.add_argument("--meter-id", action="append", default=[], help="meter id (repeat for several meters)")
    m.add_argument("--config", help="take the meter ids from this agent config (and set [mqtt].username there)")
    m.add_argument("--username", help="broker username (default gm-<first meter id>)")
    m.add_argument("--out-dir", default=".", help="where to write the files (default: current directory)")
    m.add_argument("--env-file", help="write the agent's secret here (the systemd unit reads /etc/gridmeter/agent.env)")
    m.add_argument("--topic-prefix", default="gridmeter/v1", help="topic prefix (default %(default)s)")
    m.add_argument("--tls-csr", action="store_true", help="also write an EC key + CSR with CN = username")
    m.add_argument("--ca-cert", help="fleet CA certificate: sign a client certificate with it (needs --ca-key)")
    m.add_argument("--ca-key", help="fleet CA private key (PEM, unencrypted)")
    m.add_argument("--cert-days", type=int, help="client certificate validity in days")
    m.add_argument("--json", action="store_true", help="print file paths and ACL as JSON")
    m.set_defaults(func=_guarded(_credentials))


def _credentials(args: argparse.Namespace) -> int:
    from provisioning import credentials as broker_identity

    out = broker_identity.create(broker_identity.IdentityRequest.from_args(args))
    if args.json:
        print(json.dumps(out.to_json()))
    else:
        print(broker_identity.describe(out))
    return EXIT_OK
