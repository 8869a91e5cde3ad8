"""`gridmeter provision register` and `rotate-key`: agent config + signed registration record.

register: loads the meter's key (created by keygen), merges the meter (and its bus) into the agent TOML
config (validated as the agent will validate it, written atomically), builds a protocol.registration record
signed by the meter key (proof of possession), writes its text form "GMREG1:..." to a file and shows it as a
QR code the installer photographs or the gateway operator scans; `gridmeter gateway meters add FILE` imports it.

rotate-key: the new key is accepted by the gateway only because the OLD key vouches for it: the record
carries previous_public_key and is signed by both. The old key file is kept as a backup by keygen.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import qrcode

from protocol.registration import MeterRole, Registration, SignedRegistration, parse_registration, sign_registration
from protocol.signing import SigningKey
from provisioning.errors import ProvisionInputError

RECORD_SUFFIX = ".gmreg"
# Error correction M (15 %): survives a smudged phone screen or a creased printout; the record (~300 chars)
# still fits a version-13-ish code that a phone reads off a terminal.
QR_ERROR_CORRECTION = qrcode.constants.ERROR_CORRECT_M
QR_BORDER = 2  # quiet zone in modules; 4 is the spec, 2 is what terminal scanners need and saves lines


class RegisterError(ProvisionInputError):
    """Bad input for register/rotate-key; the message names the flag or file."""


@dataclass(frozen=True)
class MeterFacts:
    """What the record says about the meter (from flags or a commissioning result)."""

    meter_id: str
    profile: str
    serial_number: str
    role: MeterRole
    zone_id: int
    rated_max_power_w: int
    installer_id: str


def build_record(facts: MeterFacts, key: SigningKey, now_ms: int,
                 previous: SigningKey | None = None) -> SignedRegistration:
    reg = Registration(
        meter_id=facts.meter_id,
        public_key=key.public_key,
        profile=facts.profile,
        serial_number=facts.serial_number,
        role=facts.role,
        zone_id=facts.zone_id,
        rated_max_power_w=facts.rated_max_power_w,
        installer_id=facts.installer_id,
        created_at_ms=now_ms,
        previous_public_key=None if previous is None else previous.public_key,
    )
    return sign_registration(reg, key, previous=previous)


def facts_from_record(rec: Registration) -> MeterFacts:
    return MeterFacts(rec.meter_id, rec.profile, rec.serial_number, rec.role, rec.zone_id,
                      rec.rated_max_power_w, rec.installer_id)


def qr_matrix(text: str) -> list[list[bool]]:
    qr = qrcode.QRCode(error_correction=QR_ERROR_CORRECTION, border=QR_BORDER)
    qr.add_data(text.encode("ascii"))
    qr.make(fit=True)
    return [list(row) for row in qr.get_matrix()]


def qr_ascii(text: str) -> str:
    """The record as a terminal QR code, two module rows per line. Light modules are drawn (full/half
    blocks) and dark modules left blank, so it scans on the usual light-on-dark terminal."""
    m = qr_matrix(text)
    if len(m) % 2:
        m.append([False] * len(m[0]))  # pad with a light row (quiet zone)
    lines = []
    for top, bottom in zip(m[0::2], m[1::2], strict=True):
        lines.append("".join(_CHAR[(t, b)] for t, b in zip(top, bottom, strict=True)))
    return "\n".join(lines) + "\n"


# (top dark, bottom dark) -> character; the inverse map reads a code back (tests, pasted codes)
_CHAR = {(True, True): " ", (True, False): "\u2584", (False, True): "\u2580", (False, False): "\u2588"}
_CELLS = {c: pair for pair, c in _CHAR.items()}


def matrix_from_ascii(art: str) -> list[list[bool]]:
    """Inverse of qr_ascii: text lines -> module matrix (an odd matrix comes back with its light pad row)."""
    rows: list[list[bool]] = []
    for line in art.rstrip("\n").split("\n"):
        try:
            pairs = [_CELLS[c] for c in line]
        except KeyError as exc:
            raise RegisterError(f"QR text: unexpected character {exc.args[0]!r}") from None
        rows.append([p[0] for p in pairs])
        rows.append([p[1] for p in pairs])
    return rows


def record_path_for(config_path: Path, meter_id: str) -> Path:
    return Path(config_path).parent / f"{meter_id}{RECORD_SUFFIX}"


def read_record(path: Path) -> SignedRegistration:
    """Parse and verify a record file. Raises RegisterError naming the file."""
    from protocol.errors import ProtocolError

    try:
        text = Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise RegisterError(f"{path}: cannot read registration record ({exc})") from exc
    try:
        return parse_registration(text)
    except ProtocolError as exc:
        raise RegisterError(f"{path}: {exc}") from exc


def write_record(path: Path, signed: SignedRegistration) -> None:
    from provisioning.agent_toml import write_atomic

    write_atomic(Path(path), signed.to_text() + "\n", mode=0o644)  # public: it carries no secret


def record_summary(signed: SignedRegistration) -> dict[str, Any]:
    r = signed.registration
    return {
        "meter_id": r.meter_id,
        "public_key": r.public_key.hex(),
        "profile": r.profile,
        "serial_number": r.serial_number,
        "role": r.role.name.lower(),
        "zone_id": r.zone_id,
        "rated_max_power_w": r.rated_max_power_w,
        "installer_id": r.installer_id,
        "created_at_ms": r.created_at_ms,
        "previous_public_key": r.previous_public_key.hex() if r.previous_public_key else None,
    }


def load_commissioning(path: Path) -> Mapping[str, Any]:
    """A commissioning result written by `provision commission` (JSON); must have passed."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RegisterError(f"--commissioning {path}: cannot read commissioning result ({exc})") from exc
    if not isinstance(data, dict) or "profile" not in data:
        raise RegisterError(f"--commissioning {path}: not a commissioning result (no 'profile')")
    if data.get("result") != "pass":
        raise RegisterError(
            f"--commissioning {path}: commissioning did not pass (result={data.get('result')!r}); "
            "fix the wiring/profile and run `gridmeter provision commission` again"
        )
    return data
