"""Dependency direction (style rule 1): protocol imports nothing of ours; agent and gateway never import each
other; each third-party library is wrapped in exactly one place."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("protocol", "agent", "gateway", "provisioning", "firmware_config", "localchain", "testbed", "bench")


def _imports(package: str) -> dict[str, set[str]]:
    """module path -> top-level names it imports (absolute imports only; we use no relative ones)."""
    out: dict[str, set[str]] = {}
    for path in sorted((REPO / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        out[str(path.relative_to(REPO))] = names
    return out


def _top(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names}


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("protocol", {"agent", "gateway", "provisioning", "firmware_config", "localchain", "testbed", "bench"}),
        ("agent", {"gateway", "provisioning", "localchain", "testbed", "bench"}),
        ("gateway", {"agent", "provisioning", "firmware_config", "testbed", "bench"}),
        ("firmware_config", {"agent", "gateway", "provisioning", "localchain", "testbed"}),
        ("provisioning", {"gateway", "localchain", "testbed"}),
    ],
)
def test_dependency_direction(package: str, forbidden: set[str]) -> None:
    bad = {mod: sorted(_top(names) & forbidden) for mod, names in _imports(package).items() if _top(names) & forbidden}
    assert bad == {}


@pytest.mark.parametrize(
    ("library", "allowed"),
    [
        ("pymodbus", {"agent/bus.py"}),
        ("nacl", {"protocol/signing.py"}),
        # agent/homeassistant.py: the separate, optional connection to the household's own broker
        ("paho", {"agent/publisher.py", "agent/homeassistant.py", "gateway/intake.py"}),
        ("solana", {"gateway/oracle.py", "gateway/oracle_landing.py"}),
        ("solders", {"gateway/oracle.py", "gateway/oracle_layout.py", "gateway/oracle_errors.py",
                     "gateway/oracle_authority_key.py", "gateway/oracle_instructions.py",
                     "gateway/oracle_landing.py", "agent/chain_view.py"}),  # the agent's read-only chain view
    ],
)
def test_library_wrapped_in_one_place_per_package(library: str, allowed: set[str]) -> None:
    users = {
        mod
        for pkg in ("protocol", "agent", "gateway", "provisioning", "firmware_config")
        for mod, names in _imports(pkg).items()
        if library in _top(names)
    }
    assert users <= allowed, f"{library} imported outside its wrapper: {sorted(users - allowed)}"
