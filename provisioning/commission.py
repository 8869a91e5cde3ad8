"""`gridmeter provision commission`: read the meter once through its profile and prove the decoding is right.

Wrong word order or a x10/x1000 scale (evcc #15476, #29422; OpenEMS #86) goes live unnoticed when nobody looks.
So before a meter is registered: two reads a short wait apart, every decoded value next to the range the profile's
rated limits allow (voltage, frequency, current, power, power factor), counters decoded, non-zero and not going
backwards (nor faster than the rated power allows), then the installer compares the import counter with the
meter's own display. Any failure -> non-zero exit with a message saying which value and what to check.

The typical installer mistakes (reversed CT, swapped wires, scale off by a power of ten, word order, wrong CT ratio)
are caught with a hint naming the fix (issue 9).
Questions are only what can be checked on site (the display, the label, a known load), each says how; a blank
answer is asked again and then skipped (recorded, not a failure); each question is asked once.
The result is recorded as JSON; `provision register --commissioning FILE` takes profile, bus, unit and serial from it.

What lives where: this module reads the meter (through provisioning.probe), asks the installer, runs the checks and
records the result; the checks themselves and their thresholds are pure functions in provisioning.commission_checks.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from firmware_config.schema import Profile, ProfileError
from provisioning.commission_checks import (
    MIN_POWER_FOR_CHECKS_W,
    Check,
    check_counters,
    check_direction,
    check_instantaneous,
    check_known_load,
    check_power_vs_energy,
    compare_display,
    word_order_hints,
)
from provisioning.errors import ProvisionError, ProvisionInputError
from provisioning.probe import BusTarget, ProbeError, commission_reads

__all__ = ["CommissionError", "CommissionInputError", "run_commission"]

# Long enough for a meter with 0.01 kWh resolution under a few kW to tick once, short enough for a cellar.
DEFAULT_WAIT_S = 10.0
# Largest display reading accepted: meter displays show at most 8 integer kWh digits (99,999,999 kWh); a bound
# also keeps a typo like "1e999999" from turning into a million-digit integer.
MAX_DISPLAY_KWH = Decimal(100_000_000)
MAX_BLANK_ANSWERS = 2  # a blank answer is asked again this many times, then the question is skipped


class CommissionError(ProvisionError):
    """Commissioning could not run (port, profile, meter silent); the message says what to check."""


class CommissionInputError(CommissionError, ProvisionInputError):
    """Bad input; the message names the flag."""


@dataclass(frozen=True)
class CommissionOptions:
    profile: Profile
    target: BusTarget
    unit_id: int
    wait_s: float = DEFAULT_WAIT_S
    expect_flow: bool = False
    display_kwh: Decimal | None = None
    out: Path = Path("commission.json")
    can_export: bool | None = None  # site has PV/battery/generator; False = consumption only; None = ask/unknown
    ct_primary_a: int | None = None  # CT meters: primary current printed on the CT
    known_load_w: int | None = None  # a load the installer switches on for the power step check


@dataclass
class CommissionResult:
    profile: str
    unit_id: int
    bus: dict[str, Any]
    serial_number: int | str | None
    first: dict[str, int]
    second: dict[str, int]
    invalid: dict[str, str]
    elapsed_ms: int
    checks: list[Check]
    unconfirmed: list[str]
    confirmations: dict[str, str] = field(default_factory=dict)
    commissioned_at_ms: int = 0
    not_measured: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.ok for c in self.checks if c.severity == "fail") and all(
            v in ("yes", "accepted (--yes)") or v.startswith(("matches", "skipped"))
            for v in self.confirmations.values()
        )

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["result"] = "pass" if self.passed else "fail"
        return d


def parse_kwh(text: str) -> Decimal:
    try:
        v = Decimal(text.strip().replace(",", "."))
    except InvalidOperation:
        raise CommissionInputError(f"--display-kwh: a number of kWh as shown on the display (got {text!r})") from None
    if not v.is_finite() or not 0 <= v < MAX_DISPLAY_KWH:
        raise CommissionInputError(f"--display-kwh: a number of kWh in 0..{MAX_DISPLAY_KWH - 1} (got {text!r})")
    return v


# ---- orchestration ------------------------------------------------------------------------------------------------


Ask = Callable[[str], str]


def ask_tty(question: str) -> str:
    try:
        return input(question + " ").strip()
    except EOFError:
        return ""


def options_from_args(args: Any) -> CommissionOptions:
    from firmware_config.loader import PROFILES_DIR, get_profile

    try:
        profile = get_profile(args.profile, (PROFILES_DIR, *args.profile_dir))
    except ProfileError as exc:
        raise CommissionInputError(f"--profile: {exc}") from exc
    try:
        target = BusTarget.for_profile(profile, port=args.port, host=args.host, tcp_port=args.tcp_port,
                                       baudrate=args.baud, parity=args.parity, stopbits=args.stopbits)
    except ProbeError as exc:
        raise CommissionInputError(str(exc)) from exc
    unit_id = args.unit_id if args.unit_id is not None else profile.default_unit_id
    if not 1 <= unit_id <= 247:
        raise CommissionInputError(f"--unit-id: 1..247 (got {unit_id})")
    wait_s = args.wait_s if args.wait_s is not None else DEFAULT_WAIT_S
    if not 0 <= wait_s <= 600:
        raise CommissionInputError(f"--wait-s: 0..600 seconds (got {wait_s})")
    display = parse_kwh(args.display_kwh) if args.display_kwh is not None else None
    ct = getattr(args, "ct_primary_a", None)
    if ct is not None and not 1 <= ct <= 100_000:
        raise CommissionInputError(f"--ct-primary-a: the primary current printed on the CT, 1..100000 A (got {ct})")
    load = getattr(args, "known_load_w", None)
    if load is not None and not MIN_POWER_FOR_CHECKS_W <= load <= 100_000:
        raise CommissionInputError(f"--known-load-w: a load of {MIN_POWER_FOR_CHECKS_W}..100000 W (got {load})")
    can_export = False if getattr(args, "no_generation", False) else None
    out = Path(args.out) if args.out else Path(args.config).parent / f"commission-{profile.id}-unit{unit_id}.json"
    return CommissionOptions(profile, target, unit_id, wait_s, bool(args.expect_flow), display, out, can_export,
                             ct, load)


def run_commission(opts: CommissionOptions, *, ask: Ask | None) -> CommissionResult:
    """ask=None: non-interactive (--yes): nothing is asked; display via --display-kwh, the rest from flags."""
    try:
        return asyncio.run(_run(opts, ask))
    except ProbeError as exc:
        raise CommissionError(str(exc)) from exc


def ask_until_answered(ask: Ask, question: str, valid: Callable[[str], bool] = lambda a: bool(a)) -> str | None:
    """Ask; a blank (or invalid) answer is asked again MAX_BLANK_ANSWERS times, then None (skipped)."""
    for attempt in range(MAX_BLANK_ANSWERS + 1):
        answer = ask(question if attempt == 0 else "Please answer (or leave blank again to skip):").strip()
        if answer and valid(answer):
            return answer
    return None


def _yes_no(answer: str) -> bool:
    return answer.lower() in ("y", "yes", "n", "no")


def _site_questions(opts: CommissionOptions, ask: Ask | None) -> CommissionOptions:
    """What commissioning needs to know about the site, asked only when not given as flags."""
    if ask is None:
        return opts
    p = opts.profile
    if opts.can_export is None:
        a = ask_until_answered(ask, "Can this site feed power into the grid (solar panels, a battery or a generator "
                                    "on this connection)? [y/n]", _yes_no)
        if a is not None:
            opts = replace(opts, can_export=a.lower() in ("y", "yes"))
    if p.rated.current_transformer and opts.ct_primary_a is None:
        a = ask_until_answered(ask, "Is this meter connected through current transformers (rings or clamps around "
                                    "the cables)? Type the primary current printed on them (e.g. 100 for 100/5 A), or "
                                    "'n' if the cables go straight into the meter:",
                               lambda x: x.lower() in ("n", "no") or x.isdigit())
        if a is not None and a.isdigit() and 1 <= int(a) <= 100_000:
            opts = replace(opts, ct_primary_a=int(a))
    if opts.known_load_w is None:
        a = ask_until_answered(ask, "Optional power check: type the power in W of a load you can switch on now "
                                    "(e.g. 2000 for a kettle), or 'n' to skip:",
                               lambda x: x.lower() in ("n", "no") or x.isdigit())
        if a is not None and a.isdigit() and MIN_POWER_FOR_CHECKS_W <= int(a) <= 100_000:
            opts = replace(opts, known_load_w=int(a))
    return opts


async def _run(opts: CommissionOptions, ask: Ask | None) -> CommissionResult:
    p = opts.profile
    opts = await asyncio.to_thread(_site_questions, opts, ask) if ask is not None else opts
    load_step = None
    if opts.known_load_w is not None:
        load_w = opts.known_load_w

        async def load_step() -> bool:
            if ask is None:
                return False  # non-interactive: nobody can switch the load
            a = await asyncio.to_thread(ask_until_answered, ask, f"Switch the {load_w} W load on now, wait until it "
                                        "runs, then type 'y' (or 'n' to skip this check):", _yes_no)
            return a is not None and a.lower() in ("y", "yes")

    reads = await commission_reads(opts.target, p, opts.unit_id, opts.wait_s, load_step)
    first, second, invalid, elapsed_ms, serial = (reads.first, reads.second, reads.invalid, reads.elapsed_ms,
                                                  reads.serial_number)
    located = reads.located or p
    rated = p.rated.max_power_w
    checks = check_instantaneous(p, second, invalid, opts.ct_primary_a) + check_counters(
        p, first, second, elapsed_ms, rated, expect_flow=opts.expect_flow, not_measured=reads.not_measured)
    checks += check_direction(p, first, second, can_export=opts.can_export, not_measured=reads.not_measured)
    checks += check_power_vs_energy(p, first, second, elapsed_ms)
    if opts.known_load_w is not None and reads.loaded is not None:
        checks += check_known_load(p, second, reads.loaded, opts.known_load_w)
    checks = word_order_hints(located, reads.image, checks)
    result = CommissionResult(p.id, opts.unit_id, opts.target.to_json(), serial, dict(first), dict(second),
                              dict(invalid), elapsed_ms, checks, list(p.unconfirmed),
                              commissioned_at_ms=time.time_ns() // 1_000_000, not_measured=list(reads.not_measured))
    if any(c.severity == "fail" and not c.ok for c in checks):
        return result  # do not ask the installer to confirm values that are already wrong
    await asyncio.to_thread(_confirm, result, opts, ask) if ask is not None else _confirm(result, opts, None)
    return result


def installer_questions(profile: Profile) -> list[str]:
    """What commissioning asks about the meter itself: the profile's checks, and the label when the identification
    is not certain. Never developer notes; each question once."""
    qs = list(profile.installer_checks)
    if any(not r.confirmed for r in profile.identify):
        qs.append(f"Does the meter's label say {profile.manufacturer} {profile.model}?")
    return list(dict.fromkeys(qs))


def _confirm(result: CommissionResult, opts: CommissionOptions, ask: Ask | None) -> None:
    name = "energy_import_wh" if "energy_import_wh" in result.second else "energy_export_wh"
    value = result.second[name]
    what = "imported" if name == "energy_import_wh" else "exported"
    if opts.display_kwh is not None:
        ok, msg = compare_display(value, opts.display_kwh)
        result.confirmations["display_import"] = msg if ok else f"MISMATCH: {msg}"
    elif ask is None:
        result.confirmations["display_import"] = "accepted (--yes)"
    else:
        answer = ask_until_answered(ask, f"Look at the meter's display for the total {what} energy (kWh, often "
                                         f"'+A', 'Import' or 'T'). We read {value / 1000:.2f} kWh. Type the "
                                         "number the display shows, or 'y' if it matches:")
        result.confirmations["display_import"] = ("skipped (no answer): compare the display later" if answer is None
                                                  else _display_answer(value, answer))
    for question in installer_questions(opts.profile):
        key = f"check: {question}"
        if ask is None:
            result.confirmations[key] = "accepted (--yes)"
            continue
        answer = ask_until_answered(ask, f"{question} [y/n]", _yes_no)
        if answer is None:
            result.confirmations[key] = "skipped (no answer)"
        else:
            result.confirmations[key] = "yes" if answer.lower() in ("y", "yes") else f"NOT CONFIRMED: {question}"


def _display_answer(decoded_wh: int, answer: str) -> str:
    """The installer's answer to the display question as a confirmation entry; anything that is neither 'y' nor
    a kWh number is recorded as not confirmed (the result fails, the installer runs commission again)."""
    if answer.lower() in ("y", "yes"):
        return "yes"
    try:
        display = parse_kwh(answer)
    except CommissionInputError:
        return f"NOT CONFIRMED: the answer {answer!r} is neither 'y' nor the display value in kWh"
    ok, msg = compare_display(decoded_wh, display)
    return msg if ok else f"MISMATCH: {msg}"


def format_result(r: CommissionResult) -> str:
    marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
    lines = [f"profile {r.profile}, unit {r.unit_id}, serial {r.serial_number}, bus {r.bus}"]
    for c in r.checks:
        mark = marks[c.severity] if c.ok or c.severity != "fail" else "FAIL"
        lines.append(f"  [{mark}] {c.message}")
    for k, v in r.invalid.items():
        lines.append(f"  [info] {k}: not decoded ({v})")
    for k, v in r.confirmations.items():
        mark = "FAIL" if v.startswith(("MISMATCH", "NOT")) else "WARN" if v.startswith("skipped") else "ok  "
        lines.append(f"  [{mark}] {k}: {v}")
    lines.append("RESULT: PASS" if r.passed else "RESULT: FAIL - do not register this meter until fixed")
    return "\n".join(lines)


def write_result(path: Path, r: CommissionResult) -> None:
    from provisioning.agent_toml import write_atomic

    write_atomic(Path(path), json.dumps(r.to_json(), indent=1, default=str) + "\n", mode=0o644)
