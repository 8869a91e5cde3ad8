"""`python -m bench` without a name runs every bench and prints one JSON object keyed by bench name."""

from __future__ import annotations

import json
from typing import Any

import pytest

import bench.__main__ as bench_main


def test_all_benches_one_object_keyed_by_name_and_a_failure_reported(monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    ran: list[tuple[str, list[str], bool]] = []

    def fake_run(name: str, rest: list[str], as_json: bool) -> dict[str, Any]:
        ran.append((name, rest, as_json))
        if name == "broken":
            raise RuntimeError("mosquitto missing")
        return {"bench": name, "figure": len(name)}

    monkeypatch.setattr(bench_main, "_names", lambda: ["alpha", "broken", "footprint"])
    monkeypatch.setattr(bench_main, "_run_one", fake_run)
    assert bench_main.main(["--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out == {"alpha": {"bench": "alpha", "figure": 5}, "broken": {"error": "RuntimeError: mosquitto missing"},
                   "footprint": {"bench": "footprint", "figure": 9}}
    assert ran == [("alpha", [], True), ("broken", [], True), ("footprint", [], True)]


def test_every_real_bench_module_exposes_run() -> None:
    import importlib

    names = bench_main._names()
    assert {"drain", "footprint", "gateway"} <= set(names)
    for name in names:
        assert callable(importlib.import_module(f"bench.{name}").run), name


def test_options_without_a_name_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bench_main.main(["--json", "--duration-s=60"])
    assert exc.value.code == 2 and "need a benchmark NAME" in capsys.readouterr().err
