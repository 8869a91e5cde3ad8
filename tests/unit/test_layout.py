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


# ---- the gateway's store room (issue 10): the only SQL, and below the rooms that use it ----------------------------
STORE = REPO / "gateway" / "store"
ROOMS_ABOVE_THE_STORE = ("gateway.intake", "gateway.submit", "gateway.oracle", "gateway.web", "gateway.service",
                         "gateway.cli")
DATABASE_DRIVERS = {"sqlite3", "psycopg"}
SQL_CALLS = {"execute", "executemany", "executescript"}

SQL_OUTSIDE_THE_STORE_ALLOWED: set[str] = set()


def _modules_imported(tree: ast.AST) -> set[str]:
    """Every dotted name a module imports, `from a.b import c` as both a.b and a.b.c (c may be a module)."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def _sql_calls(tree: ast.AST) -> list[int]:
    """Lines calling .execute / .executemany / .executescript on anything (a connection or a cursor)."""
    return [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and n.func.attr in SQL_CALLS]


def _store_room_violations(root: Path) -> dict[str, list[str]]:
    """module -> what breaks the store room's rules, for every module of the gateway package under root."""
    bad: dict[str, list[str]] = {}
    for path in sorted((root / "gateway").rglob("*.py")):
        rel = str(path.relative_to(root))
        tree = ast.parse(path.read_text(), filename=rel)
        imported = _modules_imported(tree)
        found = []
        if rel.startswith("gateway/store/"):
            found += [f"imports {m}" for m in sorted(imported)
                      if any(m == r or m.startswith(r + ".") for r in ROOMS_ABOVE_THE_STORE)]
        elif rel not in SQL_OUTSIDE_THE_STORE_ALLOWED:
            found += [f"imports {m}" for m in sorted(imported) if m.split(".")[0] in DATABASE_DRIVERS]
            found += [f"line {n}: runs SQL" for n in _sql_calls(tree)]
        if found:
            bad[rel] = found
    return bad


def test_the_store_is_the_only_sql_and_imports_no_room_above_it() -> None:
    """gateway/store/ imports nothing of the intake, the submitter, the chain client, the dashboard, the service or
    the CLI (they use it, never the other way round); outside it, no gateway module imports a database driver or
    runs SQL: the dashboard, the CLI and the status endpoints go through the store's methods."""
    assert _store_room_violations(REPO) == {}


def test_the_store_room_rules_catch_a_violation(tmp_path: Path) -> None:
    """The rules above fail on each kind of breach (a copy of the package with one breach added per module)."""
    import shutil

    shutil.copytree(REPO / "gateway", tmp_path / "gateway", ignore=shutil.ignore_patterns("__pycache__", "web"))
    assert _store_room_violations(tmp_path) == {}
    breaches = {
        "gateway/store/outbox.py": "\nfrom gateway.submit.intervals import plan\n",
        "gateway/store/fleet.py": "\nfrom gateway import web\n",
        "gateway/web.py": "\nimport sqlite3\n",
        "gateway/cli/reports.py": "\ndef _count(store):\n    return store.conn.execute('SELECT 1')\n",
        "gateway/intake/mqtt.py": "\nfrom psycopg import OperationalError\n",
    }
    for rel, text in breaches.items():
        with (tmp_path / rel).open("a") as f:
            f.write(text)
    bad = _store_room_violations(tmp_path)
    assert set(bad) == set(breaches)
    assert "imports gateway.submit.intervals" in bad["gateway/store/outbox.py"]
    assert "imports gateway.web" in bad["gateway/store/fleet.py"]
    assert bad["gateway/web.py"] == ["imports sqlite3"]
    assert bad["gateway/cli/reports.py"][0].endswith("runs SQL")
    assert "imports psycopg" in bad["gateway/intake/mqtt.py"]


def test_the_records_the_store_persists_are_pure_data() -> None:
    """gateway/store/records.py (Progress, Point, PlanState, Planned) is what the pure checks and the pure planner
    import from the store: it stays plain dataclasses, importing no I/O."""
    tree = ast.parse((STORE / "records.py").read_text())
    assert _modules_imported(tree) <= {"__future__", "__future__.annotations", "dataclasses", "dataclasses.dataclass"}
