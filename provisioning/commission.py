"""`gridmeter provision commission`: read the meter once through its profile and prove the decoding is right.

Wrong word order or a x10/x1000 scale (evcc #15476, #29422; OpenEMS #86) goes live unnoticed when nobody looks.
So before a meter is registered: two reads a short wait apart, every decoded value next to the range the profile's
rated limits allow (voltage, frequency, current, power, power factor), counters decoded, non-zero and not going
backwards (nor faster than the rated power allows), then the installer compares the import counter with the
meter's own display. Any failure -> non-zero exit with a message saying which value and what to check.

The typical installer mistakes are caught with a hint naming the fix (issue 9):
- power sign against the counter that moved (a reversed CT or swapped supply/load wires; a SolarEdge grid meter
  read with a generic SunSpec profile), and negative power on a site that cannot export;
- power against the counters' movement over the wait (a power or energy scale off by a power of ten);
- a value outside its range that would be plausible with the words swapped (word order);
- with a known load switched on: the power step against the load (wrong CT ratio on a CT meter, or scale).
Questions are only what can be checked on site (the display, the label, a known load), each says how; a blank
answer is asked again and then skipped (recorded, not a failure); each question is asked once.
The result is recorded as JSON; `provision register --commissioning FILE` takes profile, bus, unit and serial from it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from agent.decode import decode_register
from agent.plausibility import max_energy_wh
from firmware_config.schema import ENERGY_MEASUREMENTS, Profile, ProfileError, Register
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
# Below this |power| the direction and scale checks say nothing (noise, standby): ask for a load instead.
MIN_POWER_FOR_CHECKS_W = 100
# Power vs counter movement: agreement within a factor 2 is fine (load varies over the wait); a factor 5 or more
# is a scale error (a power of ten); in between, a warning. The movement must span this many counter steps.
SCALE_OK_FACTOR = 2
SCALE_FAIL_FACTOR = 5
MIN_COUNTER_STEPS = 10
# Known-load step: the power step must be within 30 % of the load (kettles and heaters vary by +-10 %).
KNOWN_LOAD_TOLERANCE_PCT = 30
# CT meters: the current may exceed the CT's primary rating by 20 % (class 0.5 CTs are specified to 120 %).
CT_OVERLOAD_PCT = 120
MAX_BLANK_ANSWERS = 2  # a blank answer is asked again this many times, then the question is skipped


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
                        invalid: Mapping[str, str] | None = None, ct_primary_a: int | None = None) -> list[Check]:
    r = profile.rated
    max_current_a, max_power_w = r.max_current_a, r.max_power_w
    if r.current_transformer and ct_primary_a:  # the CT fitted, not the largest the meter supports
        max_current_a = ct_primary_a * CT_OVERLOAD_PCT // 100
        phases = sum(1 for n in (1, 2, 3) if f"current_l{n}_ma" in profile.measurements) or 3
        max_power_w = min(max_power_w, phases * (r.voltage_max_v or 276) * max_current_a)
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
    what = "mA, CT primary +20 %" if r.current_transformer and ct_primary_a else "mA, rated"
    if max_current_a:
        for n in (1, 2, 3):
            key = f"current_l{n}_ma"
            if key in profile.measurements:
                checks.append(_ct_hint(profile, _range(key, values.get(key), 0, max_current_a * 1000, what)))
    checks.append(_ct_hint(profile, _range("power_w", values.get("power_w"), -max_power_w, max_power_w, "W, rated")))
    if "power_factor_milli" in profile.measurements:
        checks.append(_range("power_factor_milli", values.get("power_factor_milli"), -1000, 1000, "1/1000"))
    bad = invalid or {}
    return [c for c in checks if not (c.ok and c.value is None and c.name in bad)]


def _ct_hint(profile: Profile, c: Check) -> Check:
    if c.ok or not profile.rated.current_transformer:
        return c
    return replace(c, message=c.message + " On a CT meter: is the CT ratio set in the meter's menu the one printed "
                   "on the CTs (e.g. 100/5 A)?")


def check_counters(profile: Profile, first: Mapping[str, int], second: Mapping[str, int], elapsed_ms: int,
                   rated_max_power_w: int, *, expect_flow: bool, not_measured: tuple[str, ...] = ()) -> list[Check]:
    checks: list[Check] = []
    bound = max_energy_wh(rated_max_power_w, elapsed_ms)
    for key in ("energy_import_wh", "energy_export_wh"):
        if key in not_measured:
            checks.append(Check(key, None, None, None, True, "ok",
                                f"{key}: this meter has no such counter (variant without it): readings carry "
                                f"{'EXPORT' if 'export' in key else 'IMPORT'}_NOT_MEASURED"))
            continue
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
    imp, exp = second.get("energy_import_wh", 0), second.get("energy_export_wh", 0)
    if any(k in second for k in ENERGY_MEASUREMENTS):
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


def _family_sign_hint(profile: Profile) -> str:
    if profile.sunspec is not None:
        return ("the power sign convention of this meter position differs from the profile's: a SolarEdge meter at "
                "the grid connection needs --profile solaredge-meter; otherwise the meter's CTs face the wrong way")
    if profile.rated.current_transformer:
        return "a current transformer is on the wrong way round: turn it so its arrow (P1 -> P2) points to the house"
    return "supply and load are swapped on the meter's terminals (grid to the IN side, house to the OUT side)"


def _power(first: Mapping[str, int], second: Mapping[str, int]) -> int | None:
    ps = [v.get("power_w") for v in (first, second)]
    return None if any(p is None for p in ps) else (ps[0] + ps[1]) // 2  # type: ignore[operator]


def _step_wh(profile: Profile, name: str) -> int:
    """Smallest counter step in Wh (1 for float and Wh counters)."""
    try:
        reg = profile.register(name)
    except KeyError:
        return 1
    if reg.type.startswith("float"):
        return 1
    return max(1, round(reg.scale * reg.unit_factor))


def check_direction(profile: Profile, first: Mapping[str, int], second: Mapping[str, int], *,
                    can_export: bool | None, not_measured: tuple[str, ...] = ()) -> list[Check]:
    """Power sign against the counter that moved; on a site that cannot export, no negative power at all."""
    p = _power(first, second)
    if p is None:
        return []
    d_imp = second.get("energy_import_wh", 0) - first.get("energy_import_wh", 0)
    d_exp = second.get("energy_export_wh", 0) - first.get("energy_export_wh", 0)
    checks: list[Check] = []
    if can_export is False and p < -MIN_POWER_FOR_CHECKS_W:
        checks.append(Check("power_sign", p, 0, None, False, "fail",
                            f"power_w = {p} W (exporting) on a site that cannot export: {_family_sign_hint(profile)}"))
    elif abs(p) >= MIN_POWER_FOR_CHECKS_W and (d_imp > 0) != (d_exp > 0):
        moved = "import" if d_imp > 0 else "export"
        ok = (p > 0) == (moved == "import")
        msg = (f"power_w = {p} W and the {moved} counter moved: sign agrees" if ok else
               f"power_w = {p} W ({'importing' if p > 0 else 'exporting'}) but the {moved} counter moved: "
               f"{_family_sign_hint(profile)}")
        checks.append(Check("power_sign", p, None, None, ok, "ok" if ok else "fail", msg))
    if can_export is False and d_exp > 0 and "energy_export_wh" not in not_measured:
        checks.append(Check("export_on_consumption_site", d_exp, 0, 0, False, "fail",
                            f"the export counter moved {d_exp} Wh on a site that cannot export: "
                            f"{_family_sign_hint(profile)}"))
    return checks


def _power_of_ten(ratio: float) -> int:
    import math

    return round(math.log10(ratio)) if ratio > 0 else 0


def check_power_vs_energy(profile: Profile, first: Mapping[str, int], second: Mapping[str, int],
                          elapsed_ms: int) -> list[Check]:
    """Mean power against the counters' movement over the wait: a power (or energy) scale off by 10^k shows."""
    p = _power(first, second)
    p1, p2 = first.get("power_w"), second.get("power_w")
    if p is None or p1 is None or p2 is None or elapsed_ms <= 0:
        return []
    if abs(p) < MIN_POWER_FOR_CHECKS_W or (p1 > 0) != (p2 > 0) or max(abs(p1), abs(p2)) > 2 * min(abs(p1), abs(p2)):
        return [Check("power_vs_energy", None, None, None, True, "warn",
                      "power vs counters not checked: the load was too small or changed during the wait (switch on "
                      "a steady load of 1-2 kW, e.g. a kettle, and use --wait-s 30)")]
    name = "energy_import_wh" if p > 0 else "energy_export_wh"
    if name not in first or name not in second:
        return []
    moved = second[name] - first[name]
    expected = abs(p) * elapsed_ms / 3_600_000
    step = _step_wh(profile, name)
    if max(expected, moved) < MIN_COUNTER_STEPS * step:
        return [Check("power_vs_energy", moved, None, None, True, "warn",
                      f"power vs counters not checked: {elapsed_ms} ms at {abs(p)} W moves the counter only "
                      f"{expected:.1f} Wh (steps of {step} Wh): use a longer --wait-s")]
    ratio = (moved + step / 2) / expected
    if 1 / SCALE_OK_FACTOR <= ratio <= SCALE_OK_FACTOR:
        return [Check("power_vs_energy", moved, None, None, True, "ok",
                      f"{name} moved {moved} Wh in {elapsed_ms} ms; {abs(p)} W predicts {expected:.0f} Wh")]
    k = _power_of_ten(ratio)
    severe = not 1 / SCALE_FAIL_FACTOR < ratio < SCALE_FAIL_FACTOR
    what = (f"power reads {10 ** -k if k < 0 else 1 / 10 ** k:g} x what the counter says"
            if k else "power and counter disagree")
    msg = (f"{name} moved {moved} Wh in {elapsed_ms} ms but power_w = {p} W predicts {expected:.0f} Wh: {what}. "
           "Wrong scale of the power or the energy register (a power of ten), or the wrong profile")
    return [Check("power_vs_energy", moved, None, None, not severe, "fail" if severe else "warn", msg)]


