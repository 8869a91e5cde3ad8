"""`gridmeter provision commission`: read the meter once through its profile and prove the decoding is right.

Wrong word order or a x10/x1000 scale (evcc #15476, #29422; OpenEMS #86) goes live unnoticed when nobody looks.
So before a meter is registered: two reads a short wait apart, every decoded value next to the range the profile's
rated limits allow (voltage, frequency, current, power, power factor), counters decoded, non-zero and not going
backwards (nor faster than the rated power allows), then the installer compares the import counter with the
meter's own display. Any failure -> non-zero exit with a message saying which value and what to check.
The result is recorded as JSON; `provision register --commissioning FILE` takes profile, bus, unit and serial from it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from agent.plausibility import max_energy_wh
from firmware_config.schema import Profile, ProfileError
from provisioning.errors import ProvisionError, ProvisionInputError
from provisioning.probe import BusTarget, ProbeError, commission_reads

__all__ = ["CommissionError", "CommissionInputError", "run_commission"]

# Long enough for a meter with 0.01 kWh resolution under a few kW to tick once, short enough for a cellar.
DEFAULT_WAIT_S = 10.0
# A 3-phase meter wired single-phase reads 0 V on the unused phases: a warning, not a failure.
UNUSED_PHASE_MAX_DV = 50
# Display comparison: the display shows whole kWh or 0.1/0.01 kWh; accept one display step of 1 kWh or
# 0.5 % (whichever is larger): a x10 / x1000 / word-order error is far outside that.
DISPLAY_TOLERANCE_WH = 1000
DISPLAY_TOLERANCE_PPM = 5000
# Largest display reading accepted: meter displays show at most 8 integer kWh digits (99,999,999 kWh); a bound
# also keeps a typo like "1e999999" from turning into a million-digit integer.
MAX_DISPLAY_KWH = Decimal(100_000_000)


class CommissionError(ProvisionError):
    """Commissioning could not run (port, profile, meter silent); the message says what to check."""


class CommissionInputError(CommissionError, ProvisionInputError):
    """Bad input; the message names the flag."""


@dataclass(frozen=True)
class Check:
    name: str
    value: int | None
    low: int | None
    high: int | None
    ok: bool
    severity: str  # "fail" | "warn" | "ok"
    message: str


@dataclass(frozen=True)
class CommissionOptions:
    profile: Profile
    target: BusTarget
    unit_id: int
    wait_s: float = DEFAULT_WAIT_S
    expect_flow: bool = False
    display_kwh: Decimal | None = None
    out: Path = Path("commission.json")


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

    @property
    def passed(self) -> bool:
        return all(c.ok for c in self.checks if c.severity == "fail") and all(
            v in ("yes", "accepted (--yes)") or v.startswith("matches") for v in self.confirmations.values()
        )

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["result"] = "pass" if self.passed else "fail"
        return d


# ---- pure checks --------------------------------------------------------------------------------------------------


def _range(name: str, value: int | None, low: int, high: int, what: str) -> Check:
    if value is None:
        return Check(name, None, low, high, True, "ok", f"{name}: not provided by this meter")
    ok = low <= value <= high
    msg = f"{name} = {value} ({what} {low}..{high})"
    if not ok:
        msg += ": outside the plausible range; wrong word order, wrong scale or wrong profile?"
    return Check(name, value, low, high, ok, "ok" if ok else "fail", msg)


def check_instantaneous(profile: Profile, values: Mapping[str, int],
                        invalid: Mapping[str, str] | None = None) -> list[Check]:
    r = profile.rated
    checks: list[Check] = [
        Check(name, None, None, None, False, "fail",
              f"{name}: not decodable ({reason}); wrong word order, wrong register or wrong profile?")
        for name, reason in (invalid or {}).items() if name not in ("energy_import_wh", "energy_export_wh")
    ]
    if r.voltage_max_v:
        lo, hi = r.voltage_min_v * 10, r.voltage_max_v * 10
        for n in (1, 2, 3):
            key = f"voltage_l{n}_dv"
            if key not in profile.measurements:
                continue
            v = values.get(key)
            if n > 1 and v is not None and 0 <= v <= UNUSED_PHASE_MAX_DV:
                checks.append(Check(key, v, lo, hi, True, "warn",
                                    f"{key} = {v}: phase L{n} reads ~0 V (single-phase wiring or a loose phase?)"))
                continue
            checks.append(_range(key, v, lo, hi, "0.1 V, plausible"))
    if r.frequency_max_hz:
        checks.append(_range("frequency_mhz", values.get("frequency_mhz"), r.frequency_min_hz * 1000,
                             r.frequency_max_hz * 1000, "mHz, plausible"))
    if r.max_current_a:
        for n in (1, 2, 3):
            key = f"current_l{n}_ma"
            if key in profile.measurements:
                checks.append(_range(key, values.get(key), 0, r.max_current_a * 1000, "mA, rated"))
    checks.append(_range("power_w", values.get("power_w"), -r.max_power_w, r.max_power_w, "W, rated"))
    if "power_factor_milli" in profile.measurements:
        checks.append(_range("power_factor_milli", values.get("power_factor_milli"), -1000, 1000, "1/1000"))
    bad = invalid or {}
    return [c for c in checks if not (c.ok and c.value is None and c.name in bad)]


def check_counters(profile: Profile, first: Mapping[str, int], second: Mapping[str, int], elapsed_ms: int,
                   rated_max_power_w: int, *, expect_flow: bool) -> list[Check]:
    checks: list[Check] = []
    bound = max_energy_wh(rated_max_power_w, elapsed_ms)
    for key in ("energy_import_wh", "energy_export_wh"):
        a, b = first.get(key), second.get(key)
        if a is None or b is None:
            checks.append(Check(key, None, None, None, False, "fail",
                                f"{key}: not decoded (sentinel/NaN); wrong register or a meter variant without it"))
            continue
        if b < a:
            checks.append(Check(key, b, a, None, False, "fail",
                                f"{key} went backwards {a} -> {b} Wh: wrong word order or a glitching meter"))
        elif b - a > bound:
            checks.append(Check(key, b - a, 0, bound, False, "fail",
                                f"{key} grew {b - a} Wh in {elapsed_ms} ms, more than the rated "
                                f"{rated_max_power_w} W allows ({bound} Wh): wrong scale?"))
        else:
            checks.append(Check(key, b, a, a + bound, True, "ok", f"{key} = {b} Wh (+{b - a} Wh in {elapsed_ms} ms)"))
    imp, exp = second.get("energy_import_wh"), second.get("energy_export_wh")
    if imp is not None and exp is not None:
        nonzero = imp > 0 or exp > 0
        checks.append(Check("counters_nonzero", imp + exp, 1, None, nonzero, "ok" if nonzero else "fail",
                            "energy counters are non-zero" if nonzero else
                            "both energy counters read 0 Wh: wrong registers/scale, or a brand-new meter "
                            "(then let it count a few Wh first)"))
    if expect_flow:
        moved = any(second.get(k, 0) > first.get(k, 0) for k in ("energy_import_wh", "energy_export_wh"))
        checks.append(Check("counters_increasing", None, None, None, moved, "ok" if moved else "fail",
                            "a counter increased during the wait" if moved else
                            f"no counter increased in {elapsed_ms} ms although --expect-flow was given: "
                            "is a load switched on? is this the right meter?"))
    return checks


def compare_display(decoded_wh: int, display_kwh: Decimal) -> tuple[bool, str]:
    display_wh = int((display_kwh * 1000).to_integral_value())
    tol = max(DISPLAY_TOLERANCE_WH, decoded_wh * DISPLAY_TOLERANCE_PPM // 1_000_000)
    diff = decoded_wh - display_wh
    if abs(diff) <= tol:
        return True, f"matches the display ({display_kwh} kWh, difference {diff} Wh)"
    return False, (f"decoded import {decoded_wh / 1000:.3f} kWh does not match the display {display_kwh} kWh "
                   f"(difference {diff} Wh > {tol} Wh): wrong scale/word order or a different meter")


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
    out = Path(args.out) if args.out else Path(args.config).parent / f"commission-{profile.id}-unit{unit_id}.json"
    return CommissionOptions(profile, target, unit_id, wait_s, bool(args.expect_flow), display, out)


def run_commission(opts: CommissionOptions, *, ask: Ask | None) -> CommissionResult:
    """ask=None: non-interactive (--yes): unconfirmed facts are recorded as accepted, display via --display-kwh."""
    try:
        return asyncio.run(_run(opts, ask))
    except ProbeError as exc:
        raise CommissionError(str(exc)) from exc


async def _run(opts: CommissionOptions, ask: Ask | None) -> CommissionResult:
    p = opts.profile
    reads = await commission_reads(opts.target, p, opts.unit_id, opts.wait_s)
    first, second, invalid, elapsed_ms, serial = (reads.first, reads.second, reads.invalid, reads.elapsed_ms,
                                                  reads.serial_number)
    rated = p.rated.max_power_w
    checks = check_instantaneous(p, second, invalid) + check_counters(p, first, second, elapsed_ms, rated,
                                                             expect_flow=opts.expect_flow)
    result = CommissionResult(p.id, opts.unit_id, opts.target.to_json(), serial, dict(first), dict(second),
                              dict(invalid), elapsed_ms, checks, list(p.unconfirmed),
                              commissioned_at_ms=time.time_ns() // 1_000_000)
    if any(c.severity == "fail" and not c.ok for c in checks):
        return result  # do not ask the installer to confirm values that are already wrong
    _confirm(result, opts, ask)
    return result


def _confirm(result: CommissionResult, opts: CommissionOptions, ask: Ask | None) -> None:
    imp = result.second["energy_import_wh"]
    if opts.display_kwh is not None:
        ok, msg = compare_display(imp, opts.display_kwh)
        result.confirmations["display_import"] = msg if ok else f"MISMATCH: {msg}"
    elif ask is None:
        result.confirmations["display_import"] = "accepted (--yes)"
    else:
        answer = ask(f"The meter's display should show import ~{imp / 1000:.2f} kWh. Type the display value "
                     "in kWh (or 'y' if it matches):")
        result.confirmations["display_import"] = _display_answer(imp, answer)
    for fact in result.unconfirmed:
        key = f"check: {fact}"
        if ask is None:
            result.confirmations[key] = "accepted (--yes)"
        else:
            answer = ask(f"Please check on the meter: {fact}. Confirmed? [y/N]")
            result.confirmations[key] = "yes" if answer.lower() in ("y", "yes") else f"NOT CONFIRMED: {fact}"


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
        lines.append(f"  [{'ok  ' if not v.startswith(('MISMATCH', 'NOT')) else 'FAIL'}] {k}: {v}")
    lines.append("RESULT: PASS" if r.passed else "RESULT: FAIL - do not register this meter until fixed")
    return "\n".join(lines)


def write_result(path: Path, r: CommissionResult) -> None:
    from provisioning.agent_toml import write_atomic

    write_atomic(Path(path), json.dumps(r.to_json(), indent=1, default=str) + "\n", mode=0o644)
