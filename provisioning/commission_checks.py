"""The checks of `gridmeter provision commission`: pure functions from the two reads (and the profile) to Checks.

Every decoded value against the range the profile's rated limits allow (voltage, frequency, current, power, power
factor); counters decoded, non-zero, not going backwards nor faster than the rated power allows; the decoded import
against the meter's display. The typical installer mistakes are caught with a hint naming the fix (issue 9):
- power sign against the counter that moved (a reversed CT or swapped supply/load wires; a SolarEdge grid meter
  read with a generic SunSpec profile), and negative power on a site that cannot export;
- power against the counters' movement over the wait (a power or energy scale off by a power of ten);
- a value outside its range that would be plausible with the words swapped (word order);
- with a known load switched on: the power step against the load (wrong CT ratio on a CT meter, or scale).

What lives where: this module holds the checks and their thresholds (no I/O, no questions);
provisioning.commission reads the meter, asks the installer, runs these checks and records the result.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal

from agent.decode import decode_register
from agent.plausibility import max_energy_wh
from firmware_config.schema import ENERGY_MEASUREMENTS, Profile, Register

# A 3-phase meter wired single-phase reads 0 V on the unused phases: a warning, not a failure.
UNUSED_PHASE_MAX_DV = 50
# Display comparison: the display shows whole kWh or 0.1/0.01 kWh; accept one display step of 1 kWh or
# 0.5 % (whichever is larger): a x10 / x1000 / word-order error is far outside that.
DISPLAY_TOLERANCE_WH = 1000
DISPLAY_TOLERANCE_PPM = 5000
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


@dataclass(frozen=True)
class Check:
    name: str
    value: int | None
    low: int | None
    high: int | None
    ok: bool
    severity: str  # "fail" | "warn" | "ok"
    message: str


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
