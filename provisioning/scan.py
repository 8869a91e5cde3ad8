"""`gridmeter provision scan`: find the meters on an RS-485 port (or a Modbus TCP host) and say what they are.

For each framing (9600/19200/2400/38400 x 8N1/8E1 by default) and each unit id one presence read is sent; any
reply, data or Modbus exception, means a device is there. Only then are the profiles' identification rules run
(Eastron meter code, ABB type designation, Carlo Gavazzi id code, SunSpec discovery: SunS at 40000/0/50000 and the
model chain, over RTU as over TCP), with one read per distinct register. A unit found at one framing is not probed
again at the next.

Fast path (default): the unit ids installers meet (1-10, every profile's factory default, Fronius 240/200), and the
scan stops after the first framing (or TCP port) at which something answered: every meter on one RS-485 bus shares
its framing. `--full` tries every framing and every id 1-247 (minutes; bounded by DEFAULT_MAX_PROBES). Bounded
and gentle: one request at a time, a pause between units.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from firmware_config.loader import PROFILES_DIR, load_all
from firmware_config.schema import BAUDRATES, Profile, ProfileError
from provisioning.errors import ProvisionError, ProvisionInputError
from provisioning.probe import BusTarget, Identification, ProbeError, UnitCache, identify_all, opened, read_rule

__all__ = ["ScanError", "ScanInputError", "format_report", "run_scan"]

# Framings tried in this order: 9600 is the factory default of most meters here (SDM630/72, ABB and CG as run by
# mbmd/evcc, Inepro), 19200 Schneider, 2400 the single-phase Eastrons, 38400 for re-configured meters.
DEFAULT_BAUDS = (9600, 19200, 2400, 38400)
DEFAULT_PARITIES = ("N", "E")
# Fast path: 1-10 covers the factory default of most meters (1) and the usual renumbering of a few meters on one
# bus; 240/200 are Fronius' meter ids; every profile's own default_unit_id is added (quick_ids).
DEFAULT_IDS = (*range(1, 11), 240, 200)
FULL_IDS = tuple(range(1, 248))  # --full: every unicast unit id (Modbus over Serial Line V1.02 §2.1)
# A present meter answers a short read in < 100 ms at 9600 (25 ms wire + turnaround); 0.5 s leaves room for slow
# meters (mbmd PR #258) without making an empty scan of 8 framings x 12 ids take more than about a minute.
DEFAULT_TIMEOUT_S = 0.5
# mbmd cmd/scan.go sleeps 40 ms between ids: meters on a shared line need a quiet gap after a foreign request.
DEFAULT_PROBE_DELAY_MS = 40
# Bound on presence reads (ids x framings): a full 1-247 sweep at the 8 default framings is 1976 probes (~18
# minutes at 0.5 s per silent id); more than that needs --bauds/--parities narrowed.
DEFAULT_MAX_PROBES = 2000
DEFAULT_TCP_PORTS = (502, 1502)  # Modbus TCP standard; SolarEdge inverters (evcc default)
MAX_UNIT_ID = 247

WIRING_HINTS = (
    "Nothing answered. Check, in this order:",
    "  1. the meter is powered and its display shows a Modbus/communication menu (some need a comms module)",
    "  2. A/B polarity: swap the two RS-485 wires (ABB labels A and B the opposite way round from most adapters)",
    "  3. termination: 120 ohm at both ends of the cable (many meters and HATs have a switch), none in the middle",
    "  4. common ground / shield connected at one end; isolated adapter for meters without GND (Inepro PRO380)",
    "  5. Raspberry Pi HAT direction control: the RS-485 driver must switch to receive (see firmware_config/pi/)",
    "  6. baud/parity/unit id as shown in the meter's menu: pass them with --bauds, --parities, --ids 1-247",
)


class ScanError(ProvisionError):
    """The scan could not run; the message says why."""


class ScanInputError(ScanError, ProvisionInputError):
    """Bad input; the message names the flag."""


@dataclass(frozen=True)
class ScanOptions:
    profiles: tuple[Profile, ...]
    ids: tuple[int, ...] = DEFAULT_IDS
    port: str | None = None
    framings: tuple[tuple[int, str], ...] = ()
    host: str | None = None
    tcp_ports: tuple[int, ...] = DEFAULT_TCP_PORTS
    timeout_s: float = DEFAULT_TIMEOUT_S
    delay_ms: int = DEFAULT_PROBE_DELAY_MS
    full: bool = False  # every framing and id, do not stop at the first framing that answers

    def targets(self) -> list[BusTarget]:
        if self.port:
            return [BusTarget("rtu", port=self.port, baudrate=b, parity=p) for b, p in self.framings]
        return [BusTarget("tcp", host=self.host, tcp_port=tp) for tp in self.tcp_ports]


@dataclass
class Found:
    profile: Profile
    unit_id: int
    target: BusTarget
    serial_number: int | str | None
    candidates: tuple[str, ...] = ()
    hints: list[str] = field(default_factory=list)
    device: str = ""  # what the device says it is (SunSpec common model 1: Mn Md)

    def to_json(self) -> dict[str, Any]:
        t = self.target
        return {
            "profile": self.profile.id, "manufacturer": self.profile.manufacturer, "model": self.profile.model,
            "unit_id": self.unit_id,
            "baud": t.baudrate if t.kind == "rtu" else None, "parity": t.parity if t.kind == "rtu" else None,
            "stopbits": t.stopbits if t.kind == "rtu" else None,
            "port": t.port, "host": t.host, "tcp_port": t.tcp_port if t.kind == "tcp" else None,
            "serial_number": self.serial_number, "candidates": list(self.candidates),
            "unconfirmed": list(self.profile.unconfirmed), "hints": self.hints, "device": self.device,
        }


@dataclass
class ScanReport:
    found: list[Found] = field(default_factory=list)
    unidentified: list[tuple[int, BusTarget, str]] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)
    probes: int = 0
    elapsed_s: float = 0.0
    tried: list[str] = field(default_factory=list)  # framings / ports actually probed
    stopped_early: bool = False  # the fast path stopped after the framing that answered


# ---- input --------------------------------------------------------------------------------------------------------


def parse_ids(text: str) -> tuple[int, ...]:
    """'1-10,240' -> (1..10, 240); order kept, duplicates dropped."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo_s, hi_s = part.split("-", 1)
                lo, hi = int(lo_s), int(hi_s)
                if lo > hi:
                    raise ValueError
                ids = range(lo, hi + 1)
            else:
                ids = range(int(part), int(part) + 1)
        except ValueError:
            raise ScanInputError(f"--ids: ranges like 1-10,240 (got {text!r})") from None
        for i in ids:
            if not 1 <= i <= MAX_UNIT_ID:
                raise ScanInputError(f"--ids: unit ids are 1..{MAX_UNIT_ID} (got {i})")
            if i not in out:
                out.append(i)
    return tuple(out)


