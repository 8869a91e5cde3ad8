"""Dependency direction (style rule 1): protocol imports nothing of ours; agent and gateway never import each
other; each third-party library is wrapped in exactly one place."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("protocol", "base", "oracle_interface", "agent", "gateway", "provisioning", "firmware_config", "localchain",
            "testbed", "bench", "gridmeter")


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
        ("protocol", {"agent", "gateway", "provisioning", "firmware_config", "localchain", "testbed", "bench",
                      "base", "oracle_interface", "gridmeter"}),
        ("base", set(PACKAGES) - {"base"}),  # the shared base imports nothing of ours
        ("oracle_interface", set(PACKAGES) - {"oracle_interface"}),  # the oracle's interface: pure description
        # agent may read the oracle's MeterState through oracle_interface (agent/chain_view.py), never the gateway
        ("agent", {"gateway", "provisioning", "localchain", "testbed", "bench", "gridmeter"}),
        ("gateway", {"agent", "provisioning", "firmware_config", "localchain", "testbed", "bench", "gridmeter"}),
        ("firmware_config", {"agent", "gateway", "provisioning", "localchain", "testbed", "gridmeter"}),
        ("provisioning", {"gateway", "localchain", "testbed", "gridmeter"}),
        ("localchain", {"agent", "gateway", "provisioning", "firmware_config", "testbed", "bench", "gridmeter"}),
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
        ("paho", {"agent/publisher.py", "agent/homeassistant.py", "gateway/intake/mqtt.py"}),
    ],
)
def test_library_wrapped_in_one_place_per_package(library: str, allowed: set[str]) -> None:
    users = {
        mod
        for pkg in ("protocol", "agent", "gateway", "provisioning", "firmware_config", "base")
        for mod, names in _imports(pkg).items()
        if library in _top(names)
    }
    assert users <= allowed, f"{library} imported outside its wrapper: {sorted(users - allowed)}"


@pytest.mark.parametrize("library", ["solana", "solders"])
def test_chain_libraries_only_in_the_chain_client(library: str) -> None:
    """Inside the gateway only gateway/oracle/ speaks Solana; protocol, base, agent and provisioning never do.
    (oracle_interface and localchain are chain code by nature.)"""
    users = {
        mod
        for pkg in ("protocol", "base", "agent", "gateway", "provisioning", "firmware_config")
        for mod, names in _imports(pkg).items()
        if library in _top(names)
    }
    assert {m for m in users if not m.startswith("gateway/oracle/")} == set()
    assert {m for m in users if m.startswith("gateway/oracle/")}, "the chain client is where it is expected"


MAX_MODULE_LINES = 450
# Larger modules that predate the rule, at their size when it was introduced: to be split, and never to grow.
# Empty since issue 10's splits; an entry here is a debt with a size, not a permission.
OVERSIZE: dict[str, int] = {}


def test_modules_stay_small() -> None:
    """A module a newcomer can read in one sitting: at most MAX_MODULE_LINES lines (OVERSIZE may only shrink)."""
    sizes = {str(p.relative_to(REPO)): len(p.read_text().splitlines())
             for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    too_big = {m: n for m, n in sizes.items() if n > OVERSIZE.get(m, MAX_MODULE_LINES)}
    assert too_big == {}, f"split these modules (limit {MAX_MODULE_LINES} lines): {too_big}"
    assert set(OVERSIZE) <= set(sizes), "an OVERSIZE entry names a module that no longer exists: drop it"
