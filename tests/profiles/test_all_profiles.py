"""Every profile in firmware_config/profiles decodes every recording under recordings/<profile-id>/ to the values
written in it (evcc TestTemplates style: a new meter = one TOML + one recording, no new test code).

Recording format (JSON): blocks [{function_code, address ("0x..." or int), words}], expected {measurement: int},
invalid {measurement: reason}, optional identified (bool) and serial_number (int | str). expected + invalid must
name every measurement of the profile; the profile's read plan must be answerable from the recorded blocks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.decode import decode_identity, decode_image, identify_matches, image_from_block
from agent.planner import plan_reads
from firmware_config.loader import PROFILES_DIR, load_all
from firmware_config.schema import Profile

RECORDINGS = Path(__file__).parent / "recordings"
PROFILES = load_all()


def _image(rec: dict[str, Any]) -> dict[tuple[int, int], int]:
    image: dict[tuple[int, int], int] = {}
    for b in rec["blocks"]:
        addr = b["address"]
        image.update(image_from_block(b["function_code"], int(addr, 0) if isinstance(addr, str) else addr, b["words"]))
    return image


def _cases() -> list[tuple[str, Path | None]]:
    cases: list[tuple[str, Path | None]] = []
    for pid in sorted(PROFILES):
        recs = sorted((RECORDINGS / pid).glob("*.json"))
        cases += [(pid, r) for r in recs] or [(pid, None)]
    return cases


def test_profiles_exist() -> None:
    files = sorted(p.stem for p in PROFILES_DIR.glob("*.toml"))
    assert {"eastron-sdm630", "eastron-sdm120"} <= set(PROFILES)
    assert sorted(PROFILES) == files, "profile id must equal its file name"


@pytest.mark.parametrize(("profile_id", "recording"), _cases(), ids=lambda x: getattr(x, "name", x))
def test_recording_decodes(profile_id: str, recording: Path | None) -> None:
    assert recording is not None, f"profile {profile_id} has no recording under {RECORDINGS / profile_id}"
    profile: Profile = PROFILES[profile_id]
    rec = json.loads(recording.read_text())
    image = _image(rec)

    decoded = decode_image(profile, image)
    assert decoded.values == rec["expected"]
    assert decoded.invalid == rec.get("invalid", {})
    assert set(rec["expected"]) | set(rec.get("invalid", {})) == set(profile.measurements)

    for block in plan_reads(profile, transport="tcp" if "rtu" not in profile.transports else "rtu"):
        missing = [a for a in range(block.address, block.end) if (block.function_code, a) not in image]
        assert not missing, f"read plan block {block} not covered by the recording (first missing {missing[0]:#x})"

    if "identified" in rec:
        results = []
        for rule in profile.identify:
            fc = next((f for f in rule.function_codes if (f, rule.address) in image), None)
            assert fc is not None, f"identification register {rule.address:#x} not in recording"
            words = [image[(fc, a)] for a in range(rule.address, rule.address + rule.words)]
            results.append(identify_matches(rule, decode_identity(rule, words)))
        assert all(results) == rec["identified"]
    if "serial_number" in rec:
        sn = profile.serial_number
        assert sn is not None
        fc = next(f for f in sn.function_codes if (f, sn.address) in image)
        words = [image[(fc, a)] for a in range(sn.address, sn.address + sn.words)]
        assert decode_identity(sn, words) == rec["serial_number"]


README = PROFILES_DIR.parent / "README.md"


def _readme_rows() -> dict[str, list[str]]:
    rows = {}
    for line in README.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and cells[0].endswith(".toml`"):
            rows[cells[0].strip("`").removesuffix(".toml")] = cells
    return rows


@pytest.mark.parametrize("profile_id", sorted(PROFILES))
def test_readme_table_lists_profile_as_shipped(profile_id: str) -> None:
    """firmware_config/README.md's table says the truth about every shipped profile file (and no other)."""
    rows = _readme_rows()
    assert set(rows) == set(PROFILES)
    p = PROFILES[profile_id]
    _file, _meters, transports, framing, unit_id, fcs, encoding, confirmed = rows[profile_id]
    s = p.serial
    assert transports == "/".join(p.transports)
    assert framing == (f"{s.baudrate} {s.bytesize}{s.parity}{s.stopbits}" if s else f"TCP port {p.tcp_port}")
    assert int(unit_id) == p.default_unit_id
    assert fcs == "/".join(f"FC{fc:02d}" for fc in sorted({r.function_code for r in p.registers}))
    assert all(r.type in encoding for r in p.registers)
    assert ("LSW first" in encoding) == any(r.word_order == "little" for r in p.registers)
    ident = "yes" if all(r.confirmed for r in p.identify) else "**no**"
    assert f"identification {ident}" in confirmed
    assert f"framing {'n/a' if s is None else ('yes' if s.confirmed else '**no**')}" in confirmed
    assert confirmed.endswith(f"{sum(1 for f in p.facts if not f.confirmed)} open fact"
                              + ("s" if sum(1 for f in p.facts if not f.confirmed) != 1 else ""))


def test_readme_documents_every_profile_key() -> None:
    """Every key the loader accepts has an entry in firmware_config/README.md."""
    import re

    loader = (PROFILES_DIR.parent / "loader.py").read_text()
    keys = set(re.findall(r'\.(?:take|choice|int_in|sub|items)\("([a-z_]+)"', loader))
    keys |= set(re.findall(r'_int_list\(t, "([a-z_]+)"', loader)) | set(re.findall(r'_scale\(t, "([a-z_]+)"', loader))
    text = README.read_text()
    assert len(keys) > 40
    assert not sorted(k for k in keys if f"`{k}`" not in text and f"[{k}]" not in text and f"[[{k}]]" not in text)