def _csv(text: str | None, flag: str, allowed: Sequence[Any], cast: Callable[[str], Any]) -> tuple[Any, ...]:
    assert text is not None
    try:
        vals = tuple(cast(x.strip()) for x in text.split(",") if x.strip())
    except ValueError:
        raise ScanInputError(f"{flag}: comma-separated list (got {text!r})") from None
    bad = [v for v in vals if v not in allowed]
    if bad or not vals:
        raise ScanInputError(f"{flag}: each one of {', '.join(map(str, allowed))} (got {text!r})")
    return vals


def options_from_args(args: Any) -> ScanOptions:
    try:
        every = load_all((PROFILES_DIR, *args.profile_dir))
    except ProfileError as exc:
        raise ScanError(f"profile library: {exc}") from exc
    profiles = tuple(every.values())
    if args.profiles:
        wanted = [p.strip() for p in args.profiles.split(",") if p.strip()]
        unknown = [p for p in wanted if p not in every]
        if unknown:
            raise ScanInputError(f"--profiles: unknown {', '.join(unknown)} (known: {', '.join(sorted(every))})")
        profiles = tuple(every[p] for p in wanted)
    full = bool(getattr(args, "full", False))
    ids = parse_ids(args.ids) if args.ids else (FULL_IDS if full else quick_ids(profiles))
    timeout = args.timeout_s if args.timeout_s is not None else DEFAULT_TIMEOUT_S
    if not 0.01 <= timeout <= 10:
        raise ScanInputError(f"--timeout-s: 0.01..10 (got {timeout})")
    if args.port:
        bauds = _csv(args.bauds, "--bauds", BAUDRATES, int) if args.bauds else DEFAULT_BAUDS
        parities = _csv(args.parities, "--parities", ("N", "E", "O"), str.upper) if args.parities \
            else DEFAULT_PARITIES
        framings = tuple((b, p) for b in bauds for p in parities)
        if len(framings) * len(ids) > DEFAULT_MAX_PROBES:
            raise ScanInputError(f"--ids/--bauds/--parities: {len(framings) * len(ids)} combinations exceed "
                                 f"{DEFAULT_MAX_PROBES}; narrow the search (e.g. read the baud on the display)")
        rtu = tuple(p for p in profiles if "rtu" in p.transports)
        return ScanOptions(rtu or profiles, ids, port=args.port, framings=framings, timeout_s=timeout, full=full)
    if args.tcp_port is not None and not 1 <= args.tcp_port <= 65535:
        raise ScanInputError(f"--tcp-port: 1..65535 (got {args.tcp_port})")
    tcp_ports = (args.tcp_port,) if args.tcp_port else DEFAULT_TCP_PORTS
    # networked meters first; serial profiles still apply behind a Modbus TCP gateway
    ordered = tuple(sorted(profiles, key=lambda p: "rtu" in p.transports and "tcp" not in p.transports))
    return ScanOptions(ordered, ids, host=args.host, tcp_ports=tcp_ports, timeout_s=timeout, full=full)