def check_known_load(profile: Profile, before: Mapping[str, int], loaded: Mapping[str, int],
                     load_w: int) -> list[Check]:
    """The power step when the installer switched a known load on, against the load."""
    a, b = before.get("power_w"), loaded.get("power_w")
    if a is None or b is None:
        return []
    step = b - a
    lo, hi = load_w * (100 - KNOWN_LOAD_TOLERANCE_PCT) // 100, load_w * (100 + KNOWN_LOAD_TOLERANCE_PCT) // 100
    if lo <= step <= hi:
        return [Check("known_load", step, lo, hi, True, "ok", f"power rose {step} W with the {load_w} W load on")]
    if -hi <= step <= -lo:
        return [Check("known_load", step, lo, hi, False, "fail", f"power fell {-step} W when the {load_w} W load "
                      f"was switched on: {_family_sign_hint(profile)}")]
    ratio = step / load_w if load_w else 0.0
    if profile.rated.current_transformer:
        fix = ("the CT ratio set in the meter's menu does not match the CTs fitted (the reading is "
               f"{ratio:.2f} x the load): set the primary current printed on the CTs, e.g. 100/5 A")
    else:
        k = _power_of_ten(abs(ratio)) if ratio else 0
        fix = (f"the power scale is off by 10^{k}: wrong profile or wrong scale" if k else
               "was the load really switched on, and on this meter's circuit?")
    return [Check("known_load", step, lo, hi, False, "fail", f"power rose {step} W with a {load_w} W load: {fix}")]


