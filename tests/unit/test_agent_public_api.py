"""Each package's curated __all__ resolves, and importing a package does not pull in the heavy libraries."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest


@pytest.mark.parametrize("package", ["agent", "gateway"])
def test_all_names_resolve_to_their_module(package: str) -> None:
    pkg = importlib.import_module(package)
    assert pkg.__all__ == sorted(pkg.__all__) and len(pkg.__all__) >= 10
    for name in pkg.__all__:
        obj = getattr(pkg, name)
        assert obj is getattr(importlib.import_module(pkg._EXPORTS[name]), name)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        pkg.nope  # noqa: B018


@pytest.mark.parametrize(("package", "heavy"), [("agent", ("paho", "pymodbus", "aiohttp")),
                                                ("gateway", ("paho", "solana", "solders", "aiohttp"))])
def test_bare_import_stays_light(package: str, heavy: tuple[str, ...]) -> None:
    code = f"import sys, {package}; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