def quick_ids(profiles: Sequence[Profile]) -> tuple[int, ...]:
    """The fast path's unit ids: 1-10, then each profile's factory default, then Fronius 240/200."""
    out = list(range(1, 11))
    for i in (*sorted({p.default_unit_id for p in profiles}), 240, 200):
        if 1 <= i <= MAX_UNIT_ID and i not in out:
            out.append(i)
    return tuple(out)


# ---- scanning -----------------------------------------------------------------------------------------------------


Progress = Callable[[str], None]


def run_scan(opts: ScanOptions, progress: Progress | None = None) -> ScanReport:
    return asyncio.run(_scan(opts, progress or (lambda _m: None)))  # PortBusyError/PortMissingError pass through


async def _scan(opts: ScanOptions, progress: Progress) -> ScanReport:
    report = ScanReport()
    started = time.monotonic()
    done: set[int] = set()
    targets = opts.targets()
    for n, target in enumerate(targets):
        todo = [u for u in opts.ids if u not in done]
        if not todo:
            break
        if done and not opts.full:  # the bus answered at the previous framing: it is identified
            report.stopped_early = n < len(targets)
            break
        progress(f"trying {target.describe()}: {len(todo)} unit ids")
        report.tried.append(target.describe())
        try:
            async with opened(target, timeout_s=opts.timeout_s, retries=0) as bus:
                for unit in todo:
                    report.probes += 1
                    cache = UnitCache()
                    if await present(bus, unit, opts.profiles, cache):
                        done.add(unit)
                        ids = await identify_all(bus, unit, opts.profiles, cache)
                        await _record(report, bus, unit, target, ids, cache, progress)
                    await asyncio.sleep(opts.delay_ms / 1000)
        except ProbeError as exc:
            if target.kind == "tcp":
                report.hints.append(f"{target.describe()}: cannot connect ({exc})")
                continue
            raise ScanError(str(exc)) from exc
    report.elapsed_s = time.monotonic() - started
    _overall_hints(report, opts)
    return report


async def present(bus: Any, unit: int, profiles: Sequence[Profile], cache: UnitCache) -> bool:
    """One presence read (the first profile's first identification register): any reply means a device.
    An absent unit costs exactly one timeout per framing, whatever the number of profiles."""
    rule = profiles[0].identify[0]
    await cache.read(bus, unit, rule.function_codes[0], rule.address, rule.words)
    if cache.link_error is not None:
        raise ProbeError(str(cache.link_error))
    return cache.answered