def word_order_hints(profile: Profile, image: Mapping[tuple[int, int], int], checks: list[Check]) -> list[Check]:
    """A failed range check that would pass with the two words swapped: say so (word order)."""
    return [_with_word_order_hint(profile, image, c) for c in checks]


def _with_word_order_hint(profile: Profile, image: Mapping[tuple[int, int], int], c: Check) -> Check:
    if c.ok or c.severity != "fail" or c.low is None or c.high is None:
        return c
    try:
        reg = profile.register(c.name)
    except KeyError:
        return c
    swapped = _swapped(reg, image, profile) if reg.words >= 2 else None
    if swapped is None or not c.low <= swapped <= c.high:
        return c
    return replace(c, message=c.message + f" With the words swapped it reads {swapped}, which is plausible: "
                   f"word order. {_word_order_fix(profile, reg)}")


def _swapped(reg: Register, image: Mapping[tuple[int, int], int], profile: Profile) -> int | None:
    other = replace(reg, word_order="little" if reg.word_order == "big" else "big")
    v = decode_register(image, other, profile)
    return v if isinstance(v, int) else None


def _word_order_fix(profile: Profile, reg: Register) -> str:
    if profile.manufacturer == "Eastron":
        return ("Eastron meters can be set to the other word order (register order) in their setup: set it back to "
                "the default, high word first")
    if reg.word_order == "little":
        return "This meter is read low word first; the meter or a gateway in between sends high word first"
    return "Check the meter's or the Modbus gateway's word/byte order setting, or use the right profile"


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
