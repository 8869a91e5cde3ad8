"""Smoke test of `python -m bench drain` on a small backlog (the speed figure itself is the bench's job)."""

from __future__ import annotations

import argparse

import pytest

from bench import drain

pytestmark = pytest.mark.integration


def test_drain_bench_runs_and_verifies_everything() -> None:
    result = drain.run(argparse.Namespace(readings=2000, meters=2, batch_max=100, inflight=8))
    assert result["readings"] == 2000 and result["verified_readings"] == 2000
    assert result["all_contiguous"] is True
    assert result["bad_signatures"] == 0 and result["duplicates"] == 0
    assert result["readings_per_s"] > 0


@pytest.mark.parametrize("argv", [["--meters", "0"], ["--readings", "-5"], ["--batch-max", "1001"],
                                  ["--inflight", "x"]])
def test_drain_bench_arguments_bounded(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """--meters 0 used to end in ZeroDivisionError after starting a broker."""
    p = argparse.ArgumentParser()
    drain.add_arguments(p)
    with pytest.raises(SystemExit) as exc:
        p.parse_args(argv)
    assert exc.value.code == 2 and "must be a whole number in" in capsys.readouterr().err