async def _record(report: ScanReport, bus: Any, unit: int, target: BusTarget, ids: list[Identification],
                  cache: UnitCache, progress: Progress) -> None:
    matches = [i for i in ids if i.matched]
    if not matches:
        seen = ", ".join(f"FC{fc:02d} {a:#06x}: {v if isinstance(v, str) else v[:4]}"
                         for (fc, a, _n), v in list(cache.replies.items())[:4])
        report.unidentified.append((unit, target, seen))
        progress(f"  unit {unit}: a device answers but matches no profile")
        return
    # confirmed rules first; then the most specific identification (a SunSpec profile requiring the device in front
    # of its meter; more matching reads: an SDM630MCT's code plus frequency beats a rule that only accepts the same
    # code, a 7M.38's L2 voltage beats the 7M.24)
    best = sorted(matches, key=lambda i: (not i.confirmed, not i.specific, -len(i.profile.identify),
                                          i.profile.id))[0]
    serial = None
    sn_rule = (best.located or best.profile).serial_number
    if sn_rule is not None:
        serial = await read_rule(bus, unit, sn_rule, cache)
    found = Found(best.profile, unit, target, serial, tuple(i.profile.id for i in matches if i is not best),
                  device=best.device)
    found.hints = unit_hints(found, best)
    report.found.append(found)
    progress(f"  unit {unit}: {best.profile.id} (serial {serial})")


def unit_hints(found: Found, ident: Identification) -> list[str]:
    """Pure: what an installer should know about one found meter."""
    p, t, hints = found.profile, found.target, []
    if p.default_unit_id and found.unit_id != p.default_unit_id:
        hints.append(f"answers at unit id {found.unit_id}; the factory default is {p.default_unit_id} "
                     "(fine if it was set on purpose; every meter on one bus needs its own id)")
    s = p.serial
    if t.kind == "rtu" and s is not None and (t.baudrate, t.parity, t.stopbits) != (s.baudrate, s.parity, s.stopbits):
        hints.append(f"runs at {t.framing}; the factory default is {s.baudrate} {s.bytesize}{s.parity}{s.stopbits}"
                     " (someone changed it in the meter's menu: use the framing found here)")
    if found.candidates:
        hints.append("the identification also matches " + ", ".join(found.candidates)
                     + ": check the model on the meter's label and pass the right --profile")
    if not ident.confirmed:
        hints.append(f"check the model on the meter's label: it should say {p.manufacturer} {p.model}")
    return hints


def _overall_hints(report: ScanReport, opts: ScanOptions) -> None:
    for unit, target, seen in report.unidentified:
        report.hints.append(f"unit {unit} on {target.describe()} answers but matches no profile ({seen}): "
                            "tell us the model; commission it with the closest --profile only after checking")
    if not report.found and not report.unidentified:
        if opts.port:
            report.hints.extend(WIRING_HINTS)
        else:
            report.hints.append(f"nothing answered on {opts.host} ports {', '.join(map(str, opts.tcp_ports))}: "
                                "check the IP address, that Modbus TCP is enabled in the inverter/meter settings, "
                                "and that no other client is connected (SolarEdge allows one)")
    if report.stopped_early:
        report.hints.append(f"stopped after {report.tried[-1]} answered (all meters on one bus share its framing); "
                            "a meter at another unit id or framing: run again with --full")
    ids = {f.unit_id for f in report.found}
    if len(report.found) > len(ids):
        report.hints.append("two devices answered at the same unit id: give every meter its own id")


def format_report(report: ScanReport) -> str:
    lines = []
    for f in report.found:
        t = f.target
        where = f"{t.framing}" if t.kind == "rtu" else f"{t.host}:{t.tcp_port}"
        lines.append(f"unit {f.unit_id:>3}  {f.profile.id:<22} {f.profile.manufacturer} {f.profile.model}  "
                     f"[{where}]  serial {f.serial_number}" + (f"  ({f.device})" if f.device else ""))
        lines += [f"          hint: {h}" for h in f.hints]
    if not report.found:
        lines.append("no meter identified")
    lines += report.hints
    lines.append(f"({report.probes} units probed in {report.elapsed_s:.1f} s)")
    return "\n".join(lines)
