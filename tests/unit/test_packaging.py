"""A non-editable install (scripts/install builds /opt/gridmeter/<release> with `pip install .`) ships only the
packages pyproject.toml lists: a new sub-package missing from that list works in the editable dev tree and fails
on the Pi with ModuleNotFoundError."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_package_in_the_tree_is_listed_for_install() -> None:
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    tops = {name.split(".")[0] for name in listed}
    found = {
        ".".join(init.parent.relative_to(REPO).parts)
        for top in tops
        for init in (REPO / top).rglob("__init__.py")
        if ".venv" not in init.parts
    }
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert listed - found == set(), "listed packages that do not exist"
